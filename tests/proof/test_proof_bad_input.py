"""Hand-written bad input: each gets a 4xx problem naming what is wrong, and writes nothing.

Oversized bodies, deeply nested JSON (on every route that takes a body), CSV with a
huge line, a byte-order mark, mixed line endings and non-UTF-8 bytes, Unicode and very
long ids, NaN and Infinity literals, and duplicate rows. (Grades for another
organisation's KRs: :mod:`tests.proof.test_proof_security`.)
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from service.app import create_app
from service.settings import Settings
from service.store import RedisStore
from tests.proof.test_proof_security import org_routes, url_of
from tests.service.conftest import make_key

MAX_BODY = 256 * 1024
CSV = "text/csv"


class Api:
    def __init__(self, client: AsyncTestClient[Litestar], app: Litestar, org: str) -> None:
        self.client = client
        self.app = app
        self.org = org
        self.headers: dict[str, str] = {}
        self.grades = f"/v1/orgs/{org}/cycles/c1/grades"

    async def post(self, body: bytes, content_type: str = "application/json") -> Any:
        headers = {**self.headers, "content-type": content_type}
        return await self.client.post(self.grades, content=body, headers=headers)

    async def stored(self) -> list[dict[str, Any]]:
        r = await self.client.get(self.grades, params={"limit": 5000}, headers=self.headers)
        assert r.status_code == 200
        items: list[dict[str, Any]] = r.json()["items"]
        return items


@pytest.fixture
async def api(redis_url: str, org: str) -> AsyncIterator[Api]:
    app = create_app(Settings(run_workers=0, max_body_bytes=MAX_BODY), RedisStore(redis_url))
    store = RedisStore(redis_url)
    async with AsyncTestClient(app) as client:
        a = Api(client, app, org)
        a.headers = await make_key(store, org, "admin")
        await store.close()
        yield a


def _problem(r: Any, status: int = 400) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = r.json()
    assert body["status"] == status
    assert body["detail"]
    return body


def _rows(n: int) -> list[dict[str, Any]]:
    return [{"kr_id": f"k{i}", "grader_id": "g", "grade": 0.5} for i in range(n)]


async def test_oversized_bodies_get_413_on_every_upload(api: Api) -> None:
    big = json.dumps(_rows(MAX_BODY // 30)).encode()
    assert len(big) > MAX_BODY
    assert _problem(await api.post(big), 413)["title"] == "Request body too large"
    h = {**api.headers, "content-type": CSV}
    krs = b"kr_id\n" + b"k\n" * MAX_BODY
    r = await api.client.post(f"/v1/orgs/{api.org}/cycles/c1/krs", content=krs, headers=h)
    _problem(r, 413)
    r = await api.client.put(
        f"/v1/orgs/{api.org}/anchors", content=b"# x\n" * MAX_BODY, headers=api.headers
    )
    _problem(r, 413)
    assert await api.stored() == []


NESTED = [b"[" * 50_000 + b"]" * 50_000, b'{"a":' * 20_000 + b"1" + b"}" * 20_000]


async def test_deeply_nested_uploads_are_a_400(api: Api) -> None:
    for body in NESTED:
        assert "malformed JSON" in _problem(await api.post(body))["detail"]
        r = await api.client.post(
            f"/v1/orgs/{api.org}/cycles/c1/krs",
            content=body,
            headers={**api.headers, "content-type": "application/json"},
        )
        assert "malformed JSON" in _problem(r)["detail"]
    r = await api.client.put(
        f"/v1/orgs/{api.org}/anchors", content=b"a = " + b"[" * 50_000, headers=api.headers
    )
    assert "not valid TOML" in _problem(r)["detail"]


async def test_deeply_nested_json_is_a_4xx_on_every_route_with_a_body(api: Api) -> None:
    failures = []
    for method, path, _ in org_routes(api.app):
        if method not in ("POST", "PUT", "PATCH"):
            continue
        for body in NESTED:
            r = await api.client.request(
                method,
                url_of(path, api.org),
                content=body,
                headers={**api.headers, "content-type": "application/json"},
            )
            # 404/409: the route checks that its object exists before reading the body
            if r.status_code >= 500:
                failures.append(f"{method} {path}: {r.status_code} {r.text[:120]}")
    assert not failures, "\n".join(failures)


async def test_csv_with_a_huge_line_is_refused_naming_the_line(api: Api) -> None:
    body = b"kr_id,grader_id,grade\nk1,g,0.5\n" + b"k" * 200_000 + b",g,0.5\n"
    assert "line 3" in _problem(await api.post(body, CSV))["detail"]
    assert await api.stored() == []


async def test_csv_with_a_byte_order_mark_and_mixed_line_endings(api: Api) -> None:
    body = "\ufeffkr_id,grader_id,grade\r\nk1,g,0.5\nk2,g,0.25\r\nk3,g,1\n\n".encode()
    r = await api.post(body, CSV)
    assert r.status_code == 200, r.text
    assert r.json()["created"] == 3
    stored = {(g["kr_id"], g["grader_id"]): g["grade"] for g in await api.stored()}
    assert stored == {("k1", "g"): 0.5, ("k2", "g"): 0.25, ("k3", "g"): 1.0}
    # a lone CR as a line end (old Mac files): read as a line end, or refused, never mangled
    r = await api.post(b"kr_id,grader_id,grade\rk4,g,0.5\rk5,g,0.5\r", CSV)
    if r.status_code == 200:
        ids = {g["kr_id"] for g in await api.stored()}
        assert {"k4", "k5"} <= ids
        assert not any("\r" in i for i in ids)
    else:
        _problem(r)


async def test_non_utf8_bytes_are_refused_naming_where(api: Api) -> None:
    body = "kr_id,grader_id,grade\nk1,g,0.5\nk\xe9,g,0.5\n".encode("latin-1")
    assert "not UTF-8" in _problem(await api.post(body, CSV))["detail"]
    text = (
        '[{"kr_id":"k1","grader_id":"g","grade":0.5},{"kr_id":"k\xe9","grader_id":"g","grade":0.5}]'
    )
    problem = _problem(await api.post(text.encode("latin-1")))
    assert [e["row"] for e in problem["errors"]] == [2]
    r = await api.client.put(
        f"/v1/orgs/{api.org}/anchors", content=b"version = '\xff'", headers=api.headers
    )
    assert "UTF-8" in _problem(r)["detail"]
    assert await api.stored() == []


async def test_unicode_ids_round_trip_and_long_ids_are_refused(api: Api) -> None:
    odd = ["目標🚀", "Zoë", "e\u0301", "\u202eevil", "ـش", "a b", "x" * 200]
    rows = [{"kr_id": i, "grader_id": "größe", "grade": 0.5} for i in odd]
    r = await api.post(json.dumps(rows).encode())
    assert r.status_code == 200, r.text
    assert {g["kr_id"] for g in await api.stored()} == set(odd)
    r = await api.client.get(
        f"{api.grades}/history",
        params={"kr_id": "目標🚀", "grader_id": "größe"},
        headers=api.headers,
    )
    assert r.status_code == 200
    for bad, problem in [
        ("k" * 201, "longer than 200"),
        ("k" * 100_000, "longer than 200"),
        ("a\x00b", "control characters"),
        ("", ""),
    ]:
        rows = [{"kr_id": bad, "grader_id": "g", "grade": 0.5}]
        errors = _problem(await api.post(json.dumps(rows).encode()))["errors"]
        assert errors[0]["field"] == "kr_id"
        assert problem in errors[0]["problem"]
    assert len(await api.stored()) == len(odd)


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b'[{"kr_id":"k","grader_id":"g","grade":NaN}]', "application/json"),
        (b'[{"kr_id":"k","grader_id":"g","grade":Infinity}]', "application/json"),
        (b'[{"kr_id":"k","grader_id":"g","grade":-Infinity}]', "application/json"),
        (b'[{"kr_id":"k","grader_id":"g","grade":1e400}]', "application/json"),
        (b"kr_id,grader_id,grade\nk,g,nan\n", CSV),
        (b"kr_id,grader_id,grade\nk,g,NaN\n", CSV),
        (b"kr_id,grader_id,grade\nk,g,inf\n", CSV),
        (b"kr_id,grader_id,grade\nk,g,-Infinity\n", CSV),
    ],
)
async def test_nan_and_infinity_are_refused(api: Api, body: bytes, content_type: str) -> None:
    problem = _problem(await api.post(body, content_type))
    # JSON has no NaN literal (malformed); where it parses, the grade field is named
    assert "malformed JSON" in problem["detail"] or problem["errors"][0]["field"] == "grade"
    assert await api.stored() == []


async def test_nan_in_other_bodies(api: Api) -> None:
    h = {**api.headers, "content-type": "application/json"}
    base = f"/v1/orgs/{api.org}/cycles/c1"
    for url, body in [
        (f"{base}/krs", b'[{"kr_id":"k","kr_type":"metric","baseline":0,"target":NaN}]'),
        (f"{base}/calibrations", b'{"model":"additive","confidence":NaN}'),
        (f"{base}/calibrations", b'{"model":"additive","confidence":1e999}'),
    ]:
        r = await api.client.post(url, content=body, headers=h)
        _problem(r)


async def test_duplicate_rows_in_one_request_are_refused(api: Api) -> None:
    rows = [*_rows(3), {"kr_id": "k1", "grader_id": "g", "grade": 0.9}]
    problem = _problem(await api.post(json.dumps(rows).encode()))
    assert problem["errors"] == [
        {"problem": "the same (kr_id, grader_id) as row 2", "field": "grader_id", "row": 4}
    ]
    csv = b"kr_id,grader_id,grade\nk1,g,0.5\nk1,g,0.5\n"
    problem = _problem(await api.post(csv, CSV))
    assert problem["errors"][0]["row"] == 2
    assert await api.stored() == []
    # the same rows in two requests: the second is a no-op, not a duplicate
    assert (await api.post(json.dumps(_rows(3)).encode())).json()["created"] == 3
    assert (await api.post(json.dumps(_rows(3)).encode())).json()["unchanged"] == 3
