"""schemathesis against the service's own OpenAPI schema, on a real server: no 5xx and no response that breaks
the schema (status codes, content types, headers, bodies), for generated valid and invalid requests of every
operation, plus the schema's own examples."""

import json

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from mor.serve import ServeSettings, create_app
from test_serve_support import KEY, serve, train_tiny, write_settings

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance, negative_data_rejection]
ANONYMOUS = ServeSettings(allow_anonymous=True, rate_limit={"requests_per_s": 1, "burst": 1})
OPENAPI = create_app(ANONYMOUS).openapi()
SCHEMA = schemathesis.openapi.from_dict(OPENAPI)
OPERATIONS = {op.ok().label: op.ok() for op in SCHEMA.get_all_operations()}
TAKE_INPUT = [label for label in sorted(OPERATIONS) if label.startswith("POST") or "{" in label]
CASES = [(label, GenerationMode.POSITIVE) for label in sorted(OPERATIONS)] + \
    [(label, GenerationMode.NEGATIVE) for label in TAKE_INPUT]  # no invalid request exists for the others


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("schema")
    run = train_tiny(folder / "run")
    path = write_settings(folder, models=[{"name": "prefix-sum", "checkpoint": str(run)}], max_body_bytes=65536)
    with serve(path) as server:
        yield server.root


def test_every_operation_is_covered():
    assert set(OPERATIONS) == {"POST /v1/chat/completions", "POST /v1/route", "POST /v1/predict", "GET /v1/models",
                               "GET /v1/models/{model}", "GET /healthz", "GET /readyz", "GET /metrics"}


def test_only_fastapis_own_422_is_left_out_and_predicts_non_finite_output_422_stays():
    responses = {path: operation["responses"] for path, item in OPENAPI["paths"].items() for operation in item.values()}
    assert responses["/v1/predict"]["422"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody")
    assert [path for path, codes in responses.items() if "422" in codes] == ["/v1/predict"]
    assert "HTTPValidationError" not in json.dumps(OPENAPI)


@pytest.mark.parametrize("label,mode", CASES, ids=[f"{label} {mode.value}" for label, mode in CASES])
def test_no_server_errors_and_no_schema_violations(root, label, mode):
    @given(case=OPERATIONS[label].as_strategy(generation_mode=mode))
    @settings(max_examples=12, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    def check(case):
        case.call_and_validate(base_url=root, headers={"Authorization": f"Bearer {KEY}"}, checks=CHECKS, timeout=30)

    check()
