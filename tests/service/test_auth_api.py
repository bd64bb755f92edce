"""Keys, scopes and tenants across every endpoint; revocation; rate limits; key management."""

from __future__ import annotations

import msgspec
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from calibrate import OwnerAchievement
from service.store import RedisStore
from tests.conftest import new_org
from tests.service.conftest import make_key

Client = AsyncTestClient[Litestar]

# (method, path under /v1/orgs/{org}, the scope it needs or None for any key, JSON body)
ENDPOINTS: list[tuple[str, str, str | None, object]] = [
    ("GET", "/anchors/default", None, None),
    ("GET", "/anchors", None, None),
    ("PUT", "/anchors", "anchors:admin", None),
    ("POST", "/cycles/c1/krs", "grades:write", [{"kr_id": "k"}]),
    ("GET", "/cycles/c1/krs", "scores:read", None),
    ("GET", "/cycles/c1/krs/k", "scores:read", None),
    ("POST", "/cycles/c1/grades", "grades:write", [{"kr_id": "k", "grader_id": "g", "grade": 0.5}]),
    ("GET", "/cycles/c1/grades", "scores:read", None),
    ("GET", "/cycles/c1/grades/history?kr_id=k&grader_id=g", "scores:read", None),
    ("POST", "/cycles/c1/calibrations", "calibration:run", {"model": "mean"}),
    ("GET", "/cycles/c1/calibrations", "calibration:run", None),
    ("GET", "/cycles/c1/calibrations/r1", "calibration:run", None),
    ("POST", "/cycles/c1/calibrations/r1/publish", "calibration:run", None),
    ("GET", "/cycles/c1/scores", "scores:read", None),
    ("GET", "/cycles/c1/scores.csv", "scores:read", None),
    ("GET", "/cycles/c1/graders", "scores:read", None),
    ("GET", "/cycles/c1/owners", "hr:read", None),
    ("GET", "/cycles/c1/owners/o1", "hr:read", None),
    ("GET", "/keys", "admin", None),
    ("POST", "/keys", "admin", {"scopes": ["scores:read"]}),
    ("DELETE", "/keys/nokey", "admin", None),
]
ALL_BUT_ADMIN = ("grades:write", "scores:read", "calibration:run", "anchors:admin", "hr:read")


async def _call(
    client: Client, method: str, url: str, headers: dict[str, str], body: object
) -> int:
    if method == "PUT":
        r = await client.put(url, content=b'version = "x"', headers=headers)
    else:
        r = await client.request(method, url, json=body, headers=headers)
    return r.status_code


@pytest.mark.parametrize(("method", "path", "scope", "body"), ENDPOINTS)
async def test_no_key_is_401(
    client: Client, org: str, method: str, path: str, scope: str | None, body: object
) -> None:
    status = await _call(client, method, f"/v1/orgs/{org}{path}", {}, body)
    assert status == 401
    bad = {"Authorization": "Bearer okr_nothing_here"}
    assert await _call(client, method, f"/v1/orgs/{org}{path}", bad, body) == 401


@pytest.mark.parametrize(("method", "path", "scope", "body"), ENDPOINTS)
async def test_other_org_is_404(
    client: Client,
    store: RedisStore,
    org: str,
    method: str,
    path: str,
    scope: str | None,
    body: object,
) -> None:
    other = await make_key(store, new_org(), "admin")
    r = await client.request(method, f"/v1/orgs/{org}{path}", json=body, headers=other)
    assert r.status_code == 404
    assert "no organisation" in r.json()["detail"]


@pytest.mark.parametrize(("method", "path", "scope", "body"), [e for e in ENDPOINTS if e[2]])
async def test_missing_scope_is_403_and_right_scope_passes(
    client: Client,
    store: RedisStore,
    org: str,
    method: str,
    path: str,
    scope: str | None,
    body: object,
) -> None:
    assert scope is not None
    others = [s for s in ALL_BUT_ADMIN if s != scope]
    if scope == "calibration:run" and method == "GET":
        others.remove("scores:read")  # reading runs is allowed with either scope
    wrong = await make_key(store, org, *others)
    assert await _call(client, method, f"/v1/orgs/{org}{path}", wrong, body) == 403
    right = await make_key(store, org, scope)
    assert await _call(client, method, f"/v1/orgs/{org}{path}", right, body) not in (401, 403)
    admin = await make_key(store, org, "admin")
    assert await _call(client, method, f"/v1/orgs/{org}{path}", admin, body) not in (401, 403)


async def test_key_management_and_immediate_revocation(
    client: Client, store: RedisStore, org: str
) -> None:
    admin = await make_key(store, org, "admin")
    r = await client.post(
        f"/v1/orgs/{org}/keys", json={"scopes": ["scores:read"], "name": "reporting"}, headers=admin
    )
    assert r.status_code == 201
    created = r.json()
    key, key_id = created["key"], created["record"]["key_id"]
    reader = {"Authorization": f"Bearer {key}"}
    assert (await client.get(f"/v1/orgs/{org}/cycles/c1/grades", headers=reader)).status_code == 200
    listing = (await client.get(f"/v1/orgs/{org}/keys", headers=admin)).json()
    assert key_id in {k["key_id"] for k in listing}
    assert key not in str(listing)  # the key itself is never shown again
    r = await client.delete(f"/v1/orgs/{org}/keys/{key_id}", headers=admin)
    assert r.status_code == 200
    assert r.json()["revoked_at"] is not None
    assert (await client.get(f"/v1/orgs/{org}/cycles/c1/grades", headers=reader)).status_code == 401
    bad_bodies: list[dict[str, object]] = [
        {"scopes": ["root"]},
        {"scopes": []},
        {"scopes": ["admin"], "rate_limit": 0},
        {"scopes": ["admin"], "x": 1},
    ]
    for bad in bad_bodies:
        r = await client.post(f"/v1/orgs/{org}/keys", json=bad, headers=admin)
        assert r.status_code == 400, bad
    # keys are stored only as hashes
    raw = await store.redis.hgetall(f"okrcal:{{{org}}}:apikeys")
    assert all(key.encode() not in v for v in raw.values())


async def test_rate_limit_answers_429_with_retry_after(
    client: Client, store: RedisStore, org: str
) -> None:
    h = await make_key(store, org, "scores:read", rate_limit=3)
    statuses = []
    for _ in range(10):
        r = await client.get(f"/v1/orgs/{org}/cycles/c1/grades", headers=h)
        statuses.append(r.status_code)
        if r.status_code == 429:
            assert r.headers["retry-after"] == "1"
    assert 429 in statuses
    assert statuses[0] == 200


async def test_owner_read_checks_the_key_in_its_one_round_trip(
    client: Client, store: RedisStore, org: str
) -> None:
    # the owner GET reads the key, the rate counter and the owner in one script:
    # every decision must still be the guard's, in the same order
    owner = msgspec.msgpack.encode(
        OwnerAchievement(
            owner_id="o1", n_krs=2, achievement=0.5, std_error=0.1, ci_low=0.3, ci_high=0.7
        )
    )
    fields = {"run_id": "r1", "status": "done", "created_at": "0", "result_attempt": "1"}
    await store.create_run(org, "c1", "r1", fields)
    await store.save_results(org, "c1", "r1", 1, b"fit", {"owners": [("o1", owner)]})
    assert await store.publish_run(org, "c1", "r1") == "ok"
    url = f"/v1/orgs/{org}/cycles/c1/owners/o1"
    admin = await make_key(store, org, "admin")
    r = await client.get(url, headers=admin)
    assert r.status_code == 200, r.text
    assert (r.json()["run_id"], r.json()["achievement"]) == ("r1", 0.5)

    reader = await make_key(store, org, "hr:read", rate_limit=2)
    key = reader["Authorization"].removeprefix("Bearer ")
    forged = {"Authorization": f"Bearer {key[:-4]}AAAA"}  # a real key id, a wrong secret
    assert (await client.get(url, headers=forged)).status_code == 401
    statuses = [(await client.get(url, headers=reader)).status_code for _ in range(4)]
    assert statuses[0] == 200
    assert 429 in statuses
    r = await client.get(url, headers=await make_key(store, org, "scores:read"))
    assert r.status_code == 403
    r = await client.get(url, headers=await make_key(store, new_org(), "admin"))
    assert r.status_code == 404
    assert "no organisation" in r.json()["detail"]
    assert (await client.get(f"{url}?run_id=r1", headers=admin)).status_code == 200
    assert (
        await client.get(f"/v1/orgs/{org}/cycles/c1/owners/o9", headers=admin)
    ).status_code == 404

    key_id = key.split("_")[1]
    assert (await client.delete(f"/v1/orgs/{org}/keys/{key_id}", headers=admin)).status_code == 200
    r = await client.get(url, headers=reader)
    assert r.status_code == 401  # revoked: refused at once
    assert r.headers["content-type"].startswith("application/problem+json")
