"""Manifest file names: only plain relative paths inside the package folder are read."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from kiln.errors import PackageError
from kiln.registry import Registry
from kiln.runtime import load
from kiln.runtime.package import (
    MANIFEST_NAME,
    finalize_package,
    read_manifest,
    sha256_file,
    staged_package,
    verify_files,
)

SECRET = b"a file beside the package that no manifest may reach"


def _package(dest: Path) -> Path:
    with staged_package(dest) as staging:
        (staging / "weights.bin").write_bytes(b"weights" * 100)
        (staging / "sub").mkdir()
        (staging / "sub" / "config.json").write_text("{}")
        finalize_package(staging, {"task": "text-classification", "format": "torch"})
    return dest


def _list_file(package: Path, name: str, target: Path) -> None:
    """Add ``name`` to the manifest with ``target``'s true hash, as a crafted manifest would."""
    manifest = json.loads((package / MANIFEST_NAME).read_text())
    manifest["files"][name] = sha256_file(target)
    (package / MANIFEST_NAME).write_text(json.dumps(manifest))


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    path = tmp_path / "secret.txt"
    path.write_bytes(SECRET)
    return path


def _escaping_names(secret: Path) -> list[str]:
    return ["../secret.txt", str(secret), "sub/../../secret.txt"]


@pytest.mark.parametrize("index", range(3), ids=["dot-dot", "absolute", "dot-dot inside"])
def test_read_manifest_refuses_names_that_leave_the_package(tmp_path: Path, secret: Path, index: int) -> None:
    package = _package(tmp_path / "pkg")
    name = _escaping_names(secret)[index]
    _list_file(package, name, secret)
    for verify in (True, False):
        with pytest.raises(PackageError, match=f"file name {name!r} refused"):
            read_manifest(package, verify=verify)


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("sub\\config.json", "backslash"),
        ("C:/weights.bin", "drive letter"),
        ("", "non-empty string"),
        ("sub//config.json", "empty, '.' or '..' part"),
        ("./weights.bin", "empty, '.' or '..' part"),
        ("weights.bin\x00", "control character"),
    ],
)
def test_verify_files_refuses_names_that_are_not_plain(tmp_path: Path, name: str, reason: str) -> None:
    package = _package(tmp_path / "pkg")
    manifest = read_manifest(package)
    manifest["files"][name] = manifest["files"]["weights.bin"]
    with pytest.raises(PackageError, match=reason):
        verify_files(package, manifest)


def test_a_symlink_out_of_the_package_is_refused(tmp_path: Path, secret: Path) -> None:
    package = _package(tmp_path / "pkg")
    os.symlink(secret, package / "linked.txt")
    _list_file(package, "linked.txt", secret)
    with pytest.raises(PackageError, match="'linked.txt' refused: it is a symlink that leads outside"):
        read_manifest(package)


def test_a_symlink_that_stays_inside_is_read(tmp_path: Path) -> None:
    package = _package(tmp_path / "pkg")
    os.symlink("sub/config.json", package / "alias.json")
    _list_file(package, "alias.json", package / "sub" / "config.json")
    assert "alias.json" in read_manifest(package)["files"]


def test_register_refuses_a_crafted_manifest_and_copies_nothing(tmp_path: Path, secret: Path) -> None:
    package = _package(tmp_path / "pkg")
    _list_file(package, "../secret.txt", secret)
    with Registry(home=tmp_path / "home", url=f"sqlite:///{tmp_path / 'r.db'}") as registry:
        with pytest.raises(PackageError, match="'../secret.txt' refused"):
            registry.register(package, name="m")
        with pytest.raises(PackageError, match="'../secret.txt' refused"):
            registry.artifacts.upload(package, "0" * 64)
        assert registry.list_models() == []
        assert registry.artifacts.list_digests() == set()
    stored = [p.read_bytes() for p in (tmp_path / "home").rglob("*") if p.is_file()]
    assert SECRET not in stored


@pytest.mark.parametrize(
    ("field", "name"),
    [(("preprocessing", "tokenizer_file"), "../secret.txt"), (("architecture", "weights"), "/etc/hostname")],
)
def test_load_refuses_a_manifest_field_naming_a_file_outside_the_package(
    text_package: Path, field: tuple[str, str], name: str
) -> None:
    manifest = json.loads((text_package / MANIFEST_NAME).read_text())
    manifest[field[0]][field[1]] = name
    (text_package / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(PackageError, match=f"names {name!r}, which is not one of the package's files"):
        load(text_package, device="cpu")
