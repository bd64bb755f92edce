"""Crossed random-effects REML for grades: KR achievement + grader effect + noise.

The model, for grade ``k`` of KR ``i`` by grader ``j``::

    y_k = x_k'beta + s_k * a_i + b_j + e_k,    a ~ N(0, s2_a), b ~ N(0, s2_b), e ~ N(0, s2_e)

and, for a KR with an evidence grade ``z_i``::

    z_i = xe_i'beta + a_i + d_i,               d ~ N(0, s2_d)

``s_k`` is 1 for the additive model; the affine model passes each grader's scale.

Why it is fast: every observation belongs to exactly one KR, so the KR effects
are absorbed analytically (their block of Henderson's mixed-model equations is
diagonal). What remains is one small block per connected group of graders
(graders are coupled only through KRs they graded together), factorised as a
batch of dense matrices. The REML criterion is profiled over the residual
variance, as lme4 does, and minimised over the log variance ratios.

References: Henderson (1984) for the mixed-model equations and the REML
criterion in terms of them; Bates et al. (2015, lme4) for profiling.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt
import scipy.linalg.lapack
import scipy.optimize
import scipy.sparse
import scipy.sparse.csgraph

from calibrate.errors import BlockTooLargeError

__all__ = [
    "MAX_BLOCK",
    "CrossedData",
    "CrossedFit",
    "CrossedInputs",
    "contrast_var_multi",
    "fit_crossed",
    "fit_fixed",
    "fit_within",
    "grade_fit_variance",
    "kr_variance",
    "log_ratios",
    "prepare_crossed",
    "warm_start",
    "with_coef",
    "with_design",
]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


def _wsum(index: npt.NDArray[np.integer[Any]], weights: npt.ArrayLike, n: int) -> FloatArray:
    """Weighted ``np.bincount``: per-bin sums of ``weights``.

    numpy's stubs type every bincount as integer; with weights it is float64, and
    ``np.asarray`` says so without copying.
    """
    return np.asarray(np.bincount(index, weights=weights, minlength=n), dtype=np.float64)


def _f64(a: npt.NDArray[np.floating[Any]]) -> FloatArray:
    """The same array, typed float64 (numpy's linalg stubs say ``floating[Any]``); no copy."""
    return np.asarray(a, dtype=np.float64)


_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)
#: Largest connected group of graders the exact path factorises (dense, O(n^3) per step).
MAX_BLOCK = 3000
_LOG_BOUND = 12.0
#: Largest number of buffered entries (classes x block entries) for the class shortcut.
_CLASS_BUDGET = 30_000_000
#: Above this many grades, a subsample's REML estimates seed the full optimisation.
_WARM_START_OVER = 150_000  # variance ratios in [e^-12, e^12] relative to the residual variance


@dataclass(frozen=True)
class _Blocks:
    """Graders grouped into connected blocks, padded to a few bucket sizes."""

    bucket_size: IntArray  # per bucket
    bucket_count: IntArray  # blocks per bucket
    bucket_offset: IntArray  # start of each bucket in the flat buffer
    total: int
    grader_bucket: IntArray  # per grader
    grader_block: IntArray  # per grader: block number within its bucket
    grader_loc: IntArray  # per grader: row within its block
    grader_base: IntArray  # per grader: flat index of its block's [0, 0]
    component: IntArray  # per grader: connected component id
    diag_flat: IntArray  # per grader: flat index of its diagonal entry
    pad_flat: IntArray  # flat indices of the diagonal slots that pad blocks
    bucket_graders: tuple[IntArray, ...]  # per bucket: its graders, ascending
    bucket_rows: tuple[IntArray, ...]  # per bucket: their rows in (blocks * size) stacking

    def flat(self, j: IntArray, k: IntArray) -> IntArray:
        """Flat buffer index of entry (j, k); j and k must share a block."""
        size = self.bucket_size[self.grader_bucket[j]]
        out: IntArray = self.grader_base[j] + self.grader_loc[j] * size + self.grader_loc[k]
        return out

    def views(self, buf: FloatArray) -> list[FloatArray]:
        out = []
        for b in range(len(self.bucket_size)):
            s, n, off = (
                int(self.bucket_size[b]),
                int(self.bucket_count[b]),
                int(self.bucket_offset[b]),
            )
            out.append(buf[off : off + n * s * s].reshape(n, s, s))
        return out

    def gather(self, v: FloatArray) -> list[FloatArray]:
        """Per bucket, a (blocks, size, cols) array holding rows of v (n_graders x cols)."""
        out = []
        cols = v.shape[1]
        for b in range(len(self.bucket_size)):
            s, n = int(self.bucket_size[b]), int(self.bucket_count[b])
            arr = np.zeros((n * s, cols))
            arr[self.bucket_rows[b]] = v[self.bucket_graders[b]]
            out.append(arr.reshape(n, s, cols))
        return out

    def scatter(self, parts: list[FloatArray], cols: int, n: int) -> FloatArray:
        out = np.zeros((n, cols))
        for b, arr in enumerate(parts):
            out[self.bucket_graders[b]] = arr.reshape(-1, cols)[self.bucket_rows[b]]
        return out


class CrossedInputs(NamedTuple):
    """The arguments of :func:`prepare_crossed` (see there), as :func:`warm_start` takes
    them too: the grades, their codes and design, and the evidence per KR."""

    y: FloatArray
    kr: IntArray
    gr: IntArray
    n_kr: int
    n_gr: int
    X: FloatArray
    ev_mask: npt.NDArray[np.bool_] | None = None
    ev_value: FloatArray | None = None
    Xe: FloatArray | None = None
    coef: FloatArray | None = None


@dataclass(frozen=True)
class CrossedData:
    """Sufficient statistics and index structures for :func:`fit_crossed`."""

    n_obs: int  # grades
    n_ev: int  # evidence observations
    n_kr: int
    n_gr: int
    p: int
    y: FloatArray
    coef: FloatArray  # per grade: coefficient of the KR effect (1, or the grader's scale)
    kr: IntArray
    gr: IntArray
    X: FloatArray  # grades x p
    ev_mask: npt.NDArray[np.bool_]  # per KR
    ev_value: FloatArray  # per KR (0 where absent)
    Xe: FloatArray  # per KR x p (rows used only where ev_mask)
    m: FloatArray  # grades per grader
    Hx: FloatArray  # per grader: sum of x
    Hy: FloatArray  # per grader: sum of y
    XtX: FloatArray
    Xty: FloatArray
    yty: float
    XetXe: FloatArray
    Xetz: FloatArray
    ztz: float
    # KR x grader coupling, as a sparse matrix of the per-grade coefficients
    pair_kr: IntArray  # per (kr, grader) pair
    pair_gr: IntArray
    pair_idx: IntArray  # per grade: its pair
    trip_kr: IntArray  # per (kr, grader, grader') triple within a KR
    trip_pa: IntArray  # the triple's two (kr, grader) pairs
    trip_pb: IntArray
    trip_flat: IntArray
    blocks: _Blocks
    pair_w: FloatArray  # per pair: coupling coefficient (sum of the grades' KR coefficients)
    kr_w2: FloatArray  # per KR: sum of squared coefficients
    A_g: FloatArray  # per KR x p: sum of coef * x over its grades
    ry_g: FloatArray  # per KR: sum of coef * y over its grades
    trip_w0: FloatArray  # per triple: product of its two pair weights
    Zw: scipy.sparse.csr_matrix  # graders x KRs, the pair weights
    comp_has_ev: npt.NDArray[np.bool_]  # per component: does any of its KRs have evidence
    cons_flat: IntArray  # block entries of components without evidence (fixed-effects constraint)
    cons_n: FloatArray  # size of the component of each cons_flat entry
    # KRs whose c_i = kr_w2 + ev/td + 1/ta can only differ through kr_w2 and ev form
    # classes; the off-diagonal block entries are then a few fixed buffers weighted by
    # 1/c per class, so one evaluation costs O(block entries), not O(triples).
    class_w2: FloatArray  # per class
    class_ev: FloatArray  # per class (0 or 1)
    class_buf: FloatArray | None  # classes x block entries, or None (use the triples)

    def inputs(self) -> CrossedInputs:
        """What :func:`prepare_crossed` made these from (its defaults filled in)."""
        return CrossedInputs(
            self.y, self.kr, self.gr, self.n_kr, self.n_gr, self.X,
            self.ev_mask, self.ev_value, self.Xe, self.coef,
        )  # fmt: skip


def _cols(index: IntArray, values: FloatArray, n: int) -> FloatArray:
    """Column-wise bincount: out[r, c] = sum of values[k, c] over k with index[k] == r."""
    out = np.zeros((n, values.shape[1]))
    for col in range(values.shape[1]):
        out[:, col] = np.bincount(index, weights=values[:, col], minlength=n)
    return out


def _bucket_for(size: int) -> int:
    for b, s in enumerate(_BUCKETS):
        if size <= s:
            return b
    return len(_BUCKETS)  # beyond the largest bucket: its own exact size


def _make_blocks(comp: IntArray, n_gr: int) -> _Blocks:
    n_comp = int(comp.max()) + 1 if n_gr else 0
    sizes = np.bincount(comp, minlength=n_comp)
    # Order graders by component so each block's members are contiguous.
    order = np.argsort(comp, kind="stable")
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    loc = np.empty(n_gr, dtype=np.int64)
    loc[order] = np.arange(n_gr) - np.repeat(starts, sizes)
    comp_bucket_key = np.array([_bucket_for(int(s)) for s in sizes], dtype=np.int64)
    # Components larger than the largest bucket each get a bucket of their own size.
    keys: list[tuple[int, int]] = []
    for c in range(n_comp):
        kb = int(comp_bucket_key[c])
        keys.append((kb, 0) if kb < len(_BUCKETS) else (kb, int(sizes[c])))
    uniq = sorted(set(keys))
    bucket_of_key = {k: i for i, k in enumerate(uniq)}
    comp_bucket = np.array([bucket_of_key[k] for k in keys], dtype=np.int64)
    bucket_size = np.array(
        [_BUCKETS[k[0]] if k[0] < len(_BUCKETS) else k[1] for k in uniq], dtype=np.int64
    )
    bucket_count = np.bincount(comp_bucket, minlength=len(uniq)).astype(np.int64)
    comp_block = np.empty(n_comp, dtype=np.int64)
    for b in range(len(uniq)):
        members = np.flatnonzero(comp_bucket == b)
        comp_block[members] = np.arange(len(members))
    sq = bucket_size * bucket_size * bucket_count
    bucket_offset = np.concatenate([[0], np.cumsum(sq)[:-1]]).astype(np.int64)
    gb = comp_bucket[comp]
    gblock = comp_block[comp]
    base = (bucket_offset[gb] + gblock * bucket_size[gb] * bucket_size[gb]).astype(np.int64)
    diag_flat = base + loc * bucket_size[gb] + loc
    pad: list[IntArray] = []
    graders_of = [np.flatnonzero(gb == b) for b in range(len(uniq))]
    for b in range(len(uniq)):
        s = int(bucket_size[b])
        used = np.zeros((int(bucket_count[b]), s), dtype=bool)
        sel = gb == b
        used[gblock[sel], loc[sel]] = True
        blk, pos = np.nonzero(~used)
        pad.append(int(bucket_offset[b]) + blk * s * s + pos * s + pos)
    return _Blocks(
        bucket_size=bucket_size,
        bucket_count=bucket_count,
        bucket_offset=bucket_offset,
        total=int(sq.sum()),
        grader_bucket=gb,
        grader_block=gblock,
        grader_loc=loc,
        grader_base=base,
        component=comp.astype(np.int64),
        diag_flat=diag_flat.astype(np.int64),
        pad_flat=np.concatenate(pad).astype(np.int64) if pad else np.zeros(0, dtype=np.int64),
        bucket_graders=tuple(graders_of),
        bucket_rows=tuple(gblock[m] * bucket_size[b] + loc[m] for b, m in enumerate(graders_of)),
    )


def prepare_crossed(
    y: FloatArray,
    kr: IntArray,
    gr: IntArray,
    n_kr: int,
    n_gr: int,
    X: FloatArray,
    ev_mask: npt.NDArray[np.bool_] | None = None,
    ev_value: FloatArray | None = None,
    Xe: FloatArray | None = None,
    coef: FloatArray | None = None,
) -> CrossedData:
    """Index the data once; :func:`fit_crossed` may then evaluate the criterion many times.

    ``kr`` and ``gr`` are 0-based codes per grade; (kr, grader) pairs may repeat
    (several grades of one KR by one grader, e.g. several items).
    """
    n = y.shape[0]
    p = X.shape[1]
    if ev_mask is None:
        ev_mask = np.zeros(n_kr, dtype=bool)
    if ev_value is None:
        ev_value = np.zeros(n_kr)
    if Xe is None:
        Xe = np.zeros((n_kr, p))
    if coef is None:
        coef = np.ones(n)
    ev_value = np.where(ev_mask, ev_value, 0.0)

    # Unique (kr, grader) pairs; the coupling between KR i and grader j is the
    # sum of the KR-effect coefficients of j's grades of i.
    key = kr.astype(np.int64) * max(n_gr, 1) + gr
    pair_keys, pair_idx = np.unique(key, return_inverse=True)
    pair_kr = (pair_keys // max(n_gr, 1)).astype(np.int64)
    pair_gr = (pair_keys % max(n_gr, 1)).astype(np.int64)

    # Grader graph: graders are linked when they graded the same KR.
    n_pairs = pair_keys.shape[0]
    pairs_per_kr = np.bincount(pair_kr, minlength=n_kr)
    # triples (i, j, k) for every ordered pair of graders j, k of KR i (j == k included)
    kr_start = np.concatenate([[0], np.cumsum(pairs_per_kr)[:-1]])
    reps = pairs_per_kr[pair_kr]
    trip_a = np.repeat(np.arange(n_pairs), reps)
    offs = np.arange(trip_a.shape[0]) - np.repeat(np.cumsum(reps) - reps, reps)
    trip_b = kr_start[pair_kr[trip_a]] + offs
    trip_kr = pair_kr[trip_a]

    # Components of the graph of graders and KRs, read off the pairs (sorted by KR)
    # without building the grader-grader graph; graders come first, so each group of
    # graders is numbered as in the graders-only graph (by its first grader).
    indptr = np.concatenate([np.zeros(n_gr + 1, dtype=np.int64), np.cumsum(pairs_per_kr)])
    graph = scipy.sparse.csr_matrix(
        (np.ones(n_pairs), pair_gr, indptr), shape=(n_gr + n_kr, n_gr + n_kr)
    )
    _, labels = scipy.sparse.csgraph.connected_components(graph, directed=False)
    comp = labels[:n_gr]
    largest = int(np.bincount(comp).max()) if n_gr else 0
    if largest > MAX_BLOCK:
        raise BlockTooLargeError(
            f"{largest} graders form one connected group through shared KRs; the exact "
            f"mixed-model path handles groups of up to {MAX_BLOCK}: calibrate "
            "organisation units separately, or use the mean or zscore baseline."
        )
    blocks = _make_blocks(comp.astype(np.int64), n_gr)
    # flat index of block entry (j, k) = row start of j + column of k, per pair then per triple
    pair_row = blocks.flat(pair_gr, pair_gr) - blocks.grader_loc[pair_gr]
    trip_flat = pair_row[trip_a] + blocks.grader_loc[pair_gr][trip_b]
    n_comp = int(comp.max()) + 1 if n_gr else 0
    comp_has_ev = (
        np.bincount(comp[pair_gr], weights=ev_mask[pair_kr].astype(np.float64), minlength=n_comp)
        > 0
    )
    comp_size = np.bincount(comp, minlength=n_comp)
    # all (j, k) pairs within components that carry no evidence
    cons_j_list, cons_k_list = [], []
    order = np.argsort(comp, kind="stable")
    starts = np.concatenate([[0], np.cumsum(comp_size)[:-1]])
    for cidx in np.flatnonzero(~comp_has_ev):
        members = order[starts[cidx] : starts[cidx] + comp_size[cidx]]
        jj, kk = np.meshgrid(members, members, indexing="ij")
        cons_j_list.append(jj.ravel())
        cons_k_list.append(kk.ravel())
    cons_j = np.concatenate(cons_j_list) if cons_j_list else np.zeros(0, dtype=np.int64)
    cons_k = np.concatenate(cons_k_list) if cons_k_list else np.zeros(0, dtype=np.int64)

    Xg = X
    cp = _coef_parts(
        coef,
        y,
        X,
        kr,
        n_kr,
        pair_idx.astype(np.int64),
        n_pairs,
        pair_gr,
        pair_kr,
        n_gr,
        trip_a.astype(np.int64),
        trip_b.astype(np.int64),
        trip_kr,
        trip_flat,
        ev_mask,
        blocks.total,
    )
    return CrossedData(
        n_obs=n,
        n_ev=int(ev_mask.sum()),
        n_kr=n_kr,
        n_gr=n_gr,
        p=p,
        y=y,
        kr=kr,
        gr=gr,
        X=Xg,
        ev_mask=ev_mask,
        ev_value=ev_value,
        Xe=Xe,
        m=np.bincount(gr, minlength=n_gr).astype(np.float64),
        Hx=_cols(gr, Xg, n_gr),
        Hy=_wsum(gr, y, n_gr),
        XtX=Xg.T @ Xg,
        Xty=Xg.T @ y,
        yty=float(y @ y),
        XetXe=Xe[ev_mask].T @ Xe[ev_mask],
        Xetz=Xe[ev_mask].T @ ev_value[ev_mask],
        ztz=float(ev_value[ev_mask] @ ev_value[ev_mask]),
        pair_kr=pair_kr,
        pair_gr=pair_gr,
        pair_idx=pair_idx.astype(np.int64),
        trip_kr=trip_kr,
        trip_pa=trip_a.astype(np.int64),
        trip_pb=trip_b.astype(np.int64),
        trip_flat=trip_flat,
        blocks=blocks,
        **cp,
        comp_has_ev=comp_has_ev,
        cons_flat=blocks.flat(cons_j.astype(np.int64), cons_k.astype(np.int64)),
        cons_n=comp_size[comp[cons_j]].astype(np.float64) if cons_j.size else np.zeros(0),
    )


@dataclass(frozen=True)
class _State:
    """Everything computed at one value of the variance ratios."""

    deviance: float
    q: float  # y'P0y
    c: FloatArray  # per KR
    ry: FloatArray
    A: FloatArray
    pair_w: FloatArray  # per pair: coupling coefficient
    inv_parts: list[FloatArray]  # S_bb^-1 per bucket
    H: FloatArray  # S_bb^-1 S_b,beta (n_gr x p)
    sb_r: FloatArray  # S_bb^-1 r_b
    T: FloatArray
    beta: FloatArray
    b: FloatArray
    a: FloatArray  # per KR


def _evaluate(d: CrossedData, log_ratios: FloatArray, keep: bool = False) -> _State | float:
    ta = math.exp(log_ratios[0])
    tb = math.exp(log_ratios[1])
    td = math.exp(log_ratios[2]) if d.n_ev else 1.0
    return _evaluate_inv(d, 1.0 / ta, 1.0 / tb, td, keep=keep)


def _evaluate_inv(
    d: CrossedData, inv_ta: float, inv_tb: float, td: float, *, keep: bool = False
) -> _State | float:
    """The criterion at prior precisions ``inv_ta``, ``inv_tb`` (0 = fixed effects)."""
    evw = d.ev_mask / td
    pair_w = d.pair_w
    c = d.kr_w2 + evw + inv_ta
    A = d.A_g + d.Xe * evw[:, None]
    ry = d.ry_g + d.ev_value * evw
    inv_c = 1.0 / c

    # S_bb = diag(m) + I/tb - sum_i w_ij w_ik / c_i, assembled block by block.
    bl = d.blocks
    # every triple adds -w_ij * w_ik / c_i to entry (j, k) of its grader block
    if d.class_buf is not None:
        inv_c_class = 1.0 / (d.class_w2 + d.class_ev / td + inv_ta)
        buf = -(inv_c_class @ d.class_buf)
    else:
        tw = d.trip_w0 * inv_c[d.trip_kr]
        buf = -_wsum(d.trip_flat, tw, bl.total)
    buf[bl.diag_flat] += d.m + inv_tb
    if inv_tb == 0.0:
        # fixed grader effects: sum to zero within each part not tied to evidence
        buf[d.cons_flat] += 1.0
    # unused slots of padded blocks get 1 on the diagonal: non-singular, log 1 = 0
    buf[bl.pad_flat] = 1.0
    parts = bl.views(buf)

    Ac = A * inv_c[:, None]
    ryc = ry * inv_c
    proj = np.asarray(d.Zw @ np.concatenate([Ac, ryc[:, None]], 1))
    S_bbeta = d.Hx - proj[:, : d.p]  # n_gr x p
    r_b = d.Hy - proj[:, d.p]
    # note: Hx/Hy must use the same coefficient convention as the b design (1 per grade)
    S_bb_beta_r = np.concatenate([S_bbeta, r_b[:, None]], 1)
    rhs_parts = bl.gather(S_bb_beta_r)
    logdet_S = 0.0
    sol_parts: list[FloatArray] = []
    inv_parts: list[FloatArray] = []
    for arr, rhs in zip(parts, rhs_parts, strict=True):
        factored = _inverse_and_logdet(arr)
        if factored is None:
            return math.inf if not keep else _fail()
        inv, ld_sum = factored
        logdet_S += ld_sum
        inv_parts.append(inv)
        sol_parts.append(_f64(inv @ rhs))
    sol = bl.scatter(sol_parts, d.p + 1, d.n_gr)
    H = sol[:, : d.p]
    sb_r = sol[:, d.p]
    S_beta = d.XtX + d.XetXe / td - A.T @ Ac
    r_beta = d.Xty + d.Xetz / td - A.T @ ryc
    T = S_beta - S_bbeta.T @ H
    if d.p:
        sign_t, logdet_T = np.linalg.slogdet(T)
        if sign_t <= 0:
            return math.inf if not keep else _fail()
        beta = np.linalg.solve(T, r_beta - S_bbeta.T @ sb_r)
    else:
        logdet_T, beta = 0.0, np.zeros(0)
    b = sb_r - H @ beta
    # KR effects from the absorbed equations
    a = (ry - A @ beta - np.asarray(d.Zw.T @ b)) * inv_c
    nu = d.n_obs + d.n_ev - d.p
    fixed_effects = inv_ta == 0.0 or inv_tb == 0.0
    if fixed_effects:
        q = d.yty + d.ztz / td - float(ry @ ryc) - float(beta @ r_beta) - float(b @ r_b)
        # least squares: an exact fit (q = 0, up to rounding) is legitimate
        q = max(q, 0.0)
    else:
        q = _penalised_rss(d, beta, a, b, inv_ta, inv_tb, td)
        if q <= 0:
            return math.inf if not keep else _fail()
    if not keep and fixed_effects:
        return q
    log_r0 = d.n_ev * math.log(td)
    log_g0 = -(d.n_kr * math.log(inv_ta) + d.n_gr * math.log(inv_tb)) if inv_ta and inv_tb else 0.0
    logdet_c = float(np.log(c).sum()) + logdet_S + float(logdet_T)
    log_q = math.log(q / nu) if q > 0 else -math.inf  # an exact least-squares fit
    dev = log_r0 + log_g0 + logdet_c + nu * log_q + nu * (1 + math.log(2 * math.pi))
    if not keep:
        return dev
    return _State(dev, q, c, ry, A, pair_w, inv_parts, H, sb_r, T, beta, b, a)


def _penalised_rss(
    d: CrossedData,
    beta: FloatArray,
    a: FloatArray,
    b: FloatArray,
    inv_ta: float,
    inv_tb: float,
    td: float,
) -> float:
    """``y'P0y`` as the penalised residual sum of squares at the solution.

    It equals ``y'y + z'z/t_d - sol'rhs``, but that difference cancels about two
    digits (``y'y`` is ~100 times ``q`` on graded data) and its rounding jitters by
    ~1e-11 relative from one point to the next: enough to make L-BFGS-B's line search
    fail near the optimum and retry points it has seen. A sum of squares has no
    cancellation, and an error in the solution moves it only to second order.
    """
    r = d.y - d.X @ beta - d.coef * a[d.kr] - b[d.gr]
    ev = np.flatnonzero(d.ev_mask)
    e = d.ev_value[ev] - d.Xe[ev] @ beta - a[ev]
    return float(r @ r) + float(e @ e) / td + inv_ta * float(a @ a) + inv_tb * float(b @ b)


#: Blocks at least this large are factorised one at a time by Cholesky (LAPACK potrf/potri,
#: about a third of the work of LU + inverse); smaller ones in numpy batches.
_CHOLESKY_FROM = 96


def _inverse_and_logdet(arr: FloatArray) -> tuple[FloatArray, float] | None:
    """Inverses and summed log-determinants of a batch of SPD blocks; None if one is not PD."""
    if arr.shape[1] < _CHOLESKY_FROM:
        sign, ld = np.linalg.slogdet(arr)
        if np.any(sign <= 0):
            return None
        return _f64(np.linalg.inv(arr)), float(ld.sum())
    inv = np.empty_like(arr)
    total = 0.0
    for i in range(arr.shape[0]):
        chol, info = scipy.linalg.lapack.dpotrf(arr[i], lower=1, clean=1)
        if info != 0:
            return None
        total += 2.0 * float(np.log(np.diagonal(chol)).sum())
        full, info = scipy.linalg.lapack.dpotri(chol, lower=1)
        if info != 0:
            return None
        inv[i] = np.tril(full) + np.tril(full, -1).T
    return inv, total


#: The solution at the last point :func:`_deviance_and_gradient` visited, keyed by the
#: point's bytes: the optimiser usually ends there, and :func:`_finish` then reuses it.
_Solved = tuple[bytes, "_State", FloatArray]


def _deviance_and_gradient(
    d: CrossedData, x: FloatArray, last: list[_Solved] | None = None
) -> tuple[float, FloatArray]:
    """Profiled REML deviance and its exact gradient in the log variance ratios.

    With ``q = y'P0y`` and the traces of the inverse mixed-model matrix::

        dD/dl_a = n_kr - tr(C^aa)/t_a - nu |a|^2 / (t_a q)
        dD/dl_b = n_gr - tr(C^bb)/t_b - nu |b|^2 / (t_b q)
        dD/dl_d = n_ev - tr(C^-1 We'We)/t_d - nu |e_ev|^2 / (t_d q)

    Every trace comes from the block inverses: the KR part through the absorbed
    form, ``Var(a_i) = 1/c_i + Q_i/c_i^2 + E_i' T^-1 E_i``. With ``last``, the solution
    at ``x`` replaces its content.
    """
    ta, tb = math.exp(x[0]), math.exp(x[1])
    td = math.exp(x[2]) if d.n_ev else 1.0
    st = _evaluate_inv(d, 1.0 / ta, 1.0 / tb, td, keep=True)
    assert isinstance(st, _State)
    s_inv = _block_inverse(d, st)
    if last is not None:
        last[:] = [(x.tobytes(), st, s_inv)]
    c = st.c
    Tinv = _f64(np.linalg.inv(st.T)) if d.p else np.zeros((0, 0))
    tr_bb = float(s_inv[d.blocks.diag_flat].sum())
    if d.p:
        tr_bb += float(((st.H @ Tinv) * st.H).sum())
    ev = np.flatnonzero(d.ev_mask)  # integer gathers: several times faster than a mask
    if d.class_buf is not None:
        qw = d.class_buf @ s_inv
        c_class = d.class_w2 + d.class_ev / td + 1.0 / ta
        q_all = float((qw / (c_class * c_class)).sum())
        q_ev = float((d.class_ev * qw / (c_class * c_class)).sum())
    else:
        q_kr = _wsum(d.trip_kr, d.trip_w0 * s_inv[d.trip_flat], d.n_kr) / (c * c)
        q_all = float(q_kr.sum())
        q_ev = float(q_kr[ev].sum())
    inv_c = 1.0 / c
    tr_aa = float(inv_c.sum()) + q_all
    tr_ev = float(inv_c[ev].sum()) + q_ev
    a = st.a
    if d.p:
        HZ = np.asarray(d.Zw.T @ st.H)
        E = (HZ - st.A) * inv_c[:, None]
        tr_aa += float(((E @ Tinv) * E).sum())
        Ee = d.Xe[ev] + E[ev]
        tr_ev += float(((Ee @ Tinv) * Ee).sum())
    nu = d.n_obs + d.n_ev - d.p
    q = st.q
    g = [
        d.n_kr - tr_aa / ta - nu * float(a @ a) / (ta * q),
        d.n_gr - tr_bb / tb - nu * float(st.b @ st.b) / (tb * q),
    ]
    if d.n_ev:
        e_ev = d.ev_value[ev] - d.Xe[ev] @ st.beta - a[ev]
        g.append(d.n_ev - tr_ev / td - nu * float(e_ev @ e_ev) / (td * q))
    return st.deviance, np.array(g)


def _fail() -> _State:
    raise np.linalg.LinAlgError("mixed-model equations are singular at these variance ratios")


@dataclass(frozen=True)
class CrossedFit:
    """REML estimates, BLUPs and their prediction-error variances."""

    var_kr: float
    var_grader: float
    var_resid: float
    var_evidence: float | None
    beta: FloatArray
    beta_cov: FloatArray
    a: FloatArray  # KR BLUPs
    b: FloatArray  # grader BLUPs
    b_pev: FloatArray  # Var(b_hat - b)
    b_beta_cov: FloatArray  # Cov(err b_j, err beta) (n_gr x p)
    deviance: float
    converged: bool
    iterations: int
    component: IntArray
    data: CrossedData
    state: _State
    s_inv: FloatArray  # block inverses of S_bb, flat buffer like the blocks


def contrast_var_multi(
    fit: CrossedFit, row: IntArray, kr: IntArray, w: FloatArray, n_rows: int
) -> FloatArray:
    """Variance of ``sum_k w_k (beta_0 + a_{kr_k})`` for each row (several KRs per row).

    The KRs of one row must be distinct. In the absorbed form the error of ``a_i``
    is ``-(1/c_i) v_i' err(beta, b) + eta_i`` with ``Var(eta_i) = 1/c_i``, so a row's
    variance (over the residual variance) is a grouped quadratic form::

        sum_i w_i^2 / c_i  +  E_r' T^-1 E_r  +  sum_B g_rB' S_B^-1 g_rB

    per-KR terms, the intercept term with ``E_r = sum_i w_i (e_0 + ((Z'H)_i - A_i) / c_i)``,
    and one term per grader block ``B`` the row's KRs touch, with
    ``g_rB = -sum_i (w_i / c_i) z_i`` over those KRs (``z_i``: KR ``i``'s pair weights).
    """
    d, st = fit.data, fit.state
    wc = w / st.c[kr]
    out = _wsum(row, w * wc, n_rows)
    if d.p:
        HZ = np.asarray(d.Zw.T @ st.H)
        E_k = wc[:, None] * (HZ[kr] - st.A[kr])
        E_k[:, 0] += w
        E = _cols(row, E_k, n_rows)
        Tinv = _f64(np.linalg.inv(st.T))
        out += ((E @ Tinv) * E).sum(1)
    out += _block_quadratics(fit, row, kr, wc, n_rows)
    result: FloatArray = out * fit.var_resid
    return result


#: Grader blocks up to this size take the dense route in :func:`_block_quadratics`;
#: larger ones (few, and sparsely touched by each row) sum over pairs of entries.
_DENSE_GROUP_BLOCK = 64
#: Groups per dense tile: the groups of one block are stacked this many at a time
#: and multiplied by the block's inverse in one batched product.
_TILE = 16


def _block_quadratics(
    fit: CrossedFit, row: IntArray, kr: IntArray, wc: FloatArray, n_rows: int
) -> FloatArray:
    """Per row, ``sum_B g_rB' S_B^-1 g_rB`` with ``g_rB = -sum_i wc_i z_i`` over its KRs in block B.

    All graders of a KR share one block, so each KR with grades belongs to exactly
    one group (row, block). A group's coefficients are a short vector over its
    block; small blocks multiply stacks of such vectors by the block inverse, large
    blocks sum ``g_j g_k S^-1_jk`` over the group's pairs of graders.
    """
    d = fit.data
    bl = d.blocks
    counts = np.bincount(d.pair_kr, minlength=d.n_kr)
    start = np.cumsum(counts) - counts
    nr = counts[kr]
    graded = nr > 0
    if not graded.any():
        return np.zeros(n_rows)
    # one entry per (KR of a row, grader of that KR)
    e_k = np.repeat(np.arange(kr.shape[0]), nr)
    pidx = start[kr][e_k] + (np.arange(e_k.shape[0]) - np.repeat(np.cumsum(nr) - nr, nr))
    e_gr = d.pair_gr[pidx]
    e_coef = -wc[e_k] * fit.state.pair_w[pidx]
    # groups (block, row), sorted by block; the block of a KR is that of its first grader
    n_comp = int(bl.component.max()) + 1
    k_comp = bl.component[d.pair_gr[start[kr[graded]]]]
    g_key, g_of_k = np.unique(k_comp * n_rows + row[graded], return_inverse=True)
    k_group = np.full(kr.shape[0], -1, dtype=np.int64)
    k_group[graded] = g_of_k.reshape(-1)
    e_group = k_group[e_k]
    g_comp = g_key // n_rows
    g_row = g_key % n_rows
    comp_bucket = np.zeros(n_comp, dtype=np.int64)
    comp_bucket[bl.component] = bl.grader_bucket
    comp_block = np.zeros(n_comp, dtype=np.int64)
    comp_block[bl.component] = bl.grader_block
    g_bucket = comp_bucket[g_comp]
    e_bucket = g_bucket[e_group]
    quad = np.zeros(g_key.shape[0])
    views = bl.views(fit.s_inv)
    for b, inv in enumerate(views):
        s = int(bl.bucket_size[b])
        gsel = np.flatnonzero(g_bucket == b)
        if gsel.size == 0:
            continue
        esel = np.flatnonzero(e_bucket == b)
        local = np.empty(g_key.shape[0], dtype=np.int64)
        local[gsel] = np.arange(gsel.shape[0])
        e_loc = local[e_group[esel]]
        e_pos = bl.grader_loc[e_gr[esel]]
        g_blk = comp_block[g_comp[gsel]]
        if s <= _DENSE_GROUP_BLOCK:
            quad[gsel] = _dense_groups(inv, g_blk, e_loc, e_pos, e_coef[esel], s)
        else:
            quad[gsel] = _paired_groups(inv, g_blk, e_loc, e_pos, e_coef[esel], s)
    return _wsum(g_row, quad, n_rows)


def _dense_groups(
    inv: FloatArray, g_blk: IntArray, e_loc: IntArray, e_pos: IntArray, e_coef: FloatArray, s: int
) -> FloatArray:
    """``g' S^-1 g`` per group of one bucket: groups (sorted by block) stacked in tiles."""
    n = g_blk.shape[0]
    new = np.ones(n, dtype=bool)
    new[1:] = g_blk[1:] != g_blk[:-1]
    run_start = np.flatnonzero(new)
    run_of = np.cumsum(new) - 1
    rank = np.arange(n) - run_start[run_of]
    run_len = np.diff(np.append(run_start, n))
    run_tiles = -(-run_len // _TILE)
    tile_off = np.cumsum(run_tiles) - run_tiles
    tile = tile_off[run_of] + rank // _TILE
    slot = tile * _TILE + rank % _TILE
    n_tiles = int(run_tiles.sum())
    tile_blk = np.repeat(g_blk[run_start], run_tiles)
    G = _wsum(slot[e_loc] * s + e_pos, e_coef, n_tiles * _TILE * s).reshape(n_tiles, _TILE, s)
    q = np.empty((n_tiles, _TILE))
    chunk = max(1, (1 << 21) // (s * s))  # about 16 MB of gathered inverses at a time
    for lo in range(0, n_tiles, chunk):
        Gt = G[lo : lo + chunk]
        q[lo : lo + chunk] = (np.matmul(Gt, inv[tile_blk[lo : lo + chunk]]) * Gt).sum(2)
    out: FloatArray = q.reshape(-1)[slot]
    return out


def _paired_groups(
    inv: FloatArray, g_blk: IntArray, e_loc: IntArray, e_pos: IntArray, e_coef: FloatArray, s: int
) -> FloatArray:
    """``g' S^-1 g`` per group of one bucket, summed over the group's pairs of graders."""
    n = g_blk.shape[0]
    key, inv_e = np.unique(e_loc * s + e_pos, return_inverse=True)
    coef = _wsum(inv_e.reshape(-1), e_coef, key.shape[0])
    grp, pos = key // s, key % s
    per = np.bincount(grp, minlength=n)
    reps = per[grp]
    a = np.repeat(np.arange(grp.shape[0]), reps)
    b = (np.cumsum(per) - per)[grp[a]] + (
        np.arange(a.shape[0]) - np.repeat(np.cumsum(reps) - reps, reps)
    )
    flat = inv.reshape(-1)
    val = flat[(g_blk[grp[a]] * s + pos[a]) * s + pos[b]]
    return _wsum(grp[a], coef[a] * coef[b] * val, n)


def _block_inverse(d: CrossedData, st: _State) -> FloatArray:
    bl = d.blocks
    buf = np.empty(bl.total)
    for b, inv in enumerate(st.inv_parts):
        s, n, off = int(bl.bucket_size[b]), int(bl.bucket_count[b]), int(bl.bucket_offset[b])
        buf[off : off + n * s * s] = inv.reshape(-1)
    return buf


def _coef_parts(
    coef: FloatArray,
    y: FloatArray,
    X: FloatArray,
    kr: IntArray,
    n_kr: int,
    pair_idx: IntArray,
    n_pairs: int,
    pair_gr: IntArray,
    pair_kr: IntArray,
    n_gr: int,
    trip_a: IntArray,
    trip_b: IntArray,
    trip_kr: IntArray,
    trip_flat: IntArray,
    ev_mask: npt.NDArray[np.bool_],
    total: int,
) -> dict[str, Any]:
    """The fields of :class:`CrossedData` that depend on the KR-effect coefficients."""
    pair_w = _wsum(pair_idx, coef, n_pairs)
    kr_w2 = _wsum(kr, coef * coef, n_kr)
    trip_w0 = pair_w[trip_a] * pair_w[trip_b]
    # classes of (kr_w2, evidence); unique over one float column, then small integers
    # (np.unique with axis=0 sorts rows and is several times slower)
    w2_vals, w2_code = np.unique(kr_w2, return_inverse=True)
    ckey = w2_code.reshape(-1).astype(np.int64) * 2 + ev_mask
    ukey, kr_class = np.unique(ckey, return_inverse=True)
    kr_class = kr_class.reshape(-1)
    ukeys = np.stack([w2_vals[ukey // 2], (ukey % 2).astype(np.float64)], 1)
    class_buf: FloatArray | None = None
    n_class = int(ukeys.shape[0])
    if n_class * total <= _CLASS_BUDGET:
        # one pass: each triple lands in its class's row of the buffer
        flat = kr_class[trip_kr].astype(np.int64) * total + trip_flat
        class_buf = _wsum(flat, trip_w0, n_class * total).reshape(n_class, total)
    return {
        "coef": coef,
        "pair_w": pair_w,
        "kr_w2": kr_w2,
        "A_g": _cols(kr, coef[:, None] * X, n_kr),
        "ry_g": _wsum(kr, coef * y, n_kr),
        "trip_w0": trip_w0,
        "Zw": scipy.sparse.csr_matrix((pair_w, (pair_gr, pair_kr)), shape=(n_gr, n_kr)),
        "class_w2": np.ascontiguousarray(ukeys[:, 0]),
        "class_ev": np.ascontiguousarray(ukeys[:, 1]),
        "class_buf": class_buf,
    }


def with_coef(d: CrossedData, coef: FloatArray) -> CrossedData:
    """The same data with new KR-effect coefficients (one per grade), structure reused."""
    cp = _coef_parts(
        coef,
        d.y,
        d.X,
        d.kr,
        d.n_kr,
        d.pair_idx,
        d.pair_kr.shape[0],
        d.pair_gr,
        d.pair_kr,
        d.n_gr,
        d.trip_pa,
        d.trip_pb,
        d.trip_kr,
        d.trip_flat,
        d.ev_mask,
        d.blocks.total,
    )
    return dataclasses.replace(d, **cp)


def with_design(d: CrossedData, X: FloatArray, Xe: FloatArray) -> CrossedData:
    """The same data with new fixed-effect columns (``X`` per grade, ``Xe`` per KR)."""
    ev = d.ev_mask
    return dataclasses.replace(
        d,
        p=X.shape[1],
        X=X,
        Xe=Xe,
        Hx=_cols(d.gr, X, d.n_gr),
        XtX=X.T @ X,
        Xty=X.T @ d.y,
        XetXe=Xe[ev].T @ Xe[ev],
        Xetz=Xe[ev].T @ d.ev_value[ev],
        A_g=_cols(d.kr, d.coef[:, None] * X, d.n_kr),
    )


def log_ratios(fit: CrossedFit) -> FloatArray:
    """The fitted variance ratios on the optimiser's log scale (to start a related fit)."""
    s2 = fit.var_resid
    ev = [math.log(fit.var_evidence / s2)] if fit.var_evidence else [0.0]
    return np.array([math.log(fit.var_kr / s2), math.log(fit.var_grader / s2), *ev])


def warm_start(inputs: CrossedInputs) -> FloatArray | None:
    """Where :func:`fit_crossed` starts on many grades: REML on every m-th KR (all of
    their grades and evidence), a deterministic subsample whose estimates start the
    full optimisation close to its optimum. None for up to ``_WARM_START_OVER`` grades,
    where the default start serves.

    It needs only the inputs, so a caller may run it while the full data are prepared.
    """
    y, kr, gr, n_kr, n_gr, X, ev_mask, ev_value, Xe, coef = inputs
    if y.shape[0] <= _WARM_START_OVER:
        return None
    m = math.ceil(y.shape[0] / (_WARM_START_OVER / 2))
    keep_kr = np.arange(n_kr) % m == 0
    g_sel = keep_kr[kr]
    kr_new = np.cumsum(keep_kr) - 1
    gr_used = np.zeros(n_gr, dtype=bool)
    gr_used[gr[g_sel]] = True
    gr_new = np.cumsum(gr_used) - 1
    sub = prepare_crossed(
        y[g_sel],
        kr_new[kr[g_sel]].astype(np.int64),
        gr_new[gr[g_sel]].astype(np.int64),
        int(keep_kr.sum()),
        int(gr_used.sum()),
        X[g_sel],
        None if ev_mask is None else ev_mask[keep_kr],
        None if ev_value is None else ev_value[keep_kr],
        None if Xe is None else Xe[keep_kr],
        None if coef is None else coef[g_sel],
    )
    return log_ratios(fit_crossed(sub, start=_start(), tol=1e-8))


def _start() -> FloatArray:
    """Starting log ratios: KR and evidence variances equal to the residual, grader a quarter."""
    return np.array([0.0, math.log(0.25), 0.0])


def fit_crossed(
    d: CrossedData,
    *,
    start: FloatArray | None = None,
    tol: float = 1e-10,
    optimise: bool = True,
) -> CrossedFit:
    """Minimise the profiled REML criterion and compute BLUPs with their error variances.

    With ``optimise=False`` the variance ratios stay at ``start`` (only the residual
    variance is re-estimated): the mixed-model solution at given ratios.
    """
    n_par = 3 if d.n_ev else 2
    if not optimise:
        if start is None:
            raise ValueError("optimise=False needs start")
        return _finish(d, np.asarray(start, dtype=np.float64), converged=True, iterations=0)
    if start is not None:
        x0 = np.asarray(start, dtype=np.float64)
    else:
        warm = warm_start(d.inputs())
        x0 = _start() if warm is None else warm

    nu = d.n_obs + d.n_ev - d.p
    last: list[_Solved] = []
    # L-BFGS-B's line search, near the optimum, returns to points it has evaluated
    # already: their values are remembered (exactly the same numbers, no solve)
    seen: dict[bytes, tuple[float, FloatArray]] = {}

    def f(x: FloatArray) -> tuple[float, FloatArray]:
        # per-observation deviance keeps gradients O(1) whatever the size of the data;
        # a failed evaluation is a large finite value so line searches back off
        full = np.concatenate([x, [0.0] * (3 - n_par)])
        key = full.tobytes()
        if key not in seen:
            try:
                seen[key] = _deviance_and_gradient(d, full, last)
            except np.linalg.LinAlgError:
                return 1e10, np.zeros(n_par)
        dev, grad = seen[key]
        return dev / nu, grad[:n_par] / nu

    def f_only(x: FloatArray) -> float:
        full = np.concatenate([x, [0.0] * (3 - n_par)])
        v = _evaluate(d, full)
        assert isinstance(v, float)
        return v / nu if math.isfinite(v) else 1e10

    bounds = [(-_LOG_BOUND, _LOG_BOUND)] * n_par
    res = scipy.optimize.minimize(
        f,
        x0[:n_par],
        jac=True,
        method="L-BFGS-B",
        bounds=bounds,
        options={"ftol": tol, "gtol": 1e-9, "maxiter": 200},
    )
    x = res.x
    nu = d.n_obs + d.n_ev - d.p
    # polish: L-BFGS-B with numerical gradients can stop a little short of the optimum
    res2 = (
        scipy.optimize.minimize(
            f_only,
            x,
            method="Nelder-Mead",
            options={"xatol": 1e-7, "fatol": 1e-11, "maxiter": 400, "initial_simplex": None},
        )
        if d.n_obs <= 20000
        else None
    )
    if res2 is not None and res2.fun < res.fun:
        x = np.clip(res2.x, -_LOG_BOUND, _LOG_BOUND)
    iterations = int(res.nit) + (int(res2.nit) if res2 is not None else 0)
    converged = bool(res.success) or (res2 is not None and bool(res2.success))
    return _finish(d, x, converged=converged, iterations=iterations, last=last)


def _finish(
    d: CrossedData,
    x: FloatArray,
    *,
    converged: bool,
    iterations: int,
    last: list[_Solved] | None = None,
) -> CrossedFit:
    """Solve at the log variance ratios ``x`` and collect estimates and error variances.

    ``last`` may hold the solution at ``x`` already (the optimiser's final point).
    """
    n_par = 3 if d.n_ev else 2
    full = np.concatenate([x, [0.0] * (3 - n_par)])
    if last and last[0][0] == full.tobytes():
        _, st, s_inv = last[0]
    else:
        solved = _evaluate(d, full, keep=True)
        assert isinstance(solved, _State)
        st, s_inv = solved, _block_inverse(d, solved)
    nu = d.n_obs + d.n_ev - d.p
    s2 = st.q / nu
    ta, tb = math.exp(full[0]), math.exp(full[1])
    td = math.exp(full[2]) if d.n_ev else None
    Tinv = _f64(np.linalg.inv(st.T))
    diag = s_inv[d.blocks.diag_flat]
    b_pev = (diag + np.einsum("ji,ik,jk->j", st.H, Tinv, st.H)) * s2
    # KR BLUPs from the absorbed equations
    zb = np.bincount(d.pair_kr, weights=st.pair_w * st.b[d.pair_gr], minlength=d.n_kr)
    a = (st.ry - st.A @ st.beta - zb) / st.c
    return CrossedFit(
        var_kr=ta * s2,
        var_grader=tb * s2,
        var_resid=s2,
        var_evidence=None if td is None else td * s2,
        beta=st.beta,
        beta_cov=Tinv * s2,
        a=a,
        b=st.b,
        b_pev=b_pev,
        b_beta_cov=-(st.H @ Tinv) * s2,
        deviance=st.deviance,
        converged=converged,
        iterations=iterations,
        component=d.blocks.component,
        data=d,
        state=st,
        s_inv=s_inv,
    )


def fit_fixed(d: CrossedData) -> CrossedFit:
    """Two-way fixed effects by least squares: the limit of no shrinkage.

    KR effects are free; grader effects are measured against the evidence
    (an observation with grader effect 0) or, in a part of the grading graph with
    no evidence, sum to zero. Standard errors from the residual mean square.
    """
    st = _evaluate_inv(d, 0.0, 0.0, 1.0, keep=True)
    assert isinstance(st, _State)
    n_cons_comp = int((~d.comp_has_ev).sum())
    rank = d.n_kr + d.p + d.n_gr - n_cons_comp
    df = d.n_obs + d.n_ev - rank
    # no residual degrees of freedom, or grades the model fits exactly: the residual
    # variance (and every standard error) cannot be estimated
    exact = st.q <= 1e-20 * max(d.yty + d.ztz, 1e-300)
    s2 = st.q / df if df > 0 and not exact else math.nan
    s_inv = _block_inverse(d, st)
    # (L + 11')^-1 = L^+ + 11'/n^2 on each constrained part: remove the added term
    s_inv[d.cons_flat] -= 1.0 / (d.cons_n * d.cons_n)
    return _kr_fixed_fit(d, st, s_inv, s2, var_grader=math.nan, var_evidence=None)


def fit_within(
    d: CrossedData, var_grader: float, var_resid: float, var_evidence: float | None
) -> CrossedFit:
    """Grader effects measured within KRs: KR effects free, grader effects shrunk.

    The mixed-model solution with a flat prior on the KR effects (precision 0) and
    the grader effects and evidence at the given variances (typically REML's).
    Only contrasts inside a KR (a grade against the evidence or another grader's
    grade) inform a grader's effect, so KRs that truly differ between teams are not
    read as leniency. The KR effects absorb the intercept: ``d`` must not carry one.
    """
    td = var_evidence / var_resid if d.n_ev and var_evidence else 1.0
    st = _evaluate_inv(d, 0.0, var_resid / var_grader, td, keep=True)
    assert isinstance(st, _State)
    s_inv = _block_inverse(d, st)
    return _kr_fixed_fit(d, st, s_inv, var_resid, var_grader=var_grader, var_evidence=var_evidence)


def _kr_fixed_fit(
    d: CrossedData,
    st: _State,
    s_inv: FloatArray,
    s2: float,
    *,
    var_grader: float,
    var_evidence: float | None,
) -> CrossedFit:
    """Collect a solution whose KR effects are free (unpenalised) as a fit."""
    Tinv = _f64(np.linalg.inv(st.T)) if d.p else np.zeros((0, 0))
    diag = s_inv[d.blocks.diag_flat]
    b_pev = (diag + np.einsum("ji,ik,jk->j", st.H, Tinv, st.H)) * s2
    zb = np.bincount(d.pair_kr, weights=st.pair_w * st.b[d.pair_gr], minlength=d.n_kr)
    a = (st.ry - st.A @ st.beta - zb) / st.c
    return CrossedFit(
        var_kr=math.nan,
        var_grader=var_grader,
        var_resid=s2,
        var_evidence=var_evidence,
        beta=st.beta,
        beta_cov=Tinv * s2,
        a=a,
        b=st.b,
        b_pev=b_pev,
        b_beta_cov=-(st.H @ Tinv) * s2,
        deviance=math.nan,
        converged=True,
        iterations=0,
        component=d.blocks.component,
        data=d,
        state=st,
        s_inv=s_inv,
    )


def _pair_quadratics(fit: CrossedFit) -> tuple[FloatArray, FloatArray]:
    """Per KR ``Q_i = w_i' Sinv w_i`` and per pair ``R_a = (Sinv w_i)_j`` over each KR's graders."""
    d = fit.data
    sv = fit.s_inv[d.trip_flat]
    pw = fit.state.pair_w
    q = _wsum(d.trip_kr, d.trip_w0 * sv, d.n_kr)
    r = _wsum(d.trip_pa, pw[d.trip_pb] * sv, d.pair_kr.shape[0])
    return q, r


def kr_variance(fit: CrossedFit) -> FloatArray:
    """Prediction-error variance of ``beta_0 + a_i`` for every KR (``a_i`` alone if p = 0).

    With ``E_i = e_0 - A_i / c_i + (Z'H)_i / c_i``, the variance is
    ``E' T^-1 E + Q_i / c_i^2 + 1 / c_i``, times the residual variance.
    """
    d, st = fit.data, fit.state
    c = st.c
    q, _ = _pair_quadratics(fit)
    out = q / (c * c) + 1.0 / c
    if d.p:
        HZ = np.asarray(d.Zw.T @ st.H)
        E = (HZ - st.A) / c[:, None]
        E[:, 0] += 1.0
        Tinv = _f64(np.linalg.inv(st.T))
        out = out + ((E @ Tinv) * E).sum(1)
    result: FloatArray = out * fit.var_resid
    return result


def grade_fit_variance(fit: CrossedFit) -> FloatArray:
    """Prediction-error variance of each grade's fitted value ``x'beta + s a_i + b_j``.

    The residual of grade k has variance ``sigma_e^2`` minus this (Henderson), which
    standardises residuals for infit, outfit and unexpected grades.
    """
    d, st = fit.data, fit.state
    c = st.c[d.kr]
    s = d.coef
    q, r = _pair_quadratics(fit)
    sc, s2 = s / c, s * s
    sinv_jj = fit.s_inv[d.blocks.diag_flat][d.gr]
    out = sinv_jj - 2.0 * sc * r[d.pair_idx] + s2 * q[d.kr] / (c * c) + s2 / c
    if d.p:
        HZ = np.asarray(d.Zw.T @ st.H)
        E = d.X - st.H[d.gr] + sc[:, None] * (HZ - st.A)[d.kr]
        Tinv = _f64(np.linalg.inv(st.T))
        out = out + ((E @ Tinv) * E).sum(1)
    result: FloatArray = out * fit.var_resid
    return result
