"""``kiln monitor`` (drift and alerts of a served model or a log folder) and ``kiln ui``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer


def monitor(
    url: Annotated[str | None, typer.Option(help="Server URL, e.g. http://127.0.0.1:8000")] = None,
    log_dir: Annotated[Path | None, typer.Option(help="Monitoring folder (prediction log, alerts)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    """Report drift by statistic and the alerts of a served model or a monitoring folder."""
    from kiln.cli.main import user_errors
    from kiln.errors import ConfigError

    with user_errors():
        if (url is None) == (log_dir is None):
            raise ConfigError("give exactly one of --url or --log-dir")
        if url is not None:
            import urllib.request

            base = url.rstrip("/")
            with urllib.request.urlopen(f"{base}/v1/monitor/reports", timeout=10) as r:  # noqa: S310
                reports = json.loads(r.read())
            with urllib.request.urlopen(f"{base}/v1/monitor/alerts", timeout=10) as r:  # noqa: S310
                alerts = json.loads(r.read())
        else:
            from kiln.monitor.ui.data import DashboardData

            assert log_dir is not None  # exactly one of url and log_dir, checked above
            if not log_dir.is_dir():
                raise ConfigError(f"monitoring folder not found: {log_dir}")
            data = DashboardData(log_dir=log_dir)
            reports, alerts = data.drift(), data.alerts()
    if as_json:
        typer.echo(json.dumps({"reports": reports, "alerts": alerts}, indent=2))
        return
    for report in reports:
        share = report["values"].get("drift_share", 0.0)
        typer.echo(f"{report['model']}@{report['version']}: {report['rows']} inputs, drift share {share:.2f}")
        for col in report["columns"]:
            flag = "DRIFT" if col["is_drifted"] else "ok"
            typer.echo(f"  {col['column']:<16} {col['method']:<15} {col['score']:.4f}  {flag}")
    active = alerts["active"]
    typer.echo(f"active alerts: {', '.join(a['rule'] + '@' + a['model'] for a in active) or 'none'}")


def ui(
    log_dir: Annotated[Path | None, typer.Option(help="Monitoring folder to show")] = None,
    host: Annotated[str, typer.Option(help="Interface to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8080,
) -> None:
    """Serve the dashboard alone: registry under KILN_HOME plus a monitoring folder."""
    import uvicorn

    from kiln.monitor.ui.api import create_ui_app

    uvicorn.run(create_ui_app(log_dir=log_dir), host=host, port=port, log_level="warning")
