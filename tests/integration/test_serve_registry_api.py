"""The registry's HTTP API mounted in the model server (`registry_api: true`)."""

from pathlib import Path

from kiln.registry import Registry
from kiln.serve.config import ModelConfig, ServeConfig
from tests.conftest import make_image_package
from tests.integration.serve_harness import serving


def test_serve_mounts_registry_api_with_token_checks(tmp_path: Path) -> None:
    package = make_image_package(tmp_path / "digits")
    with Registry() as registry:  # KILN_HOME is this test's own folder
        registry.register(package, name="digits")
        registry.store.create_user("ana", "reader")
        _, secret = registry.store.create_token("ana")
    config = ServeConfig(models=[ModelConfig(name="digits", versions={1: str(package)})], registry_api=True)
    with serving(config) as server:
        anonymous = server.get("/registry/models")
        listed = server.get("/registry/models/digits/versions", headers={"Authorization": f"Bearer {secret}"})
        predicted = server.post("/v1/models/digits:predict", {"inputs": [[0] * 64]})
    assert anonymous.status_code == 401
    assert listed.status_code == 200 and [v["version"] for v in listed.json()] == [1]
    assert predicted.status_code == 200
