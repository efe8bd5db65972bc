"""Hot reload under load with zero failed requests, and graceful shutdown on SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from kiln.registry.access import token_verifier
from kiln.serve.config import ModelConfig, ServeConfig
from tests.conftest import make_text_package
from tests.integration.serve_harness import serving, wait_until

SRC = Path(__file__).resolve().parents[2] / "src"


@pytest.fixture(scope="module")
def packages(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("reload")
    return (
        make_text_package(root / "sentiment"),
        make_text_package(root / "sentiment-new", labels=("bad", "good")),
    )


def test_serve_hot_reload_under_load_fails_no_request(packages: tuple[Path, Path]) -> None:
    old, new = packages
    cfg = ServeConfig(models=[ModelConfig(name="sentiment", versions={1: str(old)})])
    auth = {"Authorization": "Bearer admin"}
    with serving(cfg, verifier=token_verifier(["admin"])) as srv:
        stop = threading.Event()
        statuses: Counter[int] = Counter()
        answers: Counter[tuple[int, str]] = Counter()
        lock = threading.Lock()

        def hammer() -> None:
            with httpx.Client(base_url=srv.url, timeout=30) as client:
                while not stop.is_set():
                    resp = client.post("/v1/models/sentiment:predict", json={"inputs": ["so good"]})
                    with lock:
                        statuses[resp.status_code] += 1
                        if resp.status_code == 200:
                            body = resp.json()
                            labels = ",".join(sorted(body["outputs"][0]["scores"]))
                            answers[(body["version"], labels)] += 1

        def served() -> int:
            with lock:
                return sum(statuses.values())

        with ThreadPoolExecutor(4) as pool:
            clients = [pool.submit(hammer) for _ in range(4)]
            wait_until(lambda: served() >= 20, what="traffic on version 1")
            # Replace version 1 in place, then add version 2, while requests keep flowing.
            replaced = srv.post(
                "/v1/admin/models/sentiment:load", {"source": str(new), "version": 1}, headers=auth
            )
            assert replaced.status_code == 200, replaced.text
            mark = served()
            wait_until(lambda: served() >= mark + 20, what="traffic after the switch")
            added = srv.post(
                "/v1/admin/models/sentiment:load", {"source": str(old), "version": 2}, headers=auth
            )
            assert added.json()["versions"] == [1, 2]
            broken = srv.post(
                "/v1/admin/models/sentiment:load",
                {"source": str(old.parent / "missing"), "version": 3},
                headers=auth,
            )
            assert broken.status_code == 400 and "keep serving" in broken.json()["error"]
            mark = served()
            wait_until(lambda: served() >= mark + 20, what="traffic on version 2")
            unloaded = httpx.delete(srv.url + "/v1/admin/models/sentiment/versions/1", headers=auth)
            assert unloaded.json()["versions"] == [2]
            mark = served()
            wait_until(lambda: served() >= mark + 20, what="traffic after unload")
            stop.set()
            for client in clients:
                client.result()
        assert set(statuses) == {200}, statuses
        assert {key for key in answers} == {(1, "neg,pos"), (1, "bad,good"), (2, "neg,pos")}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_serve_sigterm_finishes_in_flight_requests_and_exits(
    packages: tuple[Path, Path], tmp_path: Path
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = dict(os.environ, PYTHONPATH=str(SRC), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    # The grace period must outlast the in-flight requests even on a busy shared machine.
    serve_yaml = tmp_path / "serve.yaml"
    serve_yaml.write_text("grace_period_s: 120\n")
    log = open(tmp_path / "server.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kiln.cli.main",
            "serve",
            "--model",
            str(packages[0]),
            "--port",
            str(port),
            "--config",
            str(serve_yaml),
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:

        def is_ready() -> bool:
            try:
                return httpx.get(url + "/v2/health/ready", timeout=5).status_code == 200
            except httpx.TransportError:
                assert proc.poll() is None, (tmp_path / "server.log").read_text()
                return False

        wait_until(is_ready, what="server ready", timeout_s=120)
        texts = ["a long and winding review of a film " * 4] * 1000

        def slow_request() -> Any:
            return httpx.post(
                url + "/v1/models/sentiment:predict",
                json={"inputs": texts},
                # A busy shared machine can take longer than the default deadline.
                headers={"X-Request-Timeout-Ms": "110000"},
                timeout=120,
            )

        def in_flight() -> float:
            for line in httpx.get(url + "/metrics", timeout=5).text.splitlines():
                if line.startswith("kiln_requests_in_flight "):
                    return float(line.split()[1])
            return 0.0

        with ThreadPoolExecutor(4) as pool:
            requests = [pool.submit(slow_request) for _ in range(4)]
            wait_until(lambda: in_flight() >= 2, what="requests in flight")
            proc.send_signal(signal.SIGTERM)
            responses = [r.result() for r in requests]
        assert [r.status_code for r in responses] == [200] * 4, [r.text[:300] for r in responses]
        assert all(len(r.json()["outputs"]) == 1000 for r in responses)
        # uvicorn re-raises the signal once drained, so the exit reads as "ended by SIGTERM".
        assert proc.wait(timeout=60) in (0, -signal.SIGTERM)
        log.flush()
        assert "Application shutdown complete" in (tmp_path / "server.log").read_text()
        with pytest.raises(httpx.ConnectError):
            httpx.get(url + "/v2/health/live", timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
