"""Runs every command and snippet of README.md (except the two `make` commands, which are the
suite itself and the demo) the way a reader would, from an empty folder."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kiln.config import parse_recipe
from tests.helpers import ROOT

pytestmark = pytest.mark.slow

BLOCK = re.compile(r"```(sh|python|yaml)\n(.*?)```", re.S)


def readme_blocks() -> list[tuple[str, str]]:
    blocks = BLOCK.findall((ROOT / "README.md").read_text())
    return [(kind, body) for kind, body in blocks if not body.startswith("make demo")]


def test_readme_commands_and_snippets_run(tmp_path: Path) -> None:
    (tmp_path / "recipes").symlink_to(ROOT / "recipes")
    env = {k: v for k, v in os.environ.items() if k != "KILN_HOME"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    blocks = readme_blocks()
    assert len(blocks) >= 5
    for kind, body in blocks:
        if kind == "yaml":
            # Recipe fragments: they must validate when merged into a shipped recipe.
            fragment = yaml.safe_load(body)
            recipe = yaml.safe_load((ROOT / "recipes" / "sentiment.yaml").read_text()) | fragment
            parse_recipe(recipe, source="README.md")
            continue
        if kind == "python":
            result = subprocess.run([sys.executable, "-c", body], cwd=tmp_path, env=env, capture_output=True, text=True)
            assert result.returncode == 0, f"snippet failed:\n{body}\n{result.stderr}"
            continue
        for line in body.strip().splitlines():
            args = shlex.split(line)
            assert args[0] == "kiln", line
            result = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
            assert result.returncode == 0, f"{line}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
            if args[1] == "predict" and args[2].startswith("gpt-pretrain"):
                assert result.stdout.strip(), line  # the generated text, streamed
            elif args[1] == "predict":
                lines = result.stdout.strip().splitlines()
                assert len(lines) == 2 and all('"label": ' in x for x in lines)
            if args[1] == "eval":
                assert "accuracy" in result.stdout
    assert (tmp_path / ".kiln" / "runs" / "digits" / "package" / "kiln.json").is_file()
    assert (tmp_path / ".kiln" / "runs" / "ddp" / "package" / "kiln.json").is_file()
    assert list((tmp_path / ".kiln" / "runs" / "gpt").glob("train-*/package/kiln.json"))
    assert (tmp_path / ".kiln" / "evals" / "digits" / "confusion_matrix.png").is_file()
    assert (tmp_path / ".kiln" / "evals" / "production" / "report.json").is_file()
