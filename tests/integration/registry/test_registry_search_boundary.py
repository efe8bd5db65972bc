"""Search over real HTTP (uvicorn on a free port) and through `kiln registry`, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from typer.testing import CliRunner

from kiln.cli.main import app
from kiln.registry import Registry
from kiln.registry.http import create_app
from kiln.registry.store import NewVersion
from tests.helpers import free_port

pytestmark = pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)


@pytest.fixture
def populated(database_url: str, tmp_path: Path, kiln_home: Path) -> Iterator[Registry]:
    """Models a (7 versions, accuracy 0.1..0.7, tag team=nlp on odd ones) and b (one onnx)."""
    reg = Registry(database_url)
    reg.store.create_versions([
        NewVersion(model="a", task="text-classification", package_digest=f"{i:064x}", format="torch",
                   metrics={"accuracy": i / 10}, tags={"team": "nlp"} if i % 2 else {})
        for i in range(1, 8)
    ] + [NewVersion(model="b", task="image-classification", package_digest="f" * 64, format="onnx")])
    reg.set_alias("a", "production", 3)
    yield reg
    reg.close()


@pytest.fixture
def base_url(populated: Registry) -> Iterator[str]:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(populated, is_read_open=True), host="127.0.0.1",
                                           port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def _refs(body: dict) -> list[str]:
    return [f"{v['model']}@{v['version']}" for v in body["versions"]]


def test_http_search_filters_orders_and_pages(base_url: str) -> None:
    params = {"metric": "accuracy>=0.3", "tag": "team=nlp", "order_by": "metric:accuracy",
              "descending": "true", "limit": "2"}
    first = httpx.get(f"{base_url}/versions", params=params)
    assert first.status_code == 200, first.text
    assert _refs(first.json()) == ["a@7", "a@5"]
    second = httpx.get(f"{base_url}/versions", params={**params, "cursor": first.json()["next_cursor"]})
    assert _refs(second.json()) == ["a@3"] and second.json()["next_cursor"] is None
    assert second.json()["versions"][0]["aliases"] == ["production"]
    onnx = httpx.get(f"{base_url}/versions", params={"format": "onnx", "task": "image-classification"})
    assert _refs(onnx.json()) == ["b@1"]
    aliased = httpx.get(f"{base_url}/versions", params={"alias": "*"})
    assert _refs(aliased.json()) == ["a@3"]
    latest = httpx.get(f"{base_url}/models/a/aliases/latest")
    assert latest.json()["version"] == 7


@pytest.mark.parametrize(
    ("params", "message"),
    [({"colour": "red"}, "colour: unknown filter field"),
     ({"cursor": "garbage"}, "cursor: is not a cursor"),
     ({"metric": "accuracy>=high"}, "metric: threshold of 'accuracy' must be a number"),
     ({"limit": "0"}, "limit: must be between 1 and 1000"),
     ({"created_before": "soon"}, "created_before: expected an ISO 8601 time")],
)
def test_http_search_bad_field_is_400_naming_it(base_url: str, params: dict, message: str) -> None:
    response = httpx.get(f"{base_url}/versions", params=params)
    assert response.status_code == 400
    assert response.json()["detail"].startswith(message)


def test_http_search_unknown_model_is_404(base_url: str) -> None:
    response = httpx.get(f"{base_url}/versions", params={"model": "ghost"})
    assert response.status_code == 404 and "ghost" in response.json()["detail"]


def test_cli_search_pages_with_cursor_and_filters(populated: Registry, database_url: str) -> None:
    runner = CliRunner()
    base = ["registry", "--db", database_url, "search"]
    first = runner.invoke(app, [*base, "--model", "a", "--metric", "accuracy>0.35", "--limit", "2"])
    assert first.exit_code == 0, first.output
    lines = first.output.strip().splitlines()
    assert [line.split("\t")[0] for line in lines[:2]] == ["a@4", "a@5"]
    assert lines[2].startswith("next: ")
    rest = runner.invoke(app, [*base, "--model", "a", "--metric", "accuracy>0.35", "--limit", "2",
                               "--cursor", lines[2].removeprefix("next: ")])
    assert [line.split("\t")[0] for line in rest.output.strip().splitlines()] == ["a@6", "a@7"]
    tagged = runner.invoke(app, ["registry", "--db", database_url, "versions", "a", "--tag", "team=nlp",
                                 "--order-by", "metric:accuracy", "--desc"])
    assert [line.split("\t")[0] for line in tagged.output.strip().splitlines()] == [
        "a@7", "a@5", "a@3 [production]", "a@1"]
    as_json = runner.invoke(app, [*base, "--alias", "production", "--json"])
    assert '"next_cursor": null' in as_json.output and '"version": 3' in as_json.output


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--metric", "accuracy>=high"], "--metric: threshold of 'accuracy' must be a number"),
     (["--cursor", "garbage"], "--cursor: is not a cursor"),
     (["--created-after", "yesterday"], "--created-after: expected an ISO 8601 time"),
     (["--order-by", "size"], "--order-by: must be 'version' or 'metric:NAME'"),
     (["--colour", "red"], "No such option: --colour")],
)
def test_cli_search_bad_flag_exits_2_naming_it(
    populated: Registry, database_url: str, args: list[str], message: str
) -> None:
    result = CliRunner().invoke(app, ["registry", "--db", database_url, "search", *args])
    assert result.exit_code == 2
    assert message in result.output
