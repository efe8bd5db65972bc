from pathlib import Path

import pytest

from kiln.errors import ConfigError
from kiln.serve.config import ModelConfig, ServeConfig, load_serve_config, parse_serve_config
from kiln.serve.models import ModelLoadError, resolve_source


def test_load_serve_config_reads_models_and_lets_the_command_line_win(tmp_path: Path) -> None:
    path = tmp_path / "serve.yaml"
    path.write_text(
        "port: 9000\nmodels:\n  - name: s\n    versions: {3: /m/3, 4: /m/4}\n"
        "    canary: {3: 90, 4: 10}\n    batching: {max_batch_size: 8}\n"
    )
    cfg = load_serve_config(path, port=9100, host=None)
    assert cfg.port == 9100 and cfg.host == "127.0.0.1"
    assert cfg.models[0].canary == {3: 90, 4: 10}
    assert cfg.models[0].batching.max_batch_size == 8


def test_load_serve_config_names_an_unknown_key(tmp_path: Path) -> None:
    path = tmp_path / "serve.yaml"
    path.write_text("models:\n  - versions: {1: /m}\n    batching: {max_batch: 8}\n")
    with pytest.raises(ConfigError, match=r"models\.0\.batching\.max_batch"):
        load_serve_config(path)


def test_model_config_rejects_canary_for_an_unknown_version() -> None:
    with pytest.raises(ValueError, match=r"canary names versions \[5\]"):
        ModelConfig(versions={1: "/m"}, canary={5: 100})


def test_resolve_source_refuses_urls_and_unknown_folders(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="URLs is not allowed"):
        resolve_source("s3://bucket/model")
    with pytest.raises(ModelLoadError, match="not a package folder"):
        resolve_source(str(tmp_path / "missing"))


def test_concurrent_batches_default_to_one_per_core_left_by_intra_op_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    import kiln.serve.config as serve_config

    monkeypatch.setattr(serve_config, "available_cpus", lambda: 8)
    auto = serve_config.BatchingConfig()
    assert auto.concurrency(num_threads=1, workers=1) == 8
    assert auto.concurrency(num_threads=2, workers=2) == 2
    assert auto.concurrency(num_threads=16, workers=1) == 1
    assert serve_config.BatchingConfig(max_concurrent_batches=3).concurrency(num_threads=1, workers=1) == 3


def test_serve_config_num_threads_defaults_to_auto_and_takes_a_count() -> None:
    assert ServeConfig().num_threads == "auto"
    assert parse_serve_config({"num_threads": 2}).num_threads == 2


@pytest.mark.parametrize("value", [0, -1, "many", "2", True, 1.5])
def test_serve_config_num_threads_refuses_anything_but_auto_or_a_count(value: object) -> None:
    with pytest.raises(ConfigError, match=r"num_threads: .*num_threads must be 'auto' or an integer >= 1, got "):
        parse_serve_config({"num_threads": value}, source="serve.yaml")


@pytest.mark.parametrize(
    ("log", "message"),
    [
        ({"sample_rate": 1.5}, r"models\.0\.generation\.log\.sample_rate: .*less than or equal to 1"),
        ({"redact": "scrub"}, r"models\.0\.generation\.log\.redact: .*expected 'package\.module:function'"),
        ({"redact": "kiln_no_such_module:scrub"}, r"log\.redact: .*cannot import module 'kiln_no_such_module'"),
        ({"redact": "json:no_such_function"}, r"log\.redact: .*has no 'no_such_function'"),
        ({"redact": "json:decoder"}, r"log\.redact: .*'json:decoder' is not callable"),
        ({"redact": "html:escape", "log_text": False}, r"generation\.log: .*no text to redact with log_text false"),
    ],
)
def test_generation_log_settings_are_refused_naming_the_key(log: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_serve_config({"models": [{"versions": {1: "/m"}, "generation": {"log": log}}]})


def test_generation_log_takes_a_redaction_hook_and_a_sample_rate() -> None:
    cfg = parse_serve_config(
        {"models": [{"versions": {1: "/m"}, "generation": {"log": {"redact": "html:escape", "sample_rate": 0.25}}}]}
    )
    log = cfg.models[0].generation.log
    assert (log.redact, log.sample_rate, log.log_text) == ("html:escape", 0.25, True)


def test_the_generation_log_example_of_the_serving_docs_validates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import re

    import yaml

    page = (Path(__file__).resolve().parents[3] / "docs" / "serving.md").read_text()
    [block] = [b for b in re.findall(r"^```yaml\n(.*?)^```", page, flags=re.S | re.M) if "redact:" in b]
    (tmp_path / "myhooks.py").write_text("def scrub_pii(text):\n    return text\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = parse_serve_config(yaml.safe_load(block))
    assert cfg.monitor.enabled and cfg.models[0].generation.log.redact == "myhooks:scrub_pii"
