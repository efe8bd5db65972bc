import json
from pathlib import Path

import numpy as np
import pytest

from kiln.errors import PackageError
from kiln.runtime import Predictor, load, load_classifier, load_recommender, read_manifest
from kiln.runtime.preprocessing import InputError


def test_load_text_package_predicts_label_and_scores_from_raw_text(text_package: Path) -> None:
    predictor = load(text_package, device="cpu")
    results = predictor.predict(["a moving story", "boring and long"])
    assert len(results) == 2
    for result in results:
        assert result["label"] in ("neg", "pos")
        assert set(result["scores"]) == {"neg", "pos"}
        assert sum(result["scores"].values()) == pytest.approx(1.0, abs=1e-5)


def test_load_image_package_accepts_flat_and_shaped_pixels(image_package: Path) -> None:
    predictor = load(image_package, device="cpu")
    flat = list(range(64))
    shaped = np.arange(64, dtype=np.float32).reshape(8, 8)
    probs = predictor.predict_proba([flat, shaped])
    assert probs.shape == (2, 10)
    np.testing.assert_allclose(probs[0], probs[1], atol=1e-6)


def test_manifest_lists_every_file_hash(text_package: Path) -> None:
    manifest = read_manifest(text_package)
    assert set(manifest["files"]) == {"config.json", "model.safetensors", "tokenizer.json"}
    assert manifest["schema_version"] == 1
    assert manifest["format"] == "torch"


def test_load_refuses_altered_file(text_package: Path) -> None:
    with open(text_package / "tokenizer.json", "a") as fh:
        fh.write(" ")
    with pytest.raises(PackageError, match="tokenizer.json was altered"):
        load(text_package)


def test_load_refuses_missing_file(image_package: Path) -> None:
    (image_package / "model.safetensors").unlink()
    with pytest.raises(PackageError, match="model.safetensors listed in the manifest is missing"):
        load(image_package)


def test_load_refuses_folder_without_manifest(tmp_path: Path) -> None:
    with pytest.raises(PackageError, match="not a model package"):
        load(tmp_path)


def test_load_refuses_unknown_schema_version(image_package: Path) -> None:
    manifest_path = image_package / "kiln.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["schema_version"] = 99
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(PackageError, match="unsupported schema_version 99"):
        load(image_package)


@pytest.mark.parametrize("bad", ["one string", [], [3]])
def test_predict_text_rejects_malformed_inputs(text_package: Path, bad: object) -> None:
    predictor = load(text_package, device="cpu")
    with pytest.raises(InputError):
        predictor.predict(bad)  # type: ignore[arg-type]


def test_predict_image_rejects_wrong_pixel_count(image_package: Path) -> None:
    predictor = load(image_package, device="cpu")
    with pytest.raises(InputError, match="expected 64 pixels"):
        predictor.predict([[1, 2, 3]])


def _recommendation_manifest_only(folder: Path) -> Path:
    """A folder whose verified manifest says ``recommendation`` (its weights are never reached)."""
    from kiln.checksums import sha256_file

    folder.mkdir()
    (folder / "users.csv").write_text("user_id\n1\n")
    files = {"users.csv": sha256_file(folder / "users.csv")}
    manifest = {"schema_version": 1, "task": "recommendation", "files": files}
    (folder / "kiln.json").write_text(json.dumps(manifest))
    return folder


def test_load_classifier_returns_a_predictor(text_package: Path) -> None:
    predictor = load_classifier(text_package, device="cpu")
    assert isinstance(predictor, Predictor)
    assert predictor.labels == ["neg", "pos"]


def test_load_classifier_refuses_a_recommendation_package_naming_its_task(tmp_path: Path) -> None:
    folder = _recommendation_manifest_only(tmp_path / "movies")
    with pytest.raises(PackageError, match=r"movies: a 'recommendation' package, expected a 'text-classification'"):
        load_classifier(folder)


def test_load_recommender_refuses_a_classifier_package_naming_its_task(image_package: Path) -> None:
    with pytest.raises(PackageError, match=r"a 'image-classification' package, expected a 'recommendation' package"):
        load_recommender(image_package)


def test_torch_engine_with_threads_gives_each_calling_thread_its_own_count() -> None:
    """Two views of one module called at once from two threads each run at their own count."""
    import threading

    import torch
    from torch import nn

    from kiln.runtime.predictor import TorchEngine

    both_inside = threading.Barrier(2, timeout=30)

    class Probe(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale = nn.Parameter(torch.ones(1))
            self.seen: dict[str, int] = {}

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            both_inside.wait()  # both calls are inside the model at the same time
            self.seen[threading.current_thread().name] = torch.get_num_threads()
            both_inside.wait()
            return x * self.scale

    probe = Probe()
    base = TorchEngine(probe, torch.device("cpu"))
    features = {"x": np.ones((1, 2), dtype=np.float32)}
    calls = [
        threading.Thread(target=base.with_threads(n), args=(features,), name=f"t{n}") for n in (1, 2)
    ]
    for call in calls:
        call.start()
    for call in calls:
        call.join()
    assert probe.seen == {"t1": 1, "t2": 2}
