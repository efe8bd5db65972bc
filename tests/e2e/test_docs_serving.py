"""Every ``sh`` block of docs/serving.md, run as written.

The page's first block starts the server; the test runs it with two documented substitutions:
the package folder ``./sentiment`` becomes a real text package and the port ``8000`` a free
port. Every other block is a ``curl`` command, run by bash, whose output is checked. The
"Tokens and roles" section is run on its own: its ``kiln`` commands (with the same
substitutions) against this test's registry, then its ``curl`` commands with ``$TOKEN`` set to
the token its ``kiln registry user token`` printed.
"""

from __future__ import annotations

import contextlib
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
SRC = Path(__file__).resolve().parents[2] / "src"
DOC_PACKAGE = "./sentiment"
DOC_PORT = "8000"
TOKENS = "Tokens and roles"


def sections(page: Path) -> dict[str, str]:
    """The page's text by ``##`` heading (the part before the first one under "")."""
    parts = re.split(r"^## (.+)$", page.read_text(), flags=re.M)
    return {"": parts[0], **dict(zip(parts[1::2], parts[2::2], strict=True))}


def blocks_in(text: str) -> list[str]:
    """The fenced ``sh`` blocks of a text, with backslash-continued lines joined."""
    blocks = re.findall(r"^```sh\n(.*?)^```", text, flags=re.S | re.M)
    return [block.replace("\\\n", " ").strip() for block in blocks]


def sh_blocks(page: Path) -> list[str]:
    """The page's ``sh`` blocks outside the tokens section."""
    return [b for title, text in sections(page).items() if title != TOKENS for b in blocks_in(text)]


def kiln_argv(block: str, package: Path, port: str) -> list[str]:
    """A ``kiln`` block as a command run by this interpreter, with the documented substitutions."""
    argv = shlex.split(block.replace(DOC_PACKAGE, str(package)).replace(DOC_PORT, port))
    assert argv[0] == "kiln", block
    return [sys.executable, "-m", "kiln.cli.main", *argv[1:]]


def kiln_env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]))


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
    with running(kiln_argv(serve, package, port), port):
        yield port, [c.replace(DOC_PORT, port) for c in curls]


@contextlib.contextmanager
def running(argv: list[str], port: str) -> Iterator[None]:
    """Run a ``kiln serve`` command until it is ready; stop it with SIGTERM on exit."""
    server = subprocess.Popen(argv, env=kiln_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_ready(f"http://127.0.0.1:{port}", server)
        yield
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


def run_block(command: str, env: dict[str, str] | None = None) -> str:
    assert command.startswith("curl "), command
    done = subprocess.run(
        ["bash", "-c", "set -o pipefail; " + command], capture_output=True, text=True, timeout=30, env=env
    )
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


def test_docs_serving_token_examples_run_as_documented(tmp_path: Path) -> None:
    text = sections(PAGE)[TOKENS]
    refused, add_user, issue_token, serve, anonymous, authed = blocks_in(text)
    package = make_text_package(tmp_path / "sentiment")
    port = str(free_port())

    done = subprocess.run(kiln_argv(refused, package, port), env=kiln_env(), capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.strip() in text, done.stderr

    assert add_user.startswith("kiln registry user add") and issue_token.startswith("kiln registry user token")
    for block in (add_user, issue_token):
        done = subprocess.run(kiln_argv(block, package, port), env=kiln_env(), capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    token = done.stdout.strip()

    assert "--host 0.0.0.0" in serve and "--registry-tokens" in serve
    with running(kiln_argv(serve, package, port), port):
        assert run_block(anonymous.replace(DOC_PORT, port)).strip() == "401"
        listed = json.loads(run_block(authed.replace(DOC_PORT, port), env=dict(os.environ, TOKEN=token)))
    [entry] = listed["data"]
    assert listed["object"] == "list"
    assert {k: entry[k] for k in ("id", "object", "task", "versions", "canary")} == {
        "id": "sentiment", "object": "model", "task": "text-classification", "versions": [1], "canary": {}
    }
