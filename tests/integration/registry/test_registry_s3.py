"""The artifact store on S3 through a local moto server speaking the real S3 protocol."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kiln.errors import PackageError
from kiln.registry import Registry


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def s3_options(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, object]]:
    """Options for s3fs to reach a fresh moto server on 127.0.0.1 with a bucket kiln-artifacts."""
    from moto.server import ThreadedMotoServer

    for key, value in {"AWS_ACCESS_KEY_ID": "kiln", "AWS_SECRET_ACCESS_KEY": "kiln",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    options = {"client_kwargs": {"endpoint_url": f"http://127.0.0.1:{port}"},
               "skip_instance_cache": True}
    import s3fs

    s3fs.S3FileSystem(**options).mkdir("kiln-artifacts")
    yield options
    server.stop()
    # moto keeps its buckets in process memory across servers: start the next test empty.
    from moto.s3.models import s3_backends

    s3_backends.reset()


def test_registry_s3_register_resolve_and_gc(
    tmp_path: Path, kiln_home: Path, s3_options: dict[str, object],
    make_package: Callable[..., Path],
) -> None:
    with Registry(artifacts_url="s3://kiln-artifacts/registry",
                  artifacts_options=s3_options) as reg:
        kept = reg.register(make_package(), name="m")
        dropped = reg.register(make_package(), name="m")
        local = reg.resolve("m@1")
        assert local.is_relative_to(kiln_home / "cache")
        assert (local / "weights.bin").read_bytes().startswith(b"weights-0")
        reg.delete("m@2")
        assert reg.gc(grace_s=0) == [dropped.package_digest]
        assert reg.artifacts.list_digests() == {kept.package_digest}


def test_registry_s3_refuses_tampered_remote_artifact(
    kiln_home: Path, s3_options: dict[str, object], make_package: Callable[..., Path],
) -> None:
    import s3fs

    with Registry(artifacts_url="s3://kiln-artifacts/registry",
                  artifacts_options=s3_options) as reg:
        version = reg.register(make_package(), name="m")
        d = version.package_digest
        s3fs.S3FileSystem(**s3_options).pipe(
            f"kiln-artifacts/registry/packages/{d[:2]}/{d}/weights.bin", b"tampered")
        with pytest.raises(PackageError, match="weights.bin was altered"):
            reg.resolve("m@1")
