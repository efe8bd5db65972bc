from __future__ import annotations

import json

import yaml

from tests.helpers import ROOT


def test_deploy_prometheus_scrapes_metrics_path() -> None:
    cfg = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    assert cfg["scrape_configs"][0]["metrics_path"] == "/metrics"


def test_deploy_grafana_dashboard_queries_kiln_series() -> None:
    dash = json.loads((ROOT / "deploy" / "grafana-dashboard.json").read_text())
    exprs = " ".join(t["expr"] for p in dash["panels"] for t in p["targets"])
    for series in (
        "kiln_requests_total",
        "kiln_request_duration_seconds_bucket",
        "kiln_drift_score",
        "kiln_alert_active",
    ):
        assert series in exprs
