"""The layer contracts in pyproject.toml hold for Kiln's code, and a forbidden import breaks them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

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


def test_layers_contracts_refuse_serve_importing_train(tmp_path: Path) -> None:
    root = _copy_tree(tmp_path)
    models = root / "src" / "kiln" / "serve" / "models.py"
    models.write_text(models.read_text(encoding="utf-8") + "\nfrom kiln.train import run_dir_for\n", encoding="utf-8")
    result = _lint_imports(root)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "serve never imports train or compress BROKEN" in result.stdout
    assert "kiln.serve.models -> kiln.train" in result.stdout


def test_layers_contracts_refuse_runtime_importing_a_stage(tmp_path: Path) -> None:
    root = _copy_tree(tmp_path)
    package = root / "src" / "kiln" / "runtime" / "package.py"
    package.write_text(package.read_text(encoding="utf-8") + "\nimport kiln.evaluate.speed\n", encoding="utf-8")
    result = _lint_imports(root)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "kiln.runtime is not allowed to import kiln.evaluate" in result.stdout
