"""Package archives: generated in chunks, unpacked within limits, and refused cleanly past them."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kiln.cli.main import app
from kiln.errors import ConfigError
from kiln.registry.archives import (
    ArchiveLimits,
    ArchiveTooLargeError,
    iter_package_archive,
    unpack_archive,
)


def _folder(root: Path) -> Path:
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "kiln.json").write_text("{}")
    (root / "weights.bin").write_bytes(os.urandom(3 * 1024 * 1024 + 7))  # over one chunk, unaligned
    (root / "sub" / "deeper" / "table.csv").write_text("a,b\n1,2\n")
    return root


def _contents(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_generated_archive_unpacks_to_the_same_files(tmp_path: Path) -> None:
    source = _folder(tmp_path / "source")
    archive = tmp_path / "package.tar.gz"
    chunks = list(iter_package_archive(source))
    archive.write_bytes(b"".join(chunks))
    assert max(len(c) for c in chunks) < 2 * 1024 * 1024
    with tarfile.open(archive, "r:gz") as tar:
        assert {".", "./kiln.json", "./sub/deeper/table.csv"} <= set(tar.getnames())
    unpack_archive(archive, tmp_path / "unpacked", ArchiveLimits())
    assert _contents(tmp_path / "unpacked") == _contents(source)


def test_a_symlink_in_the_folder_is_left_out_of_the_archive(tmp_path: Path) -> None:
    source = _folder(tmp_path / "source")
    os.symlink("/etc/hostname", source / "link")
    with tarfile.open(fileobj=io.BytesIO(b"".join(iter_package_archive(source))), mode="r:gz") as tar:
        assert "./link" not in tar.getnames()


@pytest.mark.parametrize(
    ("limits", "message"),
    [
        (ArchiveLimits(max_unpacked_bytes=1024 * 1024), "unpacks to more than the limit of 1048576 bytes"),
        (ArchiveLimits(max_archive_entries=3), "holds more than 3 entries"),
    ],
)
def test_unpacking_stops_at_the_limits(tmp_path: Path, limits: ArchiveLimits, message: str) -> None:
    archive = tmp_path / "package.tar.gz"
    archive.write_bytes(b"".join(iter_package_archive(_folder(tmp_path / "source"))))
    with pytest.raises(ArchiveTooLargeError, match=message):
        unpack_archive(archive, tmp_path / "unpacked", limits)
    assert not (tmp_path / "unpacked" / "weights.bin").exists()


@pytest.mark.parametrize("field", ["max_upload_bytes", "max_unpacked_bytes", "max_archive_entries"])
def test_archive_limits_must_be_positive(field: str) -> None:
    with pytest.raises(ConfigError, match=f"{field} must be >= 1, got 0"):
        ArchiveLimits(**{field: 0})


def test_registry_serve_refuses_a_zero_limit() -> None:
    result = CliRunner().invoke(app, ["registry", "serve", "--max-upload-bytes", "0"])
    assert result.exit_code == 2
    assert "max_upload_bytes must be >= 1, got 0" in result.output
