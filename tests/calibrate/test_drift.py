"""Drift across cycles, self-grading and sandbagging: known cases and a seeded simulation."""

from __future__ import annotations

import msgspec
import numpy as np
import pytest

from anchors.scales import parse_scale
from calibrate import GradeRecord, GradeTable, InputError, model_from_name
from calibrate.drift import (
    SANDBAG_MESSAGE,
    CyclePoint,
    drift_test,
    drift_tests,
    pooled_between_cycle_sd,
    rank_drifting,
    sandbagging,
    self_grading,
)
from calibrate.simulate import scenario, simulate_org


def _pts(values: list[float | None], se: float = 0.02) -> list[CyclePoint]:
    return [
        CyclePoint(cycle=f"c{i}", leniency=v, std_error=None if v is None else se)
        for i, v in enumerate(values)
    ]


def test_change_of_the_latest_cycle_is_measured_against_the_earlier_ones() -> None:
    t = drift_test("ann", _pts([0.0, 0.02, -0.02, 0.2]))
    assert t.baseline == pytest.approx(0.0, abs=1e-12)
    assert t.change == pytest.approx(0.2)
    assert t.change_ci_low is not None
    assert t.change_ci_low > 0.1
    assert t.direction == "more_lenient"
    assert t.change_p is not None
    assert t.change_p < 1e-4


def test_trend_recovers_a_steady_slope_with_its_standard_error() -> None:
    t = drift_test("bob", _pts([0.0, -0.05, -0.10, -0.15, -0.20], se=0.01))
    assert t.slope == pytest.approx(-0.05)
    assert t.slope_se == pytest.approx(0.01 / np.sqrt(10.0))  # Σ(t − t̄)² = 10
    assert t.slope_ci_high is not None
    assert t.slope_ci_high < 0


def test_a_grader_who_always_wobbles_is_not_drifting_for_one_more_wobble() -> None:
    wobbly = drift_test("w", _pts([0.2, -0.2, 0.2, -0.2, 0.2], se=0.02))
    steady = drift_test("s", _pts([0.0, 0.0, 0.0, 0.0, 0.4], se=0.02))
    assert wobbly.between_cycle_sd is not None
    assert wobbly.between_cycle_sd > 0.15
    assert wobbly.change_p is not None
    assert wobbly.change_p > 0.05  # the earlier scatter widens the test
    assert steady.change_p is not None
    assert steady.change_p < 1e-6


def test_too_few_cycles_gives_none_with_the_reason() -> None:
    t = drift_test("c", _pts([0.1, None, 0.3]))
    assert t.change is None
    assert t.slope is None
    assert t.n_cycles == 2
    assert t.reason is not None
    assert "at least 3" in t.reason
    latest_missing = drift_test("d", _pts([0.1, 0.2, 0.1, None]))
    assert latest_missing.change is None
    assert latest_missing.reason is not None
    assert "latest cycle" in latest_missing.reason
    with pytest.raises(InputError, match="min_cycles"):
        drift_test("e", _pts([0.1] * 5), min_cycles=2)


def test_only_cycles_against_the_same_zero_as_the_latest_count() -> None:
    # Three cycles against the evidence, then one in which the grader's department was
    # cut off from the evidence (leniency against its own average grader): the change
    # cannot be measured against the evidence cycles, so it is not measured at all.
    zeros = ["evidence", "evidence", "evidence", "graders"]
    pts = [
        CyclePoint(cycle=f"c{i}", leniency=v, std_error=0.02, compared_with=z)
        for i, (v, z) in enumerate(zip([0.1, 0.1, 0.1, -0.1], zeros, strict=True))
    ]
    t = drift_test("ann", pts)
    assert t.change is None
    assert t.reason is not None
    assert "1 cycle(s)" in t.reason
    assert "'graders'" in t.reason
    # the same values all against the evidence: a clear change
    same = [msgspec.structs.replace(p, compared_with="evidence") for p in pts]
    assert drift_test("ann", same).direction == "more_severe"
    # results stored before the zero was recorded (None) still count
    old = [msgspec.structs.replace(p, compared_with=None) for p in pts[:3]] + pts[3:]
    assert drift_test("ann", old).change == pytest.approx(-0.2)


def test_ranking_puts_confident_large_drift_first() -> None:
    tests = [
        drift_test("small", _pts([0.0, 0.0, 0.0, 0.03], se=0.005)),
        drift_test("big", _pts([0.0, 0.0, 0.0, 0.30], se=0.02)),
        drift_test("noisy", _pts([0.0, 0.0, 0.0, 0.30], se=0.25)),
        drift_test("mid", _pts([0.0, 0.0, 0.0, -0.15], se=0.02)),
        drift_test("short", _pts([0.0, 0.3])),
    ]
    ranked = rank_drifting(tests, min_change=0.05)
    assert [t.grader_id for t in ranked if t.drifting] == ["big", "mid"]
    by_id = {t.grader_id: t for t in ranked}
    assert not by_id["small"].drifting  # significant but below min_change
    assert not by_id["noisy"].drifting  # large but not confident
    assert by_id["short"].change_q is None
    assert by_id["mid"].direction == "more_severe"
    assert ranked[-1].grader_id == "short"  # untested last


def test_self_grading_is_measured_apart_from_leniency_on_others() -> None:
    scale = parse_scale("five_point")
    recs = []
    for i in range(6):
        owner = "ann" if i < 3 else "zoe"
        # ann rates her own KRs 1 point above what bob (leniency 0) gives them
        recs.append(GradeRecord(kr_id=f"k{i}", grader_id="bob", grade=3.0, owner_id=owner))
        recs.append(GradeRecord(kr_id=f"k{i}", grader_id="ann", grade=4.0 if i < 3 else 3.0))
    table = GradeTable.from_records(recs, scale)
    fit = model_from_name("fixed").fit(table)
    graders = [msgspec.structs.replace(g, leniency=0.0) for g in fit.graders]
    out = self_grading(table, graders)
    assert [s.grader_id for s in out] == ["ann"]
    ann = out[0]
    assert ann.n_self_grades == 3
    assert ann.self_leniency == pytest.approx(1.0 / scale.span)
    assert ann.leniency_on_others == pytest.approx(0.0)
    assert ann.difference == pytest.approx(0.25)
    assert ann.std_error == pytest.approx(0.0)


def test_self_grading_without_a_reference_says_why() -> None:
    recs = [GradeRecord(kr_id="k1", grader_id="ann", grade=0.9, owner_id="ann")]
    recs.append(GradeRecord(kr_id="k2", grader_id="bob", grade=0.5, owner_id="bob"))
    table = GradeTable.from_records(recs, parse_scale("google"))
    out = self_grading(table, [])
    assert {s.grader_id for s in out} == {"ann", "bob"}
    assert all(s.self_leniency is None and s.reason for s in out)


def test_sandbagging_needs_a_streak_of_latest_cycles() -> None:
    history: dict[str, list[tuple[str, float | None]]] = {
        "always": [("q1", 0.96), ("q2", 0.99), ("q3", 1.0)],
        "once": [("q1", 0.6), ("q2", 0.7), ("q3", 0.99)],
        "broken": [("q1", 0.99), ("q2", None), ("q3", 0.99)],
        "past": [("q1", 0.99), ("q2", 0.99), ("q3", 0.7)],
    }
    flags = sandbagging(history)
    assert [f.owner_id for f in flags] == ["always"]
    assert flags[0].cycles == ("q1", "q2", "q3")
    assert flags[0].message == SANDBAG_MESSAGE
    assert [f.owner_id for f in sandbagging(history, min_cycles=4)] == []
    with pytest.raises(InputError, match="threshold"):
        sandbagging(history, threshold=1.5)


def test_drift_detection_on_a_seeded_multi_cycle_simulation() -> None:
    """Five cycles of one organisation; eight graders change leniency in the last one."""
    rng = np.random.default_rng(20261122)
    cfg = msgspec.structs.replace(
        scenario("realistic"), n_graders=60, affected_share=0.0, ok_leniency_sd=0.0
    )
    n_cycles = 5
    base = rng.normal(0.0, 0.06, cfg.n_graders)  # each grader's own steady leniency
    drifters = rng.choice(cfg.n_graders, 8, replace=False)
    shift = np.zeros(cfg.n_graders)
    shift[drifters] = rng.choice([-1.0, 1.0], 8) * rng.uniform(0.12, 0.2, 8)
    histories: dict[str, list[CyclePoint]] = {}
    model = model_from_name("additive")
    for c in range(n_cycles):
        sim = simulate_org(np.random.default_rng(1000 + c), cfg)
        lenient = base + (shift if c == n_cycles - 1 else 0.0)
        grades = np.clip(sim.grade + lenient[sim.grade_grader], 0.0, 1.0)
        table = GradeTable.from_arrays(
            sim.grade_kr_ids(),
            sim.grade_grader_ids(),
            grades,
            parse_scale("google"),
            evidence=sim.evidence_map(),
            owners=sim.owner_map(),
        )
        for g in model.fit(table).graders:
            histories.setdefault(g.grader_id, []).append(
                CyclePoint(cycle=f"c{c}", leniency=g.leniency, std_error=g.std_error)
            )
    ranked = rank_drifting(drift_tests(histories))
    flagged = {t.grader_id for t in ranked if t.drifting}
    truth = {sim.grader_ids[i] for i in drifters.tolist()}
    recall = len(flagged & truth) / len(truth)
    false_alarm = len(flagged - truth) / (cfg.n_graders - len(truth))
    print(f"drift simulation: recall {recall:.2f}, false-alarm rate {false_alarm:.3f}")
    assert recall >= 0.75
    assert false_alarm <= 0.05
    # the most assured drifters lead the list and are real ones
    assert ranked[0].grader_id in truth


def test_pooled_between_cycle_sd_floors_a_grader_with_a_quiet_history() -> None:
    wobbly = {f"w{i}": _pts([0.1, -0.1, 0.1, -0.1, 0.0], se=0.01) for i in range(5)}
    quiet = _pts([0.0, 0.0, 0.0, 0.0, 0.12], se=0.01)
    floor = pooled_between_cycle_sd({**wobbly, "q": quiet})
    assert 0.08 < floor < 0.12
    own = drift_test("q", quiet)
    floored = {t.grader_id: t for t in drift_tests({**wobbly, "q": quiet})}["q"]
    assert own.change_p is not None
    assert own.change_p < 1e-6  # by its own history alone, a clear change
    assert floored.change_p is not None
    assert floored.change_p > 0.1  # the organisation moves this much cycle to cycle
    assert {t.grader_id for t in drift_tests(wobbly, pooled=False)} == set(wobbly)
