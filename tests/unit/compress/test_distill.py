import json
from pathlib import Path

import pytest
import torch

import kiln.compress
import kiln.runtime
from kiln.compress import CompressError, Examples
from kiln.compress.distill import build_student, student_sizes
from kiln.compress.distill_loop import soft_target_loss, uniform_layer_map
from kiln.config.schema import CompressConfig
from kiln.runtime.package import package_digest, read_manifest
from kiln.runtime.weights import count_parameters, load_torch_model

pytestmark = pytest.mark.timeout(120)

TEXTS = ["a fine film", "dull and long", "moving and warm", "boring script", "great fun", "awful"] * 4
LABELS = ["pos", "neg", "pos", "neg", "pos", "neg"] * 4


def fixture_examples() -> Examples:
    return Examples(eval_inputs=TEXTS, eval_labels=LABELS, train_inputs=TEXTS, train_labels=LABELS)


def distill(package: Path, out: Path, examples: Examples | None = None, **settings: object):
    cfg = CompressConfig.model_validate({"eval_samples": 64, "num_threads": 1, "distill": settings})
    return kiln.compress.run(package, output_dir=out, config=cfg, steps=["distill"], examples=examples)


def test_distill_student_is_smaller_with_lineage_and_falling_loss(
    trained_text_package: Path, tmp_path: Path
) -> None:
    result = distill(trained_text_package, tmp_path / "out", num_layers=1, epochs=4, lr=1e-3)
    student, manifest = result.packages[0], result.manifests[0]
    teacher_manifest = read_manifest(trained_text_package)
    assert manifest["lineage"]["transformation"] == "distill"
    assert manifest["lineage"]["parent"]["digest"] == package_digest(teacher_manifest)
    assert manifest["lineage"]["settings"]["num_layers"] == 1
    report = manifest["metrics"]["distillation"]
    assert report["student_parameters"] < report["teacher_parameters"]
    assert count_parameters(load_torch_model(student, manifest)) == report["student_parameters"]
    assert json.loads((student / "config.json").read_text())["num_hidden_layers"] == 1
    assert report["texts"] > 100  # the recipe's whole train split, not the few check examples
    losses = [epoch["loss"] for epoch in report["loss_history"]]
    assert len(losses) == 4 and losses[-1] < losses[0]
    predictions = kiln.runtime.load(student).predict(["a wonderful film", "a dull film"])
    assert {p["label"] for p in predictions} <= set(teacher_manifest["labels"])


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_distill_tinybert_transfer_runs_with_narrower_student(
    text_package: Path, tmp_path: Path, precision: str
) -> None:
    result = distill(
        text_package,
        tmp_path / "out",
        fixture_examples(),
        num_layers=1,
        hidden_size=64,
        intermediate_size=128,
        hidden_weight=1.0,
        attention_weight=1.0,
        epochs=3,
        lr=1e-3,
        batch_size=8,
        precision=precision,
    )
    assert result.manifests[0]["lineage"]["settings"]["precision"] == precision
    report = result.manifests[0]["metrics"]["distillation"]
    assert (report["hidden_size"], report["num_heads"], report["intermediate_size"]) == (64, 1, 128)
    history = report["loss_history"]
    assert all(epoch["hidden"] > 0 and epoch["attention"] > 0 for epoch in history)
    assert history[-1]["hidden"] < history[0]["hidden"]  # the learned projection brings them closer
    assert kiln.runtime.load(result.packages[0]).predict_proba(["a fine film"]).shape == (1, 2)


def test_distill_teacher_layers_init_copies_mapped_layers(text_package: Path) -> None:
    teacher = load_torch_model(text_package, read_manifest(text_package))
    cfg = CompressConfig.model_validate({"distill": {"num_layers": 1}}).distill
    sizes = student_sizes(teacher.config, {"family": "hf"}, cfg)
    student = build_student(teacher, sizes, init="teacher-layers")
    assert sizes["layer_map"] == [1]
    torch.testing.assert_close(
        student.bert.encoder.layer[0].attention.self.query.weight,
        teacher.bert.encoder.layer[1].attention.self.query.weight,
    )
    torch.testing.assert_close(student.classifier.weight, teacher.classifier.weight)


@pytest.mark.parametrize(
    ("teacher_layers", "student_layers", "expected"),
    [(6, 3, [1, 3, 5]), (12, 6, [1, 3, 5, 7, 9, 11]), (2, 1, [1]), (4, 4, [0, 1, 2, 3])],
)
def test_uniform_layer_map_spaces_layers_evenly(
    teacher_layers: int, student_layers: int, expected: list[int]
) -> None:
    assert uniform_layer_map(teacher_layers, student_layers) == expected


def test_soft_target_loss_is_zero_only_for_matching_logits() -> None:
    logits = torch.tensor([[2.0, -1.0], [0.5, 0.3]])
    assert float(soft_target_loss(logits, logits, 2.0)) == pytest.approx(0.0, abs=1e-7)
    assert float(soft_target_loss(logits, logits.flip(1), 2.0)) > 0


def test_distill_learns_from_unlabelled_texts(text_package: Path, tmp_path: Path) -> None:
    unlabelled = tmp_path / "unlabelled.txt"
    unlabelled.write_text("a film\nanother film\n\nyet another one\n", encoding="utf-8")
    result = distill(
        text_package, tmp_path / "out", fixture_examples(), num_layers=1, epochs=1,
        unlabelled_file=str(unlabelled), augment={"methods": ["swap"], "copies": 1},
    )
    report = result.manifests[0]["metrics"]["distillation"]
    assert report["texts"] == 2 * len(TEXTS) + 3
    assert report["labelled_texts"] == 2 * len(TEXTS)


def test_prune_recovery_distils_from_the_unpruned_parent(text_package: Path, tmp_path: Path) -> None:
    cfg = CompressConfig.model_validate(
        {"prune": {"recovery_epochs": 2}, "distill": {"batch_size": 8, "hidden_weight": 1.0}}
    )
    result = kiln.compress.run(
        text_package, output_dir=tmp_path / "out", config=cfg, steps=["prune"], examples=fixture_examples()
    )
    manifest = result.manifests[0]
    recovery = manifest["metrics"]["recovery"]
    assert recovery["epochs"] == 2 and recovery["steps"] == 2 * 3
    assert manifest["lineage"]["settings"]["recovery"]["hidden_weight"] == 1.0
    assert sum(manifest["architecture"]["heads_per_layer"]) == 3  # 4 heads, 25% removed


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"num_layers": 3}, "bigger than its teacher"),
        ({"hidden_size": 256}, "bigger than its teacher"),
        ({"num_heads": 4}, "bigger than its teacher"),
        ({"hidden_size": 99, "num_heads": 2, "intermediate_size": 64}, "not a multiple"),
        ({"unlabelled_file": "/nonexistent/texts.txt"}, "cannot read"),
    ],
)
def test_distill_rejects_bad_students_and_inputs(
    text_package: Path, tmp_path: Path, settings: dict, message: str
) -> None:
    with pytest.raises(CompressError, match=message):
        distill(text_package, tmp_path / "out", fixture_examples(), **settings)
    assert not (tmp_path / "out" / "01-distill").exists()


def test_distill_rejects_image_packages(image_package: Path, tmp_path: Path) -> None:
    images = [[0] * 64] * 4
    examples = Examples(eval_inputs=images, eval_labels=None, train_inputs=images, train_labels=None)
    with pytest.raises(CompressError, match="text-classification"):
        distill(image_package, tmp_path / "out", examples)
