from __future__ import annotations

import json
import time
from pathlib import Path

from kiln.monitor.alerts import AlertEvent, AlertHistory
from kiln.runtime.package import write_json_atomic
from tests.helpers import kiln_cli


def test_cli_monitor_reports_log_folder(tmp_path: Path) -> None:
    report = {
        "model": "s",
        "version": 1,
        "rows": 50,
        "values": {"drift_share": 0.5},
        "columns": [
            {
                "column": "length",
                "kind": "numeric",
                "method": "ks",
                "score": 0.001,
                "threshold": 0.05,
                "is_drifted": True,
                "stats": {},
            }
        ],
    }
    write_json_atomic(tmp_path / "reports.json", [report])
    AlertHistory(tmp_path / "alerts.sqlite").add(
        AlertEvent("drift", "s", 1, "firing", 0.5, "drift_share > 0.3", time.time())
    )
    result = kiln_cli("monitor", "--log-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "length" in result.stdout and "DRIFT" in result.stdout and "active alerts: drift@s" in result.stdout
    data = json.loads(kiln_cli("monitor", "--log-dir", str(tmp_path), "--json").stdout)
    assert data["alerts"]["active"] == [{"rule": "drift", "model": "s", "version": 1}]


def test_cli_monitor_needs_one_source(tmp_path: Path) -> None:
    result = kiln_cli("monitor")
    assert result.returncode == 2 and "exactly one of --url or --log-dir" in result.stderr
