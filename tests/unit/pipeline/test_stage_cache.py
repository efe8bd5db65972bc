"""Stage outputs keyed by their inputs: the same inputs find the output, any change misses it."""

from pathlib import Path

from kiln.pipeline import cache


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
