"""Schemathesis against /openapi.json: every route, a bounded number of examples, no 5xx, no schema violations.

Both valid requests (positive mode) and requests that break the schema (negative mode: wrong types,
missing or extra fields, bad parameters), bounded to fit CI (``FUZZ_EXAMPLES`` per operation and mode).
Runs against the real stack with a user of its own; routes that would revoke its token or build images
are left out.
"""

from __future__ import annotations

import itertools
from typing import Any

import hypothesis
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.openapi import from_dict

from tests.conftest import Stack

FUZZ_EXAMPLES = 50  # per operation and mode
SKIPPED = {
    ("POST", "/v1/tokens/revoke"),  # `{}` revokes the fuzzing user's own token: the rest would only see 401
    ("POST", "/v1/images"),  # a valid spec starts a real image build
    ("GET", "/v1/calls/{call_id}/ws"),  # a WebSocket upgrade: test_streaming and test_isolation cover it
}
# A long-poll waits up to 60 s when asked to: the fuzzer asks for at most this much.
_WAIT_PARAMS = {"timeout", "wait"}


def _operations(stack: Stack) -> list[Any]:
    """The operations of the document the stack serves (generated from the routes' models)."""
    schema = from_dict(requests.get(stack.url + "/openapi.json", timeout=30).json())
    found = [result.ok() for result in schema.get_all_operations()]
    return [op for op in found if (op.method.upper(), op.path) not in SKIPPED]


@pytest.mark.timeout(600)
def test_every_route_answers_generated_requests_with_no_5xx_and_as_documented(stack: Stack) -> None:
    token = stack.new_user("fuzzer")
    session = requests.Session()
    checks = [schemathesis.checks.not_a_server_error, schemathesis.checks.status_code_conformance]
    checks += [schemathesis.checks.content_type_conformance, schemathesis.checks.response_schema_conformance]
    for operation, mode in itertools.product(_operations(stack), list(GenerationMode)):

        @given(case=operation.as_strategy(mode))
        @settings(
            max_examples=FUZZ_EXAMPLES,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
            phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
        )
        def run(case: Any) -> None:
            for name in _WAIT_PARAMS & set(case.query or {}):
                case.query[name] = 0
            if isinstance(case.body, dict):
                for name in _WAIT_PARAMS & set(case.body):
                    case.body[name] = 0
            response = case.call(base_url=stack.url, session=session, headers={"Authorization": f"Bearer {token}"})
            case.validate_response(response, checks=checks)  # raises naming the failure and a curl line

        try:
            run()
        except hypothesis.errors.Unsatisfiable:
            pass  # negative mode: nothing about this operation can be made invalid (no parameters, no body)
    session.close()
