"""The MLflow half of ``bench/registry.py``: the same registry operations on MLflow's registry.

Run by ``bench/registry.py`` with the Python of a separate virtual environment that has MLflow
(``mlflow-skinny`` plus ``sqlalchemy`` and ``alembic`` is enough); it imports nothing from Kiln.
MLflow uses a SQLite tracking/registry database and a local file artifact root, its defaults
for one machine. Operations, each timed per call:

- register: a run whose artifacts are the package folder (``log_artifacts``), then
  ``create_model_version`` from ``runs:/<id>/model``, as ``mlflow.register_model`` does;
- resolve-alias: ``get_model_version_by_alias``;
- resolve-latest: ``search_model_versions`` ordered by version number, highest first, 1 result;
- search-page: ``search_model_versions`` filtered by a tag (``tags.team = 'vision'``, a third
  of the versions), a page of 100 (MLflow filters model versions by name, run, source and tags,
  not by metric thresholds, so Kiln's page has more to do);
- fetch: ``download_artifacts("models:/bench/<n>")`` into a fresh folder.

    python bench/registry_mlflow.py SPEC.json OUT.json

``SPEC.json`` holds ``workdir``, ``packages`` (folders, one per version), ``alias_version``,
``lookups``, ``pages``, ``fetch_versions`` and ``warmup``; ``OUT.json`` gets the MLflow
version and, per operation, the list of call times in milliseconds.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

MODEL = "bench"


def timed(samples: list[float], fn: Any, *args: Any, **kwargs: Any) -> Any:
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    samples.append((time.perf_counter() - start) * 1000.0)
    return result


def main(spec_path: str, out_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    workdir = Path(spec["workdir"])
    workdir.mkdir(parents=True, exist_ok=True)
    os.chdir(workdir)  # MLflow writes ./mlruns for some defaults; keep it in the workdir

    import mlflow
    from mlflow import MlflowClient

    db = f"sqlite:///{workdir / 'mlflow.db'}"
    mlflow.set_tracking_uri(db)
    mlflow.set_registry_uri(db)
    experiment = mlflow.create_experiment("bench", artifact_location=(workdir / "artifacts").as_uri())
    client = MlflowClient()
    client.create_registered_model(MODEL)

    times: dict[str, list[float]] = {op: [] for op in
                                     ("register", "resolve-alias", "resolve-latest", "search-page",
                                      "fetch")}

    def register(package: str, team: str) -> Any:
        with mlflow.start_run(experiment_id=experiment) as run:
            mlflow.log_artifacts(package, "model")
        return client.create_model_version(MODEL, source=f"runs:/{run.info.run_id}/model",
                                           run_id=run.info.run_id, tags={"team": team})

    for i, package in enumerate(spec["packages"]):
        timed(times["register"], register, package, ("vision", "nlp", "search")[i % 3])
    client.set_registered_model_alias(MODEL, "production", str(spec["alias_version"]))

    for _ in range(spec["warmup"]):
        client.get_model_version_by_alias(MODEL, "production")
    for _ in range(spec["lookups"]):
        found = timed(times["resolve-alias"], client.get_model_version_by_alias, MODEL, "production")
    assert int(found.version) == spec["alias_version"], found.version

    for _ in range(spec["lookups"]):
        latest = timed(times["resolve-latest"], client.search_model_versions, f"name='{MODEL}'",
                       max_results=1, order_by=["version_number DESC"])
    assert int(latest[0].version) == len(spec["packages"]), latest[0].version

    page_filter = f"name='{MODEL}' and tags.team = 'vision'"
    for _ in range(spec["pages"]):
        page = timed(times["search-page"], client.search_model_versions, page_filter, max_results=100)
    assert len(page) == min(100, (len(spec["packages"]) + 2) // 3), len(page)

    fetched = workdir / "fetched"
    for i, version in enumerate(spec["fetch_versions"]):
        path = timed(times["fetch"], mlflow.artifacts.download_artifacts,
                     artifact_uri=f"models:/{MODEL}/{version}", dst_path=str(fetched / str(i)))
        assert (Path(path) / "kiln.json").is_file(), path

    Path(out_path).write_text(json.dumps({"version": mlflow.__version__, "times_ms": times}))


if __name__ == "__main__":
    main(*sys.argv[1:3])
