"""Every ``sh`` block of docs/serving.md, run as written.

The page's first block starts the server; the test runs it with two documented substitutions:
the package folder ``./sentiment`` becomes a real text package and the port ``8000`` a free
port. Every other block is a ``curl`` command, run by bash, whose output is checked.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import make_text_package

PAGE = Path(__file__).resolve().parents[2] / "docs" / "serving.md"
DOC_PACKAGE = "./sentiment"
DOC_PORT = "8000"


def sh_blocks(page: Path) -> list[str]:
    """The page's fenced ``sh`` blocks, with backslash-continued lines joined."""
    blocks = re.findall(r"^```sh\n(.*?)^```", page.read_text(), flags=re.S | re.M)
    return [block.replace("\\\n", " ").strip() for block in blocks]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def doc_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, list[str]]]:
    """Start the server with the page's first block; yield the port and the remaining blocks."""
    serve, *curls = sh_blocks(PAGE)
    assert serve.startswith("kiln serve ") and DOC_PACKAGE in serve and DOC_PORT in serve, serve
    package = make_text_package(tmp_path_factory.mktemp("docs") / "sentiment")
    port = str(free_port())
    argv = shlex.split(serve.replace(DOC_PACKAGE, str(package)).replace(DOC_PORT, port))
    src = str(Path(__file__).resolve().parents[2] / "src")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]))
    server = subprocess.Popen(
        [sys.executable, "-m", "kiln.cli.main", *argv[1:]],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_ready(f"http://127.0.0.1:{port}", server)
        yield port, [c.replace(DOC_PORT, port) for c in curls]
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def wait_ready(url: str, server: subprocess.Popen[str], timeout_s: float = 60.0) -> None:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if server.poll() is not None:
            raise AssertionError(f"kiln serve exited: {server.stderr.read() if server.stderr else ''}")
        try:
            if httpx.get(url + "/v2/health/ready", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError("kiln serve did not become ready")


def run_block(command: str) -> str:
    assert command.startswith("curl "), command
    done = subprocess.run(["bash", "-c", "set -o pipefail; " + command], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, (command, done.stdout, done.stderr)
    return done.stdout


def test_docs_serving_page_has_the_documented_commands() -> None:
    blocks = sh_blocks(PAGE)
    assert blocks[0].startswith("kiln serve --model")
    urls = [re.search(r"http://\S+", b).group(0) for b in blocks[1:]]  # type: ignore[union-attr]
    assert [u.split(DOC_PORT, 1)[1] for u in urls] == [
        "/v2/health/ready",
        "/v1/models/sentiment:predict",
        "/v1/models/sentiment:predict",
        "/v2/models/sentiment/infer",
        "/metrics",
    ]


def test_docs_serving_curl_examples_answer_as_documented(doc_server: tuple[str, list[str]]) -> None:
    _, (ready, predict, bad, infer, metrics) = doc_server

    assert json.loads(run_block(ready)) == {"ready": True}

    body = json.loads(run_block(predict))
    assert body["model"] == "sentiment" and body["version"] == 1
    assert [o["label"] in ("neg", "pos") for o in body["outputs"]] == [True, True]
    assert all(set(o["scores"]) == {"neg", "pos"} and o["truncated"] is False for o in body["outputs"])

    assert json.loads(run_block(bad))["error"].startswith("inputs:")

    out = json.loads(run_block(infer))
    assert out["model_name"] == "sentiment" and out["id"] == "1"
    label, scores = out["outputs"]
    assert label["name"] == "label" and label["shape"] == [2] and set(label["data"]) <= {"neg", "pos"}
    assert scores["name"] == "scores" and scores["shape"] == [2, 2]

    lines = run_block(metrics).splitlines()
    assert 'kiln_requests_total{model="sentiment",status="200",version="1"} 2.0' in lines, lines
