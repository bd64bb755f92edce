"""Fixtures of the HTTP tests: the app on the session's real Redis, and keys to call it with."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from service.app import create_app
from service.auth import new_api_key
from service.settings import Settings
from service.store import RedisStore


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[RedisStore]:
    """A store of the test's own, for setting up and checking state next to the app."""
    s = RedisStore(redis_url)
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture
def settings() -> Settings:
    """Service settings for tests: no in-process run workers unless a test asks for them."""
    return Settings(run_workers=0, run_lease_seconds=1.0)


@pytest.fixture
async def client(redis_url: str, settings: Settings) -> AsyncIterator[AsyncTestClient[Litestar]]:
    """The app on the real Redis, through litestar's test client."""
    app = create_app(settings, RedisStore(redis_url))
    async with AsyncTestClient(app) as c:
        yield c


@pytest.fixture
async def worker_client(redis_url: str) -> AsyncIterator[AsyncTestClient[Litestar]]:
    """The app with one in-process calibration worker (fits in a thread: quick to start)."""
    settings = Settings(run_workers=1, run_lease_seconds=5.0, fit_in_subprocess=False)
    async with AsyncTestClient(create_app(settings, RedisStore(redis_url))) as c:
        yield c


async def calibrate_and_publish(
    c: AsyncTestClient[Litestar],
    org: str,
    cycle: str,
    headers: dict[str, str],
    timeout: float = 60.0,
) -> str:
    """Start a run, wait for it, publish it; the run id."""
    base = f"/v1/orgs/{org}/cycles/{cycle}/calibrations"
    r = await c.post(base, json={"model": "additive"}, headers=headers)
    assert r.status_code == 202, r.text
    run_id: str = r.json()["run_id"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = (await c.get(f"{base}/{run_id}", headers=headers)).json()
        if run["status"] in ("done", "failed"):
            break
        await asyncio.sleep(0.05)
    assert run["status"] == "done", run
    assert (await c.post(f"{base}/{run_id}/publish", headers=headers)).status_code == 200
    return run_id


async def make_key(
    store: RedisStore, org: str, *scopes: str, rate_limit: int | None = None
) -> dict[str, str]:
    """Headers carrying a fresh key of ``org`` with ``scopes``."""
    key, record = new_api_key(org, scopes, rate_limit=rate_limit)
    await store.add_api_key(record)
    return {"Authorization": f"Bearer {key}"}


def grades_rows(n_krs: int, n_graders: int, *, offset: float = 0.0) -> list[dict[str, object]]:
    """A full grid of grades on the google scale, one owner per KR."""
    return [
        {
            "kr_id": f"k{k}",
            "grader_id": f"g{g}",
            "grade": round(min(1.0, max(0.0, 0.2 + 0.6 * ((k * 7 + g * 3) % 10) / 10 + offset)), 3),
            "owner_id": f"o{k % 5}",
        }
        for k in range(n_krs)
        for g in range(n_graders)
    ]
