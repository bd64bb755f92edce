"""The additive model's scoring step: moderated grader variances, the leniency mixture prior,
and what they do to KR grades and intervals."""

from __future__ import annotations

import math
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
from calibrate.scoring import mixture_effects, moderate_variances
from calibrate.simulate import scenario, simulate_org
from calibrate.table import GradeTable

FloatArray = npt.NDArray[np.float64]


def test_moderated_variances_recover_the_prior_and_sit_between_sample_and_prior() -> None:
    rng = np.random.default_rng(3)
    n, df, d0, s0 = 400, 12.0, 10.0, 2.0
    true = d0 * s0 / rng.chisquare(d0, n)  # scaled inverse chi-square
    s2 = true * rng.chisquare(df, n) / df
    post, d0_hat, s0_hat = moderate_variances(s2, np.full(n, df))
    assert 5.0 < d0_hat < 20.0
    assert s0_hat == pytest.approx(s0, rel=0.15)
    lo, hi = np.minimum(s2, s0_hat), np.maximum(s2, s0_hat)
    assert np.all((lo - 1e-12 <= post) & (post <= hi + 1e-12))
    # moderation pays: relative errors about half those of the raw sample variances
    assert np.mean((post / true - 1) ** 2) < 0.7 * np.mean((s2 / true - 1) ** 2)


def test_moderated_variances_without_information_fall_back_to_the_pooled_value() -> None:
    post, d0, s0 = moderate_variances(np.array([1.0, 3.0, 0.0]), np.array([4.0, 4.0, 0.0]))
    assert d0 == float("inf")
    assert s0 == pytest.approx(2.0)
    assert post.tolist() == pytest.approx([2.0, 2.0, 2.0])


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


def _reference_moderate(s2: FloatArray, df: FloatArray) -> FloatArray:
    """Moderated variances computed from scratch at every call (the slow reference)."""
    ok = (df > 0) & (s2 > 0)
    half = df[ok] / 2.0
    z = np.log(s2[ok]) - scipy.special.digamma(half) + np.log(half)
    excess = float(z.var(ddof=1)) - float(np.mean(scipy.special.polygamma(1, half)))
    if int(ok.sum()) < 3 or excess <= 0:
        return moderate_variances(s2, df)[0]  # the common-variance cases: no df terms used
    d0 = 2.0 * scoring._trigamma_inverse(excess)
    s0 = math.exp(float(z.mean()) + float(scipy.special.digamma(d0 / 2.0)) - math.log(d0 / 2.0))
    out: FloatArray = np.where(ok, (d0 * s0 + df * np.where(ok, s2, 0.0)) / (d0 + df), s0)
    return out


def _reference_grader_var(
    within: CrossedFit, effect: FloatArray, var_resid: float, var_evidence: float | None
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
    df_g = np.maximum(np.bincount(gi, weights=linked, minlength=d.n_gr) - 1.0, 0.0)
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
        num = np.bincount(gi, weights=r2, minlength=d.n_gr)
        v = _reference_moderate(np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0), df_g)
        if n_ev:
            rest_e = W - ev / vd
            ok_e = ev & (rest_e > 1e-9 * W)
            loo_e = (S[ok_e] - ev_val[ok_e] / vd) / rest_e[ok_e]
            r2e = (ev_val[ok_e] - loo_e) ** 2
            vd = float(r2e.sum() / (1.0 + 1.0 / (rest_e[ok_e] * vd)).sum())
        total = d.n_obs * var_resid + (n_ev * var_evidence if n_ev and var_evidence else 0.0)
        scale = total / (float(v[gi].sum()) + n_ev * vd)
        new_v = np.maximum(v * scale, scoring._FLOOR * var_resid)
        vd = max(vd * scale, scoring._FLOOR * var_resid) if n_ev else vd
        change = float(np.max(np.abs(new_v - v_prev) / v_prev))
        v = v_prev = new_v
        if change < scoring._TOL:
            break
    return v, vd


@pytest.mark.parametrize("single", [0, 25])
def test_score_krs_fast_iterations_match_the_plain_reference_exactly(
    monkeypatch: pytest.MonkeyPatch, single: int
) -> None:
    # score_krs iterates on linked grades only, in place, with the df terms computed once;
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
    within, effect, _, var_resid, var_evidence, _ = args
    d = within.data
    assert bool(((np.bincount(d.kr) + d.ev_mask)[d.kr] >= 2).all()) == (single == 0)
    fast = scoring.score_krs(*args)
    v, vd = _reference_grader_var(within, effect, var_resid, var_evidence)
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
