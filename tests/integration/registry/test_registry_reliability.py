"""Registry guarantees under real processes: concurrent registration, kill -9, tampering."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from kiln.errors import PackageError
from kiln.registry import Registry, resolve_reference
from kiln.registry.errors import BadReferenceError, NotFoundError

SRC = str(Path(__file__).resolve().parents[3] / "src")
WORKER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from kiln.registry import Registry
    url, home, start, count = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
    packages = [Path(p) for p in sys.argv[5:]]
    with Registry(url, home=home) as reg:
        reg.list_models()
        start.touch()
        while not (start.parent / "go").exists():
            pass
        for package in packages:
            print(reg.register(package, name="shared").version, flush=True)
""")


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_registry_four_processes_get_distinct_gap_free_versions(
    database_url: str, tmp_path: Path, make_package: Callable[..., Path]
) -> None:
    Registry(database_url, home=tmp_path / "home").close()  # create the schema once
    per_process = 20
    procs, sync = [], tmp_path / "sync"
    sync.mkdir()
    for i in range(4):
        packages = [str(make_package()) for _ in range(per_process)]
        procs.append(subprocess.Popen(
            [sys.executable, "-c", WORKER, database_url, str(tmp_path / "home"),
             str(sync / f"ready-{i}"), str(per_process), *packages],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env()))
    deadline = time.monotonic() + 60
    while len(list(sync.glob("ready-*"))) < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    (sync / "go").touch()  # all four start registering at once
    numbers = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        numbers += [int(line) for line in out.split()]
    assert sorted(numbers) == list(range(1, 4 * per_process + 1))
    with Registry(database_url, home=tmp_path / "home") as reg:
        stored = [v.version for v in reg.list_versions("shared")]
    assert stored == list(range(1, 4 * per_process + 1))


KILLED_WORKER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from kiln.registry import Registry
    from kiln.runtime.package import MANIFEST_NAME
    url, home, marker, package = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
    with Registry(url, home=home) as reg:
        fs = reg.artifacts._fs
        put_file = fs.put_file
        def stalling_put(source, target, *args, **kwargs):
            if target.endswith(MANIFEST_NAME):  # every data file is stored, the manifest not
                marker.touch()
                time.sleep(600)
            return put_file(source, target, *args, **kwargs)
        fs.put_file = stalling_put
        reg.register(package, name="victim")
""")


def test_registry_kill_mid_upload_leaves_no_version_and_gc_finds_orphan(
    tmp_path: Path, kiln_home: Path, make_package: Callable[..., Path]
) -> None:
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    Registry(url).close()
    marker = tmp_path / "uploading"
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_WORKER, url, str(kiln_home), str(marker),
         str(make_package())], env=_env(), stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists(), proc.stderr.read() if proc.stderr else ""
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    with Registry(url) as reg:
        with pytest.raises(NotFoundError):
            reg.list_versions("victim")
        orphans = reg.artifacts.list_digests()
        assert len(orphans) == 1
        assert not reg.artifacts.exists(next(iter(orphans)))  # incomplete: never fetchable
        assert reg.gc(grace_s=3600) == []  # a registration may still be running
        assert reg.gc(grace_s=0) == sorted(orphans)
        assert reg.artifacts.list_digests() == set()


def test_registry_refuses_tampered_artifact_naming_the_file(
    kiln_home: Path, make_package: Callable[..., Path]
) -> None:
    with Registry() as reg:
        version = reg.register(make_package(), name="m")
        stored = reg.resolve("m@1")
        (stored / "weights.bin").write_bytes(b"tampered")
        with pytest.raises(PackageError, match="weights.bin was altered"):
            reg.resolve(version.ref)


def test_registry_refuses_tampered_manifest(
    kiln_home: Path, make_package: Callable[..., Path]
) -> None:
    with Registry() as reg:
        reg.register(make_package(metrics={"accuracy": 0.5}), name="m")
        manifest = reg.resolve("m@1") / "kiln.json"
        manifest.write_text(manifest.read_text().replace("0.5", "0.99"))
        with pytest.raises(Exception, match="kiln.json was altered"):
            reg.resolve("m@1")


@pytest.mark.parametrize(
    ("ref", "error", "message"),
    [("no/such/folder", BadReferenceError, "neither a package folder"),
     ("ghost@1", NotFoundError, "no model named 'ghost'"),
     ("m@7", NotFoundError, "has no version 7"),
     ("m@production", NotFoundError, "no alias 'production'")],
)
def test_resolve_reference_bad_reference_is_clear(
    kiln_home: Path, make_package: Callable[..., Path], ref: str, error: type, message: str
) -> None:
    with Registry() as reg:
        reg.register(make_package(), name="m")
    with pytest.raises(error, match=message):
        resolve_reference(ref)
