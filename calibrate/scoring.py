"""The additive model's leniencies and KR grades, measured within KRs.

The REML fit (:mod:`calibrate.reml`) gives the variance components and the
residual diagnostics. Leniencies and calibrated KR grades are then made in four
steps:

1. **Grader effects within KRs.** The mixed-model equations are solved again with
   a flat prior on the KR effects and the grader effects at REML's grader variance
   (:func:`calibrate.reml.fit_within`). Only contrasts inside a KR — a grade against
   the evidence or against another grader's grade — inform a grader's effect, so a
   team whose KRs truly do better is not read as a lenient manager, and a KR's
   grade is not pulled toward the organisation's mean.
2. **A spike-and-slab leniency prior** (:func:`mixture_effects`). Most graders
   have no leniency and a few have a large one; a single normal prior shrinks the
   large ones too far. The prior is a spike at 0 plus a normal slab, fitted by EM
   to the unshrunk estimates; the reported leniency is the posterior mean. The
   flagging test statistic undoes the shrinkage, so it does not depend on the prior.
3. **Each grader's own noise** (:func:`_grid_posterior`). Graders differ in how
   well their grades agree with the evidence and with other graders (one who
   compresses grades toward the middle agrees worse). A grade's leave-one-out
   residual within its KR has variance ``v_j + a``, its grader's variance plus the
   error of the rest of the KR (``a``, often the evidence's, much larger than
   ``v_j``), less the share its grader's effect took out; so a grader's residuals
   measure ``v_j`` only through a difference, and a grader who mostly meets the
   evidence carries little information on it. Each grader's likelihood for ``v_j``
   (a scaled chi-square for the residual sum of squares) is therefore combined with
   a prior on a grid of variances whose weights are fitted to all graders
   (maximum marginal likelihood; Koenker & Mizera 2014), which lets a few
   compressing graders have their large variance without pulling the others' up.
   The evidence's variance comes from its own leave-one-out residuals. A variance
   is never below ``_FLOOR`` of REML's residual variance.
4. **The KR grade** is the precision-weighted mean of the KR's grades, each
   corrected by its grader's leniency, and its evidence. Its variance adds the
   error of the leniencies; its interval uses a t quantile with Satterthwaite's
   degrees of freedom, since a grader's variance rests on few linking grades.

References: Henderson (1984), mixed-model equations; Koenker & Mizera (2014),
"Convex optimization, shape constraints, compound decisions, and empirical Bayes
rules", JASA 109(506), for the grid prior; Satterthwaite (1946).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import scipy.special

from calibrate.reml import CrossedFit, _wsum

__all__ = ["KRScores", "group_variance", "mixture_effects", "score_krs"]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

#: Most alternations between the KR grades and the variances that weight them.
_ITERATIONS = 20
#: They stop when no grader's variance moves by more than this share.
_TOL = 1e-3
#: A variance is never taken below this share of the pooled residual variance.
_FLOOR = 0.05
#: Points of the grader-variance prior's grid, from the floor to this multiple of the
#: pooled residual variance (log-spaced).
_GRID = 16
_GRID_TOP = 30.0
#: EM steps on the grid's weights per iteration (warm-started), and their tolerance.
_GRID_EM_STEPS = 50
_GRID_EM_TOL = 1e-5
#: Most EM steps for the leniency prior.
_EM_ITERATIONS = 300


@dataclass(frozen=True)
class KRScores:
    """Calibrated KR grades with their errors, and the weights that made them."""

    value: FloatArray  # per KR
    se: FloatArray  # per KR
    crit: FloatArray  # per KR: t quantile of the interval at the requested confidence
    grader_var: FloatArray  # per grader: residual variance of a grade
    evidence_var: float | None
    grader_df: FloatArray  # per grader: degrees of freedom of grader_var (inf: exact)
    weight: FloatArray  # per grade: its share of its KR's grade
    effect_var: FloatArray  # per grader: error variance of the grader effect


def _grid_posterior(
    rss: FloatArray,
    df: FloatArray,
    a1: FloatArray,
    a2: FloatArray,
    grid: FloatArray,
    weight: FloatArray,
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """The graders' variances under a prior on a grid: (prior weights, posterior means, df).

    Grader ``j``'s residuals have variances ``v_j + a_i``, with ``a_i`` averaging
    ``a1[j]`` and ``a_i**2`` averaging ``a2[j]``; their squares sum to ``rss[j]``, taken
    as a gamma variable with the mean ``df[j] * (v_j + a1[j])`` and the variance
    ``2 * df[j] * (v_j**2 + 2 * v_j * a1[j] + a2[j])`` (Satterthwaite; a scaled
    chi-square with ``df[j]`` degrees of freedom when every ``a_i`` is the same). The
    prior puts weight ``weight`` on the variances ``grid``; the weights are fitted by
    EM (maximum marginal likelihood, a nonparametric prior: Koenker & Mizera 2014),
    starting from ``weight``. The df of a posterior is that of a scaled inverse
    chi-square with its mean and variance.
    """
    # single precision: the likelihoods are relative and need a few digits only
    f32 = np.float32
    c1 = np.add.outer(a1.astype(f32), grid.astype(f32))  # mean variance of a residual
    c2 = c1 * c1
    c2 += np.maximum(a2 - a1 * a1, 0.0).astype(f32)[:, None]  # mean squared variance
    theta = c2 / c1
    theta *= 2.0
    k = c1 / theta
    k *= np.maximum(df, 1e-3).astype(f32)[:, None]  # shape: mean^2 / variance
    k1 = k + 1.0
    log_k1 = np.log(k1)
    # log gamma(k) = log gamma(k + 1) - log k, by Stirling's series at k + 1 >= 1
    lik = (k + 0.5) * log_k1 - k1 + 1.0 / (12.0 * k1) - np.log(k)
    lik += k * np.log(theta)
    lik *= -1.0
    lik += (k - 1.0) * np.log(np.maximum(rss, 1e-300)).astype(f32)[:, None]
    lik -= rss.astype(f32)[:, None] / theta
    lik[df <= 0] = 0.0  # no linked grades: a flat likelihood
    lik -= lik.max(axis=1, keepdims=True)
    np.exp(lik, out=lik)
    # graders without linked grades have a flat likelihood: they do not inform the prior
    n_inform = int(np.count_nonzero(df > 0))
    share = ((df > 0) / max(n_inform, 1)).astype(np.float32)
    w32 = weight.astype(np.float32)
    for _ in range(_GRID_EM_STEPS if n_inform else 0):
        new = np.asarray(w32 * (lik.T @ (share / (lik @ w32))), dtype=np.float32)
        done = float(np.max(np.abs(new - w32))) < _GRID_EM_TOL
        w32 = new
        if done:
            break
    weight = w32.astype(np.float64)
    post = lik.astype(np.float64)
    post *= weight
    post /= post.sum(axis=1, keepdims=True)
    m1 = post @ grid
    var = np.maximum(post @ (grid * grid) - m1 * m1, 0.0)
    with np.errstate(divide="ignore"):
        dfv = np.where(var > 0, 2.0 * m1 * m1 / np.where(var > 0, var, 1.0) + 4.0, np.inf)
    return weight, m1, dfv


def _mixture_posterior(
    u: FloatArray, s2: FloatArray, tau: FloatArray, weight: FloatArray
) -> tuple[FloatArray, FloatArray, FloatArray, float]:
    """Per estimate and component: responsibility, posterior mean and variance; log likelihood."""
    tot = tau[None, :] + s2[:, None]
    log_dens = -0.5 * (np.log(2.0 * math.pi * tot) + u[:, None] ** 2 / tot) + np.log(weight)
    top = log_dens.max(axis=1, keepdims=True)
    dens = np.exp(log_dens - top)
    total = dens.sum(axis=1, keepdims=True)
    loglik = float((np.log(total) + top).sum())
    resp = dens / total
    pm = u[:, None] * tau[None, :] / tot
    pv = tau[None, :] * s2[:, None] / tot
    return resp, pm, pv, loglik


def mixture_effects(
    b_hat: FloatArray, b_pev: FloatArray, var_b: float
) -> tuple[FloatArray, FloatArray, tuple[float, float]]:
    """Grader effects under a spike-and-slab prior: posterior means and variances.

    A normal prior shrinks every effect by the same share, so it pulls the few
    large effects (a clearly lenient grader) too far toward 0 when most graders
    have none. Here the prior is a mixture of a spike at 0 (no effect) and a
    zero-mean normal slab, its weight and variance fitted by EM (maximum marginal
    likelihood) to the unshrunk estimates ``b_hat / lam`` (with
    ``lam = 1 - PEV / var_b``, variance ``PEV / lam``); each grader's posterior mixes
    0 and the slab's posterior. With no spike weight this is the normal prior
    again. Graders whose estimate carries no information (``lam`` about 0), and
    fits with fewer than 8 informative graders, keep the normal-prior values.
    Returns the means, the variances and the prior (slab weight, slab variance).
    """
    out_mean, out_var = b_hat.copy(), b_pev.copy()
    if not var_b > 0 or not math.isfinite(var_b):
        return out_mean, out_var, (math.nan, math.nan)
    lam = 1.0 - b_pev / var_b
    informative = lam > 1e-4
    if int(informative.sum()) < 8:
        return out_mean, out_var, (math.nan, math.nan)
    u = b_hat[informative] / lam[informative]
    s2 = b_pev[informative] / lam[informative]
    # component 0 is the spike (variance 0: no effect), component 1 the slab
    tau = np.array([0.0, 2.0 * var_b])
    weight = np.array([0.5, 0.5])
    resp, pm, pv, loglik = _mixture_posterior(u, s2, tau, weight)
    for _ in range(_EM_ITERATIONS):
        weight = np.clip(resp.mean(axis=0), 1e-6, 1.0)
        weight /= weight.sum()
        slab = resp[:, 1]
        tau[1] = max(float((slab * (pm[:, 1] ** 2 + pv[:, 1])).sum() / slab.sum()), 1e-8 * var_b)
        previous = loglik
        resp, pm, pv, loglik = _mixture_posterior(u, s2, tau, weight)
        # EM never lowers the likelihood; stop when it no longer rises
        if loglik - previous < 1e-8 * u.shape[0]:
            break
    mean = (resp * pm).sum(axis=1)
    out_mean[informative] = mean
    out_var[informative] = np.maximum((resp * (pm * pm + pv)).sum(axis=1) - mean * mean, 0.0)
    return out_mean, out_var, (float(weight[1]), float(tau[1]))


def score_krs(
    within: CrossedFit,
    effect: FloatArray,
    effect_var: FloatArray,
    var_resid: float,
    var_evidence: float | None,
    confidence: float,
) -> KRScores:
    """Calibrated KR grades from a within-KR fit (see the module docstring).

    ``within`` is :func:`calibrate.reml.fit_within`'s fit, ``effect`` and
    ``effect_var`` every grader's effect (leniency) from it and its error variance;
    ``var_resid`` and ``var_evidence`` are REML's variances: the start, and
    ``var_resid`` sets the grid of grader variances and the floor.
    """
    d = within.data
    gi, ki = d.gr, d.kr
    n_gr, n_kr = d.n_gr, d.n_kr
    ev = d.ev_mask
    n_ev = int(ev.sum())
    m = d.y - effect[gi]  # each grade as a measurement of the KR's achievement
    ev_val = np.where(ev, d.ev_value, 0.0)

    v = np.full(n_gr, var_resid)
    vd = var_evidence if n_ev and var_evidence else var_resid
    # a grade informs its grader's variance when its KR has another grade or evidence
    linked = (_wsum(ki, np.ones(d.n_obs), n_kr) + ev)[ki] >= 2
    n_g = _wsum(gi, linked.astype(np.float64), n_gr)
    grid = var_resid * np.geomspace(_FLOOR, _GRID_TOP, _GRID)
    prior_w = np.full(_GRID, 1.0 / _GRID)
    df_v = np.full(n_gr, math.inf)
    # Only linked grades enter the iterations: a KR is linked as a whole, so its sums
    # are the same, and the grades left out would add exact zeros to the graders' sums.
    if linked.all():
        gl, kl, ml = gi, ki, m
    else:
        gl, kl, ml = gi[linked], ki[linked], m[linked]
    ev_at = np.flatnonzero(ev)
    ev_val_at = ev_val[ev_at]
    v_prev = v
    for _ in range(_ITERATIONS):
        vg = v[gl]
        w = 1.0 / vg
        wm = w * ml
        W = _wsum(kl, w, n_kr) + ev / vd
        S = _wsum(kl, wm, n_kr) + ev_val / vd
        # leave-one-out: each grade against the rest of its KR (in place: one pass each)
        rest_s = W[kl]
        rest_s -= w
        r2 = S[kl]
        r2 -= wm
        r2 /= rest_s
        np.subtract(ml, r2, out=r2)
        np.square(r2, out=r2)
        # E[r2] = v_j + a with a = 1/rest; expect = (v_j + a) / v_j
        expect = rest_s
        expect *= vg
        np.divide(1.0, expect, out=expect)
        expect += 1.0
        den = _wsum(gl, expect, n_gr)
        den2 = _wsum(gl, expect * expect, n_gr)
        rss = _wsum(gl, r2, n_gr)
        # per grader, the mean a and a^2 of its grades (a = v_j * (expect - 1))
        count = np.maximum(n_g, 1.0)
        a1 = v * (den - n_g) / count
        a2 = v * v * (den2 - 2.0 * den + n_g) / count
        # its effect, shrunk by lam (its posterior variance over the unshrunk
        # estimate's), takes about lam of the residuals' degrees of freedom
        lam = np.clip(effect_var * n_g / (v + a1), 0.0, 1.0)
        prior_w, v, df_v = _grid_posterior(rss, n_g - lam, a1, a2, grid, prior_w)
        if not np.all(np.isfinite(v)):
            v, df_v = np.full(n_gr, var_resid), np.full(n_gr, math.inf)
        if n_ev:
            W_e = W[ev_at]
            rest_e = W_e - 1.0 / vd
            ok_e = rest_e > 1e-9 * W_e
            if ok_e.any():
                val_e = ev_val_at[ok_e]
                loo_e = (S[ev_at[ok_e]] - val_e / vd) / rest_e[ok_e]
                r2e = (val_e - loo_e) ** 2
                vd = max(
                    float(r2e.sum() / (1.0 + 1.0 / (rest_e[ok_e] * vd)).sum()), _FLOOR * var_resid
                )
        change = float(np.max(np.abs(v - v_prev) / v_prev))
        if change < _TOL:
            break
        v_prev = v

    w = 1.0 / v[gi]
    W = _wsum(ki, w, n_kr) + ev / vd
    S = _wsum(ki, w * m, n_kr) + ev_val / vd
    value = S / W
    share = w / W[ki]
    var = 1.0 / W + _wsum(ki, share * share * effect_var[gi], n_kr)
    # Satterthwaite: each grade's noise carries its grader's degrees of freedom
    parts = _wsum(ki, (w / (W[ki] * W[ki])) ** 2 / df_v[gi], n_kr)
    if n_ev:
        parts = parts + ev * (1.0 / (vd * W * W)) ** 2 / n_ev
    with np.errstate(divide="ignore"):
        df = np.where(parts > 0, var * var / np.where(parts > 0, parts, 1.0), np.inf)
    q = 0.5 + confidence / 2.0
    finite = np.isfinite(df)
    crit = np.full(n_kr, float(scipy.special.ndtri(q)))
    crit[finite] = _t_quantiles(np.maximum(df[finite], 1.0), q)
    return KRScores(
        value=value,
        se=np.sqrt(var),
        crit=np.asarray(crit, dtype=np.float64),
        grader_var=v,
        evidence_var=vd if n_ev else None,
        grader_df=df_v,
        weight=share,
        effect_var=effect_var,
    )


def _t_quantiles(df: FloatArray, q: float) -> FloatArray:
    """``stdtrit(df, q)``; at ``df >= 100`` with ``df`` first rounded down to 4
    significant digits (a step of at most 0.1%), which moves the quantile by less
    than 1e-5 relative and only ever widens the interval. KRs graded by the same
    graders share their rounded df, so each distinct value is computed once."""
    out = np.empty(df.shape[0])
    small = df < 100.0
    out[small] = scipy.special.stdtrit(df[small], q)
    big = df[~small]
    if big.shape[0]:
        step = 10.0 ** (np.floor(np.log10(big)) - 3.0)
        distinct, which = np.unique(np.floor(big / step) * step, return_inverse=True)
        out[~small] = np.asarray(scipy.special.stdtrit(distinct, q), dtype=np.float64)[which]
    return out


def group_variance(
    scores: KRScores, within: CrossedFit, row: IntArray, kr: IntArray, w: FloatArray, n_rows: int
) -> FloatArray:
    """Variance of ``sum_k w_k value[kr_k]`` per row (distinct KRs per row).

    The KRs' own noise is independent; a grader's effect error is shared by every
    KR of the row that grader graded.
    """
    d = within.data
    kr_var = 1.0 / (
        _wsum(d.kr, 1.0 / scores.grader_var[d.gr], d.n_kr)
        + d.ev_mask / (scores.evidence_var if scores.evidence_var else 1.0)
    )
    own = _wsum(row, w * w * kr_var[kr], n_rows)
    # per grade: the row weight of its KR (a KR may sit in one row at most here)
    kr_row = np.full(d.n_kr, -1, dtype=np.int64)
    kr_w = np.zeros(d.n_kr)
    kr_row[kr] = row
    kr_w[kr] = w
    sel = kr_row[d.kr] >= 0
    key = kr_row[d.kr][sel] * max(d.n_gr, 1) + d.gr[sel]
    uniq, inv = np.unique(key, return_inverse=True)
    coef = np.bincount(inv, weights=(kr_w[d.kr] * scores.weight)[sel], minlength=uniq.shape[0])
    g = uniq % max(d.n_gr, 1)
    r = uniq // max(d.n_gr, 1)
    shared = _wsum(r, coef * coef * scores.effect_var[g], n_rows)
    out: FloatArray = own + shared
    return out
