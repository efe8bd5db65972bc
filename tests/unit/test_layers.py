"""The layer contracts in pyproject.toml hold for Kiln's code, and a forbidden import breaks them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT

LINT_IMPORTS = str(Path(sys.executable).parent / "lint-imports")


def _lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """Run lint-imports on the tree at ``root`` (its pyproject.toml and src/kiln)."""
    env = {**os.environ, "PYTHONPATH": str(root / "src")}
    return subprocess.run(
        [LINT_IMPORTS, "--no-cache"], cwd=root, env=env, capture_output=True, text=True, timeout=120
    )


def _copy_tree(dest: Path) -> Path:
    shutil.copy(ROOT / "pyproject.toml", dest / "pyproject.toml")
    shutil.copytree(ROOT / "src" / "kiln", dest / "src" / "kiln", ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def test_layers_contracts_are_kept() -> None:
    result = _lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "forbidden_import", "expected"),
    [
        (
            "serve/models.py",
            "from kiln.train import run_dir_for",
            ["serve never imports train or compress BROKEN", "kiln.serve.models -> kiln.train"],
        ),
        ("runtime/package.py", "import kiln.evaluate.speed", ["kiln.runtime is not allowed to import kiln.evaluate"]),
    ],
    ids=["serve-importing-train", "runtime-importing-a-stage"],
)
def test_layers_contracts_refuse_a_forbidden_import(
    tmp_path: Path, module: str, forbidden_import: str, expected: list[str]
) -> None:
    root = _copy_tree(tmp_path)
    source = root / "src" / "kiln" / module
    source.write_text(source.read_text(encoding="utf-8") + f"\n{forbidden_import}\n", encoding="utf-8")
    result = _lint_imports(root)
    assert result.returncode == 1, result.stdout + result.stderr
    for line in expected:
        assert line in result.stdout
