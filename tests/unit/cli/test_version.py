"""``kiln --version``: one version, the same in the package, its metadata and every manifest."""

import tomllib
from pathlib import Path

import kiln
from kiln.runtime.package import read_manifest
from tests.helpers import ROOT, kiln_cli


def test_version_flag_prints_kiln_version() -> None:
    result = kiln_cli("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"kiln {kiln.__version__}\n"


def test_version_in_pyproject_is_kiln_version() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert project["version"] == kiln.__version__


def test_version_recorded_in_package_manifest(text_package: Path) -> None:
    assert read_manifest(text_package)["kiln_version"] == kiln.__version__
