"""Concurrent writers lose nothing, and a bulk write is never half-applied."""

from __future__ import annotations

import asyncio

from litestar import Litestar
from litestar.testing import AsyncTestClient

from service.app import create_app
from service.settings import Settings
from service.store import RedisStore
from tests.service.conftest import make_key


async def _all_grades(
    c: AsyncTestClient[Litestar], url: str, h: dict[str, str]
) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    cursor = None
    while True:
        params: dict[str, object] = {"limit": 500, **({"cursor": cursor} if cursor else {})}
        page = (await c.get(url, params=params, headers=h)).json()  # type: ignore[arg-type]
        out += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            return out


async def test_parallel_writers_exact_counts(redis_url: str, store: RedisStore, org: str) -> None:
    h = await make_key(store, org, "grades:write", "scores:read")
    url = f"/v1/orgs/{org}/cycles/c1/grades"
    writers, own, shared = 8, 300, 25
    settings = Settings(run_workers=0)
    # two app instances on the same Redis, as two service processes would be
    async with (
        AsyncTestClient(create_app(settings, RedisStore(redis_url))) as a,
        AsyncTestClient(create_app(settings, RedisStore(redis_url))) as b,
    ):

        async def writer(w: int) -> None:
            client = a if w % 2 else b
            mine = [{"kr_id": f"w{w}k{i}", "grader_id": f"g{w}", "grade": 0.5} for i in range(own)]
            # every writer also rewrites the shared grades, each with its own value
            common = [{"kr_id": f"s{i}", "grader_id": "gs", "grade": w / 10} for i in range(shared)]
            for chunk in (mine[:150] + common, mine[150:]):
                r = await client.post(url, json=chunk, headers=h)
                assert r.status_code == 200, r.text

        await asyncio.gather(*(writer(w) for w in range(writers)))
        grades = await _all_grades(a, url, h)
        assert len(grades) == writers * own + shared
        assert len({(g["kr_id"], g["grader_id"]) for g in grades}) == len(grades)
        by_key = {g["kr_id"]: g for g in grades}
        for i in range(shared):
            # created once, then changed by each of the other seven writers: no lost update
            assert by_key[f"s{i}"]["version"] == writers
        r = await a.get(f"{url}/history", params={"kr_id": "s0", "grader_id": "gs"}, headers=h)
        assert sorted(v["grade"] for v in r.json()) == [w / 10 for w in range(writers)]


async def test_bulk_write_is_all_or_nothing(
    client: AsyncTestClient[Litestar], store: RedisStore, org: str
) -> None:
    h = await make_key(store, org, "grades:write", "scores:read")
    url = f"/v1/orgs/{org}/cycles/c1/grades"
    rows = [{"kr_id": f"k{i}", "grader_id": "g", "grade": 0.5} for i in range(5000)]
    rows[4999]["grade"] = 7.0  # the last row is bad: nothing of the 5,000 may land
    r = await client.post(url, json=rows, headers=h)
    assert r.status_code == 400
    assert r.json()["errors"] == [
        {"problem": "grade 7 is outside the google scale [0, 1]", "field": "grade", "row": 5000}
    ]
    assert (await client.get(url, headers=h)).json()["items"] == []
