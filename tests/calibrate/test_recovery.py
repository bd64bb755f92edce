"""Recovery of the simulated truth by the models (seeded, so deterministic).

The thresholds sit well inside what a correct engine reaches (see
benchmarks/RESULTS.md) and well outside what a broken one would: raw means,
leniency with the wrong sign, flags on pure noise. The long multi-seed runs that
check the issue's targets are marked ``slow``; benchmarks/accuracy.py has the figures.
"""

from __future__ import annotations

import msgspec
import numpy as np
import numpy.typing as npt
import pytest

from anchors.scales import parse_scale
from calibrate import CalibrationFit, model_from_name
from calibrate.simulate import SimConfig, Simulation, scenario, simulate_org
from calibrate.table import GradeTable

FloatArray = npt.NDArray[np.float64]

#: A mid-sized organisation: enough graders for stable rates, fast to fit.
MID = msgspec.structs.replace(scenario("realistic"), n_graders=60)


def _simulate(cfg: SimConfig, seed: int) -> tuple[Simulation, GradeTable]:
    sim = simulate_org(np.random.default_rng(seed), cfg)
    table = GradeTable.from_arrays(
        sim.grade_kr_ids(),
        sim.grade_grader_ids(),
        sim.grade,
        parse_scale("google"),
        evidence=sim.evidence_map(),
        owners=sim.owner_map(),
    )
    return sim, table


def _calibrated(sim: Simulation, fit: CalibrationFit) -> tuple[FloatArray, FloatArray, FloatArray]:
    pos = {k: i for i, k in enumerate(sim.kr_ids)}
    cal, lo, hi = (np.full(sim.n_krs, np.nan) for _ in range(3))
    for kr in fit.krs:
        i = pos[kr.kr_id]
        if kr.calibrated_grade is not None:
            cal[i] = kr.calibrated_grade
        if kr.ci_low is not None and kr.ci_high is not None:
            lo[i], hi[i] = kr.ci_low, kr.ci_high
    return cal, lo, hi


def _rmse(a: FloatArray, b: FloatArray) -> float:
    return float(np.sqrt(np.mean((a - b) ** 2)))


def _raw(sim: Simulation) -> FloatArray:
    out: FloatArray = np.bincount(sim.grade_kr, sim.grade, sim.n_krs) / np.bincount(sim.grade_kr)
    return out


def _flags(sim: Simulation, fit: CalibrationFit) -> dict[str, str]:
    assert {g.grader_id for g in fit.graders} == set(sim.grader_ids)
    return {g.grader_id: g.flag for g in fit.graders}


@pytest.fixture(scope="module")
def mid_fit() -> tuple[Simulation, CalibrationFit]:
    sim, table = _simulate(MID, seed=101)
    return sim, model_from_name("additive").fit(table)


def test_additive_recovers_truth_better_than_raw(
    mid_fit: tuple[Simulation, CalibrationFit],
) -> None:
    sim, fit = mid_fit
    cal, _, _ = _calibrated(sim, fit)
    assert np.isfinite(cal).all()
    truth = sim.true_achievement
    calibrated, raw = _rmse(cal, truth), _rmse(_raw(sim), truth)
    # Measured about 0.60 x raw; an engine that only averages gets 1.0.
    assert calibrated < 0.80 * raw, (calibrated, raw)


def test_intervals_cover_about_ninety_percent(mid_fit: tuple[Simulation, CalibrationFit]) -> None:
    sim, fit = mid_fit
    _, lo, hi = _calibrated(sim, fit)
    truth = sim.true_achievement
    covered = float(np.mean((lo <= truth) & (truth <= hi)))
    assert 0.78 <= covered <= 0.97, covered


def test_leniency_estimates_track_the_truth(mid_fit: tuple[Simulation, CalibrationFit]) -> None:
    sim, fit = mid_fit
    est = {g.grader_id: g.leniency for g in fit.graders}
    keep = np.asarray(sim.grader_types) != "compressing"
    true = sim.true_leniency[keep]
    got = np.asarray([est[g] for g, k in zip(sim.grader_ids, keep, strict=True) if k], dtype=float)
    assert np.isfinite(got).all()
    assert np.corrcoef(true, got)[0, 1] > 0.9
    # Leniency is on the grade scale: a slope near 1, not a rescaled score.
    slope = np.polyfit(true, got, 1)[0]
    assert 0.7 < slope < 1.2, slope


def test_strongly_lenient_and_severe_graders_are_flagged(
    mid_fit: tuple[Simulation, CalibrationFit],
) -> None:
    sim, fit = mid_fit
    flags = _flags(sim, fit)
    strong_lenient = [
        g for g, v in zip(sim.grader_ids, sim.true_leniency, strict=True) if v >= 0.15
    ]
    strong_severe = [
        g for g, v in zip(sim.grader_ids, sim.true_leniency, strict=True) if v <= -0.15
    ]
    assert strong_lenient, "the seed must produce a strongly lenient grader"
    assert strong_severe, "the seed must produce a strongly severe grader"
    assert all(flags[g] == "lenient" for g in strong_lenient), [flags[g] for g in strong_lenient]
    assert all(flags[g] == "severe" for g in strong_severe), [flags[g] for g in strong_severe]


def test_one_planted_lenient_grader_is_flagged() -> None:
    # No other effects at all: one grader 0.15 above the truth must stand out.
    cfg = msgspec.structs.replace(scenario("no_effects"), n_graders=30)
    sim, _ = _simulate(cfg, seed=7)
    lenient = sim.grade_grader == 3
    grades = np.clip(sim.grade + np.where(lenient, 0.15, 0.0), 0.0, 1.0)
    table = GradeTable.from_arrays(
        sim.grade_kr_ids(),
        sim.grade_grader_ids(),
        grades,
        parse_scale("google"),
        evidence=sim.evidence_map(),
    )
    fit = model_from_name("additive").fit(table)
    flags = _flags(sim, fit)
    assert flags[sim.grader_ids[3]] == "lenient"
    assert sum(f in ("lenient", "severe") for f in flags.values()) == 1, flags
    effect = next(g for g in fit.graders if g.grader_id == sim.grader_ids[3])
    assert effect.leniency is not None
    assert 0.10 < effect.leniency < 0.18


def test_no_flags_without_grader_effects() -> None:
    flagged = graders = 0
    raw_rmse = cal_rmse = 0.0
    for seed in (0, 1):
        sim, table = _simulate(scenario("no_effects"), seed)
        fit = model_from_name("additive").fit(table)
        flags = _flags(sim, fit)
        flagged += sum(f not in ("ok", "insufficient_data") for f in flags.values())
        graders += len(flags)
        cal, _, _ = _calibrated(sim, fit)
        cal_rmse += _rmse(cal, sim.true_achievement)
        raw_rmse += _rmse(_raw(sim), sim.true_achievement)
    # Target: at most 1 false flag per 100 graders (300 graders here).
    assert flagged <= graders // 100, (flagged, graders)
    assert cal_rmse <= raw_rmse


def test_leniency_near_zero_without_effects() -> None:
    _, table = _simulate(scenario("no_effects"), seed=3)
    fit = model_from_name("additive").fit(table)
    est = np.asarray([g.leniency for g in fit.graders], dtype=float)
    assert np.abs(est).max() < 0.05


@pytest.mark.slow
@pytest.mark.parametrize("name", ["realistic", "compression_heavy", "team_differences"])
def test_flag_targets_over_seeds(name: str) -> None:
    """Issue 2 targets over five full-size seeds: FDR <= 10%, power >= 80%."""
    fdp, detected, affected = [], 0, 0
    for seed in range(5):
        sim, table = _simulate(scenario(name), seed + 1000)
        flags = _flags(sim, model_from_name("additive").fit(table))
        disc = false = 0
        for gid, true in zip(sim.grader_ids, sim.true_leniency, strict=True):
            f = flags[gid]
            if abs(true) >= 0.08:
                affected += 1
                detected += f == ("lenient" if true > 0 else "severe")
            if f in ("lenient", "severe"):
                disc += 1
                false += not ((1 if f == "lenient" else -1) * true >= 0.05)
        fdp.append(false / max(disc, 1))
    assert np.mean(fdp) <= 0.10, fdp
    assert detected / affected >= 0.80, (detected, affected)


@pytest.mark.slow
def test_affine_detects_compression() -> None:
    cfg = msgspec.structs.replace(scenario("compression_heavy"), n_graders=40)
    found = total = false = others = 0
    for seed in range(3):
        sim, table = _simulate(cfg, seed)
        flags = _flags(sim, model_from_name("affine").fit(table))
        for gid, t in zip(sim.grader_ids, sim.grader_types, strict=True):
            if t == "compressing":
                total += 1
                found += flags[gid] == "compressing"
            else:
                others += 1
                false += flags[gid] in ("compressing", "expanding")
    assert found / total >= 0.7, (found, total)
    assert false / others <= 0.05, (false, others)
