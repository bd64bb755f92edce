"""The web pages over HTTP (no browser): sessions, CSRF, access control, plots, small groups.

Run against the real Redis like the API tests, so they run where Chromium is absent too.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from calibrate import GraderEffect, VarianceComponents
from service.store import RedisStore
from service.web import plots
from service.web.websession import COOKIE, session_key
from tests.conftest import new_org
from tests.service.conftest import calibrate_and_publish, make_key


@pytest.fixture
def web(worker_client: Any) -> Any:
    """The app with one in-process calibration worker (fits in a thread)."""
    return worker_client


async def _calibrated(client: Any, headers: dict[str, str], org: str, n_graders: int) -> str:
    krs = [
        {
            "kr_id": f"k{k}",
            "owner_id": f"o{k % 3}",
            "milestones_done": k % 5,
            "milestones_total": 4 if k % 5 < 5 else 5,
        }
        for k in range(12)
    ]
    krs = [{**kr, "milestones_done": min(int(kr["milestones_done"]), 4)} for kr in krs]
    grades = [
        {
            "kr_id": f"k{k}",
            "grader_id": f"g{g}",
            "owner_id": f"o{k % 3}",
            "grade": round(min(1.0, (k % 5) / 4 + (0.2 if g == 0 else 0.0) + 0.01 * g), 3),
        }
        for k in range(12)
        for g in range(n_graders)
    ]
    base = f"/v1/orgs/{org}/cycles/c1"
    assert (await client.post(f"{base}/krs", json={"krs": krs}, headers=headers)).status_code == 200
    assert (
        await client.post(f"{base}/grades", json={"grades": grades}, headers=headers)
    ).status_code == 200
    return await calibrate_and_publish(client, org, "c1", headers)


async def _sign_in(client: Any, key: str) -> Any:
    form = await client.get("/ui/signin")
    token = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
    assert token is not None
    return await client.post(
        "/ui/signin",
        data={"csrf_token": token.group(1), "api_key": key, "next": "/ui/cycles"},
        follow_redirects=False,
    )


def _key(headers: dict[str, str]) -> str:
    return headers["Authorization"].removeprefix("Bearer ")


async def test_no_session_redirects_to_sign_in(web: Any) -> None:
    for path in ("/ui/cycles", "/ui/cycles/c1/graders", "/ui/drift", "/ui/cycles/c1/sessions"):
        r = await web.get(path, follow_redirects=False)
        assert r.status_code == 303, path
        assert r.headers["location"].startswith("/ui/signin?next=%2Fui%2F")
    assert (await web.get("/ui/", follow_redirects=False)).headers["location"] == "/ui/cycles"
    # a download is not a page to come back to: without a session it is refused (401)
    for path in ("/ui/cycles/c1/plots/caterpillar.png", "/ui/drift/plots/drift.svg"):
        refused = await web.get(path, follow_redirects=False)
        assert refused.status_code == 401, path
        assert "text/html" in refused.headers["content-type"]


async def test_sign_in_sets_a_strict_httponly_cookie_and_stores_no_key(
    web: Any, store: RedisStore
) -> None:
    org = new_org()
    key = _key(await make_key(store, org, "scores:read"))
    r = await _sign_in(web, key)
    assert r.status_code == 303
    assert r.headers["location"] == "/ui/cycles"
    cookie = next(c for c in r.headers.get_list("set-cookie") if c.startswith(f"{COOKIE}="))
    assert "HttpOnly" in cookie
    assert "SameSite=strict" in cookie or "SameSite=Strict" in cookie
    session_id = cookie.split(";")[0].split("=", 1)[1]
    assert key not in cookie
    stored = await store.redis.get(session_key(session_id))
    assert stored is not None
    assert key.encode() not in stored
    # Redis names the session by a hash of its id: a dump reveals no live cookie
    names = [n.decode() for n in await store.redis.keys("okrcal:{auth}:web:*")]
    assert session_key(session_id) in names
    assert not any(session_id in n for n in names)
    page = await web.get("/ui/cycles")
    assert page.status_code == 200
    assert org in page.text
    assert "script-src 'none'" in page.headers["content-security-policy"]
    assert page.headers["cache-control"] == "no-store"
    # signing in again replaces the session
    again = await _sign_in(web, key)
    assert again.status_code == 303
    assert await store.redis.get(session_key(session_id)) is None


async def test_sign_in_refuses_bad_keys_and_missing_csrf(web: Any, store: RedisStore) -> None:
    bad = await _sign_in(web, "okr_nope_nope")
    assert bad.status_code == 401
    assert "api_key: unknown or revoked API key" in bad.text
    org = new_org()
    key = _key(await make_key(store, org, "scores:read"))
    forged = await web.post(
        "/ui/signin", data={"csrf_token": "guess", "api_key": key}, follow_redirects=False
    )
    assert forged.status_code == 403
    assert "security token" in forged.text
    assert COOKIE not in forged.headers.get("set-cookie", "")


async def test_open_redirect_is_refused(web: Any, store: RedisStore) -> None:
    key = _key(await make_key(store, new_org(), "scores:read"))
    form = await web.get("/ui/signin?next=https://evil.example/")
    token = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
    assert token is not None
    r = await web.post(
        "/ui/signin",
        data={"csrf_token": token.group(1), "api_key": key, "next": "https://evil.example/"},
        follow_redirects=False,
    )
    assert r.headers["location"] == "/ui/cycles"
    for target in ("//evil.example/", "/ui/\\evil.example", "/ui/x\r\nSet-Cookie: a=b"):
        form = await web.get("/ui/signin")
        token = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
        assert token is not None
        r = await web.post(
            "/ui/signin",
            data={"csrf_token": token.group(1), "api_key": key, "next": target},
            follow_redirects=False,
        )
        assert r.headers["location"] == "/ui/cycles", target


async def test_scopes_decide_pages_and_revocation_ends_the_session(
    web: Any, store: RedisStore
) -> None:
    org = new_org()
    admin = await make_key(store, org, "admin")
    await _calibrated(web, admin, org, n_graders=5)
    hr = await make_key(store, org, "hr:read")
    assert (await _sign_in(web, _key(hr))).status_code == 303
    refused = await web.get("/ui/cycles/c1/graders")
    assert refused.status_code == 403
    assert "scores:read" in refused.text
    assert "Sign out" in refused.text
    assert (await web.get("/ui/drift")).status_code == 200
    nav = (await web.get("/ui/drift")).text
    assert 'href="/ui/drift"' in nav
    # revoking the key ends the web session at once
    key_id = _key(hr).split("_")[1]
    revoked = await web.delete(f"/v1/orgs/{org}/keys/{key_id}", headers=admin)
    assert revoked.status_code == 200
    after = await web.get("/ui/drift", follow_redirects=False)
    assert after.status_code == 303
    assert after.headers["location"].startswith("/ui/signin")


async def test_forms_need_the_session_token_and_same_origin(web: Any, store: RedisStore) -> None:
    org = new_org()
    admin = await make_key(store, org, "admin")
    await _calibrated(web, admin, org, n_graders=5)
    assert (await _sign_in(web, _key(admin))).status_code == 303
    page = await web.get("/ui/cycles/c1/sessions")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert token is not None
    body = {"facilitator": "fay", "owner_ids": "", "org_unit": "", "title": ""}
    missing = await web.post("/ui/cycles/c1/sessions", data=body, follow_redirects=False)
    assert missing.status_code == 403
    cross = await web.post(
        "/ui/cycles/c1/sessions",
        data={**body, "csrf_token": token.group(1)},
        headers={"Origin": "https://evil.example"},
        follow_redirects=False,
    )
    assert cross.status_code == 403
    listed = await web.get(f"/v1/orgs/{org}/cycles/c1/sessions", headers=admin)
    assert listed.json() == []
    made = await web.post(
        "/ui/cycles/c1/sessions",
        data={**body, "csrf_token": token.group(1)},
        follow_redirects=False,
    )
    assert made.status_code == 303
    sessions = (await web.get(f"/v1/orgs/{org}/cycles/c1/sessions", headers=admin)).json()
    assert len(sessions) == 1
    url = made.headers["location"]
    sid = sessions[0]["session_id"]
    csrf = {"csrf_token": token.group(1)}
    unknown = await web.post(
        f"{url}/what-if", data={**csrf, "type": "exclude_grader", "grader_id": "nobody"}
    )
    assert unknown.status_code == 400
    assert "changes[0].grader_id: unknown grader" in unknown.text
    assert 'id="agenda"' in unknown.text  # shown next to the form, on the session page
    off_scale = await web.post(
        f"{url}/adjust",
        data={**csrf, "kr_id": "k1", "final_grade": "7", "reason_code": "evidence", "comment": "x"},
    )
    assert off_scale.status_code == 400
    assert "final_grade 7.0 is outside the google scale" in off_scale.text
    unconfirmed = await web.post(f"{url}/lock", data=csrf)
    assert unconfirmed.status_code == 400
    assert "confirm:" in unconfirmed.text
    locked = await web.post(f"{url}/lock", data={**csrf, "confirm": "yes"}, follow_redirects=False)
    assert locked.status_code == 303
    no_reason = await web.post(f"{url}/reopen", data=csrf)
    assert no_reason.status_code == 400
    assert "reason:" in no_reason.text
    reopened = await web.post(
        f"{url}/reopen", data={**csrf, "reason": "late evidence"}, follow_redirects=False
    )
    assert reopened.status_code == 303
    audit = await web.get(f"/v1/orgs/{org}/cycles/c1/sessions/{sid}/audit", headers=admin)
    kinds = [e["type"] for e in audit.json()]
    assert kinds == ["session.created", "session.locked", "session.reopened"]
    # a session scope that matches no one is refused with the field named
    nobody = await web.post(
        "/ui/cycles/c1/sessions",
        data={**body, "owner_ids": "ghost", "csrf_token": token.group(1)},
    )
    assert nobody.status_code == 400
    assert "owner_ids" in nobody.text


async def test_pages_plots_and_small_group_notice(web: Any, store: RedisStore) -> None:
    org = new_org()
    admin = await make_key(store, org, "admin")
    run_id = await _calibrated(web, admin, org, n_graders=3)
    assert (await _sign_in(web, _key(admin))).status_code == 303
    overview = await web.get("/ui/cycles/c1")
    assert overview.status_code == 200
    assert run_id in overview.text
    assert 'id="plot-distribution"' in overview.text
    assert "grader statistics withheld" in overview.text
    graders = await web.get("/ui/cycles/c1/graders")
    assert 'id="small-group"' in graders.text
    assert "withheld" in graders.text
    assert 'id="plot-caterpillar"' not in graders.text
    withheld = await web.get("/ui/cycles/c1/plots/caterpillar.png")
    assert withheld.status_code == 403
    png = await web.get("/ui/cycles/c1/plots/distribution.png")
    assert png.status_code == 200
    assert png.headers["content-type"] == "image/png"
    assert png.content.startswith(b"\x89PNG")
    assert "attachment" in png.headers["content-disposition"]
    svg = await web.get("/ui/cycles/c1/plots/kr.svg?kr=k3")
    assert svg.headers["content-type"].startswith("image/svg+xml")
    assert b"<svg" in svg.content
    assert (await web.get("/ui/cycles/c1/plots/distribution.gif")).status_code == 404
    kr = await web.get("/ui/cycles/c1/krs/k3")
    assert kr.status_code == 200
    assert 'id="evidence-grade"' in kr.text
    missing = await web.get("/ui/cycles/c1/krs/nope")
    assert missing.status_code == 404
    assert "text/html" in missing.headers["content-type"]
    assert "no KR" in missing.text
    assert (await web.get("/ui/cycles/bad%20id")).status_code == 400
    css = await web.get("/ui/static/okrcal.css")
    assert css.status_code == 200
    assert "@media" in css.text


async def test_graders_page_says_which_parts_are_compared_only_within(
    web: Any, store: RedisStore
) -> None:
    # Two departments (a, b) that share no grader and no KR, and no evidence: each is
    # compared within itself, and the page says so beside every grader.
    org = new_org()
    admin = await make_key(store, org, "admin")
    grades = [
        {
            "kr_id": f"{d}k{k}",
            "grader_id": f"{d}g{(k + extra) % 6}",
            "grade": round(min(1.0, (k % 5) / 5 + (0.2 if (k + extra) % 6 == 0 else 0.0)), 3),
        }
        for d in ("a", "b")
        for k in range(30)
        for extra in (0, 1)  # every KR by two neighbours: a ring of six graders
    ]
    base = f"/v1/orgs/{org}/cycles/c1"
    posted = await web.post(f"{base}/grades", json={"grades": grades}, headers=admin)
    assert posted.status_code == 200
    await calibrate_and_publish(web, org, "c1", admin)
    assert (await _sign_in(web, _key(admin))).status_code == 303
    page = await web.get("/ui/cycles/c1/graders")
    assert page.status_code == 200
    assert "compared only with the other graders" in page.text
    notes = re.findall(r"compared only with the graders of part (\d+)", page.text)
    # without evidence neither part has a common zero with the other: all 12 carry it
    assert len(notes) == 12
    assert len(set(notes)) == 2
    api = await web.get(f"{base}/graders", headers=admin)
    assert {g["compared_with"] for g in api.json()["items"]} == {"graders"}


def _effect(gid: str, lin: float, flag: str) -> GraderEffect:
    """A grader's effect with an interval of ±0.03 around ``lin``."""
    return GraderEffect(
        grader_id=gid,
        n_grades=10,
        n_linking=10,
        component=0,
        leniency=lin,
        std_error=0.02,
        ci_low=lin - 0.03,
        ci_high=lin + 0.03,
        z=None,
        p_value=None,
        q_value=None,
        flag=flag,  # type: ignore[arg-type]
    )


def test_caterpillar_marks_flagged_graders() -> None:
    from anchors import parse_scale

    fig = plots.caterpillar_figure(
        [_effect("ann", 0.2, "lenient"), _effect("bob", 0.0, "ok"), _effect("c d", -0.2, "severe")],
        parse_scale("google"),
        0.9,
    )
    svg = plots.render(fig, "svg")
    assert b'id="flagged-ann"' in svg
    assert b'id="flagged-bob"' not in svg
    assert b'id="graders-ok-points"' in svg
    assert b'id="flagged-x632064"' in svg  # an id with a space is written as hex
    assert plots.render(fig, "png").startswith(b"\x89PNG")


def test_plots_keep_hostile_ids_as_text() -> None:
    from anchors import parse_scale

    hostile = "<script>alert(1)</script>$\\frac$"
    g = _effect(hostile, 0.2, "lenient")
    svg = plots.render(plots.caterpillar_figure([g], parse_scale("google"), 0.9), "svg")
    assert b"<script>" not in svg
    assert b"&lt;script&gt;alert(1)&lt;/script&gt;$\\frac$" in svg


def test_variance_figure_says_why_when_there_is_no_estimate() -> None:
    none = VarianceComponents(
        method="reml",
        kr=None,
        grader=None,
        residual=None,
        evidence=None,
        grader_share=None,
        reason="too few grades",
    )
    assert b"too few grades" in plots.render(plots.variance_figure(none), "svg")
