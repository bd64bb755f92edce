"""Calibration sessions through the API on a real Redis: create -> agenda -> what-if ->
adjust -> lock -> owners final -> reopen, the audit trail, bad input and isolation."""

from __future__ import annotations

import asyncio
import csv
import io
from dataclasses import dataclass
from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from service.store import RedisStore
from tests.conftest import new_org
from tests.service.conftest import calibrate_and_publish, grades_rows, make_key

Client = AsyncTestClient[Litestar]


async def seed_cycle(c: Client, store: RedisStore, org: str, cycle: str = "c1") -> dict[str, str]:
    """40 KRs of 5 owners, 6 graders (g0 lenient by 0.25), KR descriptions and org units."""
    h = await make_key(store, org, "grades:write", "scores:read", "calibration:run", "hr:read")
    base = f"/v1/orgs/{org}/cycles/{cycle}"
    rows = grades_rows(40, 6)
    for r in rows:
        if r["grader_id"] == "g0":
            r["grade"] = min(1.0, float(r["grade"]) + 0.25)  # type: ignore[arg-type]
    assert (await c.post(f"{base}/grades", json=rows, headers=h)).status_code == 200
    krs: list[dict[str, Any]] = [
        {
            "kr_id": f"k{k}",
            "owner_id": f"o{k % 5}",
            "org_unit": "sales" if k % 5 in (0, 1) else "ops",
            "description": "Launch the partner portal"
            if k == 0
            else "Increase activation from 20% to 35%",
        }
        for k in range(40)
    ]
    assert (await c.post(f"{base}/krs", json=krs, headers=h)).status_code == 200
    await calibrate_and_publish(c, org, cycle, h)
    return h


@dataclass
class Seeded:
    """The app, an organisation with cycle c1 seeded and published, and its writer's key."""

    c: Client
    store: RedisStore
    org: str
    h: dict[str, str]

    @property
    def cyc(self) -> str:
        return f"/v1/orgs/{self.org}/cycles/c1"

    async def new_session(self, **body: Any) -> str:
        """The URL of a new session (default: facilitator f on owner o0)."""
        r = await self.c.post(
            f"{self.cyc}/sessions",
            json={"facilitator": "f", "owner_ids": ["o0"], **body},
            headers=self.h,
        )
        assert r.status_code == 201, r.text
        return f"{self.cyc}/sessions/{r.json()['session_id']}"


@pytest.fixture
async def seeded(worker_client: Client, store: RedisStore, org: str) -> Seeded:
    """Cycle c1 of a fresh organisation, seeded and published (see :func:`seed_cycle`)."""
    return Seeded(
        c=worker_client, store=store, org=org, h=await seed_cycle(worker_client, store, org)
    )


async def test_full_session_from_create_to_lock_then_owners_final(seeded: Seeded) -> None:
    c, h, cyc, org = seeded.c, seeded.h, seeded.cyc, seeded.org
    admin = await make_key(seeded.store, org, "admin")

    # create
    r = await c.post(
        f"{cyc}/sessions",
        json={"facilitator": "fran", "owner_ids": ["o0", "o1", "o2", "nobody"], "title": "Q3"},
        headers=h,
    )
    assert r.status_code == 201, r.text
    s = r.json()
    sid = s["session_id"]
    assert s["status"] == "open"
    assert s["owner_ids"] == ["o0", "o1", "o2"]
    assert s["unmatched_owner_ids"] == ["nobody"]
    assert s["n_krs"] == 24
    assert s["n_graders"] == 6
    assert not s["grader_stats_withheld"]
    base = f"{cyc}/sessions/{sid}"
    assert (await c.get(base, headers=h)).json()["session_id"] == sid
    assert [x["session_id"] for x in (await c.get(f"{cyc}/sessions", headers=h)).json()] == [sid]

    # agenda: the lenient grader first, the output KR with its reason
    agenda = (await c.get(f"{base}/agenda", headers=h)).json()
    items = agenda["items"]
    assert items[0]["subject"] == "grader"
    assert items[0]["subject_id"] == "g0"
    assert "lenient" in items[0]["reasons"][0]
    outputs = [i for i in items if "output_not_outcome" in i["kinds"]]
    assert [i["subject_id"] for i in outputs] == ["k0"]
    assert all(i["subject_id"] in {f"k{k}" for k in range(40)} for i in items[1:])

    # what-if: excluding g0 clears its flag; nothing is saved
    r = await c.post(
        f"{base}/what-if",
        json={"changes": [{"type": "exclude_grader", "grader_id": "g0"}]},
        headers=h,
    )
    assert r.status_code == 200, r.text
    preview = r.json()
    assert preview["result"]["n_grades_after"] == preview["result"]["n_grades_before"] - 24
    assert "g0" in [f["grader_id"] for f in preview["result"]["flags_cleared"]]
    assert preview["elapsed_ms"] > 0
    r = await c.post(
        f"{base}/what-if",
        json={
            "changes": [
                {"type": "override_grade", "kr_id": "k1", "grade": 1.0},
                {"type": "add_grade", "kr_id": "k2", "grader_id": "g1", "grade": 0.9},
            ]
        },
        headers=h,
    )
    assert r.status_code == 400  # g1 already graded k2
    assert r.json()["errors"][0]["field"] == "changes[1].grader_id"
    r = await c.post(
        f"{base}/what-if",
        json={"changes": [{"type": "override_grade", "kr_id": "k1", "grade": 1.0}]},
        headers=h,
    )
    moved = {k["kr_id"]: k for k in r.json()["result"]["krs"]}
    assert moved["k1"]["after"] > moved["k1"]["before"]
    assert set(r.json()["result"]["crossings"]) <= set(moved)

    # adjustments: old and new values, who and when
    before = {x["kr_id"]: x for x in (await c.get(f"{base}/scores", headers=h)).json()}
    adj = {"kr_id": "k0", "final_grade": 0.9, "reason_code": "evidence", "comment": "signed"}
    r = await c.post(f"{base}/adjustments", json=adj, headers=h)
    assert r.status_code == 201, r.text
    first = r.json()
    assert first["old_value"] == pytest.approx(before["k0"]["calibrated_grade"])
    assert first["new_value"] == 0.9
    assert first["by_key_id"]
    r = await c.post(f"{base}/adjustments", json={**adj, "final_grade": 0.8}, headers=h)
    assert r.json()["old_value"] == 0.9
    history = (await c.get(f"{base}/adjustments", headers=h)).json()
    assert [a["new_value"] for a in history] == [0.9, 0.8]
    scores = {x["kr_id"]: x for x in (await c.get(f"{base}/scores", headers=h)).json()}
    assert scores["k0"]["final_grade"] == 0.8
    assert scores["k0"]["adjusted"]
    assert not scores["k5"]["adjusted"]

    # before the lock, owners are published-provisional
    assert (await c.get(f"{cyc}/owners/o0", headers=h)).json()["state"] == "published-provisional"
    provisional_o0 = (await c.get(f"{cyc}/owners/o0", headers=h)).json()

    # lock: final scores; the owner endpoints serve them
    r = await c.post(f"{base}/lock", json={"comment": "agreed"}, headers=h)
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "locked"
    assert r.json()["locked_by"]
    o0 = (await c.get(f"{cyc}/owners/o0", headers=h)).json()
    assert o0["state"] == "final"
    o0_krs = [x for x in scores.values() if x["owner_id"] == "o0"]
    expected = sum(x["final_grade"] for x in o0_krs) / len(o0_krs)
    assert o0["achievement"] == pytest.approx(expected)
    assert o0["achievement"] != pytest.approx(provisional_o0["achievement"])
    assert "k0" in o0["reason"]
    o1 = (await c.get(f"{cyc}/owners/o1", headers=h)).json()
    assert o1["state"] == "final"
    assert o1["achievement"] == pytest.approx(
        (await c.get(f"{cyc}/owners/o1", params={"run_id": s["run_id"]}, headers=h)).json()[
            "achievement"
        ]
    )
    # an owner outside the scope is not final
    assert (await c.get(f"{cyc}/owners/o3", headers=h)).json()["state"] == "published-provisional"
    page = {o["owner_id"]: o for o in (await c.get(f"{cyc}/owners", headers=h)).json()["items"]}
    assert page["o0"]["state"] == "final"
    assert page["o0"]["achievement"] == pytest.approx(expected)
    assert page["o4"]["state"] == "published-provisional"

    # after the lock: adjustments 409, lock again 409
    r = await c.post(f"{base}/adjustments", json=adj, headers=h)
    assert r.status_code == 409
    assert "locked" in r.json()["detail"]
    assert (await c.post(f"{base}/lock", headers=h)).status_code == 409

    # reopen needs admin and a reason
    assert (await c.post(f"{base}/reopen", json={"reason": "x"}, headers=h)).status_code == 403
    r = await c.post(f"{base}/reopen", json={"reason": "  "}, headers=admin)
    assert r.status_code == 400
    assert r.json()["errors"][0]["field"] == "reason"
    assert (await c.post(f"{base}/reopen", json={}, headers=admin)).status_code == 400
    r = await c.post(f"{base}/reopen", json={"reason": "new evidence for k3"}, headers=admin)
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "open"
    assert r.json()["times_reopened"] == 1
    assert (await c.get(f"{cyc}/owners/o0", headers=h)).json()["state"] == "published-provisional"
    assert (
        await c.post(f"{base}/reopen", json={"reason": "again"}, headers=admin)
    ).status_code == 409

    # audit: every change has its entry, in order, with old and new values
    r = await c.get(f"{base}/audit", headers=h)
    assert r.status_code == 200
    entries = r.json()
    kinds = [e["type"] for e in entries]
    assert kinds == [
        "session.created",
        "whatif.previewed",
        "whatif.previewed",
        "adjustment.set",
        "adjustment.set",
        "session.locked",
        "session.reopened",
    ]
    adjusted = [e["data"] for e in entries if e["type"] == "adjustment.set"]
    assert [(a["old_value"], a["new_value"]) for a in adjusted] == [
        (history[0]["old_value"], 0.9),
        (0.9, 0.8),
    ]
    assert all(a["reason_code"] == "evidence" and a["comment"] == "signed" for a in adjusted)
    assert entries[-1]["data"]["reason"] == "new evidence for k3"
    assert entries[-1]["actor_key_id"] != entries[0]["actor_key_id"]  # the admin key
    locked = entries[5]["data"]
    assert {o["owner_id"] for o in locked["final_owners"]} == {"o0", "o1", "o2"}
    # the failed what-if (already graded) changed nothing and is not an entry
    r = await c.get(f"/v1/orgs/{org}/audit.csv", headers=h)
    assert r.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert [row["type"] for row in rows] == kinds
    assert all(row["session_id"] == sid for row in rows)
    assert rows[3]["data"].startswith("{")
    r = await c.get(f"{base}/audit.csv", headers=h)
    assert [row["type"] for row in csv.DictReader(io.StringIO(r.text))] == kinds
    r = await c.get(f"/v1/orgs/{org}/audit", params={"after": entries[4]["id"]}, headers=h)
    assert [e["type"] for e in r.json()] == kinds[5:]
    r = await c.get(f"/v1/orgs/{org}/audit", params={"after": "x"}, headers=h)
    assert r.status_code == 400


async def test_session_bad_input_names_the_problem(seeded: Seeded) -> None:
    c, h, cyc, org = seeded.c, seeded.h, seeded.cyc, seeded.org

    async def create(body: dict[str, Any]) -> Any:
        return await c.post(f"{cyc}/sessions", json=body, headers=h)

    r = await create({"facilitator": "f", "owner_ids": ["ghost", "phantom"]})
    assert r.status_code == 400
    assert "matches no one" in r.json()["detail"]
    assert r.json()["errors"][0]["field"] == "owner_ids"
    r = await create({"facilitator": "f", "org_unit": "nowhere"})
    assert r.status_code == 400
    assert r.json()["errors"][0]["field"] == "org_unit"
    r = await create({"facilitator": "f", "org_unit": "sales", "owner_ids": ["o0"]})
    assert r.status_code == 400
    assert (await create({"facilitator": "f"})).status_code == 400
    assert (await create({"facilitator": " ", "owner_ids": ["o0"]})).status_code == 400
    assert (await create({"owner_ids": ["o0"]})).status_code == 400  # no facilitator
    r = await create({"facilitator": "f", "owner_ids": ["o0"], "run_id": "nope"})
    assert r.status_code == 404
    r = await create({"facilitator": "f", "owner_ids": ["o0"], "colour": "red"})
    assert r.status_code == 400
    empty = f"/v1/orgs/{org}/cycles/empty/sessions"
    r = await c.post(empty, json={"facilitator": "f", "owner_ids": ["o0"]}, headers=h)
    assert r.status_code == 404

    r = await create({"facilitator": "f", "org_unit": "sales"})
    assert r.status_code == 201
    assert r.json()["owner_ids"] == ["o0", "o1"]
    base = f"{cyc}/sessions/{r.json()['session_id']}"

    async def adjust(body: dict[str, Any]) -> Any:
        return await c.post(f"{base}/adjustments", json=body, headers=h)

    ok = {"kr_id": "k0", "final_grade": 0.5, "reason_code": "context", "comment": "why"}
    r = await adjust({k: v for k, v in ok.items() if k != "reason_code"})
    assert r.status_code == 400
    assert "reason_code" in r.text
    r = await adjust({**ok, "comment": ""})
    assert r.status_code == 400
    assert r.json()["errors"][0]["field"] == "comment"
    r = await adjust({**ok, "reason_code": "because"})
    assert r.status_code == 400
    r = await adjust({**ok, "kr_id": "k2"})  # o2's KR: outside the sales scope
    assert r.status_code == 400
    assert r.json()["errors"][0]["field"] == "kr_id"
    r = await adjust({**ok, "final_grade": 1.5})
    assert r.status_code == 400
    assert r.json()["errors"][0]["field"] == "final_grade"

    async def preview(changes: list[dict[str, Any]]) -> Any:
        return await c.post(f"{base}/what-if", json={"changes": changes}, headers=h)

    r = await preview([{"type": "override_grade", "kr_id": "k999", "grade": 0.5}])
    assert r.status_code == 400
    assert "unknown KR" in r.json()["detail"]
    assert r.json()["errors"][0]["field"] == "changes[0].kr_id"
    r = await preview([{"type": "exclude_grader", "grader_id": "zed"}])
    assert r.status_code == 400
    assert "unknown grader" in r.json()["detail"]
    r = await preview([{"type": "add_grade", "kr_id": "k0", "grader_id": "zed", "grade": 0.5}])
    assert r.status_code == 400
    assert (await preview([])).status_code == 400
    assert (await preview([{"type": "teleport"}])).status_code == 400
    assert (await c.get(f"{cyc}/sessions/nope", headers=h)).status_code == 404
    assert (await c.post(f"{cyc}/sessions/nope/lock", headers=h)).status_code == 404


async def test_small_groups_withhold_grader_statistics(seeded: Seeded) -> None:
    c, h = seeded.c, seeded.h
    base = await seeded.new_session(min_graders=10)
    s = (await c.get(base, headers=h)).json()
    assert s["grader_stats_withheld"]
    assert "fewer than 10" in s["withheld_reason"]
    agenda = (await c.get(f"{base}/agenda", headers=h)).json()
    assert agenda["grader_stats_withheld"]
    assert "withheld" in agenda["withheld_reason"]
    assert all(i["subject"] == "kr" for i in agenda["items"])
    r = await c.post(
        f"{base}/what-if",
        json={"changes": [{"type": "exclude_grader", "grader_id": "g0"}]},
        headers=h,
    )
    assert r.json()["result"]["grader_stats_withheld"]
    assert r.json()["result"]["flags_cleared"] == []


async def test_session_scopes_and_tenants(seeded: Seeded) -> None:
    c, h, cyc, org, store = seeded.c, seeded.h, seeded.cyc, seeded.org, seeded.store
    base = await seeded.new_session()
    reader = await make_key(store, org, "scores:read")
    hr = await make_key(store, org, "hr:read")
    writer = await make_key(store, org, "grades:write")
    other = await make_key(store, new_org(), "admin")
    adj = {"kr_id": "k0", "final_grade": 0.5, "reason_code": "context", "comment": "c"}

    # reads for scores:read, changes for calibration:run only
    assert (await c.get(base, headers=reader)).status_code == 200
    assert (await c.get(f"{base}/agenda", headers=reader)).status_code == 200
    assert (await c.get(f"{base}/scores", headers=reader)).status_code == 200
    assert (await c.post(f"{base}/adjustments", json=adj, headers=reader)).status_code == 403
    assert (await c.post(f"{base}/lock", headers=reader)).status_code == 403
    assert (
        await c.post(f"{base}/what-if", json={"changes": []}, headers=reader)
    ).status_code == 403
    body = {"facilitator": "f", "owner_ids": ["o0"]}
    assert (await c.post(f"{cyc}/sessions", json=body, headers=reader)).status_code == 403
    assert (await c.get(base, headers=writer)).status_code == 403
    # the audit log: calibration:run or hr:read
    assert (await c.get(f"/v1/orgs/{org}/audit", headers=hr)).status_code == 200
    assert (await c.get(f"/v1/orgs/{org}/audit", headers=reader)).status_code == 403
    assert (await c.get(f"{base}/audit", headers=writer)).status_code == 403
    # another organisation's key sees nothing
    for url in (base, f"{base}/agenda", f"{base}/audit", f"/v1/orgs/{org}/audit"):
        assert (await c.get(url, headers=other)).status_code == 404
    assert (await c.post(f"{base}/lock", headers=other)).status_code == 404
    # no route edits or deletes the audit log
    for method in ("delete", "put", "patch"):
        r = await getattr(c, method)(f"/v1/orgs/{org}/audit", headers=h)
        assert r.status_code == 405
    assert (await c.post(f"/v1/orgs/{org}/audit", json={}, headers=h)).status_code == 405


async def test_what_if_follows_changed_grades(seeded: Seeded) -> None:
    c, h, cyc = seeded.c, seeded.h, seeded.cyc
    url = f"{await seeded.new_session()}/what-if"
    body = {"changes": [{"type": "override_grade", "kr_id": "k0", "grader_id": "g1", "grade": 1.0}]}
    first = (await c.post(url, json=body, headers=h)).json()["result"]
    k0 = next(k for k in first["krs"] if k["kr_id"] == "k0")
    # a grade of the scope changes after the session was made: the preview starts from it
    new = {"kr_id": "k0", "grader_id": "g2", "grade": 0.0, "owner_id": "o0"}
    assert (await c.post(f"{cyc}/grades", json=[new], headers=h)).status_code == 200
    second = (await c.post(url, json=body, headers=h)).json()["result"]
    k0_again = next(k for k in second["krs"] if k["kr_id"] == "k0")
    assert k0_again["before"] < k0["before"]


async def test_adjustments_racing_a_lock_are_in_the_final_scores_or_refused(
    seeded: Seeded,
) -> None:
    c, h, cyc = seeded.c, seeded.h, seeded.cyc
    base = await seeded.new_session()
    kr_ids = [f"k{k}" for k in range(0, 40, 5)]  # o0's KRs

    async def adjust(kr_id: str) -> int:
        body = {"kr_id": kr_id, "final_grade": 1.0, "reason_code": "other", "comment": "race"}
        return (await c.post(f"{base}/adjustments", json=body, headers=h)).status_code

    results = await asyncio.gather(
        *(adjust(k) for k in kr_ids[:4]),
        c.post(f"{base}/lock", headers=h),
        *(adjust(k) for k in kr_ids[4:]),
    )
    lock = results[4]
    statuses = [s for s in results if isinstance(s, int)]
    assert getattr(lock, "status_code", None) == 200
    assert set(statuses) <= {201, 409}
    accepted = (await c.get(f"{base}/adjustments", headers=h)).json()
    assert len(accepted) == statuses.count(201)
    # every accepted adjustment is in the locked achievement, and each has its audit entry
    scores = {x["kr_id"]: x for x in (await c.get(f"{base}/scores", headers=h)).json()}
    expected = sum(x["final_grade"] for x in scores.values()) / len(scores)
    owner = (await c.get(f"{cyc}/owners/o0", headers=h)).json()
    assert owner["state"] == "final"
    assert owner["achievement"] == pytest.approx(expected)
    audit = (await c.get(f"{base}/audit", headers=h)).json()
    assert sum(e["type"] == "adjustment.set" for e in audit) == len(accepted)
    assert audit[-1]["type"] == "session.locked"
    assert audit[-1]["data"]["n_adjustments"] == len(accepted)


async def test_an_owner_is_final_through_one_locked_session_at_a_time(seeded: Seeded) -> None:
    c, h, cyc = seeded.c, seeded.h, seeded.cyc
    admin = await make_key(seeded.store, seeded.org, "admin")
    body_a = {"facilitator": "a", "owner_ids": ["o0", "o1"]}
    body_b = {"facilitator": "b", "owner_ids": ["o1", "o2"]}
    a = (await c.post(f"{cyc}/sessions", json=body_a, headers=h)).json()
    b = (await c.post(f"{cyc}/sessions", json=body_b, headers=h)).json()
    assert (await c.post(f"{cyc}/sessions/{a['session_id']}/lock", headers=h)).status_code == 200
    r = await c.post(f"{cyc}/sessions/{b['session_id']}/lock", headers=h)
    assert r.status_code == 409
    assert "'o1'" in r.json()["detail"]
    assert a["session_id"] in r.json()["detail"]
    assert (await c.get(f"{cyc}/sessions/{b['session_id']}", headers=h)).json()["status"] == "open"
    assert (await c.get(f"{cyc}/owners/o2", headers=h)).json()["state"] == "published-provisional"
    reopen = {"reason": "o1 moves to session b"}
    r = await c.post(f"{cyc}/sessions/{a['session_id']}/reopen", json=reopen, headers=admin)
    assert r.status_code == 200
    assert (await c.post(f"{cyc}/sessions/{b['session_id']}/lock", headers=h)).status_code == 200
    assert (await c.get(f"{cyc}/owners/o2", headers=h)).json()["state"] == "final"
    assert (await c.get(f"{cyc}/owners/o0", headers=h)).json()["state"] == "published-provisional"
