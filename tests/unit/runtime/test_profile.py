from __future__ import annotations

from pathlib import Path

from kiln.runtime import load, read_manifest
from kiln.runtime.profile import PROFILE_NAME, read_profile, write_reference_profile
from tests.conftest import SENTENCES


def test_profile_text_package_gains_verified_profile(text_package: Path) -> None:
    profile = write_reference_profile(text_package, SENTENCES)
    manifest = read_manifest(text_package, verify=True)  # the new file is listed with its hash
    assert manifest["reference_profile"] == PROFILE_NAME
    assert PROFILE_NAME in manifest["files"]
    assert read_profile(text_package) == profile
    assert profile["kind"] == "text" and profile["rows"] == len(SENTENCES)
    assert {"length", "unk_rate", "confidence", "emb_0"} <= set(profile["numeric"])
    assert sum(profile["categorical"]["prediction"].values()) == len(SENTENCES)
    assert len(profile["projection"]["components"]) <= 8


def test_profile_image_package_has_pixel_histogram(image_package: Path) -> None:
    import numpy as np

    images = np.random.default_rng(0).integers(0, 17, size=(20, 1, 8, 8)).astype(np.float32)
    profile = write_reference_profile(image_package, list(images))
    assert {"mean_intensity", "std_intensity", "confidence"} <= set(profile["numeric"])
    assert sum(profile["categorical"]["pixel_intensity"].values()) == 20 * 64
    load(image_package)  # still loads, hashes verified


def test_profile_predictor_embed_pools_text(text_package: Path) -> None:
    emb = load(text_package).embed(["a moving story", "dull"])
    assert emb is not None and emb.shape == (2, 128)
