"""Fixtures of the proof tests: real service processes on loopback, and ways to read them back."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.proof.procs import RedisServer


@pytest.fixture
def tcp_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of the test's own on a free loopback port (fsync on every write)."""
    with RedisServer(tmp_path / "redis") as server:
        yield server


def bearer(key: str) -> dict[str, str]:
    """The Authorization header of ``key``."""
    return {"Authorization": f"Bearer {key}"}


def all_grades(base: str, org: str, cycle: str, key: str) -> list[dict[str, object]]:
    """Every grade of a cycle, read through the API page by page."""
    out: list[dict[str, object]] = []
    cursor: str | None = None
    with httpx.Client(base_url=base, headers=bearer(key), timeout=30) as c:
        while True:
            params: dict[str, str | int] = {"limit": 5000}
            if cursor:
                params["cursor"] = cursor
            r = c.get(f"/v1/orgs/{org}/cycles/{cycle}/grades", params=params)
            assert r.status_code == 200, r.text
            page = r.json()
            out += page["items"]
            cursor = page["next_cursor"]
            if cursor is None:
                return out
