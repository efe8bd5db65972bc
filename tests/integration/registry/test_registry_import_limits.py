"""`kiln registry import` of crafted export archives: the upload limits and entry checks hold, through
the CLI and the Python API, and a refusal registers nothing and leaves no temporary folder.

Each crafted archive starts with a real export (its index and a package), so that without the
checks the import would register a version.
"""

from __future__ import annotations

import gzip
import io
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

from kiln.registry import Registry
from kiln.registry.archives import ArchiveLimits, ArchiveTooLargeError, BadArchiveError
from kiln.registry.transfer import export_models, import_models
from tests.helpers import kiln_cli
from tests.integration.registry.archive_bombs import MIB, end_blocks, zeros_member


def _export_folder(tmp_path: Path, make_package: Callable[..., Path]) -> tuple[Path, str]:
    """A real one-version export of model ``m`` in a folder; returns it and the package's digest."""
    with Registry(f"sqlite:///{tmp_path / 'source.db'}", home=tmp_path / "source") as source:
        digest = source.register(make_package(), name="m").package_digest
        export_models(source, ["m"], tmp_path / "export")
    return tmp_path / "export", digest


def _tar_entries(folder: Path, *extra: tuple[tarfile.TarInfo, bytes]) -> bytes:
    """The uncompressed tar entries of ``folder`` (as ``./...``) and ``extra``, without the end blocks."""
    buffer = io.BytesIO()
    tar = tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT)  # noqa: SIM115 (end blocks left off)
    tar.add(folder, arcname=".")
    for info, data in extra:
        tar.addfile(info, io.BytesIO(data))
    entries = buffer.getvalue()
    tar.close()
    return entries


def _bomb(export: Path, digest: str) -> bytes:
    """A real export followed by a 1 GiB file of zeros inside its package folder: about 1 MiB."""
    return gzip.compress(_tar_entries(export)) + zeros_member(f"./packages/{digest}/pad.bin", 1024) + end_blocks()


def _with_member(export: Path, info: tarfile.TarInfo, data: bytes = b"") -> bytes:
    return gzip.compress(_tar_entries(export, (info, data))) + end_blocks()


def _link(digest: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(f"./packages/{digest}/copy.json")
    info.type, info.linkname = tarfile.SYMTYPE, "kiln.json"  # inside the package, still refused
    return info


def _dot_dot() -> tarfile.TarInfo:
    info = tarfile.TarInfo("./packages/../../escaped.bin")
    info.size = 4
    return info


def _assert_nothing_left(tmp: Path) -> None:
    with Registry() as target:
        assert target.list_models() == []
        assert target.artifacts.list_digests() == set()
    assert list(tmp.iterdir()) == []


@pytest.fixture
def tmp(tmp_path: Path) -> Path:
    """The temporary folder the import runs with (TMPDIR), to see that it is left empty."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    return folder


def test_cli_registry_import_refuses_a_decompression_bomb(
    tmp_path: Path, tmp: Path, kiln_home: Path, make_package: Callable[..., Path]
) -> None:
    archive = tmp_path / "bomb.tar.gz"
    archive.write_bytes(_bomb(*_export_folder(tmp_path, make_package)))
    assert archive.stat().st_size < 2 * MIB
    result = kiln_cli(
        "registry", "import", str(archive), "--max-unpacked-bytes", str(64 * MIB), env={"TMPDIR": str(tmp)}
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"error: {archive}: archive unpacks to more than the limit of {64 * MIB} bytes")
    assert "Traceback" not in result.stderr
    _assert_nothing_left(tmp)


@pytest.mark.parametrize(
    ("member", "message"),
    [
        (_link, "copy.json' is not a plain file or folder (links and devices are refused)"),
        (lambda digest: _dot_dot(), "'./packages/../../escaped.bin' lies outside the folder it unpacks to"),
    ],
    ids=["link", "dot-dot"],
)
def test_cli_registry_import_refuses_links_and_entries_outside(
    tmp_path: Path,
    tmp: Path,
    kiln_home: Path,
    make_package: Callable[..., Path],
    member: Callable[[str], tarfile.TarInfo],
    message: str,
) -> None:
    export, digest = _export_folder(tmp_path, make_package)
    archive = tmp_path / "crafted.tar.gz"
    archive.write_bytes(_with_member(export, member(digest), b"evil"))
    result = kiln_cli("registry", "import", str(archive), env={"TMPDIR": str(tmp)})
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"error: {archive}: archive entry ")
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    _assert_nothing_left(tmp)
    assert not (tmp_path / "escaped.bin").exists()


def test_cli_registry_import_takes_the_limits_within_which_an_export_fits(
    tmp_path: Path, tmp: Path, kiln_home: Path, make_package: Callable[..., Path]
) -> None:
    export, _ = _export_folder(tmp_path, make_package)
    archive = tmp_path / "m.tar.gz"
    archive.write_bytes(gzip.compress(_tar_entries(export)) + end_blocks())
    limits = ["--max-upload-bytes", str(MIB), "--max-unpacked-bytes", str(MIB), "--max-archive-entries", "20"]
    result = kiln_cli("registry", "import", str(archive), *limits, env={"TMPDIR": str(tmp)})
    assert result.returncode == 0, result.stderr
    assert result.stdout == "m@1\n"
    assert list(tmp.iterdir()) == []


def test_cli_registry_import_refuses_a_zero_limit(tmp_path: Path, kiln_home: Path) -> None:
    result = kiln_cli("registry", "import", str(tmp_path / "m.tar.gz"), "--max-archive-entries", "0")
    assert result.returncode == 2
    assert result.stderr.startswith("error: max_archive_entries must be >= 1, got 0")


@pytest.mark.parametrize(
    ("limits", "message"),
    [
        (ArchiveLimits(max_upload_bytes=1024), r"archive of \d+ bytes is larger than the limit of 1024 bytes"),
        (ArchiveLimits(max_unpacked_bytes=64 * MIB), f"archive unpacks to more than the limit of {64 * MIB} bytes"),
        (ArchiveLimits(max_archive_entries=5), "archive holds more than 5 entries"),
    ],
    ids=["archive file", "unpacked", "entries"],
)
def test_import_models_refuses_an_archive_past_a_limit(
    tmp_path: Path,
    tmp: Path,
    kiln_home: Path,
    make_package: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
    limits: ArchiveLimits,
    message: str,
) -> None:
    archive = tmp_path / "bomb.tar.gz"
    archive.write_bytes(_bomb(*_export_folder(tmp_path, make_package)))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    with Registry() as target, pytest.raises(ArchiveTooLargeError, match=message):
        import_models(target, archive, limits=limits)
    _assert_nothing_left(tmp)


def test_import_models_refuses_a_link_with_the_default_limits(
    tmp_path: Path, tmp: Path, kiln_home: Path, make_package: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    export, digest = _export_folder(tmp_path, make_package)
    archive = tmp_path / "crafted.tar.gz"
    archive.write_bytes(_with_member(export, _link(digest)))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    with Registry() as target, pytest.raises(BadArchiveError, match="is not a plain file or folder"):
        import_models(target, archive)
    _assert_nothing_left(tmp)
