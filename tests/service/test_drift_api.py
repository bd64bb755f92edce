"""Drift across cycles through the API: four published cycles, one grader turning lenient in
the last, a self-grader, an owner at 1.0 every cycle; bad input and isolation."""

from __future__ import annotations

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from service.store import RedisStore
from tests.conftest import new_org
from tests.service.conftest import calibrate_and_publish, make_key

Client = AsyncTestClient[Litestar]
CYCLES = ("2026Q1", "2026Q2", "2026Q3", "2026Q4")


def _rows(cycle_no: int, latest: bool) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for k in range(30):
        owner = f"o{k % 5}"
        truth = 1.0 if k % 5 == 4 else 0.3 + 0.4 * ((k * 7) % 10) / 10
        for g in range(12):
            lenient = 0.3 if (g == 0 and latest) else 0.0
            noise = (((k * 3 + g * 5 + cycle_no) % 5) - 2) * 0.01
            grade = min(1.0, max(0.0, truth + lenient + noise))
            rows.append(
                {
                    "kr_id": f"k{k}",
                    "grader_id": f"g{g}",
                    "grade": round(grade, 3),
                    "owner_id": owner,
                }
            )
        if latest and k % 5 in (1, 2):
            # o1 grades their own KRs 0.3 high, o2's honestly
            self_bump = 0.3 if owner == "o1" else 0.0
            grade = min(1.0, truth + self_bump)
            rows.append(
                {"kr_id": f"k{k}", "grader_id": "o1", "grade": round(grade, 3), "owner_id": owner}
            )
    return rows


@pytest.fixture
async def history(worker_client: Client, store: RedisStore, org: str) -> dict[str, str]:
    """Four cycles graded, calibrated and published."""
    h = await make_key(store, org, "grades:write", "calibration:run", "hr:read", "scores:read")
    for i, cycle in enumerate(CYCLES):
        rows = _rows(i, latest=i == len(CYCLES) - 1)
        r = await worker_client.post(f"/v1/orgs/{org}/cycles/{cycle}/grades", json=rows, headers=h)
        assert r.status_code == 200, r.text
        await calibrate_and_publish(worker_client, org, cycle, h)
    return h


async def test_drifting_grader_is_found_and_ranked_first(
    worker_client: Client, history: dict[str, str], org: str
) -> None:
    c = worker_client
    r = await c.get(f"/v1/orgs/{org}/drift/graders", headers=history)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["cycles"] == list(CYCLES)
    assert out["n_graders"] == 13
    assert out["n_short_history"] == 1  # o1 graded in one cycle only
    assert [t["grader_id"] for t in out["drifting"]] == ["g0"]
    g0 = out["drifting"][0]
    assert g0["direction"] == "more_lenient"
    # +0.3 on most KRs; clipped at 1.0 on o4's, which everyone grades 1.0
    assert 0.15 < g0["change"] < 0.35
    assert g0["change_q"] < 0.05
    assert g0["assured"] > 0.1

    r = await c.get(f"/v1/orgs/{org}/drift/graders/g0", headers=history)
    body = r.json()
    assert [p["cycle"] for p in body["history"]] == list(CYCLES)
    assert all(p["ci_low"] <= p["leniency"] <= p["ci_high"] for p in body["history"])
    assert body["history"][-1]["leniency"] > body["history"][0]["leniency"] + 0.2
    assert body["test"]["change_ci_low"] > 0
    assert body["test"]["slope"] > 0
    assert body["test"]["slope_se"] > 0

    # a steady grader is not drifting
    g5 = (await c.get(f"/v1/orgs/{org}/drift/graders/g5", headers=history)).json()["test"]
    assert abs(g5["change"]) < 0.05

    # o1 graded only in the latest cycle: no estimate, and why
    o1 = (await c.get(f"/v1/orgs/{org}/drift/graders/o1", headers=history)).json()
    assert [p["flag"] for p in o1["history"][:3]] == ["did not grade in this cycle"] * 3
    assert o1["test"]["change"] is None
    assert "at least 3" in o1["test"]["reason"]

    # fewer cycles than the minimum
    r = await c.get(
        f"/v1/orgs/{org}/drift/graders/g0", params={"cycles": "2026Q1,2026Q4"}, headers=history
    )
    assert r.json()["test"]["change"] is None


async def test_self_grading_and_sandbagging(
    worker_client: Client, history: dict[str, str], org: str
) -> None:
    c = worker_client
    r = await c.get(
        f"/v1/orgs/{org}/drift/self-grading", params={"cycle": "2026Q4"}, headers=history
    )
    assert r.status_code == 200, r.text
    graders = r.json()["graders"]
    assert [g["grader_id"] for g in graders] == ["o1"]
    o1 = graders[0]
    assert o1["n_self_grades"] == 6
    assert o1["self_leniency"] > 0.15
    assert o1["difference"] > 0.15  # much more lenient on their own KRs than on o2's

    r = await c.get(f"/v1/orgs/{org}/drift/sandbagging", headers=history)
    flags = r.json()["flags"]
    assert [f["owner_id"] for f in flags] == ["o4"]
    assert flags[0]["cycles"] == list(CYCLES)
    assert flags[0]["message"] == "target may not be ambitious"
    assert min(flags[0]["achievements"]) >= 0.95
    r = await c.get(f"/v1/orgs/{org}/drift/sandbagging", params={"threshold": 1.0}, headers=history)
    assert r.status_code == 200


async def test_drift_bad_input_and_isolation(
    worker_client: Client, history: dict[str, str], store: RedisStore, org: str
) -> None:
    c = worker_client
    r = await c.get(f"/v1/orgs/{org}/drift/graders/nobody", headers=history)
    assert r.status_code == 404
    assert "no history" in r.json()["detail"]
    assert "2026Q1" in r.json()["detail"]
    r = await c.get(
        f"/v1/orgs/{org}/drift/graders", params={"cycles": "bad cycle"}, headers=history
    )
    assert r.status_code == 400
    assert r.json()["errors"][0]["field"] == "cycles"
    r = await c.get(f"/v1/orgs/{org}/drift/graders", params={"min_cycles": 2}, headers=history)
    assert r.status_code == 400
    r = await c.get(
        f"/v1/orgs/{org}/drift/self-grading", params={"cycle": "1999Q1"}, headers=history
    )
    assert r.status_code == 404
    r = await c.get(f"/v1/orgs/{org}/drift/sandbagging", params={"min_cycles": 1}, headers=history)
    assert r.status_code == 400

    reader = await make_key(store, org, "scores:read", "calibration:run")
    other = await make_key(store, new_org(), "admin")
    for url in ("drift/graders", "drift/graders/g0", "drift/sandbagging"):
        assert (await c.get(f"/v1/orgs/{org}/{url}", headers=reader)).status_code == 403
        assert (await c.get(f"/v1/orgs/{org}/{url}", headers=other)).status_code == 404
    # a fresh organisation has no history at all
    empty = new_org()
    hr = await make_key(store, empty, "hr:read")
    r = await c.get(f"/v1/orgs/{empty}/drift/graders/g0", headers=hr)
    assert r.status_code == 404
    assert "none is published" in r.json()["detail"]
