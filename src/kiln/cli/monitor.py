"""``kiln monitor`` (drift and alerts of a served model or a log folder) and ``kiln ui``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer


def monitor(
    url: Annotated[str | None, typer.Option(help="Server URL, e.g. http://127.0.0.1:8000")] = None,
    log_dir: Annotated[Path | None, typer.Option(help="Monitoring folder (prediction log, alerts)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
    token: Annotated[
        str | None, typer.Option(envvar="KILN_TOKEN", help="Bearer token for --url (default: $KILN_TOKEN)")
    ] = None,
) -> None:
    """Report drift by statistic and the alerts of a served model or a monitoring folder."""
    from kiln.cli.main import user_errors
    from kiln.errors import ConfigError

    with user_errors():
        if (url is None) == (log_dir is None):
            raise ConfigError("give exactly one of --url or --log-dir")
        if url is not None:
            base = url.rstrip("/")
            reports = _get_json(f"{base}/v1/monitor/reports", token)
            alerts = _get_json(f"{base}/v1/monitor/alerts", token)
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


def _get_json(url: str, token: str | None) -> Any:
    """GET a JSON body; an HTTP or network failure becomes a ``ConfigError`` saying which."""
    import urllib.error
    import urllib.request

    from kiln.errors import ConfigError

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as r:  # noqa: S310
            return json.loads(r.read())
    except urllib.error.HTTPError as exc:
        hint = " (pass --token or set KILN_TOKEN)" if exc.code == 401 else ""
        raise ConfigError(f"{url} answered HTTP {exc.code}{hint}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise ConfigError(f"cannot reach {url}: {getattr(exc, 'reason', exc)}") from None


def ui(
    log_dir: Annotated[Path | None, typer.Option(help="Monitoring folder to show")] = None,
    host: Annotated[str, typer.Option(help="Interface to bind; beyond loopback tokens are required")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8080,
    token_file: Annotated[Path | None, typer.Option(help="Bearer tokens, one per line")] = None,
    registry_tokens: Annotated[
        bool, typer.Option("--registry-tokens", help="Accept the registry's API tokens (any role)")
    ] = False,
) -> None:
    """Serve the dashboard alone: registry under KILN_HOME plus a monitoring folder.

    With tokens every page asks for one: open /ui/?token=TOKEN once in a browser (it becomes a
    cookie) or send Authorization: Bearer TOKEN.
    """
    import contextlib

    import uvicorn

    from kiln.cli.main import user_errors
    from kiln.monitor.ui.api import create_ui_app
    from kiln.registry.access import service_verifier

    with user_errors(), contextlib.ExitStack() as stack:
        store = None
        if registry_tokens:
            from kiln.registry import Registry

            store = stack.enter_context(Registry()).store
        verifier = service_verifier(token_file=token_file, registry_store=store, service="kiln ui", host=host)
        app = create_ui_app(log_dir=log_dir, host=host, verifier=verifier)
        uvicorn.run(app, host=host, port=port, log_level="warning")
