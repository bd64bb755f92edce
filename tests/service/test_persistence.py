"""Restart persistence: stop the service and its embedded Redis, start again on the same dir."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from litestar.testing import AsyncTestClient

from anchors import default_catalogue_text
from service.app import create_app
from service.auth import new_api_key
from service.embedded import EmbeddedRedis
from service.settings import Settings
from service.store import RedisStore
from tests.service.conftest import grades_rows


async def test_everything_survives_a_restart(tmp_path: Path, org: str) -> None:
    data = tmp_path / "data"
    settings = Settings(data_dir=str(data), run_workers=1, run_lease_seconds=2.0)
    key, record = new_api_key(org, ["admin"])
    h = {"Authorization": f"Bearer {key}"}
    base = f"/v1/orgs/{org}/cycles/c1"

    with EmbeddedRedis(data) as server:
        setup = RedisStore(server.url)
        await setup.add_api_key(record)
        await setup.close()
        async with AsyncTestClient(create_app(settings, RedisStore(server.url))) as c:
            assert (await c.post(f"{base}/grades", json=grades_rows(12, 4), headers=h)).is_success
            change = [{"kr_id": "k1", "grader_id": "g1", "grade": 0.05}]
            assert (await c.post(f"{base}/grades", json=change, headers=h)).is_success
            krs = [{"kr_id": "k1", "owner_id": "o1", "done": True}]
            assert (await c.post(f"{base}/krs", json=krs, headers=h)).is_success
            text = default_catalogue_text().replace("okrcal-default-1", "acme-7")
            assert (
                await c.put(f"/v1/orgs/{org}/anchors", content=text.encode(), headers=h)
            ).is_success
            r = await c.post(f"/v1/orgs/{org}/keys", json={"scopes": ["hr:read"]}, headers=h)
            reader = {"Authorization": f"Bearer {r.json()['key']}"}
            r = await c.post(f"{base}/calibrations", json={"model": "mean"}, headers=h)
            run_url = f"{base}/calibrations/{r.json()['run_id']}"
            deadline = time.monotonic() + 30
            while (await c.get(run_url, headers=h)).json()["status"] != "done":
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            assert (await c.post(f"{run_url}/publish", headers=h)).is_success
            before = (await c.get(f"{base}/owners/o1", headers=reader)).json()
            grades_before = (await c.get(f"{base}/grades", headers=h)).json()["items"]
    assert not server.is_alive()

    with EmbeddedRedis(data) as server:
        async with AsyncTestClient(create_app(settings, RedisStore(server.url))) as c:
            assert (await c.get(f"{base}/grades", headers=h)).json()["items"] == grades_before
            hist = await c.get(
                f"{base}/grades/history", params={"kr_id": "k1", "grader_id": "g1"}, headers=h
            )
            assert [v["grade"] for v in hist.json()][-1] == 0.05
            assert len(hist.json()) == 2
            kr = (await c.get(f"{base}/krs/k1", headers=h)).json()
            assert kr["evidence"]["grade"] == 1.0
            assert (await c.get(f"/v1/orgs/{org}/anchors", headers=h)).json()["version"] == "acme-7"
            run = (await c.get(run_url, headers=h)).json()
            assert run["status"] == "done"
            assert run["published"] is True
            assert (await c.get(f"{base}/owners/o1", headers=reader)).json() == before
            keys = (await c.get(f"/v1/orgs/{org}/keys", headers=h)).json()
            assert len(keys) == 2
            # the same grades again are still no-ops: versions and history came back too
            r = await c.post(f"{base}/grades", json=grades_rows(12, 4)[:3], headers=h)
            assert r.json()["unchanged"] == 3


def test_embedded_redis_fsyncs_before_acknowledging(tmp_path: Path) -> None:
    import redis

    with EmbeddedRedis(tmp_path / "always") as server:
        client = redis.Redis.from_url(server.url)
        assert client.config_get("appendfsync")["appendfsync"] == "always"
        assert client.config_get("appendonly")["appendonly"] == "yes"
        client.close()
    with EmbeddedRedis(tmp_path / "everysec", fsync="everysec") as server:
        client = redis.Redis.from_url(server.url)
        assert client.config_get("appendfsync")["appendfsync"] == "everysec"
        client.close()
    with pytest.raises(ValueError, match="fsync"):
        EmbeddedRedis(tmp_path / "x", fsync="never")
