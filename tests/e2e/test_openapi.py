"""Fuzz the served API against its own OpenAPI document (schemathesis, bounded examples):
no 5xx, and every answer's status, content type, headers and body as documented."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from support import served

from keyed_serving.model.store import load_spec
from keyed_serving.serving.openapi import refine_openapi

pytestmark = pytest.mark.slow
CHECKS = [
    schemathesis.checks.not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@pytest.fixture(scope="module")
def server_url(default_model: str) -> Iterator[str]:
    with served(MODEL_TAG=default_model) as url:
        yield url


@pytest.fixture(scope="module")
def api_schema(server_url: str) -> Any:
    return schemathesis.openapi.from_url(f"{server_url}/docs.json")


def test_the_api_answers_as_its_document_says(api_schema: Any, server_url: str) -> None:
    # Each documented operation, with bounded examples generated from the document.
    # (schemathesis' pytest plugin loader does not run under this pytest; its strategies do.)
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/predict", "/model_info"}
    for operation in operations:

        @settings(
            max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None
        )
        @given(case=operation.as_strategy())
        def answers_as_documented(case: Any) -> None:
            case.call_and_validate(base_url=server_url, checks=CHECKS)

        answers_as_documented()


def test_the_document_names_the_models_features_and_the_error_answers(
    default_model: str, api_schema: Any
) -> None:
    document = api_schema.raw_schema
    features = document["components"]["schemas"]["Instance"]["properties"]["features"]
    assert features["required"] == load_spec(default_model).feature_names
    assert features["additionalProperties"] is False
    responses = document["paths"]["/predict"]["post"]["responses"]
    assert {"200", "400", "401", "413", "415", "422", "429", "503"} <= set(responses)
    assert "Retry-After" in responses["503"]["headers"]
    assert "get" in document["paths"]["/model_info"]


def test_refining_leaves_the_input_document_alone(default_model: str, api_schema: Any) -> None:
    original = {"openapi": "3.0.2", "paths": {}, "components": {"schemas": {}}}
    refine_openapi(original, load_spec(default_model))
    assert original == {"openapi": "3.0.2", "paths": {}, "components": {"schemas": {}}}
