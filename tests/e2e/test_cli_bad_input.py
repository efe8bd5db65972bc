"""Every kind of bad input: exit code 2, a message naming the problem and where, nothing half-written."""

import json
import shutil
from pathlib import Path

import pytest

from tests.helpers import kiln_cli, write_recipe


def _file_recipe(tmp_path: Path, data_file: Path, **data: object) -> Path:
    return write_recipe(
        tmp_path / "recipe.yaml",
        {
            "name": "bad",
            "data": {"train_file": str(data_file), **data},
            "model": {"kind": "bert", "size": "tiny", "vocab_size": 200, "max_length": 16},
            "train": {"epochs": 1, "output_dir": str(tmp_path / "out"), "progress": False},
        },
    )


def _assert_refused(result, *fragments: str) -> None:
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stderr.startswith("error: ")
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_train_malformed_recipe(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text("name: x\ndata: {dataset: digits\n")
    _assert_refused(kiln_cli("train", str(path)), str(path), "not valid YAML")


def test_train_unknown_key_and_bad_override(tmp_path: Path) -> None:
    path = write_recipe(tmp_path / "r.yaml", {"name": "x", "data": {"dataset": "digits"}, "trian": {}})
    _assert_refused(
        kiln_cli("train", str(path)),
        str(path),
        "trian: unknown key",
        "allowed keys here: ", "train",
    )
    path = write_recipe(tmp_path / "r2.yaml", {"name": "x", "data": {"dataset": "digits"}})
    _assert_refused(kiln_cli("train", str(path), "train.epochs=zero"), "train.epochs", "'zero'")


def test_train_missing_recipe_file(tmp_path: Path) -> None:
    _assert_refused(kiln_cli("train", str(tmp_path / "nope.yaml")), "recipe file not found", "nope.yaml")


def test_train_missing_data_file(tmp_path: Path) -> None:
    recipe = _file_recipe(tmp_path, tmp_path / "missing.csv")
    _assert_refused(kiln_cli("train", str(recipe)), "data file not found", "missing.csv")
    assert not (tmp_path / "out").exists()


def test_train_missing_column(tmp_path: Path) -> None:
    data = tmp_path / "d.csv"
    data.write_text("sentence,label\nhello,a\nbye,b\n")
    _assert_refused(
        kiln_cli("train", str(_file_recipe(tmp_path, data))),
        str(data),
        "text column 'text' not found",
        "sentence, label",
    )
    assert not (tmp_path / "out").exists()


def test_train_empty_dataset(tmp_path: Path) -> None:
    data = tmp_path / "d.csv"
    data.write_text("text,label\n")
    _assert_refused(kiln_cli("train", str(_file_recipe(tmp_path, data))), str(data), "the dataset is empty")
    assert not (tmp_path / "out").exists()


def test_train_single_class(tmp_path: Path) -> None:
    data = tmp_path / "d.csv"
    data.write_text("text,label\n" + "".join(f"example {i},same\n" for i in range(30)))
    _assert_refused(kiln_cli("train", str(_file_recipe(tmp_path, data))), str(data), "only one class ('same')")
    assert not (tmp_path / "out").exists()


def test_train_undecodable_bytes(tmp_path: Path) -> None:
    data = tmp_path / "d.csv"
    data.write_bytes("text,label\nna\xefve,a\nbon,b\n".encode("latin-1"))
    _assert_refused(
        kiln_cli("train", str(_file_recipe(tmp_path, data))), str(data), "cannot be decoded as utf-8", "data.encoding"
    )
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def trained_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pkg")
    recipe = write_recipe(
        root / "r.yaml",
        {
            "name": "digits",
            "data": {"dataset": "digits"},
            "model": {"kind": "cnn", "cnn": {"channels": [4], "hidden_size": 16}},
            "train": {"epochs": 1, "output_dir": str(root / "run"), "progress": False, "num_threads": 1},
        },
    )
    assert kiln_cli("train", str(recipe)).returncode == 0
    return root / "run" / "package"


@pytest.mark.parametrize("damage", ["missing", "altered"])
def test_eval_refuses_damaged_package(tmp_path: Path, trained_package: Path, damage: str) -> None:
    package = tmp_path / "package"
    shutil.copytree(trained_package, package)
    weights = package / "model.safetensors"
    if damage == "missing":
        weights.unlink()
        expected = "file model.safetensors listed in the manifest is missing"
    else:
        weights.write_bytes(weights.read_bytes()[:-4] + b"\x00\x00\x00\x01")
        expected = "file model.safetensors was altered"
    result = kiln_cli("eval", str(package), "--output-dir", str(tmp_path / "eval"))
    _assert_refused(result, str(package), expected)
    assert not (tmp_path / "eval").exists()


def test_eval_refuses_folder_that_is_not_a_package(tmp_path: Path) -> None:
    _assert_refused(kiln_cli("eval", str(tmp_path)), "not a model package (no kiln.json)")


def test_eval_accepts_intact_package(tmp_path: Path, trained_package: Path) -> None:
    result = kiln_cli("eval", str(trained_package), "--json", "--output-dir", str(tmp_path / "eval"))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["n"] == 359
    assert len(report["confusion_matrix"]) == 10
    assert (tmp_path / "eval" / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_predict_refuses_a_recommendation_package(tmp_path: Path) -> None:
    from kiln.checksums import sha256_file

    package = tmp_path / "movies"
    package.mkdir()
    (package / "users.csv").write_text("user_id\n1\n")
    files = {"users.csv": sha256_file(package / "users.csv")}
    manifest = {"schema_version": 1, "task": "recommendation", "files": files}
    (package / "kiln.json").write_text(json.dumps(manifest))
    _assert_refused(kiln_cli("predict", str(package), "a fine film"), "'recommendation' package, expected a")
