"""The registry's HTTP API mounted in the model server (`registry_api: true`)."""

import io
import os
import tarfile
from pathlib import Path

import httpx

from kiln.registry import Registry
from kiln.serve.config import ModelConfig, ServeConfig
from tests.conftest import make_image_package
from tests.integration.registry.conftest import write_package
from tests.integration.serve_harness import serving


def _digits_registered_with_a_reader(tmp_path: Path) -> tuple[Path, str]:
    """An image package registered as ``digits`` and the token of reader ``ana``."""
    package = make_image_package(tmp_path / "digits")
    with Registry() as registry:  # KILN_HOME is this test's own folder
        registry.register(package, name="digits")
        registry.store.create_user("ana", "reader")
        _, secret = registry.store.create_token("ana")
    return package, secret


def test_serve_mounts_registry_api_with_token_checks(tmp_path: Path) -> None:
    package, secret = _digits_registered_with_a_reader(tmp_path)
    config = ServeConfig(models=[ModelConfig(name="digits", versions={1: str(package)})], registry_api=True)
    with serving(config) as server:
        anonymous = server.get("/registry/models")
        listed = server.get("/registry/models/digits/versions", headers={"Authorization": f"Bearer {secret}"})
        predicted = server.post("/v1/models/digits:predict", {"inputs": [[0] * 64]})
    assert anonymous.status_code == 401
    assert listed.status_code == 200 and [v["version"] for v in listed.json()] == [1]
    assert predicted.status_code == 200


def test_serve_accepts_registry_tokens_by_role(tmp_path: Path) -> None:
    package = make_image_package(tmp_path / "digits")
    with Registry() as registry:
        registry.register(package, name="digits")
        registry.store.create_user("ana", "reader")
        registry.store.create_user("ops", "writer")
        _, reader = registry.store.create_token("ana")
        _, writer = registry.store.create_token("ops")
        revoked, revoked_secret = registry.store.create_token("ops", name="old")
        registry.store.revoke_token(revoked.id)
    # A non-loopback host makes every endpoint ask for a token (the harness binds loopback).
    config = ServeConfig(
        models=[ModelConfig(name="digits", versions={1: str(package), 2: str(package)})],
        registry_tokens=True,
        host="0.0.0.0",
    )
    body = {"inputs": [[0] * 64]}
    canary = {"weights": {"1": 50, "2": 50}}
    with serving(config) as server:
        anonymous = server.post("/v1/models/digits:predict", body)
        by_reader = server.post("/v1/models/digits:predict", body, headers={"Authorization": f"Bearer {reader}"})
        by_revoked = server.post(
            "/v1/models/digits:predict", body, headers={"Authorization": f"Bearer {revoked_secret}"}
        )
        reader_canary = server.client_put("/v1/admin/models/digits/canary", canary, token=reader)
        writer_canary = server.client_put("/v1/admin/models/digits/canary", canary, token=writer)
    assert anonymous.status_code == 401 and by_revoked.status_code == 401
    assert by_reader.status_code == 200
    assert reader_canary.status_code == 403, "a reader token must not manage models"
    assert writer_canary.status_code == 200 and writer_canary.json()["canary"] == {"1": 50, "2": 50}


def test_serve_registry_uploads_are_not_held_to_the_inference_body_limit(tmp_path: Path) -> None:
    package = make_image_package(tmp_path / "digits")
    big = write_package(tmp_path / "big", os.urandom(6 * 1024 * 1024))  # over max_body_bytes
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(big, arcname=".")
    with Registry() as registry:
        registry.store.create_user("ops", "writer")
        _, writer = registry.store.create_token("ops")
    config = ServeConfig(
        models=[ModelConfig(name="digits", versions={1: str(package)})],
        registry_api=True,
        max_body_bytes=1024 * 1024,
    )
    with serving(config) as server:
        uploaded = httpx.post(
            f"{server.url}/registry/models/big/versions", content=buffer.getvalue(), timeout=60,
            headers={"Authorization": f"Bearer {writer}", "Content-Type": "application/gzip"},
        )
        predicted = server.post("/v1/models/digits:predict", {"inputs": [[0] * 64] * 5000})
    assert uploaded.status_code == 201, uploaded.text
    assert predicted.status_code == 413


def test_serve_public_bind_with_a_token_file_takes_registry_tokens_on_the_registry_api(tmp_path: Path) -> None:
    package, secret = _digits_registered_with_a_reader(tmp_path)
    token_file = tmp_path / "tokens"
    token_file.write_text("file-token\n")
    config = ServeConfig(
        models=[ModelConfig(name="digits", versions={1: str(package)})],
        registry_api=True,
        token_file=token_file,
        host="0.0.0.0",
    )
    with serving(config) as server:
        anonymous = server.get("/registry/models")
        listed = server.get("/registry/models", headers={"Authorization": f"Bearer {secret}"})
        by_file_token = server.get("/registry/models", headers={"Authorization": "Bearer file-token"})
        predicted = server.post("/v1/models/digits:predict", {"inputs": [[0] * 64]},
                                headers={"Authorization": "Bearer file-token"})
        registry_token_predicts = server.post("/v1/models/digits:predict", {"inputs": [[0] * 64]},
                                              headers={"Authorization": f"Bearer {secret}"})
    assert anonymous.status_code == 401
    assert listed.status_code == 200 and [m["name"] for m in listed.json()] == ["digits"]
    assert by_file_token.status_code == 401, "the registry API takes only the registry's tokens"
    assert predicted.status_code == 200
    assert registry_token_predicts.status_code == 401, "without --registry-tokens they stay the registry's"
