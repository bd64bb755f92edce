"""The additive model's scoring step: grader variances under a grid prior, the leniency
mixture prior, and what they do to KR grades and intervals."""

from __future__ import annotations

from collections import Counter
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt
import pytest
import scipy.special

from anchors.scales import parse_scale
from calibrate import AdditiveModel, engine, scoring
from calibrate.reml import CrossedFit
from calibrate.scoring import mixture_effects
from calibrate.simulate import scenario, simulate_org
from calibrate.table import GradeTable

FloatArray = npt.NDArray[np.float64]


def test_grid_prior_keeps_a_few_noisy_graders_apart_and_pools_the_uninformed() -> None:
    # 85% of graders with variance 1, 15% with 10; each grader's residual sum of squares
    # is (v + base) * chi2(df), the base (the rest of the KR's error) from 0 to 20
    rng = np.random.default_rng(8)
    n = 600
    true = np.where(rng.random(n) < 0.15, 10.0, 1.0)
    base = rng.uniform(0.0, 20.0, n)
    df = rng.integers(0, 40, n).astype(np.float64)
    rss = (true + base) * rng.chisquare(np.maximum(df, 1e-9))
    grid = np.geomspace(0.05, 30.0, scoring._GRID)
    weight = np.full(grid.shape[0], 1.0 / grid.shape[0])
    for _ in range(20):
        weight, post, post_df = scoring._grid_posterior(rss, df, base, base**2, grid, weight)
    assert weight.sum() == pytest.approx(1.0, rel=1e-5)
    # the prior finds both groups: about 15% of its weight above 5
    assert float(weight[grid > 5.0].sum()) == pytest.approx(0.15, abs=0.06)
    informed = df * (1.0 / (1.0 + base)) ** 2 > 4.0
    for v in (1.0, 10.0):
        sel = informed & (true == v)
        assert float(np.median(post[sel])) == pytest.approx(v, rel=0.25)
    # graders without linked grades get the prior's mean, with its spread as df
    flat = df == 0
    assert np.allclose(post[flat], float(weight @ grid))
    assert np.all(post_df > 4.0)
    # posterior means average to the true variances' mean
    assert float(np.mean(post)) == pytest.approx(float(np.mean(true)), rel=0.15)


def _normal_blup(
    rng: np.random.Generator, effect: np.ndarray, se: float
) -> tuple[np.ndarray, np.ndarray, float]:
    """BLUPs under a normal prior with the effects' empirical variance, and their PEVs."""
    var_b = float(np.mean(effect**2))
    lam = var_b / (var_b + se**2)
    u = effect + rng.normal(0.0, se, effect.shape[0])
    return lam * u, np.full(effect.shape[0], lam * se**2), var_b


def test_mixture_prior_shrinks_large_effects_less_and_no_effects_more() -> None:
    rng = np.random.default_rng(11)
    n = 300
    big = rng.random(n) < 0.35
    effect = np.where(big, rng.choice([-1.0, 1.0], n) * rng.uniform(0.08, 0.25, n), 0.0)
    b_hat, b_pev, var_b = _normal_blup(rng, effect, se=0.03)
    mean, var, (weight, slab_var) = mixture_effects(b_hat, b_pev, var_b)
    # the slab's weight is of the order of the share of real effects (35%): a normal
    # slab fits effects of uniform size between 0.08 and 0.25 only roughly
    assert 0.25 < weight < 0.7
    assert slab_var > var_b
    assert np.all(var >= 0)

    def rmse(x: np.ndarray, sel: np.ndarray) -> float:
        return float(np.sqrt(np.mean((x[sel] - effect[sel]) ** 2)))

    every = np.ones(n, dtype=bool)
    assert rmse(mean, every) < 0.85 * rmse(b_hat, every)
    assert rmse(mean, ~big) < 0.6 * rmse(b_hat, ~big)
    large = np.abs(effect) >= 0.15
    assert np.mean(np.abs(mean[large])) > np.mean(np.abs(b_hat[large]))


def test_mixture_prior_leaves_too_few_graders_alone() -> None:
    b = np.array([0.1, -0.1, 0.0])
    pev = np.array([0.001, 0.001, 0.001])
    mean, var, prior = mixture_effects(b, pev, 0.01)
    assert mean.tolist() == b.tolist()
    assert var.tolist() == pev.tolist()
    assert all(np.isnan(prior))


def test_a_noisy_grader_gets_wider_intervals_and_less_weight() -> None:
    # 30 graders, every KR graded twice and half with evidence; grader 0 is very noisy.
    rng = np.random.default_rng(5)
    n_gr, n_kr = 30, 900
    g1 = rng.integers(0, n_gr, n_kr)
    g2 = (g1 + rng.integers(1, n_gr, n_kr)) % n_gr
    truth = rng.beta(3, 2, n_kr)
    sd = np.where(np.arange(n_gr) == 0, 0.25, 0.05)
    kr = np.concatenate([np.arange(n_kr), np.arange(n_kr)])
    gr = np.concatenate([g1, g2])
    y = np.clip(truth[kr] + rng.normal(0.0, 1.0, kr.size) * sd[gr], 0.0, 1.0)
    ev = {
        f"k{i:04d}": float(np.clip(truth[i] + rng.normal(0, 0.06), 0, 1))
        for i in np.flatnonzero(rng.random(n_kr) < 0.5)
    }
    table = GradeTable.from_arrays(
        [f"k{i:04d}" for i in kr],
        [f"g{j:02d}" for j in gr],
        y,
        parse_scale("google"),
        evidence=ev,
    )
    fit = AdditiveModel().fit(table)
    noisy = {i for i in range(n_kr) if g1[i] == 0 or g2[i] == 0}
    se_noisy = [k.std_error for k in fit.krs if int(k.kr_id[1:]) in noisy]
    se_other = [k.std_error for k in fit.krs if int(k.kr_id[1:]) not in noisy]
    assert all(s is not None for s in se_noisy + se_other)
    assert float(np.median(se_noisy)) > 1.15 * float(np.median(se_other))  # type: ignore[arg-type]
    # the noisy grader's grades count for less: their KRs stay close to the other grade
    idx = np.array([int(k.kr_id[1:]) for k in fit.krs])
    cal = np.array([k.calibrated_grade for k in fit.krs], dtype=float)
    raw = np.array([k.raw_grade for k in fit.krs])
    sel = np.isin(idx, sorted(noisy))
    err_cal = np.sqrt(np.mean((cal[sel] - truth[idx[sel]]) ** 2))
    err_raw = np.sqrt(np.mean((raw[sel] - truth[idx[sel]]) ** 2))
    assert err_cal < 0.6 * err_raw


def _reference_grader_var(
    within: CrossedFit,
    effect: FloatArray,
    effect_var: FloatArray,
    var_resid: float,
    var_evidence: float | None,
) -> tuple[FloatArray, float]:
    """score_krs's variance iterations written plainly: every grade, masks, no reuse."""
    d = within.data
    gi, ki, ev = d.gr, d.kr, d.ev_mask
    n_ev = int(ev.sum())
    m = d.y - effect[gi]
    ev_val = np.where(ev, d.ev_value, 0.0)
    v = np.full(d.n_gr, var_resid)
    vd = var_evidence if n_ev and var_evidence else var_resid
    linked = (np.bincount(ki, minlength=d.n_kr) + ev)[ki] >= 2
    n_g = np.bincount(gi, weights=linked, minlength=d.n_gr).astype(np.float64)
    grid = var_resid * np.geomspace(scoring._FLOOR, scoring._GRID_TOP, scoring._GRID)
    weight = np.full(scoring._GRID, 1.0 / scoring._GRID)
    v_prev = v
    for _ in range(scoring._ITERATIONS):
        w = 1.0 / v[gi]
        W = np.bincount(ki, weights=w, minlength=d.n_kr) + ev / vd
        S = np.bincount(ki, weights=w * m, minlength=d.n_kr) + ev_val / vd
        rest_s = np.where(linked, W[ki] - w, 1.0)
        loo = (S[ki] - w * m) / rest_s
        r2 = np.where(linked, (m - loo) ** 2, 0.0)
        expect = np.where(linked, 1.0 + 1.0 / (rest_s * v[gi]), 0.0)
        den = np.bincount(gi, weights=expect, minlength=d.n_gr)
        den2 = np.bincount(gi, weights=expect * expect, minlength=d.n_gr)
        rss = np.bincount(gi, weights=r2, minlength=d.n_gr).astype(np.float64)
        a1 = v * (den - n_g) / np.maximum(n_g, 1.0)
        a2 = v * v * (den2 - 2.0 * den + n_g) / np.maximum(n_g, 1.0)
        lam = np.clip(effect_var * n_g / (v + a1), 0.0, 1.0)
        weight, v, _ = scoring._grid_posterior(rss, n_g - lam, a1, a2, grid, weight)
        if n_ev:
            rest_e = W - ev / vd
            ok_e = ev & (rest_e > 1e-9 * W)
            loo_e = (S[ok_e] - ev_val[ok_e] / vd) / rest_e[ok_e]
            r2e = (ev_val[ok_e] - loo_e) ** 2
            vd = float(r2e.sum() / (1.0 + 1.0 / (rest_e[ok_e] * vd)).sum())
            vd = max(vd, scoring._FLOOR * var_resid)
        change = float(np.max(np.abs(v - v_prev) / v_prev))
        v_prev = v
        if change < scoring._TOL:
            break
    return v, vd


@pytest.mark.parametrize("single", [0, 25])
def test_score_krs_fast_iterations_match_the_plain_reference_exactly(
    monkeypatch: pytest.MonkeyPatch, single: int
) -> None:
    # score_krs iterates on linked grades only, in place;
    # the plain version must give the very same numbers, when every grade is linked and
    # with KRs that have a single grade and no evidence (which the fast path leaves out)
    sim = simulate_org(
        np.random.default_rng(11), msgspec.structs.replace(scenario("realistic"), n_graders=40)
    )
    evidence = sim.evidence_map()
    kr_ids, gr_ids = sim.grade_kr_ids(), sim.grade_grader_ids()
    n_of = Counter(kr_ids)
    keep = [i for i, k in enumerate(kr_ids) if n_of[k] >= 2 or k in evidence]
    kr_ids, gr_ids = [kr_ids[i] for i in keep], [gr_ids[i] for i in keep]
    extra = [f"solo{i}" for i in range(single)]
    table = GradeTable.from_arrays(
        kr_ids + extra,
        gr_ids + gr_ids[:single],
        np.concatenate([sim.grade[keep], np.full(single, 0.5)]),
        parse_scale("google"),
        evidence=evidence,
    )
    calls: list[tuple[Any, ...]] = []

    def spy(*args: Any) -> scoring.KRScores:
        calls.append(args)
        return scoring.score_krs(*args)

    monkeypatch.setattr(engine, "score_krs", spy)
    AdditiveModel().fit(table)
    (args,) = calls
    within, effect, effect_var, var_resid, var_evidence, _ = args
    d = within.data
    assert bool(((np.bincount(d.kr) + d.ev_mask)[d.kr] >= 2).all()) == (single == 0)
    fast = scoring.score_krs(*args)
    v, vd = _reference_grader_var(within, effect, effect_var, var_resid, var_evidence)
    assert np.array_equal(fast.grader_var, v)
    assert fast.evidence_var == vd


def test_t_quantiles_exact_below_100_df_and_never_narrower_above() -> None:
    df = np.concatenate(
        [np.linspace(1.0, 99.9, 500), np.exp(np.random.default_rng(3).uniform(4.6, 12.0, 5000))]
    )
    for q in (0.95, 0.975, 0.995):
        got = scoring._t_quantiles(df, q)
        exact = scipy.special.stdtrit(df, q)
        small = df < 100
        assert np.array_equal(got[small], exact[small])
        assert np.all(got >= exact)
        assert np.max(got / exact - 1.0) < 2e-5


def test_grader_variances_are_unbiased_when_the_evidence_is_much_noisier(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # 120 graders, all with noise SD 0.02 and no leniency; most KRs have one grade and
    # evidence with SD 0.08, a quarter a second grade. The residuals against the evidence
    # measure a grader's variance only through a difference; it must still come out
    # right (2.0.0 gave graders a median of about 0.4x the true variance).
    rng = np.random.default_rng(21)
    n_gr, n_kr, sd, sd_ev = 120, 3600, 0.02, 0.08
    truth = rng.uniform(0.3, 0.7, n_kr)
    g1 = rng.integers(0, n_gr, n_kr)
    two = np.flatnonzero(rng.random(n_kr) < 0.25)
    g2 = (g1[two] + rng.integers(1, n_gr, two.size)) % n_gr
    kr = np.concatenate([np.arange(n_kr), two])
    gr = np.concatenate([g1, g2])
    y = truth[kr] + rng.normal(0.0, sd, kr.size)
    with_ev = np.flatnonzero(rng.random(n_kr) < 0.8)
    ev = {f"k{i:04d}": float(np.clip(truth[i] + rng.normal(0.0, sd_ev), 0, 1)) for i in with_ev}
    table = GradeTable.from_arrays(
        [f"k{i:04d}" for i in kr], [f"g{j:03d}" for j in gr], y, parse_scale("google"), evidence=ev
    )
    calls: list[scoring.KRScores] = []

    def spy(*args: Any) -> scoring.KRScores:
        calls.append(scoring.score_krs(*args))
        return calls[-1]

    monkeypatch.setattr(engine, "score_krs", spy)
    fit = AdditiveModel().fit(table)
    (scores,) = calls
    assert float(np.median(scores.grader_var)) == pytest.approx(sd**2, rel=0.25)
    assert float(np.mean(scores.grader_var)) == pytest.approx(sd**2, rel=0.25)
    assert scores.evidence_var == pytest.approx(sd_ev**2, rel=0.15)
    # and the KRs' 90% intervals cover their truth about 90% of the time
    idx = np.array([int(k.kr_id[1:]) for k in fit.krs])
    lo = np.array([k.ci_low for k in fit.krs], dtype=float)
    hi = np.array([k.ci_high for k in fit.krs], dtype=float)
    covered = float(np.mean((lo <= truth[idx]) & (truth[idx] <= hi)))
    assert 0.86 <= covered <= 0.94
