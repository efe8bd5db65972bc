"""Upload and download limits of a real `kiln registry serve` process: 413 early, memory flat.

The server runs with low limits (32 MiB uploads, 64 MiB unpacked, 1000 entries) so that each
refusal is quick; the bodies sent are still far larger. Memory is the server process's peak
resident size (VmHWM in /proc/<pid>/status), read before and after.
"""

from __future__ import annotations

import contextlib
import io
import os
import socket
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from kiln.registry import Registry, Role
from tests.integration.registry.archive_bombs import MIB, ZEROS_MIB_GZ, end_blocks, tar_header, zeros_member

SRC = Path(__file__).resolve().parents[3] / "src"
MAX_UPLOAD = 32 * MIB
MAX_UNPACKED = 64 * MIB
MAX_ENTRIES = 1000


@dataclass(frozen=True)
class Server:
    url: str
    port: int
    pid: int
    token: str
    home: Path  # the server's KILN_HOME
    tmp: Path  # the server's TMPDIR

    def peak_rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmHWM in /proc status")

    def upload(self, content: bytes | Iterator[bytes], name: str = "m") -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/gzip"}
        return httpx.post(f"{self.url}/models/{name}/versions", content=content, headers=headers, timeout=120)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def _started(root: Path) -> Iterator[Server]:
    """``kiln registry serve`` over a fresh home under ``root``, with a writer's token."""
    home, tmp = root / "home", root / "server-tmp"
    tmp.mkdir(parents=True)
    with _registry(home) as registry:
        registry.store.create_user("rw", Role.WRITER)
        _, token = registry.store.create_token("rw")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("KILN_DATABASE_URL", "KILN_ARTIFACTS_URL")}
    env.update(PYTHONPATH=str(SRC), TMPDIR=str(tmp), KILN_HOME=str(home))
    command = [
        sys.executable, "-m", "kiln.cli.main", "registry", "serve", "--port", str(port),
        "--max-upload-bytes", str(MAX_UPLOAD), "--max-unpacked-bytes", str(MAX_UNPACKED),
        "--max-archive-entries", str(MAX_ENTRIES),
    ]
    log_path = root / "server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            _wait_ready(url, proc, log_path)
            yield Server(url=url, port=port, pid=proc.pid, token=token, home=home, tmp=tmp)
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def _registry(home: Path) -> Registry:
    return Registry(f"sqlite:///{home / 'registry.db'}", home=home, artifacts_url=str(home / "artifacts"))


def _wait_ready(url: str, proc: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{url}/openapi.json", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert proc.poll() is None, log_path.read_text()
        assert time.monotonic() < deadline, "the registry server did not start in 60 s"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with _started(tmp_path_factory.mktemp("registry-limits")) as server:
        yield server


@pytest.fixture
def fresh_server(tmp_path: Path) -> Iterator[Server]:
    """A server of its own, so that its peak memory reflects only this test's requests."""
    with _started(tmp_path / "served") as server:
        yield server


def _archive(folder: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(folder, arcname=".")
    return buffer.getvalue()


def _bomb(*members: bytes) -> bytes:
    """A .tar.gz made of gzip members (readers join them): tiny, but it unpacks to gigabytes."""
    return b"".join(members) + end_blocks()


BOMBS = {
    "one 1 GiB file": _bomb(zeros_member("./weights.bin", 1024)),
    "files of 16 MiB adding up to 1 GiB": _bomb(*[zeros_member(f"./w{i}.bin", 16) for i in range(64)]),
    "a 1 GiB pax header": _bomb(tar_header("././@PaxHeader", 1024 * MIB, tarfile.XHDTYPE) + ZEROS_MIB_GZ * 1024),
    "5000 entries": _bomb(*[tar_header(f"./f{i}", 0) for i in range(5000)]),
}


def _oversized_body(total_mib: int) -> Iterator[bytes]:
    """``total_mib`` MiB, one reused MiB at a time, so the test never holds the body."""
    chunk = os.urandom(MIB)
    for _ in range(total_mib):
        yield chunk


def _read_response(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data or len(data) < _response_length(data):
        received = sock.recv(65536)
        if not received:
            break
        data += received
    return data


def _response_length(data: bytes) -> int:
    head, _, _ = data.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(head) + 4 + int(line.split(b":")[1])
    return len(data)


@pytest.mark.parametrize("framing", ["chunked", "declared length"])
def test_http_upload_answers_413_without_reading_past_the_limit(shared_server: Server, framing: str) -> None:
    server = shared_server
    head = (
        f"POST /models/m/versions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {server.token}\r\n"
        "Content-Type: application/gzip\r\n"
    )
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
        if framing == "chunked":
            sock.sendall(f"{head}Transfer-Encoding: chunked\r\n\r\n".encode())
            frame = b"%x\r\n" % MIB + b"\1" * MIB + b"\r\n"
            for _ in range(MAX_UPLOAD // MIB + 1):
                sock.sendall(frame)
        else:
            sock.sendall(f"{head}Content-Length: {100 * MAX_UPLOAD}\r\n\r\n".encode())
        # The body never ends: only a server that stopped reading at the limit answers.
        answer = _read_response(sock)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert f"limit of {MAX_UPLOAD} bytes".encode() in answer


def test_http_oversized_body_and_bombs_get_413_with_memory_flat(
    fresh_server: Server, make_package: Callable[..., Path]
) -> None:
    server = fresh_server
    assert server.upload(_archive(make_package())).status_code == 201  # warm every code path
    before = server.peak_rss_bytes()

    oversized = server.upload(_oversized_body(400))
    answers = {name: server.upload(body) for name, body in BOMBS.items()}

    grown = server.peak_rss_bytes() - before
    assert oversized.status_code == 413 and f"limit of {MAX_UPLOAD} bytes" in oversized.json()["detail"]
    for name, answer in answers.items():
        assert answer.status_code == 413, (name, answer.text)
    assert "more than 1000 entries" in answers["5000 entries"].json()["detail"]
    assert f"limit of {MAX_UNPACKED} bytes" in answers["one 1 GiB file"].json()["detail"]
    assert grown < 16 * MIB, f"server peak memory grew by {grown / MIB:.0f} MiB"
    listed = httpx.get(f"{server.url}/models/m/versions", headers={"Authorization": f"Bearer {server.token}"})
    assert [v["version"] for v in listed.json()] == [1]
    assert list(server.tmp.iterdir()) == []


def test_http_download_streams_a_large_package(
    fresh_server: Server, make_package: Callable[..., Path]
) -> None:
    server = fresh_server
    package = make_package(os.urandom(48 * MIB))  # random bytes: the archive is as large
    with _registry(server.home) as registry:  # an upload this large would get 413
        registry.register(package, name="m")
    before = server.peak_rss_bytes()
    received = io.BytesIO()
    with httpx.stream(
        "GET", f"{server.url}/models/m/versions/1/package",
        headers={"Authorization": f"Bearer {server.token}"}, timeout=120,
    ) as response:
        assert response.status_code == 200
        for chunk in response.iter_bytes():
            received.write(chunk)
    grown = server.peak_rss_bytes() - before
    assert received.tell() > 48 * MIB
    assert grown < 16 * MIB, f"server peak memory grew by {grown / MIB:.0f} MiB"
    received.seek(0)
    with tarfile.open(fileobj=received, mode="r:gz") as tar:
        assert tar.extractfile("./weights.bin").read() == (package / "weights.bin").read_bytes()  # type: ignore[union-attr]
