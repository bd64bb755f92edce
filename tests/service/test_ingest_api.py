"""Grades and KRs over HTTP: bulk upsert (JSON, CSV), no-ops, history, idempotency, bad input."""

from __future__ import annotations

import asyncio
import json

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from service.settings import Settings
from service.store import RedisStore
from tests.service.conftest import grades_rows, make_key

Client = AsyncTestClient[Litestar]


async def test_grades_upsert_is_idempotent_and_keeps_history(
    client: Client, store: RedisStore, org: str
) -> None:
    h = await make_key(store, org, "grades:write", "scores:read")
    url = f"/v1/orgs/{org}/cycles/2026Q3/grades"
    rows = grades_rows(10, 4)
    r = await client.post(url, json={"grades": rows}, headers=h)
    assert r.status_code == 200, r.text
    assert r.json() == {
        "received": 40,
        "created": 40,
        "updated": 0,
        "unchanged": 0,
        "replayed": False,
    }

    r = await client.post(url, json=rows, headers=h)  # the bare-array form, same grades
    assert r.json()["unchanged"] == 40
    assert r.json()["created"] == 0

    changed = [{"kr_id": "k1", "grader_id": "g2", "grade": 0.95}]
    r = await client.post(url, json={"grades": changed}, headers=h)
    assert r.json()["updated"] == 1

    r = await client.get(f"{url}/history", params={"kr_id": "k1", "grader_id": "g2"}, headers=h)
    assert r.status_code == 200
    versions = r.json()
    assert [v["version"] for v in versions] == [1, 2]
    assert versions[-1]["grade"] == 0.95
    assert versions[0]["grade"] == next(
        x["grade"] for x in rows if x["kr_id"] == "k1" and x["grader_id"] == "g2"
    )
    assert versions[0]["updated_at"] < versions[1]["updated_at"]


async def test_grades_pagination_and_updated_after(
    client: Client, store: RedisStore, org: str
) -> None:
    h = await make_key(store, org, "grades:write", "scores:read")
    url = f"/v1/orgs/{org}/cycles/c1/grades"
    await client.post(url, json=grades_rows(25, 4), headers=h)
    seen: list[tuple[str, str]] = []
    cursor = None
    while True:
        params: dict[str, str | int] = {"limit": 30}
        if cursor:
            params["cursor"] = cursor
        r = await client.get(url, params=params, headers=h)
        assert r.status_code == 200
        page = r.json()
        seen += [(g["kr_id"], g["grader_id"]) for g in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == 100 == len(set(seen))

    last = (await client.get(url, params={"limit": 100}, headers=h)).json()["items"][-1][
        "updated_at"
    ]
    await client.post(url, json=[{"kr_id": "k3", "grader_id": "g0", "grade": 0.01}], headers=h)
    r = await client.get(url, params={"updated_after": last}, headers=h)
    assert [(g["kr_id"], g["grader_id"], g["version"]) for g in r.json()["items"]] == [
        ("k3", "g0", 2)
    ]


async def test_grades_csv_and_scale(client: Client, store: RedisStore, org: str) -> None:
    h = await make_key(store, org, "grades:write", "scores:read")
    url = f"/v1/orgs/{org}/cycles/c1/grades"
    body = "kr_id,grader_id,grade,owner_id\nk1,g1,80,o1\nk1,g2,,o1\n"
    r = await client.post(
        url,
        params={"scale": "percent"},
        content=body.encode(),
        headers={**h, "Content-Type": "text/csv"},
    )
    assert r.status_code == 400
    assert r.json()["errors"] == [
        {"problem": "Object missing required field `grade`", "field": "grade", "row": 2}
    ]
    body = "kr_id,grader_id,grade,owner_id\nk1,g1,80,o1\nk1,g2,65.5,o1\n"
    r = await client.post(
        url,
        params={"scale": "percent"},
        content=body.encode(),
        headers={**h, "Content-Type": "text/csv; charset=utf-8"},
    )
    assert r.status_code == 200, r.text
    assert r.json()["created"] == 2
    # the cycle is now on the percent scale: 80 fits, another scale is a conflict
    r = await client.post(
        url,
        params={"scale": "google"},
        json=[{"kr_id": "k", "grader_id": "g", "grade": 1}],
        headers=h,
    )
    assert r.status_code == 409
    r = await client.post(url, json=[{"kr_id": "k2", "grader_id": "g1", "grade": 101}], headers=h)
    assert r.status_code == 400
    assert "outside the percent scale" in r.json()["errors"][0]["problem"]


@pytest.mark.parametrize(
    ("body", "content_type", "status", "expect"),
    [
        (b"{not json", "application/json", 400, "malformed JSON"),
        (
            b'{"grades": [{"kr_id": "a", "grader_id": "b", "grade": NaN}]}',
            "application/json",
            400,
            "malformed JSON",
        ),
        (b'{"grades": [], "extra": 1}', "application/json", 400, "unknown field"),
        (b'{"grades": []}', "application/json", 400, "no grades"),
        (b'"text"', "application/json", 400, "JSON array"),
        (b"kr_id,grader_id,grade,colour\nk,g,0.5,red\n", "text/csv", 400, "unknown column"),
        (b"kr_id,grader_id,grade\nk,g\n", "text/csv", 400, "cells"),
        (b"kr_id,grader_id,grade\nk,g,inf\n", "text/csv", 400, "finite"),
        (b"\xff\xfe", "text/csv", 400, "UTF-8"),
        (b"<xml/>", "application/xml", 415, "content type"),
    ],
)
async def test_grades_malformed_bodies(
    client: Client,
    store: RedisStore,
    org: str,
    body: bytes,
    content_type: str,
    status: int,
    expect: str,
) -> None:
    h = await make_key(store, org, "grades:write")
    r = await client.post(
        f"/v1/orgs/{org}/cycles/c1/grades",
        content=body,
        headers={**h, "Content-Type": content_type},
    )
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert expect in r.text


async def test_every_invalid_row_listed_and_nothing_written(
    client: Client, store: RedisStore, org: str
) -> None:
    h = await make_key(store, org, "grades:write", "scores:read")
    url = f"/v1/orgs/{org}/cycles/c1/grades"
    rows = [
        {"kr_id": "ok", "grader_id": "g", "grade": 0.5},
        {"kr_id": "", "grader_id": "g", "grade": 0.5},
        {"kr_id": "k", "grader_id": "x" * 201, "grade": 0.5},
        {"kr_id": "k", "grader_id": "g", "grade": 1.5},
        {"kr_id": "k", "grader_id": "g", "grade": 0.5, "colour": "red"},
        {"kr_id": "ok", "grader_id": "g", "grade": 0.7},
        {"kr_id": "k\x00", "grader_id": "g", "grade": 0.5},
        {"kr_id": "k", "grader_id": "g2", "grade": "high"},
    ]
    # 1e400 is valid JSON that overflows to infinity: it must be refused like NaN
    body = json.dumps(rows)[:-1] + ', {"kr_id": "k", "grader_id": "g3", "grade": 1e400}]'
    r = await client.post(
        url, content=body.encode(), headers={**h, "Content-Type": "application/json"}
    )
    assert r.status_code == 400
    problem = r.json()
    assert problem["status"] == 400
    assert "nothing was written" in problem["detail"]
    got = {(e["row"], e["field"]) for e in problem["errors"]}
    assert got == {
        (2, "kr_id"),
        (3, "grader_id"),
        (4, "grade"),
        (5, "colour"),
        (6, "grader_id"),
        (7, "kr_id"),
        (8, "grade"),
        (9, "grade"),
    }
    r = await client.get(url, headers=h)
    assert r.json()["items"] == []


async def test_row_and_body_limits(redis_url: str, store: RedisStore, org: str) -> None:
    from service.app import create_app

    settings = Settings(run_workers=0, max_bulk_rows=50, max_body_bytes=20_000)
    async with AsyncTestClient(create_app(settings, RedisStore(redis_url))) as c:
        h = await make_key(store, org, "grades:write")
        url = f"/v1/orgs/{org}/cycles/c1/grades"
        r = await c.post(url, json=grades_rows(13, 4), headers=h)
        assert r.status_code == 413
        assert "at most 50" in r.text
        r = await c.post(
            url,
            content=b"[" + b" " * 30_000 + b"]",
            headers={**h, "Content-Type": "application/json"},
        )
        assert r.status_code == 413
        assert r.headers["content-type"].startswith("application/problem+json")


async def test_idempotency_key(client: Client, store: RedisStore, org: str) -> None:
    h = await make_key(store, org, "grades:write", "scores:read")
    url = f"/v1/orgs/{org}/cycles/c1/grades"
    rows = grades_rows(3, 3)
    first = await client.post(url, json=rows, headers={**h, "Idempotency-Key": "req-1"})
    assert first.json()["created"] == 9
    assert not first.json()["replayed"]
    # someone else changes a grade; a retry of req-1 must not undo it
    await client.post(url, json=[{"kr_id": "k0", "grader_id": "g0", "grade": 0.99}], headers=h)
    again = await client.post(url, json=rows, headers={**h, "Idempotency-Key": "req-1"})
    assert again.status_code == 200
    assert again.json() == {**first.json(), "replayed": True}
    r = await client.get(f"{url}/history", params={"kr_id": "k0", "grader_id": "g0"}, headers=h)
    assert r.json()[-1]["grade"] == 0.99
    other = await client.post(url, json=rows[:2], headers={**h, "Idempotency-Key": "req-1"})
    assert other.status_code == 422
    bad = await client.post(url, json=rows, headers={**h, "Idempotency-Key": ""})
    assert bad.status_code == 400


async def test_concurrent_same_idempotency_key_applies_once(
    client: Client, store: RedisStore, org: str
) -> None:
    h = await make_key(store, org, "grades:write")
    url = f"/v1/orgs/{org}/cycles/c1/grades"
    rows = grades_rows(20, 5)
    results = await asyncio.gather(
        *[client.post(url, json=rows, headers={**h, "Idempotency-Key": "same"}) for _ in range(6)]
    )
    bodies = [r.json() for r in results]
    assert sum(not b["replayed"] for b in bodies) == 1
    assert all(b["created"] == 100 for b in bodies)


async def test_krs_upsert_and_get_with_evidence(
    client: Client, store: RedisStore, org: str
) -> None:
    h = await make_key(store, org, "grades:write", "scores:read")
    url = f"/v1/orgs/{org}/cycles/c1/krs"
    krs = [
        {
            "kr_id": "k1",
            "owner_id": "o1",
            "baseline": 10,
            "target": 20,
            "actual": 17,
            "description": "Raise weekly active teams from 10 to 20",
        },
        {
            "kr_id": "k2",
            "milestones_done": 1,
            "milestones_total": 4,
            "description": "Launch the new onboarding flow",
        },
        {"kr_id": "k3", "description": "no evidence yet"},
    ]
    r = await client.post(url, json={"krs": krs}, headers=h)
    assert r.status_code == 200, r.text
    assert r.json()["created"] == 3
    r = await client.get(f"{url}/k1", headers=h)
    body = r.json()
    assert body["evidence"]["grade"] == pytest.approx(0.7)
    assert body["evidence"]["reasons"]
    assert body["outcome"]["is_output"] is False
    r = await client.get(f"{url}/k2", headers=h)
    assert r.json()["evidence"]["grade"] == pytest.approx(0.25)
    assert r.json()["outcome"]["is_output"] is True
    r = await client.get(f"{url}/k3", headers=h)
    assert r.json()["evidence"] is None
    assert r.json()["evidence_reason"]
    assert (await client.get(f"{url}/nope", headers=h)).status_code == 404
    r = await client.get(url, headers=h)
    assert [k["kr"]["kr_id"] for k in r.json()["items"]] == ["k1", "k2", "k3"]
    csv_body = b"kr_id,owner_id,done,description\nk4,o2,true,Close the audit\n"
    r = await client.post(url, content=csv_body, headers={**h, "Content-Type": "text/csv"})
    assert r.status_code == 200, r.text
    assert (await client.get(f"{url}/k4", headers=h)).json()["evidence"]["grade"] == 1.0


async def test_krs_bad_rows(client: Client, store: RedisStore, org: str) -> None:
    h = await make_key(store, org, "grades:write")
    krs = [
        {"kr_id": "k1", "baseline": 5, "target": 5, "actual": 6},
        {"kr_id": "k2", "weight": -1},
        {"kr_id": "k3", "kr_type": "vibes"},
        {"kr_id": "k4", "milestones_done": 5, "milestones_total": 4},
        {"kr_id": "k5", "colour": "red"},
        {"kr_id": "k1"},
    ]
    r = await client.post(f"/v1/orgs/{org}/cycles/c1/krs", json=krs, headers=h)
    assert r.status_code == 400
    rows = {e["row"] for e in r.json()["errors"]}
    assert rows == {1, 2, 3, 4, 5, 6}
    fields = {(e["row"], e["field"]) for e in r.json()["errors"]}
    assert (1, "target") in fields
    assert (2, "weight") in fields
    assert (5, "colour") in fields


async def test_bad_cycle_id(client: Client, store: RedisStore, org: str) -> None:
    h = await make_key(store, org, "grades:write")
    r = await client.post(
        f"/v1/orgs/{org}/cycles/bad%20cycle/grades", json=grades_rows(1, 1), headers=h
    )
    assert r.status_code == 400
    assert r.json()["errors"][0]["field"] == "cycle"


async def test_unknown_scale(client: Client, store: RedisStore, org: str) -> None:
    h = await make_key(store, org, "grades:write")
    r = await client.post(
        f"/v1/orgs/{org}/cycles/c1/grades",
        params={"scale": "stars"},
        json=grades_rows(1, 1),
        headers=h,
    )
    assert r.status_code == 400
    assert "unknown scale" in r.text


async def test_deeply_nested_json_is_a_400(client: Client, store: RedisStore, org: str) -> None:
    h = await make_key(store, org, "admin")
    deep = b"[" * 100_000 + b"]" * 100_000
    for path in ("/cycles/c1/grades", "/cycles/c1/krs", "/cycles/c1/calibrations", "/keys"):
        r = await client.post(
            f"/v1/orgs/{org}{path}", content=deep, headers={**h, "Content-Type": "application/json"}
        )
        assert r.status_code == 400, (path, r.text)
        assert r.headers["content-type"].startswith("application/problem+json")
