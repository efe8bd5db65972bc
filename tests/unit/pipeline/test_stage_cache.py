"""Stage outputs keyed by their inputs: the same inputs find the output, any change misses it."""

import shutil
from collections.abc import Mapping
from pathlib import Path

import pytest

from kiln.pipeline import cache


def _kiln_package_dir() -> Path:
    import kiln

    return Path(kiln.__file__).parent


def test_cache_key_ignores_order_and_changes_with_any_input() -> None:
    key = cache.stage_key("train", {"a": 1, "b": {"x": [1, 2]}})
    assert key == cache.stage_key("train", {"b": {"x": [1, 2]}, "a": 1})
    assert key != cache.stage_key("train", {"a": 1, "b": {"x": [2, 1]}})
    assert key != cache.stage_key("onnx", {"a": 1, "b": {"x": [1, 2]}})


def test_cache_completed_only_for_the_marked_key(tmp_path: Path) -> None:
    key = cache.stage_key("onnx", {"parent": "d" * 64})
    folder = cache.stage_dir(tmp_path, "onnx", key)
    folder.mkdir()
    assert cache.completed(folder, key) is None  # an interrupted attempt leaves no marker
    cache.mark_completed(folder, key, {"digest": "abc"})
    assert cache.completed(folder, key) == {"key": key, "digest": "abc"}
    assert cache.completed(folder, cache.stage_key("onnx", {"parent": "e" * 64})) is None
    assert cache.is_stage_dir(folder) and not cache.is_stage_dir(tmp_path / "package")


def test_cache_intact_package_refuses_altered_files(text_package: Path) -> None:
    from kiln.runtime.package import package_digest, read_manifest

    digest = package_digest(read_manifest(text_package))
    assert cache.intact_package(text_package, digest)
    assert not cache.intact_package(text_package, "0" * 64)
    (text_package / "tokenizer.json").write_text("{}")
    assert not cache.intact_package(text_package, digest)


def test_cache_key_changes_with_kiln_version(monkeypatch: pytest.MonkeyPatch) -> None:
    import kiln

    key = cache.stage_key("train", {"a": 1})
    monkeypatch.setattr(kiln, "__version__", "999.0.0")
    assert cache.stage_key("train", {"a": 1}) != key


def test_cache_key_changes_with_kiln_code(monkeypatch: pytest.MonkeyPatch) -> None:
    key = cache.stage_key("train", {"a": 1})
    assert cache.code_digest() == cache.tree_digest(Path(_kiln_package_dir()))
    monkeypatch.setattr(cache, "code_digest", lambda: "0" * 64)
    assert cache.stage_key("train", {"a": 1}) != key


def test_cache_code_digest_changes_with_any_source_file_but_not_bytecode(tmp_path: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(_kiln_package_dir() / "pipeline", tmp_path / "pipeline", ignore=ignore)
    before = cache.tree_digest(tmp_path)
    (tmp_path / "pipeline" / "__pycache__").mkdir()
    (tmp_path / "pipeline" / "__pycache__" / "cache.cpython-311.pyc").write_bytes(b"\0")
    assert cache.tree_digest(tmp_path) == before
    source = tmp_path / "pipeline" / "cache.py"
    source.write_text(source.read_text() + "\n# a fix\n")
    assert cache.tree_digest(tmp_path) != before
    source.rename(tmp_path / "pipeline" / "renamed.py")
    assert cache.tree_digest(tmp_path) != before


def test_cache_reuse_or_make_reuses_only_complete_usable_output(tmp_path: Path) -> None:
    made: list[Path] = []

    def make(folder: Path) -> dict[str, str]:
        made.append(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "out.txt").write_text("done")
        return {"digest": "abc"}

    def is_usable(folder: Path, record: Mapping[str, object]) -> bool:
        return (folder / "out.txt").is_file() and record["digest"] == "abc"

    first = cache.reuse_or_make(tmp_path, "onnx", {"parent": "p"}, make, is_usable=is_usable)
    again = cache.reuse_or_make(tmp_path, "onnx", {"parent": "p"}, make, is_usable=is_usable)
    assert not first.is_reused and again.is_reused and again.folder == first.folder
    assert again.record == {"key": cache.stage_key("onnx", {"parent": "p"}), "digest": "abc"}
    (first.folder / "out.txt").unlink()
    redone = cache.reuse_or_make(tmp_path, "onnx", {"parent": "p"}, make, is_usable=is_usable)
    other = cache.reuse_or_make(tmp_path, "onnx", {"parent": "q"}, make, is_usable=is_usable)
    assert not redone.is_reused and not other.is_reused and other.folder != first.folder
    assert made == [first.folder, first.folder, other.folder]
