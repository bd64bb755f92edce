"""Schemathesis against the OpenAPI schema the running service serves, every operation.

A real ``okrcal serve`` process on loopback with a Redis of this module's own (fuzzed
calibration runs pile up in its queue, not in the shared one), called with an admin
key of the organisation in the path, so requests get past authentication and reach
the handlers. Checks: no 5xx, and every response (status, content type, body) matches
what the schema documents for it.

The default run makes 20 generated requests per operation; ``pytest -m slow`` makes
1,000 per operation.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.core.result import Ok

from service.app import create_app
from service.settings import Settings
from service.store import RedisStore
from tests.conftest import new_org
from tests.proof.procs import ApiProcess, RedisServer, create_key

# The anchors catalogue is uploaded as TOML text: sent as the generated string.
schemathesis.serializer.alias("application/toml", "text/plain")


def _header(response: Any, name: str) -> str:
    value = response.headers.get(name) or response.headers.get(name.title()) or ""
    return value[0] if isinstance(value, list) else str(value)


@schemathesis.check
def documented_success(ctx: Any, response: Any, case: Any) -> bool | None:
    """A 2xx answer (and any answer of the API) has a documented status and content type and
    matches its documented schema."""
    if 200 <= response.status_code < 300:
        content_type_conformance(ctx, response, case)
        response_schema_conformance(ctx, response, case)
    elif case.path.startswith("/v1/"):
        # the API documents its problem responses too: status, type and body must match
        status_code_conformance(ctx, response, case)
        content_type_conformance(ctx, response, case)
        response_schema_conformance(ctx, response, case)
    return None


@schemathesis.check
def problem_details(ctx: Any, response: Any, case: Any) -> bool | None:
    """A 4xx answer of the API is an RFC 9457 problem naming its status and the problem."""
    if not 400 <= response.status_code < 500 or not case.path.startswith("/v1/"):
        return None
    content_type = _header(response, "content-type")
    assert content_type.startswith("application/problem+json"), content_type
    body = json.loads(response.content)
    assert body["status"] == response.status_code, body
    assert isinstance(body["title"], str)
    assert isinstance(body["detail"], str)
    assert body["detail"], body
    for error in body.get("errors", []):
        assert isinstance(error["problem"], str), body
    return None


CHECKS = [not_a_server_error, documented_success, problem_details]


class Target:
    def __init__(self, api: ApiProcess, org: str, key: str) -> None:
        self.api = api
        self.org = org
        self.headers = {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    tmp = Path(tmp_path_factory.mktemp("schemathesis"))
    with RedisServer(tmp / "redis", fsync="no") as server:
        org = new_org()
        key, _ = create_key(server.url, org, "admin")
        with ApiProcess(server.url, tmp / "api.log") as api:
            yield Target(api, org, key)
            assert "Traceback" not in api.output(), api.output()[-5000:]


def _app_schema() -> dict[str, Any]:
    # The operations are known at collection time from the app itself (no Redis is
    # contacted); the test checks that the running service serves this same schema.
    app = create_app(Settings(run_workers=0), RedisStore("redis://127.0.0.1:1/0"))
    return app.openapi_schema.to_schema()


SPEC = _app_schema()
OPERATIONS = [
    r.ok()
    for r in schemathesis.openapi.from_dict(SPEC).get_all_operations()
    if isinstance(r, Ok)  # an operation the schema describes badly fails test_schema_is_valid
]
INVALID = [
    r.err()
    for r in schemathesis.openapi.from_dict(SPEC).get_all_operations()
    if not isinstance(r, Ok)
]


@pytest.fixture(scope="module")
def served(target: Target) -> None:
    r = httpx.get(f"{target.api.base}/schema/openapi.json", timeout=30)
    assert r.status_code == 200
    assert r.json() == json.loads(json.dumps(SPEC)), "the service serves another schema"


def _fuzz(operation: Any, target: Target, examples: int) -> None:
    @given(case=operation.as_strategy())
    @settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        database=None,
        phases=[Phase.explicit, Phase.generate],
    )
    def run(case: Any) -> None:
        if case.path_parameters and "org" in case.path_parameters:
            case.path_parameters["org"] = target.org
        case.call_and_validate(
            base_url=target.api.base, headers=target.headers, checks=CHECKS, timeout=60
        )

    run()


def test_schema_is_valid() -> None:
    assert not INVALID, INVALID
    assert len(OPERATIONS) >= 20


@pytest.mark.parametrize("operation", OPERATIONS, ids=[op.label for op in OPERATIONS])
def test_served_schema_short(operation: Any, target: Target, served: None) -> None:
    _fuzz(operation, target, 20)


@pytest.mark.slow
@pytest.mark.parametrize("operation", OPERATIONS, ids=[op.label for op in OPERATIONS])
def test_served_schema_full(operation: Any, target: Target, served: None) -> None:
    _fuzz(operation, target, 1000)


def test_schema_documents_the_problem_responses() -> None:
    missing = []
    for path, item in SPEC["paths"].items():
        if not path.startswith("/v1/"):
            continue
        for method, op in item.items():
            if method not in ("get", "post", "put", "delete", "patch"):
                continue
            responses = op.get("responses", {})
            for status in ("400", "401", "403", "404"):
                content = responses.get(status, {}).get("content", {})
                if "application/problem+json" not in content:
                    missing.append(f"{method.upper()} {path} {status}")
    assert not missing, f"{len(missing)} undocumented problem responses, e.g. {missing[:5]}"
