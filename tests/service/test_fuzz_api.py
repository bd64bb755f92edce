"""Whatever arrives, the answer is a 2xx or a 4xx problem, never a 500."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from litestar.testing import TestClient

from service.app import create_app
from service.auth import new_api_key
from service.settings import Settings
from service.store import RedisStore
from tests.conftest import new_org

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5)
    ),
    max_leaves=20,
)
_row = st.fixed_dictionaries(
    {},
    optional={
        "kr_id": _json_values | st.text(max_size=300),
        "grader_id": _json_values,
        "grade": _json_values,
        "owner_id": _json_values,
        "baseline": _json_values,
        "target": _json_values,
        "actual": _json_values,
        "milestones_done": _json_values,
        "milestones_total": _json_values,
        "done": _json_values,
        "kr_type": _json_values,
        "direction": _json_values,
        "weight": _json_values,
    },
)
_bodies = (
    st.binary(max_size=200)
    | _json_values.map(lambda v: json.dumps(v).encode())
    | st.lists(_row, max_size=5).map(lambda v: json.dumps(v).encode())
    | st.lists(_row, max_size=5).map(lambda v: json.dumps({"grades": v, "krs": v}).encode())
)
# the module-scoped client is shared on purpose: one app for every example
_FIXTURE_OK = [HealthCheck.function_scoped_fixture]
_types = st.sampled_from(["application/json", "text/csv", "text/plain", "", "application/toml"])


@pytest.fixture(scope="module")
def fuzz_client(redis_url: str) -> Iterator[tuple[TestClient[Any], dict[str, str], str]]:
    org = new_org()
    key, record = new_api_key(org, ["admin"])

    async def add() -> None:
        store = RedisStore(redis_url)
        await store.add_api_key(record)
        await store.close()

    asyncio.run(add())
    with TestClient(create_app(Settings(run_workers=0), RedisStore(redis_url))) as client:
        yield client, {"Authorization": f"Bearer {key}"}, org


_PATHS = [
    ("POST", "/cycles/c1/grades"),
    ("POST", "/cycles/c1/krs"),
    ("POST", "/cycles/c1/calibrations"),
    ("PUT", "/anchors"),
    ("POST", "/keys"),
]


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(target=st.sampled_from(_PATHS), body=_bodies, content_type=_types)
def test_bodies_never_cause_a_500(
    fuzz_client: tuple[TestClient[Any], dict[str, str], str],
    target: tuple[str, str],
    body: bytes,
    content_type: str,
) -> None:
    client, headers, org = fuzz_client
    method, path = target
    r = client.request(
        method,
        f"/v1/orgs/{org}{path}",
        content=body,
        headers={**headers, "Content-Type": content_type},
    )
    assert r.status_code < 500, r.text


_query_values = st.text(max_size=30) | st.integers().map(str)


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    path=st.sampled_from(
        [
            "/cycles/c1/grades",
            "/cycles/c1/krs",
            "/cycles/c1/scores",
            "/cycles/c1/owners",
            "/cycles/c1/graders",
            "/cycles/c1/calibrations",
            "/anchors",
            "/cycles/c1/grades/history",
        ]
    ),
    params=st.dictionaries(
        st.sampled_from(
            ["limit", "cursor", "updated_after", "run_id", "revision", "kr_id", "grader_id"]
        ),
        _query_values,
        max_size=4,
    ),
)
def test_query_strings_never_cause_a_500(
    fuzz_client: tuple[TestClient[Any], dict[str, str], str], path: str, params: dict[str, str]
) -> None:
    client, headers, org = fuzz_client
    r = client.get(f"/v1/orgs/{org}{path}", params=params, headers=headers)
    assert r.status_code < 500, r.text
