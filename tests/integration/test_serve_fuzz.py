"""Schema fuzzing: schemathesis sends generated requests for every operation of the server's
OpenAPI schema over real HTTP; no request may get a 5xx or a dropped connection.

Each generated case is sent twice: as generated (mostly unknown model names, so the routing and
validation layers answer) and with its ``name`` (or, on the OpenAI-compatible endpoints, its body's
``model``) set to a served model (so the inputs reach the model's own checks). Management calls
keep their generated names so the served models stay.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from kiln.registry.access import token_verifier
from kiln.serve.config import ModelConfig, ServeConfig
from tests.conftest import make_image_package, make_text_package
from tests.helpers import tiny_generation_package
from tests.integration.serve_harness import Running, serving

TOKEN = "fuzz-token"
# Small and bounded: the whole test stays well under a minute on 2 shared cores.
EXAMPLES_PER_OPERATION = 12
OPENAI_PATHS = ("/v1/chat/completions", "/v1/completions")


@pytest.fixture(scope="module")
def fuzzed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    root = tmp_path_factory.mktemp("fuzz")
    text = make_text_package(root / "sentiment")
    image = make_image_package(root / "digits")
    chat = tiny_generation_package(root / "chat", context_length=32)
    config = ServeConfig(
        models=[
            ModelConfig(versions={1: str(text), 2: str(text)}),
            ModelConfig(versions={1: str(image)}),
            ModelConfig(versions={1: str(chat)}),
        ],
        max_body_bytes=50_000,
        max_request_inputs=50,
    )
    with serving(config, verifier=token_verifier([TOKEN])) as running:
        yield running


def test_serve_openapi_fuzz_never_answers_5xx(fuzzed_server: Running) -> None:
    schema = schemathesis.openapi.from_url(fuzzed_server.url + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 10, [op.label for op in operations]
    statuses: Counter[int] = Counter()
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            _fuzz(operation, mode, statuses)
    # The fuzzing reached the models (200) as well as the input checks (4xx).
    assert statuses[200] > 0 and statuses[400] + statuses[422] > 0, statuses


def _fuzz(operation: Any, mode: GenerationMode, statuses: Counter[int]) -> None:
    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
        database=None,
    )
    def run(case: Any) -> None:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        statuses[_call(case, headers)] += 1
        is_management = "/admin/" in operation.path
        if "name" in (case.path_parameters or {}) and not is_management:
            for served in ("sentiment", "digits", "chat"):
                case.path_parameters["name"] = served
                statuses[_call(case, headers)] += 1
        if operation.path in OPENAI_PATHS and isinstance(case.body, dict):
            for served in ("chat", "sentiment"):
                case.body["model"] = served
                statuses[_call(case, headers)] += 1

    try:
        run()
    except Unsatisfiable:
        # No invalid request exists for an operation without parameters or body.
        assert mode is GenerationMode.NEGATIVE, operation.label


def _call(case: Any, headers: dict[str, str]) -> int:
    # A dropped connection raises here and fails the test.
    response = case.call(headers=headers, timeout=30)
    case.validate_response(response, checks=[not_a_server_error])
    if response.status_code >= 400:
        body = response.json()
        error = body.get("error")
        if case.operation.path in OPENAI_PATHS:  # OpenAI's error body, naming the field when it can
            assert isinstance(error, dict) and error["message"] and "param" in error, response.text
        else:
            assert isinstance(error, str) and error, (case.operation.label, response.text)
    elif case.operation.path in OPENAI_PATHS and "text/event-stream" in str(response.headers["content-type"]):
        assert response.text.endswith("data: [DONE]\n\n"), response.text
    return int(response.status_code)
