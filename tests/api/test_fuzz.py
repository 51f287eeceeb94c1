"""Property-based fuzzing of the OpenAPI document (schemathesis) against the running API: never a 5xx, and every
answer is a status and a body the document declares.

Driven from one test per engine with hypothesis directly, rather than through schemathesis' pytest plugin, which
does not run under pytest 9 yet; ``max_examples`` keeps the run to seconds.
"""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error, response_schema_conformance, status_code_conformance

from storage.store import SqlStore
from tests.api.conftest import MakeApi

MAX_EXAMPLES = 40  # per operation and engine: about 5 s per engine


def test_no_server_errors_and_answers_match_the_document(store: SqlStore, make_api: MakeApi) -> None:
    api = make_api(store, api={"rate_limit_per_second": 0})
    api.create("My laptop will not connect to the VPN")  # ticket #1 exists, so id routes reach the database too
    schema = schemathesis.openapi.from_url(f"{api.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]
    assert len(operations) >= 7
    auth = {"Authorization": f"Bearer {api.write_token}"}
    calls: list[str] = []
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
        def check(case: schemathesis.Case) -> None:  # type: ignore[type-arg]
            calls.append(case.method + " " + case.path)
            case.call_and_validate(
                base_url=api.url,
                headers=auth,
                checks=[not_a_server_error, status_code_conformance, response_schema_conformance],
            )

        check()
    assert len(set(calls)) == len(operations)  # every operation was exercised
