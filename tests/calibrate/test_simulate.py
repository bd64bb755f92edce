"""The organisation simulator: seeded, shaped as documented, grades on the grid."""

from __future__ import annotations

import csv
import io

import msgspec
import numpy as np
import pytest

from calibrate.simulate import (
    GRADER_TYPES,
    SCENARIOS,
    SimConfig,
    Simulation,
    grade_rows,
    kr_rows,
    scenario,
    simulate_org,
)


def _sim(name: str = "realistic", seed: int = 11) -> Simulation:
    return simulate_org(np.random.default_rng(seed), scenario(name))


def _manager_of_grade(sim: Simulation) -> np.ndarray:
    return sim.owner_manager[sim.kr_owner[sim.grade_kr]]


def test_same_seed_same_organisation() -> None:
    a, b = _sim(seed=3), _sim(seed=3)
    for field in (
        "grade_kr",
        "grade_grader",
        "grade",
        "true_achievement",
        "true_leniency",
        "true_scale",
        "grader_type_code",
        "kr_owner",
    ):
        assert np.array_equal(getattr(a, field), getattr(b, field), equal_nan=True), field
    assert np.array_equal(a.evidence, b.evidence, equal_nan=True)
    assert a.kr_ids == b.kr_ids
    assert list(grade_rows(a)) == list(grade_rows(b))


def test_different_seeds_differ() -> None:
    assert not np.array_equal(
        _sim(seed=1).true_achievement[:50], _sim(seed=2).true_achievement[:50]
    )


def test_grades_on_the_grid_and_in_range() -> None:
    sim = _sim("compression_heavy")
    assert sim.grade.min() >= 0.0
    assert sim.grade.max() <= 1.0
    steps = sim.grade / 0.05
    assert np.allclose(steps, np.round(steps), atol=1e-9)
    # Printed grades are exact decimals, not binary noise.
    printed = {row[2] for row in list(grade_rows(sim))[1:]}
    assert all(len(p) <= 4 for p in printed), sorted(printed, key=len)[-3:]


def test_realistic_shape_and_fractions() -> None:
    sim = _sim()
    cfg = sim.config
    assert sim.n_graders == cfg.n_graders == 150
    # Departments of 8..20 managers.
    sizes = np.bincount(sim.grader_department)
    assert sizes.min() >= 8
    assert sizes.max() <= 20 + 7  # a remainder below 8 joins the last full department
    # 6..10 reports per manager, 3..5 KRs per report.
    reports = np.bincount(sim.owner_manager, minlength=sim.n_graders)
    assert reports.min() >= 6
    assert reports.max() <= 10
    krs = np.bincount(sim.kr_owner)
    assert krs.min() >= 3
    assert krs.max() <= 5
    per_grader = np.bincount(sim.grade_grader, minlength=sim.n_graders)
    assert 30 <= per_grader.mean() <= 45
    # Every KR is graded by its owner's manager; about 20% once more.
    grades_per_kr = np.bincount(sim.grade_kr, minlength=sim.n_krs)
    assert grades_per_kr.min() == 1
    assert grades_per_kr.max() == 2
    assert abs((grades_per_kr == 2).mean() - 0.20) < 0.03
    manager = _manager_of_grade(sim)
    assert np.bincount(sim.grade_kr[sim.grade_grader == manager], minlength=sim.n_krs).min() == 1
    # Second graders come from the owner's department, never the manager again.
    second = sim.grade_grader != manager
    assert np.array_equal(
        sim.grader_department[sim.grade_grader[second]], sim.grader_department[manager[second]]
    )
    # About half the KRs have evidence, inside [0, 1].
    has_ev = np.isfinite(sim.evidence)
    assert abs(has_ev.mean() - 0.5) < 0.04
    assert sim.evidence[has_ev].min() >= 0.0
    assert sim.evidence[has_ev].max() <= 1.0
    # Evidence tracks the truth with SD about 0.08 (less where clipped).
    err = sim.evidence[has_ev] - sim.true_achievement[has_ev]
    assert 0.06 < err.std() < 0.09
    # Truth: mean about 0.62, SD about 0.2.
    assert abs(sim.true_achievement.mean() - 0.62) < 0.02
    assert abs(sim.true_achievement.std() - 0.20) < 0.02


def test_grader_types_and_effects() -> None:
    sims = [_sim(seed=s) for s in range(4)]
    codes = np.concatenate([s.grader_type_code for s in sims])
    affected = (codes != 0).mean()
    assert 0.30 <= affected <= 0.45
    for sim in sims:
        types = np.asarray(sim.grader_types)
        len_ = sim.true_leniency
        assert ((len_[types == "lenient"] >= 0.08) & (len_[types == "lenient"] <= 0.25)).all()
        assert ((len_[types == "severe"] <= -0.08) & (len_[types == "severe"] >= -0.25)).all()
        assert np.all(np.abs(len_[types == "ok"]) < 0.05)
        assert np.all(len_[types == "compressing"] == 0.0)
        sc = sim.true_scale
        assert ((sc[types == "compressing"] >= 0.4) & (sc[types == "compressing"] <= 0.6)).all()
        assert np.all(sc[types != "compressing"] == 1.0)
        assert ((sim.noise_sd >= 0.05) & (sim.noise_sd <= 0.07)).all()
        assert set(types.tolist()) <= set(GRADER_TYPES)


def test_lenient_graders_grade_above_the_truth() -> None:
    sim = _sim(seed=5)
    realised = sim.realised_leniency()
    types = np.asarray(sim.grader_types)
    assert realised[types == "lenient"].min() > 0.03
    assert realised[types == "severe"].max() < -0.03
    assert np.abs(realised[types == "ok"]).max() < 0.05


def test_no_effects_has_none() -> None:
    sim = _sim("no_effects")
    assert np.all(sim.grader_type_code == 0)
    assert np.all(sim.true_leniency == 0.0)
    assert np.all(sim.true_scale == 1.0)


def test_no_evidence_scenario() -> None:
    sim = _sim("no_evidence_30pct_double")
    assert not np.isfinite(sim.evidence).any()
    assert sim.evidence_map() == {}
    twice = (np.bincount(sim.grade_kr) == 2).mean()
    assert abs(twice - 0.30) < 0.03


def test_cross_department_graders() -> None:
    cfg = msgspec.structs.replace(
        scenario("realistic"), cross_department_share=1.0, second_grader_share=0.5, extra_graders=2
    )
    sim = simulate_org(np.random.default_rng(0), cfg)
    manager = _manager_of_grade(sim)
    second = sim.grade_grader != manager
    other_dept = (
        sim.grader_department[sim.grade_grader[second]] != sim.grader_department[manager[second]]
    ).mean()
    assert other_dept > 0.8
    pairs = sim.grade_kr * sim.n_graders + sim.grade_grader
    assert np.unique(pairs).shape[0] == sim.n_grades
    assert np.bincount(sim.grade_kr).max() == 3


def test_small_team_and_large_sizes() -> None:
    small = _sim("small_team")
    assert small.n_graders == 12
    assert small.grader_department.max() == 0
    large = SCENARIOS["large"]
    # Sizes asserted from the configuration; the 1M-grade draw itself is a benchmark.
    kr_per_grader = np.mean(large.reports) * np.mean(large.krs_per_owner)
    n_krs = large.n_graders * kr_per_grader
    assert 300_000 <= n_krs <= 360_000
    assert 0.9e6 <= n_krs * (1 + large.extra_graders * large.second_grader_share) <= 1.1e6


def test_table_inputs_are_consistent() -> None:
    sim = _sim("small_team")
    kr_ids, gr_ids = sim.grade_kr_ids(), sim.grade_grader_ids()
    assert len(kr_ids) == len(gr_ids) == sim.n_grades
    owners = sim.owner_map()
    assert set(owners) == set(sim.kr_ids)
    ev = sim.evidence_map()
    assert all(0.0 <= v <= 1.0 for v in ev.values())
    assert len(ev) == int(np.isfinite(sim.evidence).sum())
    # Zero-padded ids sort in index order.
    assert list(sim.kr_ids) == sorted(sim.kr_ids)
    assert list(sim.grader_ids) == sorted(sim.grader_ids)


def test_csv_rows_round_trip() -> None:
    sim = _sim("small_team", seed=4)
    buf = io.StringIO()
    csv.writer(buf).writerows(grade_rows(sim))
    rows = list(csv.DictReader(io.StringIO(buf.getvalue())))
    assert len(rows) == sim.n_grades
    assert np.allclose([float(r["grade"]) for r in rows], sim.grade, atol=1e-12)
    assert [r["kr_id"] for r in rows] == sim.grade_kr_ids()
    krs = list(kr_rows(sim))
    assert krs[0] == ("kr_id", "owner_id", "kr_type", "baseline", "target", "actual")
    metric = [r for r in krs[1:] if r[2] == "metric"]
    assert len(metric) == len(sim.evidence_map())
    assert all(float(r[5]) == pytest.approx(sim.evidence_map()[r[0]]) for r in metric)


def test_unknown_scenario_names_the_choices() -> None:
    with pytest.raises(ValueError, match=r"unknown scenario 'nope'.*realistic"):
        scenario("nope")


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("n_graders", 1, "n_graders"),
        ("evidence_share", 1.5, "evidence_share"),
        ("department_size", (20, 8), "department_size"),
        ("extra_graders", 8, "extra_graders"),
        ("achievement_sd", 0.6, "achievement_sd"),
        ("noise_range", (-0.1, 0.1), "noise_range"),
    ],
)
def test_bad_config_names_the_field(field: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SimConfig(**{field: value})  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["realistic", "team_differences", "no_evidence_30pct_double"])
def test_latent_values_are_what_was_rounded_and_clipped(name: str) -> None:
    sim = simulate_org(np.random.default_rng(4), scenario(name))
    grid = sim.config.grid
    assert np.array_equal(
        np.clip(np.round(np.round(sim.latent_grade / grid) * grid, 10), 0.0, 1.0), sim.grade
    )
    has = np.isfinite(sim.evidence)
    assert np.array_equal(np.isfinite(sim.latent_evidence), has)
    assert np.array_equal(np.clip(sim.latent_evidence[has], 0.0, 1.0), sim.evidence[has])
    # the team shift is the one in the truth (before clipping at 0 and 1)
    shift = sim.team_shift[sim.owner_manager[sim.kr_owner]]
    assert (sim.config.team_effect_sd > 0) == bool(np.any(shift != 0))
