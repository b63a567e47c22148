"""Property-based fuzzing of the whole API from its own OpenAPI document: no 5xx, answers as documented.

Bounded (a few examples per operation, no deadline) so the suite stays quick; a deeper run:
``MMAX_FUZZ_EXAMPLES=200 make test``.
"""
from __future__ import annotations

import os

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

EXAMPLES = int(os.environ.get("MMAX_FUZZ_EXAMPLES", "8"))


@pytest.fixture(scope="module")
def api_schema(app):
    return schemathesis.openapi.from_wsgi("/swagger.json", app)


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_survives_generated_requests(case):
    case.call_and_validate()
