"""Benchmark the model registry at scale on SQLite and PostgreSQL, and MLflow's, in one run.

For each backend it grows one registry to each of ``--scales`` versions (default 1k, 10k, 100k)
across ``--models`` models and, at each size, times ``--samples`` calls of each operation
through the Python API (p50/p99):

- register: verify a small real package (an untrained CNN, each copy with its own note file and
  accuracy, so digests differ), upload it to the content-addressed store, record the version;
- resolve-alias: ``mNNNN@production`` (a random model) to its version record;
- resolve-latest: ``mNNNN@latest``;
- search-page: one filtered page of 100 across every model: task, a tag, a metric threshold,
  ordered by that metric, highest first (a sixth of the versions match);
- fetch: ``mNNNN@N`` (a random really registered version) to a verified local package folder.

Filling the registry between sizes is not timed: metadata-only versions go in through
``SqlStore.create_versions``, the registration write path (model lock, counter, version row, tag
and metric rows) without the artifact upload, 1,000 versions per transaction; each has its own
digest, tags (team), metrics (accuracy) and format. Every model gets a ``production`` alias.
Then, at the largest size:

- contention: ``--writers`` processes register ``--writes`` real packages each into one model at
  the same time; p50/p99 per registration, and a check that the numbers have no duplicate or gap;
- replicas: ``--replicas`` simulated serving replicas each poll one alias once a second, for
  ``--replica-seconds`` seconds, while the alias moves halfway: database queries per second and
  the time until the last replica sees the move; once resolving directly, once through an
  ``AliasCache`` per replica with ``max_age_s`` 1 and 5.

MLflow (``--mlflow-python``: a Python whose environment has MLflow) runs in the same run on
1,000 versions of one model (SQLite, local artifacts) through ``bench/registry_mlflow.py``:
register, resolve-alias, latest (``search_model_versions`` ordered by version, 1 result),
a page of 100 filtered by a tag, and fetch. Kiln's rows at 1k are compared with it.

With ``--lock PATH`` the run holds ``flock PATH`` from its first timed phase to its end (the
packages are built and the first filling done before), so that benchmarks of several people on
one machine do not time each other.

    python bench/registry.py --mlflow-python /work/mlflow-venv/bin/python --lock /tmp/kiln-bench.lock
    python bench/registry.py --scales 200,400 --models 50 --samples 20 --writes 10 --replicas 10 \
        --replica-seconds 4 --no-postgres                                     # smoke
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OPERATIONS = ("register", "resolve-alias", "resolve-latest", "search-page", "fetch")
TASKS = ("image-classification", "text-classification")
FILL_BATCH = 1000
# Manifest fields finalize_package writes itself; a copy's manifest starts without them.
_WRITTEN_BY_FINALIZE = ("schema_version", "kiln_version", "files")
CONTENTION_WORKER = r'''
import json, sys, time
from pathlib import Path
from kiln.registry import Registry
url, artifacts, home, go, out = sys.argv[1:6]
packages = sys.argv[6:]
with Registry(url, artifacts_url=artifacts, home=Path(home)) as reg:
    reg.list_models()
    Path(out + ".ready").touch()
    while not Path(go).exists():
        time.sleep(0.001)
    times, numbers = [], []
    for package in packages:
        start = time.perf_counter()
        numbers.append(reg.register(package, name="contended").version)
        times.append((time.perf_counter() - start) * 1000.0)
Path(out).write_text(json.dumps({"times": times, "numbers": numbers}))
'''


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


_held_locks: list[Any] = []


@contextlib.contextmanager
def bench_lock(path: Path | None) -> Iterator[None]:
    """Take ``flock path`` (when given) before the first timed phase and hold it to the end.

    Held once rather than per phase: another benchmark waiting on the lock would otherwise take
    it between two phases and keep it for as long as it runs.
    """
    if path is not None and not _held_locks:
        handle = path.open("a")
        fcntl.flock(handle, fcntl.LOCK_EX)
        _held_locks.append(handle)  # released when the process exits
    yield


def timed_calls(call: Callable[[Any], Any], items: list[Any]) -> list[float]:
    """Time ``call(item)`` for each item, in ms."""
    samples = []
    for item in items:
        start = time.perf_counter()
        call(item)
        samples.append((time.perf_counter() - start) * 1000.0)
    return samples


def summarize(samples: list[float]) -> dict[str, float]:
    """Count, p50, p99 and mean of per-call times in ms."""
    values = np.asarray(samples)
    return {"n": len(samples), "p50_ms": float(np.percentile(values, 50)),
            "p99_ms": float(np.percentile(values, 99)), "mean_ms": float(values.mean())}


def model_name(i: int) -> str:
    return f"m{i:04d}"


def fill(store: Any, *, start: int, stop: int, models: int, rng: random.Random) -> None:
    """Metadata-only versions ``start..stop-1``, spread evenly over the models (untimed).

    Version ``i`` goes to model ``i % models``; a transaction takes the new versions of as many
    whole models as make about ``FILL_BATCH`` versions, so each model is locked once per batch.
    """
    from kiln.registry.store import NewVersion

    per_model: dict[int, list[int]] = {}
    for i in range(start, stop):
        per_model.setdefault(i % models, []).append(i)
    batch: list[Any] = []
    for m in sorted(per_model):
        batch += [
            NewVersion(model=model_name(m), task=TASKS[m % 2], package_digest=f"{i:064x}",
                       format=("torch", "onnx")[i % 3 == 0], precision="fp32",
                       metrics={"accuracy": rng.random()}, tags={"team": ("vision", "vision", "nlp")[i % 3]},
                       created_by="bench")
            for i in per_model[m]
        ]
        if len(batch) >= FILL_BATCH or m == max(per_model):
            store.create_versions(batch)
            batch = []


def search_query() -> Any:
    from kiln.registry.search import MetricFilter, VersionQuery

    return VersionQuery(task="image-classification", tags={"team": "vision"},
                        metrics=(MetricFilter("accuracy", ">=", 0.5),), order_by="metric:accuracy",
                        is_descending=True, limit=100)


def bench_backend(url: str, workdir: Path, packages: list[Path], args: argparse.Namespace,
                  notes: list[str]) -> dict[str, Any]:
    """Every timed phase on one fresh registry at ``url``."""
    from kiln.registry import Registry

    rng = random.Random(args.seed)
    artifacts = str(workdir / "artifacts")
    results: dict[str, Any] = {"scales": {}}
    spare = list(packages)
    registered: list[str] = []
    with Registry(url, artifacts_url=artifacts, home=workdir / "home") as registry:
        size = 0
        for scale in args.scales:
            started = time.perf_counter()
            fill(registry.store, start=size, stop=scale, models=args.models, rng=rng)
            if size == 0:
                for m in range(args.models):
                    registry.set_alias(model_name(m), "production", 1)
            size = scale
            notes.append(f"{url.split(':')[0]}: filled to {scale} versions in "
                         f"{time.perf_counter() - started:.0f} s")
            with bench_lock(args.lock):
                times = time_operations(registry, spare, registered, args, rng)
            size += args.samples
            results["scales"][str(scale)] = {op: summarize(t) for op, t in times.items()}
        with bench_lock(args.lock):
            results["contention"] = bench_contention(url, artifacts, workdir, spare, args)
            results["replicas"] = bench_replicas(registry, url, args)
    return results


def time_operations(registry: Any, spare: list[Path], registered: list[str],
                    args: argparse.Namespace, rng: random.Random) -> dict[str, list[float]]:
    """Per-call times of each operation at the registry's current size."""
    query = search_query()
    # Even-numbered models hold image-classification versions, as the real packages are.
    models = [model_name(2 * rng.randrange(args.models // 2)) for _ in range(args.samples)]
    for ref in [f"{m}@production" for m in models[:20]]:
        registry.get_version(ref)  # warm the connection pool and caches
    times: dict[str, list[float]] = {}
    batch = [spare.pop() for _ in range(args.samples)]

    def register(i: int) -> None:
        registered.append(registry.register(batch[i], name=models[i], created_by="bench").ref)

    times["register"] = timed_calls(register, list(range(args.samples)))
    times["resolve-alias"] = timed_calls(registry.get_version, [f"{m}@production" for m in models])
    times["resolve-latest"] = timed_calls(registry.get_version, [f"{m}@latest" for m in models])
    page = registry.search(query)
    assert page.versions, "the filtered page is empty"
    times["search-page"] = timed_calls(registry.search, [query] * args.samples)
    times["fetch"] = timed_calls(registry.resolve, [rng.choice(registered) for _ in range(args.samples)])
    return times


def bench_contention(url: str, artifacts: str, workdir: Path, spare: list[Path],
                     args: argparse.Namespace) -> dict[str, Any]:
    """``--writers`` processes registering into one model at once: per-call times and a gap check."""
    sync = workdir / "contention"
    sync.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    procs = []
    for w in range(args.writers):
        mine = [str(spare.pop()) for _ in range(args.writes)]
        procs.append(subprocess.Popen(
            [sys.executable, "-c", CONTENTION_WORKER, url, artifacts, str(workdir / "home"),
             str(sync / "go"), str(sync / f"out{w}"), *mine], env=env))
    while len(list(sync.glob("*.ready"))) < args.writers:
        time.sleep(0.01)
    (sync / "go").touch()
    for proc in procs:
        if proc.wait() != 0:
            raise RuntimeError(f"a contention writer failed with status {proc.returncode}")
    outs = [json.loads((sync / f"out{w}").read_text()) for w in range(args.writers)]
    numbers = sorted(n for out in outs for n in out["numbers"])
    is_gap_free = numbers == list(range(1, args.writers * args.writes + 1))
    times = [t for out in outs for t in out["times"]]
    return {**summarize(times), "writers": args.writers, "is_gap_free": is_gap_free}


def bench_replicas(registry: Any, url: str, args: argparse.Namespace) -> dict[str, Any]:
    """Simulated replicas polling ``m0000@production`` once a second while it moves."""
    from sqlalchemy import event

    from kiln.registry.cache import AliasCache
    from kiln.registry.sql_store import SqlStore

    results = {}
    for label, max_age_s in (("direct", None), ("cache 1 s", 1.0), ("cache 5 s", 5.0)):
        store = SqlStore.from_url(url)
        queries = [0]

        @event.listens_for(store._engine, "before_cursor_execute")
        def _count(_conn: Any, _cursor: Any, statement: str, *_args: Any,
                   queries: list[int] = queries) -> None:
            if statement.lstrip()[:6].upper() == "SELECT":
                queries[0] += 1

        target = registry.get_version("m0000@latest").version
        registry.set_alias("m0000", "production", 1)
        followers: list[Callable[[], int]] = []
        for _ in range(args.replicas):
            if max_age_s is None:
                followers.append(lambda store=store: store.get_alias("m0000", "production").version)
            else:
                cache = AliasCache(store, max_age_s=max_age_s)
                followers.append(lambda cache=cache: cache.get("m0000@production").version)
        results[label] = poll(followers, registry, target, args.replica_seconds, queries)
        store.close()
    return results


def poll(followers: list[Callable[[], int]], registry: Any, target: int, seconds: float,
         queries: list[int]) -> dict[str, float]:
    """Each follower polls once a second at its own phase; the alias moves at half time."""
    n = len(followers)
    start = time.perf_counter()
    move_at = seconds / 2
    moved_at: float | None = None
    seen_at: dict[int, float] = {}
    ticks = sorted((k + i / n, i) for k in range(int(seconds)) for i in range(n))
    counted_from = queries[0]
    for due, i in ticks:
        now = time.perf_counter() - start
        if moved_at is None and now >= move_at:
            registry.set_alias("m0000", "production", target)
            moved_at = time.perf_counter() - start
        if due > now:
            time.sleep(due - now)
        version = followers[i]()
        if moved_at is not None and version == target and i not in seen_at:
            seen_at[i] = time.perf_counter() - start - moved_at
    elapsed = time.perf_counter() - start
    return {"queries_per_s": (queries[0] - counted_from) / elapsed,
            "all_see_move_s": max(seen_at.values()) if len(seen_at) == n else float("nan"),
            "replicas": n}


def bench_postgres(server: str | None, workdir: Path, packages: list[Path],
                   args: argparse.Namespace, notes: list[str]) -> dict[str, Any] | str:
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
            return bench_backend(url, workdir, packages, args, notes)
        finally:
            drop_database(server, name)
    finally:
        if cluster is not None:
            cluster.stop()


def bench_mlflow(python: str | None, workdir: Path, packages: list[Path],
                 args: argparse.Namespace) -> dict[str, Any] | str:
    """MLflow's per-call times (``times_ms``) from ``bench/registry_mlflow.py``, and its ``version``.

    Returns a reason string instead when MLflow could not be measured.
    """
    if python is None:
        return "not measured: pass --mlflow-python PATH, the Python of an environment with MLflow"
    if shutil.which(python) is None:
        return f"not measured: no Python at {python}"
    rng = random.Random(args.seed)
    spec = {"workdir": str(workdir), "packages": [str(p) for p in packages[:args.mlflow_versions]],
            "alias_version": args.mlflow_versions // 2, "lookups": args.samples,
            "pages": args.samples, "warmup": 20,
            "fetch_versions": [rng.randint(1, args.mlflow_versions) for _ in range(args.samples)]}
    spec_path, out_path = workdir.parent / "mlflow-spec.json", workdir.parent / "mlflow-out.json"
    spec_path.write_text(json.dumps(spec))
    # MLflow 3 sends usage telemetry unless told not to; this machine has no network anyway.
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
    env.pop("PYTHONPATH", None)
    with bench_lock(args.lock):
        done = subprocess.run([python, str(ROOT / "bench" / "registry_mlflow.py"), str(spec_path),
                               str(out_path)], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        return f"not measured: MLflow run failed: {done.stderr.strip()[-800:]}"
    return dict(json.loads(out_path.read_text()))


def measured(results: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """The Kiln backends that were measured, and their results (a skipped one holds a reason)."""
    for backend in ("Kiln SQLite", "Kiln PostgreSQL"):
        data = results.get(backend)
        if isinstance(data, dict):
            yield backend, data


def print_report(results: dict[str, Any], args: argparse.Namespace) -> None:
    mlflow = results.get("MLflow SQLite")
    mlflow_ops = mlflow["ops"] if isinstance(mlflow, dict) else {}
    first = str(args.scales[0])
    print("| operation | backend | " + " | ".join(f"p50 / p99 ms at {s:,}" for s in args.scales)
          + " | worst p50 and p99 vs smallest | p50 / p99 vs MLflow at 1k |")
    print("|---|---|" + "---|" * (len(args.scales) + 2))
    for op in OPERATIONS:
        for backend, data in measured(results):
            cells = [data["scales"][str(s)][op] for s in args.scales]
            base = cells[0]
            growth = max(max(c["p50_ms"] / base["p50_ms"], c["p99_ms"] / base["p99_ms"]) for c in cells)
            vs = ""
            if op in mlflow_ops:
                m, k = mlflow_ops[op], data["scales"][first][op]
                vs = f"{m['p50_ms'] / k['p50_ms']:.1f}x / {m['p99_ms'] / k['p99_ms']:.1f}x faster"
            print(f"| {op} | {backend} | " + " | ".join(f"{c['p50_ms']:.2f} / {c['p99_ms']:.2f}" for c in cells)
                  + f" | {growth:.2f}x | {vs} |")
        if op in mlflow_ops:
            m = mlflow_ops[op]
            print(f"| {op} | MLflow SQLite | {m['p50_ms']:.2f} / {m['p99_ms']:.2f} (1k) |"
                  + " |" * (len(args.scales) + 1))
    print()
    print("| contention | backend | n | p50 ms | p99 ms | numbers gap-free |")
    print("|---|---|---|---|---|---|")
    for backend, data in measured(results):
        c = data["contention"]
        print(f"| {c['writers']} writers, 1 model | {backend} | {c['n']} | {c['p50_ms']:.1f} | "
              f"{c['p99_ms']:.1f} | {c['is_gap_free']} |")
    print()
    print("| replicas | backend | resolution | DB queries/s | all see the move after s |")
    print("|---|---|---|---|---|")
    # The alias moves at half time; a replica that has not seen it by the end saw it later, if at all.
    unseen = f"> {args.replica_seconds / 2:g} (run ended first)"
    for backend, data in measured(results):
        for label, r in data["replicas"].items():
            seen = r["all_see_move_s"]
            print(f"| {r['replicas']} | {backend} | {label} | {r['queries_per_s']:.0f} | "
                  f"{unseen if math.isnan(seen) else f'{seen:.2f}'} |")
    for backend, data in results.items():
        if isinstance(data, str):
            print(f"{backend}: {data}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scales", default="1000,10000,100000",
                        help="registry sizes (versions) to time at, comma-separated, increasing")
    parser.add_argument("--models", type=int, default=1000, help="models the versions spread over")
    parser.add_argument("--samples", type=int, default=200, help="timed calls per operation and size")
    parser.add_argument("--writers", type=int, default=4, help="concurrent registering processes")
    parser.add_argument("--writes", type=int, default=100, help="registrations per writer")
    parser.add_argument("--replicas", type=int, default=100, help="simulated replicas polling an alias")
    parser.add_argument("--replica-seconds", type=float, default=12.0, help="how long they poll")
    parser.add_argument("--mlflow-versions", type=int, default=1000, help="versions MLflow registers")
    parser.add_argument("--postgres-url", default=None,
                        help="PostgreSQL server URL (no database) instead of a throw-away cluster")
    parser.add_argument("--no-postgres", action="store_true", help="skip PostgreSQL")
    parser.add_argument("--mlflow-python", default=None,
                        help="Python of an environment with MLflow, to measure MLflow too")
    parser.add_argument("--lock", type=Path, default=None, help="flock this file while timing")
    parser.add_argument("--json-out", type=Path, default=None, help="also write results as JSON")
    parser.add_argument("--seed", type=int, default=0, help="seed of models and versions picked")
    args = parser.parse_args()
    args.scales = [int(s) for s in args.scales.split(",")]
    if args.scales != sorted(args.scales) or args.scales[0] < args.models:
        parser.error(f"--scales must increase and start at >= --models, got {args.scales}")
    return args


def main() -> None:
    args = parse_args()
    sys.path.insert(0, str(ROOT))  # tests.postgres and tests.conftest live beside src/
    base = Path(tempfile.mkdtemp(prefix="kiln-bench-registry-"))
    results: dict[str, Any] = {}
    notes: list[str] = []
    started = time.time()
    load_before = os.getloadavg()
    try:
        needed = max(args.mlflow_versions, len(args.scales) * args.samples + args.writers * args.writes)
        packages = build_packages(base / "packages", needed)
        results["Kiln SQLite"] = bench_backend(f"sqlite:///{base / 'sqlite' / 'registry.db'}",
                                               base / "sqlite", packages, args, notes)
        if args.no_postgres:
            results["Kiln PostgreSQL"] = "not measured: --no-postgres"
        else:
            results["Kiln PostgreSQL"] = bench_postgres(args.postgres_url, base / "postgres", packages,
                                                        args, notes)
        mlflow = bench_mlflow(args.mlflow_python, base / "mlflow", packages, args)
        if isinstance(mlflow, dict):
            mlflow = {"version": mlflow["version"],
                      "ops": {op: summarize(t) for op, t in mlflow["times_ms"].items()}}
        results["MLflow SQLite"] = mlflow
    finally:
        shutil.rmtree(base, ignore_errors=True)
    load_after = os.getloadavg()
    print(f"registry benchmark: {args.scales} versions over {args.models} models, {args.samples} "
          f"timed calls per operation and size; {time.time() - started:.0f} s; load average "
          f"{load_before[0]:.1f} before, {load_after[0]:.1f} after")
    for note in notes:
        print(note)
    if isinstance(results["MLflow SQLite"], dict):
        print(f"MLflow {results['MLflow SQLite']['version']}")
    print_report(results, args)
    if args.json_out:
        args.json_out.write_text(json.dumps({
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "settings": {k: str(v) for k, v in vars(args).items()},
            "load_average": [load_before, load_after], "notes": notes, "results": results,
        }, indent=2, default=str))


if __name__ == "__main__":
    main()
