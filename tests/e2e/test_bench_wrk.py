"""bench/serve.py without wrk: it says how to get it and falls back to httpx, or stops when wrk
was asked for. A stand-in ``wrk`` (a shell script) marks it installed; none is run."""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.helpers import ROOT

BENCH_SERVE = ROOT / "bench" / "serve.py"


def _bench_serve() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_serve", BENCH_SERVE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_serve_client_wrk_without_wrk_stops_with_how_to_install(tmp_path: Path) -> None:
    (tmp_path / "bin").mkdir()
    done = subprocess.run([sys.executable, str(BENCH_SERVE), "--client", "wrk"], cwd=tmp_path,
                          env={**os.environ, "PATH": str(tmp_path / "bin")}, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2
    assert "--client wrk: wrk is not installed (Debian/Ubuntu: `apt-get install wrk`" in done.stderr
    assert "--client httpx" in done.stderr


@pytest.mark.parametrize(
    ("has_wrk", "requested", "expected", "says_install"),
    [(False, None, "httpx", True), (False, "httpx", "httpx", False), (True, None, "wrk", False),
     (True, "httpx", "httpx", False)],
)
def test_bench_serve_closed_loop_client_falls_back_to_httpx_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    has_wrk: bool, requested: str | None, expected: str, says_install: bool,
) -> None:
    (tmp_path / "bin").mkdir()
    if has_wrk:
        (tmp_path / "bin" / "wrk").write_text("#!/bin/sh\nexit 0\n")
        (tmp_path / "bin" / "wrk").chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    client = _bench_serve().closed_loop_client(requested, argparse.ArgumentParser())
    assert client == expected
    assert ("apt-get install wrk" in capsys.readouterr().err) is says_install
