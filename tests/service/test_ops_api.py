"""Operations: health, readiness, metrics, OpenAPI, and a Redis that goes away and comes back."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from litestar import Litestar
from litestar.testing import AsyncTestClient

from service.app import create_app
from service.embedded import EmbeddedRedis
from service.settings import Settings
from service.store import RedisStore
from tests.service.conftest import grades_rows, make_key

Client = AsyncTestClient[Litestar]


async def test_health_metrics_and_openapi(client: Client, store: RedisStore, org: str) -> None:
    assert (await client.get("/healthz")).json()["status"] == "ok"
    assert (await client.get("/readyz")).status_code == 200
    h = await make_key(store, org, "scores:read")
    await client.get(f"/v1/orgs/{org}/cycles/c1/grades", headers=h)
    text = (await client.get("/metrics")).text
    assert "# TYPE okrcal_http_requests_total counter" in text
    assert 'route="/v1/orgs/{org}/cycles/{cycle}/grades",status="200"' in text
    assert "okrcal_http_request_duration_seconds_bucket" in text
    schema = (await client.get("/schema/openapi.json")).json()
    post = schema["paths"]["/v1/orgs/{org}/cycles/{cycle}/grades"]["post"]
    body = post["requestBody"]["content"]
    assert set(body) == {"application/json", "text/csv"}
    grade = body["application/json"]["schema"]["properties"]["grades"]["items"]
    assert set(grade["properties"]) == {"kr_id", "grader_id", "grade", "owner_id"}
    assert "/v1/orgs/{org}/cycles/{cycle}/owners/{owner_id}" in schema["paths"]


async def test_redis_down_answers_503_then_recovers(tmp_path: Path, org: str) -> None:
    server = EmbeddedRedis(tmp_path / "redis")
    url = server.start()
    try:
        settings = Settings(run_workers=1, run_lease_seconds=2.0)
        async with AsyncTestClient(create_app(settings, RedisStore(url))) as c:
            setup = RedisStore(url)
            h = await make_key(setup, org, "grades:write", "scores:read", "calibration:run")
            await setup.close()
            base = f"/v1/orgs/{org}/cycles/c1"
            assert (
                await c.post(f"{base}/grades", json=grades_rows(8, 3), headers=h)
            ).status_code == 200

            server.stop()
            r = await c.get(f"{base}/grades", headers=h)
            assert r.status_code == 503
            assert r.headers["retry-after"] == "1"
            assert r.headers["content-type"].startswith("application/problem+json")
            assert (await c.get("/readyz")).status_code == 503
            assert (await c.get("/healthz")).status_code == 200

            server.start()
            r = await c.get(f"{base}/grades", headers=h)
            assert r.status_code == 200
            assert len(r.json()["items"]) == 24
            assert (await c.get("/readyz")).status_code == 200
            # the in-process worker came back too
            run_id = (
                await c.post(f"{base}/calibrations", json={"model": "mean"}, headers=h)
            ).json()["run_id"]
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                run = (await c.get(f"{base}/calibrations/{run_id}", headers=h)).json()
                if run["status"] == "done":
                    break
                await asyncio.sleep(0.05)
            assert run["status"] == "done"
    finally:
        server.stop()


def test_openapi_lists_every_route(redis_url: str) -> None:
    app = create_app(Settings(run_workers=0), RedisStore(redis_url))
    schema = app.openapi_schema.to_schema()
    documented = {
        (method.upper(), path) for path, item in schema["paths"].items() for method in item
    }
    checked = 0
    for route in app.routes:
        for method in getattr(route, "methods", ()):
            if method in ("HEAD", "OPTIONS") or route.path.startswith("/schema"):
                continue
            path = route.path_format if hasattr(route, "path_format") else route.path
            assert (method, path) in documented, (method, path)
            checked += 1
    assert checked >= 20
