"""REML internals against dense brute force: error variances of KRs and of owner rows."""

from __future__ import annotations

import numpy as np
import pytest

import calibrate.reml as reml
from calibrate.reml import CrossedFit, contrast_var_multi, fit_crossed, kr_variance, prepare_crossed


def _small_fit(seed: int, *, affine: bool) -> CrossedFit:
    """Three grader groups (one a single grader), repeated pairs, evidence-only KRs."""
    rng = np.random.default_rng(seed)
    groups = [np.arange(0, 5), np.arange(5, 11), np.array([11])]
    n_kr, n_gr = 60, 12
    kr_l, gr_l = [], []
    for i in range(n_kr - 6):  # the last 6 KRs have evidence only
        g = groups[i % 3]
        for j in rng.choice(g, size=min(len(g), int(rng.integers(1, 4))), replace=False):
            for _ in range(int(rng.integers(1, 3))):  # a pair may repeat (several items)
                kr_l.append(i)
                gr_l.append(int(j))
    kr = np.array(kr_l, dtype=np.int64)
    gr = np.array(gr_l, dtype=np.int64)
    a = rng.normal(0, 1.0, n_kr)
    b = rng.normal(0, 0.5, n_gr)
    y = 3.0 + a[kr] + b[gr] + rng.normal(0, 0.7, kr.shape[0])
    ev = (np.arange(n_kr) % 2 == 0) | (np.arange(n_kr) >= n_kr - 6)
    ev_value = np.where(ev, 3.0 + a + rng.normal(0, 0.5, n_kr), 0.0)
    X = np.ones((kr.shape[0], 2))
    Xe = np.tile(np.array([1.0, 0.0]), (n_kr, 1))
    coef = rng.uniform(0.6, 1.4, n_gr)[gr] if affine else None
    d = prepare_crossed(y, kr, gr, n_kr, n_gr, X, ev, ev_value, Xe, coef)
    return fit_crossed(d)


def _dense_system(
    d: reml.CrossedData, ta: float, tb: float, td: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Design of the grades ``W``, of the evidence ``We`` (rows ``ev``), and the full
    mixed-model equations' matrix ``C`` over (beta, a, b) at variance ratios ta, tb, td."""
    n = d.p + d.n_kr + d.n_gr
    W = np.zeros((d.n_obs, n))
    W[:, : d.p] = d.X
    W[np.arange(d.n_obs), d.p + d.kr] = d.coef
    W[np.arange(d.n_obs), d.p + d.n_kr + d.gr] = 1.0
    ev = np.flatnonzero(d.ev_mask)
    We = np.zeros((ev.shape[0], n))
    We[:, : d.p] = d.Xe[ev]
    We[np.arange(ev.shape[0]), d.p + ev] = 1.0
    C = W.T @ W + We.T @ We / td
    C[d.p : d.p + d.n_kr, d.p : d.p + d.n_kr] += np.eye(d.n_kr) / ta
    C[d.p + d.n_kr :, d.p + d.n_kr :] += np.eye(d.n_gr) / tb
    return W, We, C, ev


def _dense_cov(fit: CrossedFit) -> np.ndarray:
    """Error covariance of (beta, a, b) from the full mixed-model equations, inverted densely."""
    s2 = fit.var_resid
    assert fit.var_evidence is not None
    _, _, C, _ = _dense_system(
        fit.data, fit.var_kr / s2, fit.var_grader / s2, fit.var_evidence / s2
    )
    return np.linalg.inv(C) * s2


def _rows(n_kr: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """KRs dealt into rows of 1 to 6 distinct KRs (across grader groups), with weights."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(n_kr)
    sizes = []
    left = n_kr
    while left:
        sizes.append(min(left, int(rng.integers(1, 7))))
        left -= sizes[-1]
    row = np.repeat(np.arange(len(sizes)), sizes)
    w = rng.uniform(0.1, 2.0, n_kr)
    w = w / np.bincount(row, weights=w)[row]
    return row, order.astype(np.int64), w, len(sizes)


@pytest.mark.parametrize("affine", [False, True])
def test_kr_variance_matches_dense_inverse(affine: bool) -> None:
    fit = _small_fit(3, affine=affine)
    cov = _dense_cov(fit)
    p, n_kr = fit.data.p, fit.data.n_kr
    a_idx = p + np.arange(n_kr)
    dense = cov[0, 0] + 2.0 * cov[0, a_idx] + cov[a_idx, a_idx]
    np.testing.assert_allclose(kr_variance(fit), dense, rtol=1e-10)


@pytest.mark.parametrize("affine", [False, True])
@pytest.mark.parametrize("dense_up_to", [0, 1000])  # every block summed over pairs / dense
@pytest.mark.parametrize("tile", [1, 2, 16])
def test_owner_rows_variance_matches_dense_inverse(
    affine: bool, dense_up_to: int, tile: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reml, "_DENSE_GROUP_BLOCK", dense_up_to)
    monkeypatch.setattr(reml, "_TILE", tile)
    fit = _small_fit(5, affine=affine)
    cov = _dense_cov(fit)
    p, n_kr = fit.data.p, fit.data.n_kr
    row, kr, w, n_rows = _rows(n_kr, 11)
    L = np.zeros((n_rows, cov.shape[0]))
    L[:, 0] = np.bincount(row, weights=w, minlength=n_rows)
    L[row, p + kr] = w
    dense = np.einsum("ri,ij,rj->r", L, cov, L)
    got = contrast_var_multi(fit, row, kr, w, n_rows)
    np.testing.assert_allclose(got, dense, rtol=1e-10)


@pytest.mark.parametrize("affine", [False, True])
@pytest.mark.parametrize("ratios", [(0.5, 0.2, 0.8), (3.0, 0.05, 0.3), (0.01, 2.0, 5.0)])
def test_penalised_rss_matches_dense_solution(affine: bool, ratios: tuple[float, ...]) -> None:
    """The REML criterion's y'P0y, summed as penalised squared residuals, equals the
    dense mixed-model equations' ``y'y + e'e/t_d - sol'rhs`` at points away from the optimum."""
    d = _small_fit(11, affine=affine).data
    ta, tb, td = ratios
    W, We, C, ev = _dense_system(d, ta, tb, td)
    rhs = W.T @ d.y + We.T @ d.ev_value[ev] / td
    yy = float(d.y @ d.y + d.ev_value[ev] @ d.ev_value[ev] / td)
    dense_q = yy - float(rhs @ np.linalg.solve(C, rhs))
    st = reml._evaluate_inv(d, 1.0 / ta, 1.0 / tb, td, keep=True)
    assert isinstance(st, reml._State)
    assert st.q == pytest.approx(dense_q, rel=1e-10)
