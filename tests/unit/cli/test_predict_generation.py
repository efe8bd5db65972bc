"""``kiln predict`` on a text-generation package: the answer streamed to stdout, bad values refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from kiln.runtime import load_generator
from tests.helpers import kiln_cli, tiny_generation_package


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_generation_package(tmp_path_factory.mktemp("cli") / "chat")


def test_predict_prints_the_answer_through_the_chat_template(package: Path) -> None:
    done = kiln_cli("predict", str(package), "the cat", "--max-new-tokens", "8", "--system", "be brief")
    assert done.returncode == 0, done.stderr
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "the cat"}]
    expected = load_generator(package).generate([messages], max_new_tokens=8)[0].text
    assert done.stdout == expected + "\n"


def test_predict_samples_repeatably_with_a_seed(package: Path) -> None:
    args = ("predict", str(package), "the cat", "--temperature", "1.3", "--top-p", "0.95", "--top-k", "50")
    done = kiln_cli(*args, "--seed", "5", "--raw")
    assert done.returncode == 0, done.stderr
    expected = load_generator(package).generate(["the cat"], temperature=1.3, top_p=0.95, top_k=50, seed=5)[0].text
    assert done.stdout == expected + "\n"


@pytest.mark.parametrize(
    ("option", "value", "field"),
    [
        ("--temperature", "-1", "temperature"),
        ("--max-new-tokens", "500", "max_new_tokens"),
    ],
)
def test_predict_refuses_a_bad_value_naming_the_field(package: Path, option: str, value: str, field: str) -> None:
    done = kiln_cli("predict", str(package), "the cat", option, value)
    assert done.returncode == 2
    assert field in done.stderr and done.stdout == ""


def test_predict_refuses_a_system_message_without_chat_template(tmp_path: Path) -> None:
    plain = tiny_generation_package(tmp_path / "plain", chat_template=None)
    done = kiln_cli("predict", str(plain), "the cat", "--system", "be brief")
    assert done.returncode == 2
    assert "has no chat template" in done.stderr


def test_predict_refuses_generation_options_for_a_classifier(text_package: Path) -> None:
    done = kiln_cli("predict", str(text_package), "a moving story", "--temperature", "0.5")
    assert done.returncode == 2
    assert "--temperature: generation options apply to text-generation packages only" in done.stderr
