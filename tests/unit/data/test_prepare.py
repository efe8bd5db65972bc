from pathlib import Path

import numpy as np
import pytest

import kiln.data
from kiln.config import parse_recipe
from kiln.errors import DataError


def _recipe(tmp_path: Path | None = None, **data: object):
    return parse_recipe({"name": "t", "data": data})


def _csv(path: Path, rows: list[tuple[str, str]]) -> Path:
    import csv

    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "label"])
        writer.writerows(rows)
    return path


def test_run_splits_are_disjoint_stratified_and_seeded() -> None:
    first = kiln.data.run(_recipe(dataset="digits"))
    again = kiln.data.run(_recipe(dataset="digits"))
    assert first.fingerprint == again.fingerprint
    sizes = [len(first.train), len(first.validation), len(first.test)]
    assert sum(sizes) == 1797
    # every class appears in every split, in about the same proportion
    for split in (first.train, first.validation, first.test):
        counts = np.bincount(split.labels, minlength=10)
        assert counts.min() > 0
        assert counts.max() / counts.min() < 1.5
    rows = {x.tobytes() for x in first.train.inputs}
    assert not rows & {x.tobytes() for x in first.test.inputs}


def test_run_other_seed_gives_other_split_and_fingerprint() -> None:
    a = kiln.data.run(parse_recipe({"name": "t", "seed": 1, "data": {"dataset": "digits"}}))
    b = kiln.data.run(parse_recipe({"name": "t", "seed": 2, "data": {"dataset": "digits"}}))
    assert a.fingerprint != b.fingerprint


def test_run_removes_exact_duplicates(tmp_path: Path) -> None:
    rows = [(f"text {i}", "a" if i % 2 else "b") for i in range(40)] + [("text 1", "a")] * 5
    ds = kiln.data.run(_recipe(train_file=str(_csv(tmp_path / "d.csv", rows))))
    assert ds.stats["loaded"] == 45
    assert ds.stats["after_dedup"] == 40
    everything = list(ds.train.inputs) + list(ds.validation.inputs) + list(ds.test.inputs)
    assert len(everything) == len(set(everything)) == 40


def test_run_uses_given_test_file(tmp_path: Path) -> None:
    train = _csv(tmp_path / "train.csv", [(f"t{i}", "ab"[i % 2]) for i in range(30)])
    test = _csv(tmp_path / "test.csv", [("x1", "a"), ("x2", "b")])
    ds = kiln.data.run(_recipe(train_file=str(train), test_file=str(test)))
    assert list(ds.test.inputs) == ["x1", "x2"]
    assert len(ds.train) + len(ds.validation) == 30


def test_run_refuses_single_class(tmp_path: Path) -> None:
    path = _csv(tmp_path / "one.csv", [(f"t{i}", "only") for i in range(20)])
    with pytest.raises(DataError, match="only one class \\('only'\\)"):
        kiln.data.run(_recipe(train_file=str(path)))


def test_run_refuses_empty_dataset(tmp_path: Path) -> None:
    path = tmp_path / "header-only.csv"
    path.write_text("text,label\n")
    with pytest.raises(DataError, match="the dataset is empty"):
        kiln.data.run(_recipe(train_file=str(path)))


def test_run_refuses_test_label_unknown_to_train(tmp_path: Path) -> None:
    train = _csv(tmp_path / "train.csv", [(f"t{i}", "ab"[i % 2]) for i in range(30)])
    test = _csv(tmp_path / "test.csv", [("x1", "a"), ("x2", "zzz")])
    with pytest.raises(DataError, match=r"labels \['zzz'\] do not occur in the training data"):
        kiln.data.run(_recipe(train_file=str(train), test_file=str(test)))


def test_run_max_examples_keeps_class_balance() -> None:
    ds = kiln.data.run(_recipe(dataset="rotten_tomatoes", max_examples=500))
    total = len(ds.train) + len(ds.validation) + len(ds.test)
    assert 490 <= total <= 510
    assert set(np.unique(ds.test.labels)) == {0, 1}


def test_run_text_augmentation_grows_train_split_only() -> None:
    plain = kiln.data.run(_recipe(dataset="rotten_tomatoes", max_examples=300))
    augmented = kiln.data.run(
        _recipe(
            dataset="rotten_tomatoes", max_examples=300, augment={"text": {"methods": ["delete", "swap"], "copies": 2}}
        )
    )
    assert len(augmented.train) == 3 * len(plain.train)
    assert list(augmented.validation.inputs) == list(plain.validation.inputs)
    assert list(augmented.test.inputs) == list(plain.test.inputs)
    assert augmented.fingerprint == plain.fingerprint
