"""Security, route by route: tenant isolation, scopes, and no key in any answer.

The routes are read from the application itself, so a route added later is covered
without editing this file: each ``/v1/orgs/{org}/…`` route must refuse another
organisation's key (404, nothing of the organisation in the body), must refuse a key
without its scope (403), and no answer may echo the key it was sent.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import pytest
from litestar import Litestar
from litestar.routes import HTTPRoute
from litestar.testing import AsyncTestClient

from service.app import create_app
from service.auth import SCOPE_OPT, new_api_key
from service.schemas import SCOPES
from service.settings import Settings
from service.store import RedisStore
from tests.conftest import new_org
from tests.service.conftest import grades_rows

# Routes under /v1/orgs/{org} that any valid key of the organisation may call.
UNSCOPED = {("GET", "/v1/orgs/{org}/anchors/default"), ("GET", "/v1/orgs/{org}/anchors")}
_PARAM = re.compile(r"\{(\w+)(?::\w+)?\}")


def org_routes(app: Litestar) -> list[tuple[str, str, Any]]:
    """(method, path template, handler) of every route under ``/v1/orgs/{org}``."""
    out = []
    for route in app.routes:
        if not isinstance(route, HTTPRoute):
            continue
        path = _PARAM.sub(lambda m: "{" + m.group(1) + "}", route.path)
        if not path.startswith("/v1/orgs/{org}"):
            continue
        for method, handler in route.route_handler_map.items():
            if method in ("HEAD", "OPTIONS"):
                continue
            out.append((method, path.rstrip("/") or "/", handler[0]))
    return sorted(out, key=lambda r: (r[1], r[0]))


def url_of(path: str, org: str) -> str:
    """The template filled in: ``org`` for the organisation, a plain id for everything else."""
    return _PARAM.sub(lambda m: org if m.group(1) == "org" else "x1", path)


def accepted_scopes(handler: Any) -> tuple[str, ...]:
    scope = handler.opt.get(SCOPE_OPT)
    if scope is None:
        return ()
    return scope if isinstance(scope, tuple) else (scope,)


class Tenants:
    """Two organisations with data in the same cycle id, and keys of every kind."""

    def __init__(self, client: AsyncTestClient[Litestar], app: Litestar) -> None:
        self.client = client
        self.app = app
        self.a = new_org()
        self.b = new_org()
        self.keys: dict[str, str] = {}


@pytest.fixture
async def tenants(redis_url: str) -> AsyncIterator[Tenants]:
    app = create_app(Settings(run_workers=1, fit_in_subprocess=False), RedisStore(redis_url))
    store = RedisStore(redis_url)
    async with AsyncTestClient(app) as client:
        t = Tenants(client, app)
        for name, org, scopes in [
            ("a_admin", t.a, ["admin"]),
            ("b_admin", t.b, ["admin"]),
        ]:
            key, record = new_api_key(org, scopes)
            await store.add_api_key(record)
            t.keys[name] = key
        await store.close()
        yield t


def _h(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def _call(client: AsyncTestClient[Litestar], method: str, url: str, key: str) -> Any:
    kwargs: dict[str, Any] = {"headers": _h(key)}
    if method in ("POST", "PUT", "PATCH"):
        kwargs["json"] = {}
    return await client.request(method, url, **kwargs)


async def test_routes_are_found(tenants: Tenants) -> None:
    routes = org_routes(tenants.app)
    paths = {p for _, p, _ in routes}
    # the issue-3 surface at least; later routes are picked up by themselves
    for expected in ("/v1/orgs/{org}/cycles/{cycle}/grades", "/v1/orgs/{org}/keys"):
        assert expected in paths
    assert len(routes) >= 20


async def test_another_organisations_key_gets_nothing_on_any_route(tenants: Tenants) -> None:
    c = tenants.client
    ha = _h(tenants.keys["a_admin"])
    # organisation a has data under ids b's key will ask for
    base = f"/v1/orgs/{tenants.a}/cycles/x1"
    assert (await c.post(f"{base}/grades", json=grades_rows(6, 3), headers=ha)).status_code == 200
    assert (await c.post(f"{base}/krs", json=[{"kr_id": "x1"}], headers=ha)).status_code == 200
    failures = []
    for method, path, _ in org_routes(tenants.app):
        url = url_of(path, tenants.a)
        r = await _call(c, method, url, tenants.keys["b_admin"])
        # the guard's answer and nothing else: no data of a, not even whether a exists
        if r.status_code != 404 or r.json().get("detail") != f"no organisation {tenants.a!r}":
            failures.append(f"{method} {path}: {r.status_code} {r.text[:200]}")
        if tenants.keys["b_admin"] in r.text:
            failures.append(f"{method} {path}: the key is echoed in the answer")
        anon = await c.request(method, url)
        if anon.status_code != 401:
            failures.append(f"{method} {path} without a key: {anon.status_code}")
    assert not failures, "\n".join(failures)
    # and nothing of a's changed or leaked through b's own routes with a's ids
    hb = _h(tenants.keys["b_admin"])
    mine = f"/v1/orgs/{tenants.b}/cycles/x1"
    assert (await c.get(f"{mine}/grades", headers=hb)).json()["items"] == []
    assert (await c.get(f"{mine}/krs/x1", headers=hb)).status_code == 404
    assert len((await c.get(f"{base}/grades", headers=ha)).json()["items"]) == 18


async def test_every_scoped_route_refuses_a_key_without_its_scope(
    tenants: Tenants, redis_url: str
) -> None:
    store = RedisStore(redis_url)
    keys: dict[tuple[str, ...], str] = {}
    failures = []
    try:
        for method, path, handler in org_routes(tenants.app):
            accepted = accepted_scopes(handler)
            if not accepted:
                if (method, path) not in UNSCOPED:
                    failures.append(f"{method} {path} needs no scope")
                continue
            others = tuple(s for s in SCOPES if s not in accepted and s != "admin")
            if not others:
                continue  # nothing to lack
            if others not in keys:
                key, record = new_api_key(tenants.a, others)
                await store.add_api_key(record)
                keys[others] = key
            r = await _call(tenants.client, method, url_of(path, tenants.a), keys[others])
            if r.status_code != 403:
                failures.append(f"{method} {path} with {others}: {r.status_code} {r.text[:200]}")
            elif keys[others] in r.text:
                failures.append(f"{method} {path}: the key is echoed in the answer")
    finally:
        await store.close()
    assert not failures, "\n".join(failures)


async def test_grades_for_another_organisations_krs_stay_in_the_senders_org(
    tenants: Tenants,
) -> None:
    c = tenants.client
    ha, hb = _h(tenants.keys["a_admin"]), _h(tenants.keys["b_admin"])
    a_base = f"/v1/orgs/{tenants.a}/cycles/q1"
    b_base = f"/v1/orgs/{tenants.b}/cycles/q1"
    kr = {"kr_id": "shared", "owner_id": "alice", "kr_type": "binary", "done": True}
    assert (await c.post(f"{a_base}/krs", json=[kr], headers=ha)).status_code == 200
    row = {"kr_id": "shared", "grader_id": "g1", "grade": 0.9, "owner_id": "alice"}
    assert (await c.post(f"{a_base}/grades", json=[row], headers=ha)).status_code == 200
    # b grades a KR id that exists only in a: it lands in b's organisation, nowhere else
    other = {**row, "grade": 0.1, "grader_id": "intruder"}
    r = await c.post(f"{b_base}/grades", json=[other], headers=hb)
    assert r.status_code == 200
    a_grades = (await c.get(f"{a_base}/grades", headers=ha)).json()["items"]
    assert [(g["grader_id"], g["grade"]) for g in a_grades] == [("g1", 0.9)]
    b_grades = (await c.get(f"{b_base}/grades", headers=hb)).json()["items"]
    assert [(g["grader_id"], g["grade"]) for g in b_grades] == [("intruder", 0.1)]
    assert (await c.get(f"{b_base}/krs/shared", headers=hb)).status_code == 404
    # b's key on a's organisation, with a's ids, is refused
    r = await c.post(f"{a_base}/grades", json=[other], headers=hb)
    assert r.status_code == 404


async def test_audit_routes_are_read_only(tenants: Tenants) -> None:
    # Whatever audit routes exist (sessions add them), none may write; writing methods
    # on their paths are refused.
    routes = org_routes(tenants.app)
    audit = [(m, p) for m, p, _ in routes if "audit" in p]
    assert all(m == "GET" for m, _ in audit), audit
    for _, path in audit:
        url = url_of(path, tenants.a)
        for method in ("POST", "PUT", "PATCH", "DELETE"):
            r = await _call(tenants.client, method, url, tenants.keys["a_admin"])
            assert r.status_code in (404, 405), (method, path, r.status_code)


async def test_the_audit_log_cannot_be_changed_through_any_endpoint(
    tenants: Tenants, redis_url: str
) -> None:
    from service import keys as K  # noqa: N812 - read as "keys"
    from tests.service.test_sessions_api import seed_cycle

    c = tenants.client
    org = tenants.a
    store = RedisStore(redis_url)
    try:
        h = await seed_cycle(c, store, org)
        cyc = f"/v1/orgs/{org}/cycles/c1"
        r = await c.post(
            f"{cyc}/sessions", json={"facilitator": "f", "owner_ids": ["o0"]}, headers=h
        )
        assert r.status_code == 201, r.text
        sid = r.json()["session_id"]
        change = {"changes": [{"type": "override_grade", "kr_id": "k0", "grade": 0.9}]}
        assert (await c.post(f"{cyc}/sessions/{sid}/what-if", json=change, headers=h)).is_success
        adjust = {"kr_id": "k0", "final_grade": 0.7, "reason_code": "context", "comment": "x"}
        r = await c.post(f"{cyc}/sessions/{sid}/adjustments", json=adjust, headers=h)
        assert r.status_code == 201, r.text
        stream = K.OrgKeys(org).audit
        before = await store.redis.xrange(stream)
        assert len(before) >= 3
        first_id = before[0][0].decode()
        # every writing route, with empty and hostile bodies, ids pointing at the log
        values = {"org": org, "cycle": "c1", "session_id": sid}
        hostile = [{}, {"id": first_id, "type": "forged", "data": "{}"}, [first_id]]
        for method, path, _ in org_routes(tenants.app):
            if method == "GET":
                continue
            url = _PARAM.sub(lambda m: values.get(m.group(1), first_id), path)
            for body in hostile:
                r = await c.request(method, url, json=body, headers=_h(tenants.keys["a_admin"]))
                assert r.status_code < 500, (method, path, r.text)
        after = await store.redis.xrange(stream)
    finally:
        await store.close()
    # entries may only have been added (a reopen, say), never changed or removed
    assert after[: len(before)] == before
    exported = (await c.get(f"/v1/orgs/{org}/audit", headers=_h(tenants.keys["a_admin"]))).json()
    assert exported
