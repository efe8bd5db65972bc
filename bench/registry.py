"""Benchmark the model registry on SQLite and PostgreSQL, and MLflow's registry, in one run.

On ``--versions`` small real packages (one untrained CNN written by Kiln's package writer, each
copy with its own note file and accuracy, so every version has its own digest) it times each
call of four operations through the Python API and reports p50/p99:

- register: verify the package, upload it to the content-addressed store, record the version;
- resolve-alias: ``bench@production`` to its version record;
- list-versions: every version of the model;
- fetch: ``bench@N`` (random N) to a local, sha256-verified package folder.

Kiln runs on SQLite (WAL, the default) and on PostgreSQL (a throw-away cluster the bench starts
with initdb/pg_ctl and stops at the end, or ``--postgres-url``), artifacts in a local folder.
With ``--mlflow-python`` (a Python whose environment has MLflow), ``bench/registry_mlflow.py``
runs the same operations on MLflow's registry (SQLite, local file artifacts) over the same
package folders, and the table gives Kiln/MLflow ratios (below 1: Kiln is faster). Issue 4's
goal: resolve-alias p99 under 5 ms on SQLite.

Differences to keep in mind when reading the ratios: MLflow's register includes creating the
run its artifacts live in (that is where MLflow stores files); Kiln's fetch from a local store
hands back the stored folder after checking every file's sha256, while MLflow's copies the files
into a new folder and checks nothing. All calls go through each project's Python API, in
process, one at a time.

    python bench/registry.py --mlflow-python /tmp/mlflow-venv/bin/python --json-out reg.json
    python bench/registry.py --versions 20 --lookups 50 --lists 5 --fetches 10   # smoke

MLflow in its own environment: ``python -m venv /tmp/mlflow-venv &&
/tmp/mlflow-venv/bin/pip install mlflow-skinny sqlalchemy alembic``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODEL = "bench"
OPERATIONS = ("register", "resolve-alias", "list-versions", "fetch")
ALIAS_P99_GOAL_MS = 5.0
# Manifest fields finalize_package writes itself; a copy's manifest starts without them.
_WRITTEN_BY_FINALIZE = ("schema_version", "kiln_version", "files")


def build_packages(dest: Path, count: int) -> list[Path]:
    """``count`` small real packages: one untrained CNN, each copy with its own digest."""
    from tests.conftest import make_image_package

    from kiln.runtime.package import MANIFEST_NAME, finalize_package, read_manifest, staged_package

    base = make_image_package(dest / "base")
    manifest = {k: v for k, v in read_manifest(base).items() if k not in _WRITTEN_BY_FINALIZE}
    packages = []
    for i in range(count):
        with staged_package(dest / f"v{i:05d}") as staging:
            shutil.copytree(base, staging, dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns(MANIFEST_NAME))
            (staging / "bench-note.txt").write_text(f"benchmark copy {i}\n")
            finalize_package(staging, {**manifest, "metrics": {"accuracy": 0.5 + i / (2 * count)}})
        packages.append(dest / f"v{i:05d}")
    return packages


def timed_calls(call: Callable[[Any], Any], items: list[Any]) -> tuple[list[float], Any]:
    """Time ``call(item)`` for each item; return the times in ms and the last result."""
    samples, result = [], None
    for item in items:
        start = time.perf_counter()
        result = call(item)
        samples.append((time.perf_counter() - start) * 1000.0)
    return samples, result


def bench_kiln(url: str, workdir: Path, packages: list[Path], plan: dict[str, Any]) -> dict[str, list[float]]:
    """Per-call times (ms) of each operation on a fresh Kiln registry at ``url``."""
    from kiln.registry import Registry

    times: dict[str, list[float]] = {}
    with Registry(url, artifacts_url=str(workdir / "artifacts"), home=workdir / "home") as registry:
        times["register"], _ = timed_calls(lambda p: registry.register(p, name=MODEL), packages)
        registry.set_alias(MODEL, "production", plan["alias_version"])
        alias = f"{MODEL}@production"
        for _ in range(plan["warmup"]):
            registry.get_version(alias)
        times["resolve-alias"], found = timed_calls(registry.get_version, [alias] * plan["lookups"])
        assert found.version == plan["alias_version"], found
        times["list-versions"], listed = timed_calls(registry.list_versions, [MODEL] * plan["lists"])
        assert len(listed) == len(packages), len(listed)
        refs = [f"{MODEL}@{v}" for v in plan["fetch_versions"]]
        times["fetch"], path = timed_calls(registry.resolve, refs)
        assert (path / "kiln.json").is_file(), path
    return times


def bench_postgres(
    server: str | None, workdir: Path, packages: list[Path], plan: dict[str, Any]
) -> dict[str, list[float]] | str:
    """Kiln on PostgreSQL: ``server``, else a throw-away cluster; a reason string if none."""
    from tests.postgres import PostgresCluster, PostgresError, create_database, drop_database

    cluster = None
    if server is None:
        try:
            cluster = PostgresCluster.start()
        except PostgresError as exc:
            return f"not measured: {exc}"
        server = cluster.url
    name = f"kiln_bench_{uuid.uuid4().hex[:8]}"
    try:
        url = create_database(server, name)
        try:
            return bench_kiln(url, workdir, packages, plan)
        finally:
            drop_database(server, name)
    finally:
        if cluster is not None:
            cluster.stop()


def bench_mlflow(
    python: str | None, workdir: Path, packages: list[Path], plan: dict[str, Any]
) -> dict[str, Any] | str:
    """MLflow's per-call times (``times_ms``) from ``bench/registry_mlflow.py``, and its ``version``.

    Returns a reason string instead when MLflow could not be measured.
    """
    if python is None:
        return ("not measured: pass --mlflow-python PATH, the Python of an environment with "
                "MLflow (python -m venv V && V/bin/pip install mlflow-skinny sqlalchemy alembic)")
    if shutil.which(python) is None:
        return f"not measured: no Python at {python}"
    check = subprocess.run([python, "-c", "import mlflow, sqlalchemy, alembic"],
                           capture_output=True, text=True)
    if check.returncode != 0:
        return f"not measured: {python} cannot import mlflow: {check.stderr.strip()[-300:]}"
    spec = {"workdir": str(workdir), "packages": [str(p) for p in packages], **plan}
    spec_path, out_path = workdir.parent / "mlflow-spec.json", workdir.parent / "mlflow-out.json"
    spec_path.write_text(json.dumps(spec))
    # MLflow 3 sends usage telemetry unless told not to; this machine has no network anyway.
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
    env.pop("PYTHONPATH", None)
    done = subprocess.run([python, str(ROOT / "bench" / "registry_mlflow.py"), str(spec_path),
                           str(out_path)], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        return f"not measured: MLflow run failed: {done.stderr.strip()[-800:]}"
    return dict(json.loads(out_path.read_text()))


def summarize(samples: list[float]) -> dict[str, float]:
    """Count, p50, p99 and mean of per-call times in ms."""
    values = np.asarray(samples)
    return {"n": len(samples), "p50_ms": float(np.percentile(values, 50)),
            "p99_ms": float(np.percentile(values, 99)), "mean_ms": float(values.mean())}


def print_table(results: dict[str, dict[str, Any]], notes: dict[str, str]) -> None:
    mlflow = results.get("MLflow SQLite")
    print(f"{'operation':<14} {'backend':<16} {'n':>5} {'p50 ms':>9} {'p99 ms':>9}"
          f" {'p50 vs MLflow':>14} {'p99 vs MLflow':>14}")
    for op in OPERATIONS:
        for backend, ops in results.items():
            row = ops[op]
            line = f"{op:<14} {backend:<16} {row['n']:>5} {row['p50_ms']:>9.2f} {row['p99_ms']:>9.2f}"
            if mlflow and not backend.startswith("MLflow"):
                line += (f" {row['p50_ms'] / mlflow[op]['p50_ms']:>13.2g}x"
                         f" {row['p99_ms'] / mlflow[op]['p99_ms']:>13.2g}x")
            print(line)
    for backend, note in notes.items():
        print(f"{backend}: {note}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--versions", type=int, default=1000, help="versions to register")
    parser.add_argument("--lookups", type=int, default=1000, help="timed alias resolutions")
    parser.add_argument("--lists", type=int, default=100, help="timed full version listings")
    parser.add_argument("--fetches", type=int, default=200, help="timed package fetches")
    parser.add_argument("--warmup", type=int, default=20, help="untimed alias resolutions first")
    parser.add_argument("--postgres-url", default=None,
                        help="PostgreSQL server URL (no database) instead of a throw-away cluster")
    parser.add_argument("--no-postgres", action="store_true", help="skip PostgreSQL")
    parser.add_argument("--mlflow-python", default=None,
                        help="Python of an environment with MLflow, to measure MLflow too")
    parser.add_argument("--json-out", type=Path, default=None, help="also write results as JSON")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fetched versions")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.versions < 1:
        sys.exit(f"--versions must be >= 1, got {args.versions}")
    sys.path.insert(0, str(ROOT))  # tests.postgres and tests.conftest live beside src/
    rng = random.Random(args.seed)
    plan = {
        "alias_version": (args.versions + 1) // 2,
        "lookups": args.lookups,
        "lists": args.lists,
        "warmup": args.warmup,
        "fetch_versions": [rng.randint(1, args.versions) for _ in range(args.fetches)],
    }
    base = Path(tempfile.mkdtemp(prefix="kiln-bench-registry-"))
    results: dict[str, dict[str, Any]] = {}
    notes: dict[str, str] = {}
    started = time.time()
    try:
        packages = build_packages(base / "packages", args.versions)
        runs: list[tuple[str, Callable[[], Any]]] = [
            ("Kiln SQLite", lambda: bench_kiln(f"sqlite:///{base / 'sqlite' / 'registry.db'}",
                                               base / "sqlite", packages, plan)),
        ]
        if args.no_postgres:
            notes["Kiln PostgreSQL"] = "not measured: --no-postgres"
        else:
            runs.append(("Kiln PostgreSQL",
                         lambda: bench_postgres(args.postgres_url, base / "postgres", packages, plan)))
        runs.append(("MLflow SQLite", lambda: bench_mlflow(args.mlflow_python, base / "mlflow",
                                                           packages, plan)))
        for backend, run in runs:
            times = run()
            if isinstance(times, str):
                notes[backend] = times
                continue
            if "version" in times:  # MLflow's answer: its version and its times
                notes[backend] = f"mlflow {times['version']}"
                times = times["times_ms"]
            results[backend] = {op: summarize(times[op]) for op in OPERATIONS}
    finally:
        shutil.rmtree(base, ignore_errors=True)

    print(f"registry benchmark: {args.versions} versions, {args.lookups} alias lookups, "
          f"{args.lists} listings, {args.fetches} fetches; {time.time() - started:.0f} s; "
          f"ratios are Kiln/MLflow (below 1: Kiln faster)")
    print_table(results, notes)
    alias_p99 = results["Kiln SQLite"]["resolve-alias"]["p99_ms"]
    is_goal_met = alias_p99 < ALIAS_P99_GOAL_MS
    print(f"goal: resolve-alias p99 on SQLite < {ALIAS_P99_GOAL_MS:g} ms: {alias_p99:.2f} ms, "
          f"{'met' if is_goal_met else 'NOT met'}")
    if args.json_out:
        args.json_out.write_text(json.dumps({
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "settings": {k: v for k, v in vars(args).items() if k != "json_out"},
            "results": results,
            "notes": notes,
            "goal": {"resolve_alias_p99_ms": alias_p99, "limit_ms": ALIAS_P99_GOAL_MS,
                     "is_met": is_goal_met},
        }, indent=2, default=str))


if __name__ == "__main__":
    main()
