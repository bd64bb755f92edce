"""The additive model's scoring step: moderated grader variances, the leniency mixture prior,
and what they do to KR grades and intervals."""

from __future__ import annotations

import numpy as np
import pytest

from anchors.scales import parse_scale
from calibrate import AdditiveModel
from calibrate.scoring import mixture_effects, moderate_variances
from calibrate.table import GradeTable


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
