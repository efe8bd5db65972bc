"""Every Kiln HTTP service bound beyond loopback: started with the real CLI on 0.0.0.0.

Without tokens each command refuses to start (exit status 2, saying how to create a token);
with the registry's API tokens every route but the health probe answers 401 without one and
200 with one. The tests connect through 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from kiln.registry import Role
from tests.helpers import ROOT, api_token, free_port, kiln_argv


def env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1")


def reader_token() -> str:
    """A reader's API token in this test's registry (KILN_HOME)."""
    return api_token("viewer", Role.READER)


@contextlib.contextmanager
def started(argv: list[str], health: str, tmp_path: Path) -> Iterator[str]:
    """Run a service command until its health path answers; stop it on exit."""
    log = open(tmp_path / "service.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(argv, env=env(), stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{argv[argv.index('--port') + 1]}"
    try:
        end = time.monotonic() + 120  # a hang guard on a busy machine, not a timing assertion
        while True:
            assert proc.poll() is None, (tmp_path / "service.log").read_text()
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(url + health, timeout=2).status_code == 200:
                    break
            assert time.monotonic() < end, "service did not start"
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.mark.parametrize(
    ("command", "options"),
    [
        ("serve", ["serve", "--model", "PACKAGE"]),
        ("ui", ["ui"]),
        ("registry", ["registry", "serve"]),
    ],
)
def test_public_bind_without_tokens_refuses_to_start(command: str, options: list[str], text_package: Path) -> None:
    argv = kiln_argv(
        *(str(text_package) if o == "PACKAGE" else o for o in options),
        "--host",
        "0.0.0.0",
        "--port",
        str(free_port("0.0.0.0")),
    )
    done = subprocess.run(argv, env=env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "bound to 0.0.0.0 (not loopback) needs bearer tokens" in done.stderr
    assert "kiln registry user add NAME --role reader" in done.stderr
    assert "kiln registry user token NAME" in done.stderr


def test_public_bind_of_the_registry_refuses_open_reads() -> None:
    reader_token()
    argv = kiln_argv("registry", "serve", "--host", "0.0.0.0", "--port", str(free_port("0.0.0.0")), "--open-reads")
    done = subprocess.run(argv, env=env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "--open-reads is allowed only on a loopback bind" in done.stderr


def test_public_bind_of_the_registry_with_tokens_guards_every_route(tmp_path: Path) -> None:
    token = reader_token()
    argv = kiln_argv("registry", "serve", "--host", "0.0.0.0", "--port", str(free_port("0.0.0.0")))
    with started(argv, "/health", tmp_path) as url:
        for path in ("/models", "/docs", "/openapi.json"):
            assert httpx.get(url + path).status_code == 401, path
        authed = httpx.get(url + "/models", headers={"Authorization": f"Bearer {token}"})
        wrong = httpx.get(url + "/models", headers={"Authorization": "Bearer kiln_0_nope"})
    assert authed.status_code == 200 and authed.json() == []
    assert wrong.status_code == 401


def test_public_bind_of_serve_with_tokens_guards_every_route(text_package: Path, tmp_path: Path) -> None:
    token = reader_token()
    serve_yaml = tmp_path / "serve.yaml"
    serve_yaml.write_text(f"monitor: {{enabled: true, log_dir: {tmp_path / 'log'}}}\n")
    argv = kiln_argv(
        "serve",
        "--model",
        str(text_package),
        "--host",
        "0.0.0.0",
        "--port",
        str(free_port("0.0.0.0")),
        "--registry-tokens",
        "--config",
        str(serve_yaml),
    )
    with started(argv, "/v2/health/ready", tmp_path) as url:
        assert httpx.get(url + "/v2/health/live").status_code == 200
        for path in ("/v1/models", "/metrics", "/docs", "/ui/", "/ui/api/overview", "/v2", "/v1/monitor/reports"):
            assert httpx.get(url + path).status_code == 401, path
        authed = httpx.get(url + "/v1/models", headers={"Authorization": f"Bearer {token}"})
        anonymous = subprocess.run(kiln_argv("monitor", "--url", url), env=env(), capture_output=True, text=True)
        monitored = subprocess.run(
            kiln_argv("monitor", "--url", url), env=env() | {"KILN_TOKEN": token}, capture_output=True, text=True
        )
    assert authed.status_code == 200 and [m["id"] for m in authed.json()["data"]] == [text_package.name]
    assert anonymous.returncode == 2 and "answered HTTP 401 (pass --token or set KILN_TOKEN)" in anonymous.stderr
    assert monitored.returncode == 0 and "active alerts: none" in monitored.stdout, monitored.stderr


def test_public_bind_of_the_dashboard_with_tokens_guards_every_route(tmp_path: Path) -> None:
    token = reader_token()
    argv = kiln_argv("ui", "--host", "0.0.0.0", "--port", str(free_port("0.0.0.0")), "--registry-tokens")
    with started(argv, "/health", tmp_path) as url:
        for path in ("/ui/", "/ui/static/app.js", "/ui/api/lineage", "/ui/api/runs", "/ui/api/alerts"):
            assert httpx.get(url + path).status_code == 401, path
        authed = httpx.get(url + "/ui/api/lineage", headers={"Authorization": f"Bearer {token}"})
        assert authed.status_code == 200
        # A browser opens the page once with ?token=...: it becomes a cookie for /ui only.
        with httpx.Client(base_url=url, follow_redirects=True) as browser:
            bad = browser.get("/ui/?token=kiln_0_nope")
            opened = browser.get(f"/ui/?token={token}")
            page = browser.get("/ui/api/overview")
            write = browser.post("/ui/api/overview")
    assert bad.status_code == 401
    assert opened.status_code == 200 and opened.url.path == "/ui/" and "token" not in str(opened.url)
    assert "httponly" in opened.history[0].headers["set-cookie"].lower()
    assert page.status_code == 200
    assert write.status_code == 401, "the cookie never authorizes anything but reading the dashboard"
