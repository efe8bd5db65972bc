"""SmolLM2 converted once per test session from its installed GGUF file, into a temporary folder.

The conversion runs the way the ranks of a torchrun job ask for it: two processes ask for the model
while the fixture holds the conversion lock, so both are certainly waiting when it is released.
``tests/integration/test_pretrained_lm.py`` checks what that did; the chat recipe's end-to-end test
points ``KILN_MODELS_HOME`` at the same folder, so a fresh environment converts the model once.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from kiln.runtime.pretrained_lm import MODELS_ENV

NAME = "smollm2-135m"

ASK = """
import logging, sys
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s: %(message)s")
from kiln.runtime.pretrained_lm import pretrained_lm_folder
print(pretrained_lm_folder(sys.argv[1]))
"""


@dataclass(frozen=True)
class Conversion:
    home: Path
    folder: Path
    runs: list[subprocess.CompletedProcess[str]]


def _wait_for(proc: subprocess.Popen[str], text: str) -> list[str]:
    assert proc.stderr is not None
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if text in line:
            return lines
    raise AssertionError(f"the process ended without logging {text!r}:\n{''.join(lines)}")


@pytest.fixture(scope="session")
def smollm2_conversion(tmp_path_factory: pytest.TempPathFactory) -> Conversion:
    home = tmp_path_factory.mktemp("models")
    (home / f".{NAME}.x1y2.partial").mkdir()  # left by a conversion that died
    env = {**os.environ, MODELS_ENV: str(home)}
    procs: list[subprocess.Popen[str]] = []
    try:
        with (home / f".{NAME}.lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            for _ in range(2):
                procs.append(
                    subprocess.Popen(
                        [sys.executable, "-c", ASK, NAME],
                        env=env,
                        text=True,
                        stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE,
                    )
                )
            early = [_wait_for(proc, "waiting for another process converting") for proc in procs]
        # Read both at once: the one waiting on the lock must not hold up the converter's pipes.
        with ThreadPoolExecutor(len(procs)) as pool:
            outputs = list(pool.map(lambda proc: proc.communicate(timeout=540), procs))
        runs = [
            subprocess.CompletedProcess(proc.args, proc.returncode, stdout, "".join(before) + stderr)
            for proc, before, (stdout, stderr) in zip(procs, early, outputs, strict=True)
        ]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    return Conversion(home=home, folder=home / NAME, runs=runs)
