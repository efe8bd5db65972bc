"""The registry HTTP API over real HTTP: uvicorn on a free 127.0.0.1 port in a thread."""

from __future__ import annotations

import io
import json
import socket
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from kiln.checksums import sha256_file
from kiln.registry import Registry, Role
from kiln.registry.http import create_app


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def served(kiln_home: Path) -> Iterator[tuple[str, Registry, dict[str, str]]]:
    registry = Registry()
    tokens = {}
    for name, role in [("ro", Role.READER), ("rw", Role.WRITER), ("root", Role.ADMIN)]:
        registry.store.create_user(name, role)
        tokens[name] = registry.store.create_token(name)[1]
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(registry), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}", registry, tokens
    server.should_exit = True
    thread.join(timeout=10)
    registry.close()


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _archive(folder: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(folder, arcname=".")
    return buffer.getvalue()


def test_http_writer_registers_and_reader_reads(
    served: tuple[str, Registry, dict[str, str]], make_package: Callable[..., Path]
) -> None:
    url, _registry, tokens = served
    created = httpx.post(f"{url}/models/m/versions", content=_archive(make_package()),
                         headers=_auth(tokens["rw"]) | {"Content-Type": "application/gzip"})
    assert created.status_code == 201, created.text
    assert created.json()["version"] == 1 and created.json()["created_by"] == "rw"
    moved = httpx.put(f"{url}/models/m/aliases/production", json={"version": 1},
                      headers=_auth(tokens["rw"]))
    assert moved.status_code == 200
    got = httpx.get(f"{url}/models/m/aliases/production", headers=_auth(tokens["ro"]))
    assert got.json()["aliases"] == ["production"]
    history = httpx.get(f"{url}/models/m/aliases/production/history", headers=_auth(tokens["ro"]))
    assert [h["to_version"] for h in history.json()] == [1]
    package = httpx.get(f"{url}/models/m/versions/1/package", headers=_auth(tokens["ro"]))
    with tarfile.open(fileobj=io.BytesIO(package.content), mode="r:gz") as tar:
        assert "./kiln.json" in tar.getnames()


@pytest.mark.parametrize(("token", "code"), [(None, 401), ("bogus_x_y", 401), ("ro", 403)])
def test_http_write_refuses_missing_unknown_or_read_only_token(
    served: tuple[str, Registry, dict[str, str]], make_package: Callable[..., Path],
    token: str | None, code: int,
) -> None:
    url, registry, tokens = served
    registry.register(make_package(), name="m")
    headers = _auth(tokens.get(token, token)) if token else {}
    response = httpx.put(f"{url}/models/m/aliases/production", json={"version": 1},
                         headers=headers)
    assert response.status_code == code
    assert registry.alias_history("m") == []


def test_http_read_needs_a_token_and_errors_are_clear(
    served: tuple[str, Registry, dict[str, str]], make_package: Callable[..., Path]
) -> None:
    url, registry, tokens = served
    registry.register(make_package(), name="m")
    registry.set_alias("m", "production", 1)
    assert httpx.get(f"{url}/models").status_code == 401
    missing = httpx.get(f"{url}/models/m/versions/9", headers=_auth(tokens["ro"]))
    assert missing.status_code == 404 and "no version 9" in missing.json()["detail"]
    refused = httpx.delete(f"{url}/models/m/versions/1", headers=_auth(tokens["rw"]))
    assert refused.status_code == 409 and "production" in refused.json()["detail"]


def test_http_admin_creates_users_and_tokens(
    served: tuple[str, Registry, dict[str, str]]
) -> None:
    url, _registry, tokens = served
    assert httpx.post(f"{url}/users", json={"name": "x", "role": "writer"},
                      headers=_auth(tokens["rw"])).status_code == 403
    made = httpx.post(f"{url}/users", json={"name": "x", "role": "writer"},
                      headers=_auth(tokens["root"]))
    assert made.status_code == 201
    secret = httpx.post(f"{url}/users/x/tokens", json={"name": "ci"},
                        headers=_auth(tokens["root"])).json()["secret"]
    assert httpx.get(f"{url}/models", headers=_auth(secret)).status_code == 200


def test_http_serves_openapi_schema(served: tuple[str, Registry, dict[str, str]]) -> None:
    url, _registry, _tokens = served
    schema = httpx.get(f"{url}/openapi.json").json()
    assert "/models/{name}/aliases/{alias}" in schema["paths"]
    assert "put" in schema["paths"]["/models/{name}/aliases/{alias}"]


def _crafted_archive(package: Path, name: str, target: Path) -> bytes:
    """``package`` as an archive whose manifest also lists ``name`` with ``target``'s true hash."""
    manifest = json.loads((package / "kiln.json").read_text())
    manifest["files"][name] = sha256_file(target)
    (package / "kiln.json").write_text(json.dumps(manifest))
    return _archive(package)


@pytest.mark.parametrize("kind", ["absolute", "dot-dot"])
def test_http_refuses_a_manifest_naming_files_outside_the_package(
    served: tuple[str, Registry, dict[str, str]], make_package: Callable[..., Path],
    tmp_path: Path, kind: str,
) -> None:
    url, registry, tokens = served
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"server-side secret")
    # Deeper than any temporary folder the server unpacks into, so it reaches the root.
    name = str(secret) if kind == "absolute" else "../" * 32 + str(secret).lstrip("/")
    response = httpx.post(f"{url}/models/m/versions", content=_crafted_archive(make_package(), name, secret),
                          headers=_auth(tokens["rw"]) | {"Content-Type": "application/gzip"})
    assert response.status_code == 400
    assert f"file name {name!r} refused" in response.json()["detail"]
    assert registry.list_models() == [] and registry.artifacts.list_digests() == set()


def _archive_with(member: tarfile.TarInfo, data: bytes = b"") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.addfile(member, io.BytesIO(data))
    return buffer.getvalue()


def _symlink(name: str, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = tarfile.SYMTYPE, target
    return info


def _file(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    return info


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (_archive_with(_symlink("./weights.bin", "/etc/hostname")), "'./weights.bin' is not a plain file or folder"),
        (_archive_with(_file("../escaped.bin", 4), b"evil"), "'../escaped.bin' lies outside the folder"),
        (_archive_with(_file("/tmp/escaped.bin", 4), b"evil"), "'/tmp/escaped.bin' lies outside the folder"),
        (b"not gzip at all", "not a .tar.gz archive"),
    ],
    ids=["symlink", "dot-dot", "absolute", "not an archive"],
)
def test_http_refuses_archive_entries_that_are_links_or_outside(
    served: tuple[str, Registry, dict[str, str]], body: bytes, message: str
) -> None:
    url, registry, tokens = served
    response = httpx.post(f"{url}/models/m/versions", content=body,
                          headers=_auth(tokens["rw"]) | {"Content-Type": "application/gzip"})
    assert response.status_code == 400 and message in response.json()["detail"]
    assert registry.list_models() == []
