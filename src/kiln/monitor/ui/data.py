"""What the dashboard shows, read from the running server, the monitoring folder and the registry."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from kiln.config.home import kiln_home


class DashboardData:
    """Collects dashboard JSON from whichever sources exist."""

    def __init__(
        self, *, service: Any = None, monitor: Any = None, log_dir: Path | None = None, home: Path | None = None
    ) -> None:
        self.service = service
        self.monitor = monitor
        self.log_dir = log_dir or (monitor.folder if monitor is not None else None)
        self.home = home or kiln_home()

    def overview(self) -> dict[str, Any]:
        """Served models (versions, canary) and registry models (versions, aliases)."""
        served = []
        if self.service is not None:
            repo = self.service.repository
            for name in repo.names():
                entry = repo.entry(name)
                served.append(
                    {
                        "name": name,
                        "versions": [
                            {
                                "version": v,
                                "source": lv.model.source,
                                "precision": lv.model.predictor.manifest.get("precision"),
                            }
                            for v, lv in sorted(entry.versions.items())
                        ],
                        "canary": {str(k): w for k, w in dict(entry.router.weights).items()},
                    }
                )
        return {"served": served, "registry": self._registry_models()}

    def lineage(self) -> dict[str, Any]:
        """Nodes and parent -> child edges from the registry and the served packages' manifests."""
        nodes: dict[str, dict[str, Any]] = {}
        edges: list[dict[str, str]] = []
        reg = self._registry()
        if reg is not None:
            with reg:
                for model in reg.list_models():
                    for version in reg.list_versions(model.name):
                        nodes[version.ref] = {"id": version.ref, "precision": version.precision}
                        for edge in reg.store.parent_edges(model.name, version.version):
                            if edge.parent:
                                edges.append(
                                    {"parent": edge.parent, "child": edge.child, "transformation": edge.transformation}
                                )
        for name, version, manifest in self._served_manifests():
            ref = f"{name}@{version}"
            nodes.setdefault(ref, {"id": ref, "precision": manifest.get("precision")})
            lineage = manifest.get("lineage") or {}
            parent = lineage.get("parent")
            if parent and not any(e["child"] == ref for e in edges):
                label = parent if isinstance(parent, str) else Path(str(parent.get("path", "parent"))).name
                nodes.setdefault(label, {"id": label, "precision": None})
                edges.append({"parent": label, "child": ref, "transformation": lineage.get("transformation", "")})
        return {"nodes": list(nodes.values()), "edges": edges}

    def runs(self) -> list[dict[str, Any]]:
        """Training curves: each run folder's ``metrics.jsonl``."""
        folders: dict[str, Path] = {}
        for _name, _version, manifest, path in self._served_packages():
            folders.setdefault(manifest.get("name", path.parent.name), path.parent)
        runs_root = self.home / "runs"
        if runs_root.is_dir():
            for run in sorted(runs_root.iterdir()):
                folders.setdefault(run.name, run)
        out = []
        for name, folder in folders.items():
            log = folder / "metrics.jsonl"
            if log.is_file():
                records = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines() if line.strip()]
                out.append({"name": name, "records": records})
        return out

    def compression(self) -> list[dict[str, Any]]:
        """Accuracy and latency of each version, for the accuracy-vs-latency chart."""
        points = []
        reg = self._registry()
        if reg is not None:
            with reg:
                for model in reg.list_models():
                    for v in reg.list_versions(model.name):
                        points.append(_point(v.ref, v.precision, v.metrics))
        for name, version, manifest in self._served_manifests():
            ref = f"{name}@{version}"
            if not any(p["ref"] == ref for p in points):
                points.append(_point(ref, manifest.get("precision"), manifest.get("metrics") or {}))
        return points

    def traffic(self, window_s: float = 120.0) -> dict[str, Any]:
        """Per-second QPS and latency percentiles of recent traffic, batch sizes and errors."""
        import numpy as np

        now = time.time()
        rows: list[Any] = []
        if self.monitor is not None:
            for model, version in self.monitor.log.windows():
                rows.extend(r for r in self.monitor.log.window(model, version) if now - r.timestamp <= window_s)
        elif self.log_dir is not None:
            from kiln.monitor.predlog import read_log, rows_from_frame

            frame = read_log(self.log_dir)
            if len(frame):
                frame = frame[frame["timestamp"] >= frame["timestamp"].max() - window_s]
                rows = rows_from_frame(frame)
        series: dict[int, list[float]] = {}
        requests: dict[int, set[str]] = {}
        for r in rows:
            second = int(r.timestamp)
            series.setdefault(second, []).append(r.latency_s * 1000)
            requests.setdefault(second, set()).add(r.request_id)
        points = []
        for second in sorted(series):
            lat = np.asarray(series[second])
            p50, p95, p99 = np.quantile(lat, [0.5, 0.95, 0.99])
            points.append(
                {
                    "t": second,
                    "qps": len(requests[second]),
                    "p50_ms": float(p50),
                    "p95_ms": float(p95),
                    "p99_ms": float(p99),
                }
            )
        return {"points": points, **self._serve_counters()}

    def drift(self) -> list[dict[str, Any]]:
        """The latest window report of each model version."""
        if self.monitor is not None:
            return [r.to_json() for r in self.monitor.reports.values()]
        if self.log_dir is not None and (self.log_dir / "reports.json").is_file():
            return json.loads((self.log_dir / "reports.json").read_text(encoding="utf-8"))
        return []

    def alerts(self) -> dict[str, Any]:
        """Active alerts and history."""
        if self.monitor is not None:
            active = [{"rule": r, "model": m, "version": v} for r, m, v in self.monitor.alerts.active()]
            return {"active": active, "history": [e.to_json() for e in self.monitor.history.list()]}
        if self.log_dir is not None and (self.log_dir / "alerts.sqlite").is_file():
            from kiln.monitor.alerts import AlertHistory, active_from_history

            history = AlertHistory(self.log_dir / "alerts.sqlite").list()
            return {"active": active_from_history(history), "history": [e.to_json() for e in history]}
        return {"active": [], "history": []}

    def _serve_counters(self) -> dict[str, Any]:
        if self.service is None:
            return {"errors": 0, "requests": 0, "batch_sizes": {}}
        requests = errors = 0
        batches: dict[str, float] = {}
        for family in self.service.metrics.registry.collect():
            for sample in family.samples:
                if sample.name == "kiln_requests_total":
                    requests += int(sample.value)
                    if not sample.labels.get("status", "").startswith("2"):
                        errors += int(sample.value)
                elif sample.name == "kiln_batch_size_bucket":
                    le = sample.labels["le"]
                    batches[le] = batches.get(le, 0.0) + sample.value
        return {"errors": errors, "requests": requests, "batch_sizes": batches}

    def _served_packages(self) -> list[tuple[str, int, dict[str, Any], Path]]:
        if self.service is None:
            return []
        out = []
        repo = self.service.repository
        for name in repo.names():
            for version, lv in sorted(repo.entry(name).versions.items()):
                out.append((name, version, lv.model.predictor.manifest, Path(lv.model.predictor.path)))
        return out

    def _served_manifests(self) -> list[tuple[str, int, dict[str, Any]]]:
        return [(n, v, m) for n, v, m, _p in self._served_packages()]

    def _registry(self) -> Any:
        if not os.environ.get("KILN_DATABASE_URL") and not (self.home / "registry.db").is_file():
            return None
        from kiln.registry import Registry

        return Registry(home=self.home)

    def _registry_models(self) -> list[dict[str, Any]]:
        reg = self._registry()
        if reg is None:
            return []
        with reg:
            return [
                {
                    "name": m.name,
                    "task": m.task,
                    "versions": [
                        {"version": v.version, "precision": v.precision, "format": v.format, "aliases": list(v.aliases)}
                        for v in reg.list_versions(m.name)
                    ],
                }
                for m in reg.list_models()
            ]


def _point(ref: str, precision: Any, metrics: dict[str, Any]) -> dict[str, Any]:
    flat = _flatten(metrics)
    accuracy = next((v for k, v in flat.items() if k.endswith("accuracy")), None)
    latency = next((v for k, v in flat.items() if "latency" in k or k.endswith("p50_ms")), None)
    return {"ref": ref, "precision": precision, "accuracy": accuracy, "latency_ms": latency}


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, name + "."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name] = float(value)
    return out
