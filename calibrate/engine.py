"""Fitting: turn a model spec and a grade table into a :class:`CalibrationFit`.

Leniency is measured against the evidence where a grader's KRs carry evidence
(the anchors define what a grade should be), and against the average grader
where they are linked to other graders only. A part of the grading graph that
no evidence reaches is compared within itself: its graders' leniencies are
measured against the average grader, whose level there is set by those graders
alone (``GraderEffect.compared_with`` says which). A grader who shares no KR with
anyone and has no evidence is reported as not comparable: no number is made up.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import scipy.sparse
import scipy.sparse.csgraph
import scipy.special
from threadpoolctl import threadpool_limits

from calibrate.errors import BlockTooLargeError, ModelError
from calibrate.models import (
    AdditiveModel,
    AffineModel,
    FixedModel,
    HeldVariance,
    MeanModel,
    Model,
    ZScoreModel,
)
from calibrate.reml import (
    MAX_BLOCK,
    CrossedData,
    CrossedFit,
    CrossedInputs,
    _wsum,
    contrast_var_multi,
    fit_crossed,
    fit_fixed,
    fit_within,
    grade_fit_variance,
    kr_variance,
    log_ratios,
    prepare_crossed,
    warm_start,
    with_coef,
    with_design,
)
from calibrate.results import (
    MODEL_VERSION,
    CalibrationFit,
    ComparedWith,
    Component,
    GraderEffect,
    GraderFlag,
    KRColumns,
    OwnerAchievement,
    UnexpectedGrade,
    VarianceComponents,
    _nullable,
)
from calibrate.scoring import group_variance, mixture_effects, score_krs
from calibrate.table import GradeTable

__all__ = ["benjamini_hochberg", "fit_columns", "fit_model"]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

UNEXPECTED_Z = 3.0
_NOT_LINKED = (
    "not comparable: this grader's KRs have no evidence and share no KR with another grader"
)


def benjamini_hochberg(p: FloatArray) -> FloatArray:
    """Benjamini–Hochberg q-values (step-up, monotone), same order as ``p``.

    >>> benjamini_hochberg(np.array([0.01, 0.04, 0.03])).round(3).tolist()
    [0.03, 0.04, 0.04]
    """
    n = p.shape[0]
    if n == 0:
        return p.copy()
    order = np.argsort(p, kind="stable")
    ranked = p[order] * n / np.arange(1, n + 1)
    q_sorted = np.minimum.accumulate(ranked[::-1])[::-1]
    q = np.empty(n)
    q[order] = np.minimum(q_sorted, 1.0)
    return q


@dataclass(frozen=True)
class _Graph:
    """Connectivity of graders, KRs and the evidence, and each grader's linking grades."""

    grader_comp: IntArray
    kr_comp: IntArray
    components: tuple[Component, ...]
    grader_linked: BoolArray  # in the reference component
    # in the reference, or in another part with at least two graders to compare
    grader_comparable: BoolArray
    n_linking: IntArray  # per grader
    owner_names: list[str]  # sorted
    owner_kr: IntArray  # every KR that has an owner
    owner_row: IntArray  # per owner_kr: its owner's position in owner_names


def _graph(t: GradeTable, use: BoolArray | None = None) -> _Graph:
    n_gr, n_kr = t.n_graders, t.n_krs
    ev = t.has_evidence
    ev_node = n_gr + n_kr
    g_idx = t.grader_index if use is None else t.grader_index[use]
    k_idx = t.kr_index if use is None else t.kr_index[use]
    rows = np.concatenate([g_idx, n_gr + np.flatnonzero(ev)])
    cols = np.concatenate([n_gr + k_idx, np.full(int(ev.sum()), ev_node)])
    adj = scipy.sparse.coo_matrix(
        (np.ones(rows.shape[0]), (rows, cols)), shape=(ev_node + 1, ev_node + 1)
    )
    _, lab = scipy.sparse.csgraph.connected_components(adj, directed=False)
    g_comp_raw, k_comp_raw = lab[:n_gr], lab[n_gr:ev_node]
    # renumber components by first appearance over graders (deterministic)
    uniq, first = np.unique(g_comp_raw, return_index=True)
    order = uniq[np.argsort(first)]
    remap = np.full(int(lab.max()) + 1, -1, dtype=np.int64)
    remap[order] = np.arange(order.shape[0])
    g_comp = remap[g_comp_raw]
    k_comp = remap[k_comp_raw]
    n_comp = len(order)
    n_g = np.bincount(g_comp, minlength=n_comp)
    n_k = np.bincount(k_comp, minlength=n_comp)
    n_e = np.bincount(k_comp[ev], minlength=n_comp)
    if ev.any():
        ref = int(k_comp[np.flatnonzero(ev)[0]])
    else:
        grades_per_comp = np.bincount(g_comp[g_idx], minlength=n_comp)
        ref = int(np.lexsort((-grades_per_comp, -n_g))[0])
        if n_g[ref] < 2:
            ref = -1  # nothing to compare with: no evidence and no shared KRs
    comps = tuple(
        Component(
            id=c,
            n_graders=int(n_g[c]),
            n_krs=int(n_k[c]),
            n_evidence=int(n_e[c]),
            is_reference=c == ref,
        )
        for c in range(n_comp)
    )
    graders_per_kr = np.bincount(k_idx, minlength=n_kr)
    linking_grade = (graders_per_kr[k_idx] >= 2) | ev[k_idx]
    n_linking = np.bincount(g_idx, weights=linking_grade, minlength=n_gr).astype(np.int64)
    owner_names, owner_kr, owner_row = _owner_rows(t)
    return _Graph(
        grader_comp=g_comp,
        kr_comp=k_comp,
        components=comps,
        grader_linked=g_comp == ref,
        grader_comparable=(g_comp == ref) | (n_g[g_comp] >= 2),
        n_linking=n_linking,
        owner_names=owner_names,
        owner_kr=owner_kr,
        owner_row=owner_row,
    )


def _z_crit(confidence: float) -> float:
    return float(scipy.special.ndtri(0.5 + confidence / 2.0))


def _opt(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def _raw_means(t: GradeTable) -> tuple[FloatArray, IntArray]:
    n = np.bincount(t.kr_index, minlength=t.n_krs)
    return np.bincount(t.kr_index, weights=t.grade, minlength=t.n_krs) / n, n.astype(np.int64)


@dataclass(frozen=True)
class _Estimates:
    """What a model produces before it is dressed as results (input-scale units)."""

    leniency: FloatArray  # NaN where not estimable
    leniency_se: FloatArray
    z: FloatArray  # test statistic for leniency != 0
    kr_value: FloatArray
    kr_se: FloatArray
    owner_value: dict[str, tuple[float, float]]  # owner -> (estimate, se)
    variance: VarianceComponents
    scale: FloatArray | None = None
    scale_se: FloatArray | None = None
    scale_z: FloatArray | None = None
    resid: FloatArray | None = None  # per grade
    resid_var: FloatArray | None = None  # per grade, variance of the residual
    converged: bool = True
    iterations: int = 0
    kr_reason: str | None = None
    warnings: tuple[str, ...] = ()
    kr_crit: FloatArray | None = None  # per KR interval quantile; None: the normal one


def fit_model(model: Model, t: GradeTable) -> CalibrationFit:
    """Fit ``model`` to ``t``. See the model classes for what each one assumes.

    BLAS runs single-threaded inside a fit: the work is many small operations, where
    threads cost more than they give, and one thread makes every result bit-for-bit
    reproducible.
    """
    return _fit_guarded(model, t, kr_rows=True)[0]


def fit_columns(model: Model, t: GradeTable) -> tuple[CalibrationFit, KRColumns]:
    """Fit ``model`` to ``t``, with the per-KR results as columns instead of rows.

    The fit's ``krs`` is empty, as in a stored overview; :meth:`KRColumns.rows` gives
    what :func:`fit_model` puts there. For readers of every KR at once, such as the CSV
    writer of ``okrcal calibrate``: a row object per KR costs more than the columns.
    """
    return _fit_guarded(model, t, kr_rows=False)


def _fit_guarded(model: Model, t: GradeTable, *, kr_rows: bool) -> tuple[CalibrationFit, KRColumns]:
    with threadpool_limits(limits=1, user_api="blas"):
        try:
            return _fit_model(model, t, kr_rows=kr_rows)
        except np.linalg.LinAlgError as exc:
            # a design the model cannot solve is the caller's data, not a crash
            raise ModelError(
                f"the {_model_name(model)} model cannot be solved for these grades: {exc}"
            ) from exc


def _fit_model(model: Model, t: GradeTable, *, kr_rows: bool) -> tuple[CalibrationFit, KRColumns]:
    baseline = isinstance(model, MeanModel | ZScoreModel)
    use, note = (None, None) if baseline else _model_use(t)
    # Independent parts of the fit run on other threads: the graph's components and
    # REML's starting point while the design is prepared, the residual diagnostics while
    # the KR grades are computed. They are mostly numpy calls that release the GIL, so on
    # a machine with two cores they overlap; the results are the same whatever the timing.
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="okrcal-fit") as side:
        graph = side.submit(_graph, t, use)
        match model:
            case MeanModel():
                est = _fit_mean(t, standardise=False)
            case ZScoreModel():
                est = _fit_mean(t, standardise=True)
            case FixedModel():
                est = _fit_mixed(t, graph, use, side, fixed=True)
            case AdditiveModel():
                est = _fit_mixed(
                    t,
                    graph,
                    use,
                    side,
                    fixed=False,
                    held=model.hold_variance,
                    confidence=model.confidence,
                )
            case AffineModel():
                est = _fit_affine(t, graph.result(), use, model)
        if note is not None:
            est = dataclasses.replace(est, warnings=(*est.warnings, note))
        return _assemble(model, t, graph.result(), est, kr_rows=kr_rows)


# --------------------------------------------------------------------------- baselines


def _fit_mean(t: GradeTable, *, standardise: bool) -> _Estimates:
    y = t.grade
    gi = t.grader_index
    m = np.bincount(gi, minlength=t.n_graders).astype(np.float64)
    g_mean = np.bincount(gi, weights=y, minlength=t.n_graders) / m
    g_var = np.bincount(gi, weights=(y - g_mean[gi]) ** 2, minlength=t.n_graders) / np.maximum(
        m - 1, 1
    )
    g_sd = np.sqrt(g_var)
    grand_mean = float(y.mean())
    grand_sd = float(y.std(ddof=1)) if y.shape[0] > 1 else math.nan
    scale = scale_se = None
    warnings: list[str] = []
    if standardise:
        ok = (m >= 2) & (g_sd > 0) & math.isfinite(grand_sd)
        z = np.where(ok[gi], (y - g_mean[gi]) / np.where(ok, g_sd, 1.0)[gi], 0.0)
        adj = np.where(ok[gi], grand_mean + grand_sd * z, y)
        if not ok.all():
            warnings.append(
                f"{int((~ok).sum())} grader(s) with fewer than 2 grades or no spread were not "
                "standardised (their grades are used as given)"
            )
        with np.errstate(invalid="ignore", divide="ignore"):
            scale = np.where(ok, g_sd / grand_sd, np.nan)
            scale_se = np.where(ok, scale / np.sqrt(2 * np.maximum(m - 1, 1)), np.nan)
    else:
        adj = y
    n = np.bincount(t.kr_index, minlength=t.n_krs).astype(np.float64)
    kr_value = np.bincount(t.kr_index, weights=adj, minlength=t.n_krs) / n
    resid = adj - kr_value[t.kr_index]
    multi = n >= 2
    df = float((n[multi] - 1).sum())
    if df > 0:
        s2 = float((resid[multi[t.kr_index]] ** 2).sum()) / df
        kr_se = np.sqrt(s2 / n)
        reason = None
    else:
        s2 = math.nan
        kr_se = np.full(t.n_krs, np.nan)
        reason = "no KR has two grades, so the spread of grades cannot be estimated"
    len_ = g_mean - grand_mean
    se = g_sd / np.sqrt(m)
    with np.errstate(invalid="ignore", divide="ignore"):
        zstat = np.where((m >= 2) & (se > 0), len_ / se, np.nan)
    return _Estimates(
        leniency=np.where(m >= 2, len_, np.nan),
        leniency_se=np.where(m >= 2, se, np.nan),
        z=zstat,
        kr_value=kr_value,
        kr_se=kr_se,
        owner_value=_owner_simple(t, kr_value, kr_se),
        variance=VarianceComponents(
            method="none (raw grades)" if not standardise else "none (per-grader z-scores)",
            kr=None,
            grader=None,
            residual=_opt(s2),
            evidence=None,
            grader_share=None,
            reason="the baseline models do not separate variance components",
        ),
        scale=scale,
        scale_se=scale_se,
        scale_z=None,
        kr_reason=reason,
        warnings=tuple(warnings),
    )


def _owner_simple(
    t: GradeTable, value: FloatArray, se: FloatArray
) -> dict[str, tuple[float, float]]:
    """Owner means treating KR errors as independent (baselines only)."""
    out: dict[str, tuple[float, float]] = {}
    groups: dict[str, list[int]] = {}
    for i, o in enumerate(t.kr_owner):
        if o is not None:
            groups.setdefault(o, []).append(i)
    for o, idx in groups.items():
        ix = np.array(idx)
        w = t.kr_weight[ix]
        if w.sum() <= 0:
            out[o] = (math.nan, math.nan)
            continue
        wn = w / w.sum()
        v = _clip(value[ix], t)
        out[o] = (float(wn @ v), float(np.sqrt(wn**2 @ se[ix] ** 2)))
    return out


def _clip(v: FloatArray, t: GradeTable) -> FloatArray:
    return np.clip(v, t.scale.low, t.scale.high)


# --------------------------------------------------------------------------- mixed models


def _design_args(
    t: GradeTable, coef: FloatArray | None = None, use: BoolArray | None = None
) -> tuple[CrossedInputs, bool]:
    """The arguments of :func:`calibrate.reml.prepare_crossed`: an intercept, and with
    evidence a grade indicator (its coefficient is the mean leniency).

    ``use`` selects the grades the model sees (all by default).
    """
    ev = t.has_evidence
    with_ev = bool(ev.any())
    sel = np.ones(t.n_grades, dtype=bool) if use is None else use
    n = int(sel.sum())
    if with_ev:
        X = np.ones((n, 2))
        Xe = np.tile(np.array([1.0, 0.0]), (t.n_krs, 1))
    else:
        X = np.ones((n, 1))
        Xe = np.ones((t.n_krs, 1))
    args = CrossedInputs(
        t.grade[sel],
        t.kr_index[sel],
        t.grader_index[sel],
        t.n_krs,
        t.n_graders,
        X,
        ev,
        np.where(ev, t.evidence, 0.0),
        Xe,
        coef,
    )
    return args, with_ev


def _design(
    t: GradeTable, coef: FloatArray | None = None, use: BoolArray | None = None
) -> tuple[CrossedData, bool]:
    """The prepared design of :func:`_design_args`."""
    args, with_ev = _design_args(t, coef, use)
    return prepare_crossed(*args), with_ev


def _fixed_design(t: GradeTable, use: BoolArray | None = None) -> CrossedData:
    ev = t.has_evidence
    sel = np.ones(t.n_grades, dtype=bool) if use is None else use
    return prepare_crossed(
        t.grade[sel],
        t.kr_index[sel],
        t.grader_index[sel],
        t.n_krs,
        t.n_graders,
        np.zeros((int(sel.sum()), 0)),
        ev,
        np.where(ev, t.evidence, 0.0),
        np.zeros((t.n_krs, 0)),
    )


def _deregressed_z(
    len_hat: FloatArray, b_hat: FloatArray, b_pev: FloatArray, var_b: float, gamma_var: float
) -> FloatArray:
    """Test statistic for leniency != 0 from a shrunk estimate.

    A BLUP is the grader's own estimate times a reliability ``lam = 1 - PEV/var_b``;
    dividing by ``lam`` undoes the shrinkage, and ``PEV/lam`` is the sampling variance
    of the unshrunk estimate, so the statistic is calibrated under leniency = 0.
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        lam = 1.0 - b_pev / var_b if var_b > 0 else np.zeros_like(b_pev)
        informative = lam > 1e-4
        unshrunk = np.where(informative, (len_hat - b_hat) + b_hat / lam, len_hat - b_hat)
        var = np.where(informative, b_pev / lam, 0.0) + gamma_var
        z = np.where(var > 0, unshrunk / np.sqrt(var), 0.0)
    out: FloatArray = z
    return out


def _fit_mixed(
    t: GradeTable,
    graph: Future[_Graph],
    use: BoolArray | None,
    side: ThreadPoolExecutor,
    *,
    fixed: bool,
    held: HeldVariance | None = None,
    confidence: float = 0.90,
) -> _Estimates:
    if not _identifiable(t):
        return _unidentified(t)
    if fixed:
        d = _fixed_design(t, use)
        fit = fit_fixed(d)
        with_ev = bool(t.has_evidence.any())
        return _mixed_estimates(t, graph.result(), fit, use, with_ev=with_ev, fixed=True)
    args, with_ev = _design_args(t, use=use)
    # REML's start (a fit to a subsample) needs only the inputs: found while they are prepared
    warm = side.submit(warm_start, args) if held is None else None
    d = prepare_crossed(*args)
    fit = _reml_or_held(d, held, None if warm is None else warm.result())
    g = graph.result()
    # the KR grades, their errors and the owners' achievements come from _within_scores;
    # the residual diagnostics, meanwhile, from _mixed_estimates
    diagnostics = side.submit(
        _mixed_estimates, t, g, fit, use, with_ev=with_ev, fixed=False, kr_grades=False
    )
    return _within_scores(t, g, diagnostics, fit, confidence)


def _within_scores(
    t: GradeTable,
    graph: _Graph,
    est: Future[_Estimates],
    fit: CrossedFit,
    confidence: float,
) -> _Estimates:
    """The additive model's leniencies and KR grades, measured within KRs, in place of
    those of ``est`` (:func:`_mixed_estimates`, which may still be running).

    The REML fit gives the variance components and the residual diagnostics. The
    grader effects are then solved again with a flat prior on the KR effects
    (:func:`calibrate.reml.fit_within`): a grader's leniency comes from the
    contrasts inside KRs only, against the evidence or other graders, so teams whose
    KRs truly differ are not read as lenient or severe managers. The KR grades,
    their intervals and the owners' achievements come from
    :func:`calibrate.scoring.score_krs` (see there for why).
    """
    d = fit.data
    # the KR effects absorb the intercept; what is left is the grade-vs-evidence column
    within = fit_within(
        with_design(d, d.X[:, 1:], d.Xe[:, 1:]), fit.var_grader, fit.var_resid, fit.var_evidence
    )
    col = 0 if within.data.p else None
    # the test statistic undoes the shrinkage, so it does not depend on the prior
    _, _, z = _leniency(within, col, fixed=False)
    b_post, b_post_var, _ = mixture_effects(within.b, within.b_pev, within.var_grader)
    posterior = dataclasses.replace(within, b=b_post, b_pev=b_post_var)
    len_hat, len_var, _ = _leniency(posterior, col, fixed=False)
    scores = score_krs(within, len_hat, len_var, fit.var_resid, fit.var_evidence, confidence)
    own = None
    if col is not None:
        own_hat, own_var, _ = _leniency(posterior, None, fixed=False)
        own = (own_hat, own_var, _leniency(within, None, fixed=False)[2])
    leniency, leniency_se, z = _comparable_only(graph, (len_hat, len_var, z), own)

    def owner_var(row: IntArray, kr: IntArray, w: FloatArray, n_rows: int) -> FloatArray:
        return group_variance(scores, within, row, kr, w, n_rows)

    owners = _owner_mixed(t, graph, scores.value, owner_var)
    return dataclasses.replace(
        est.result(),
        leniency=leniency,
        leniency_se=leniency_se,
        z=z,
        kr_value=scores.value,
        kr_se=scores.se,
        kr_crit=scores.crit,
        owner_value=owners,
    )


def _reml_or_held(
    d: CrossedData, held: HeldVariance | None, start: FloatArray | None = None
) -> CrossedFit:
    """REML, or the mixed-model solution at held variance ratios."""
    if held is None:
        return fit_crossed(d, start=start)
    ev = held.evidence if held.evidence is not None else held.residual
    x = np.log(np.array([held.kr, held.grader, ev]) / held.residual)
    return fit_crossed(d, start=x, optimise=False)


def _model_use(t: GradeTable) -> tuple[BoolArray | None, str | None]:
    """Which grades the mixed models use, and why some are set aside.

    The exact path factorises each connected group of graders (graders joined by
    KRs they graded together) as a dense block. When more than ``MAX_BLOCK``
    graders form one group, the second grades of the KRs that join graders who
    rarely grade together are set aside (each such KR keeps its first grade), raising
    the threshold of "rarely" until every group fits. Everything else stays exact.
    """
    if _largest_group(t, None) <= MAX_BLOCK:
        return None, None
    kr, gr = t.kr_index, t.grader_index
    n_gr = t.n_graders
    per_kr = np.bincount(kr, minlength=t.n_krs)
    start = np.concatenate([[0], np.cumsum(per_kr)[:-1]])
    reps = per_kr[kr]
    a = np.repeat(np.arange(kr.shape[0]), reps)
    b = start[kr[a]] + (np.arange(a.shape[0]) - np.repeat(np.cumsum(reps) - reps, reps))
    keep = gr[a] < gr[b]
    a, b = a[keep], b[keep]
    pair_key = gr[a].astype(np.int64) * n_gr + gr[b]
    _, inv, counts = np.unique(pair_key, return_inverse=True, return_counts=True)
    weight = counts[inv]
    kr_min = np.full(t.n_krs, np.iinfo(np.int64).max)
    np.minimum.at(kr_min, kr[a], weight)
    first = np.zeros(kr.shape[0], dtype=bool)
    first[start[per_kr > 0]] = True
    for threshold in range(1, 9):
        weak = kr_min <= threshold
        use = ~weak[kr] | first
        if _largest_group(t, use) <= MAX_BLOCK:
            n_out = int((~use).sum())
            return use, (
                f"{n_out} grade(s) ({100.0 * n_out / t.n_grades:.1f}%) were set aside: they are "
                f"second grades of KRs that join graders who share at most {threshold} KR(s), "
                f"and without them every connected group of graders has at most {MAX_BLOCK} "
                "(the limit of the exact mixed-model path)"
            )
    raise BlockTooLargeError(
        f"more than {MAX_BLOCK} graders stay joined by KRs they grade together, even after "
        "setting aside the links of graders who share up to 8 KRs: calibrate organisation "
        "units separately, or use the mean or zscore baseline"
    )


def _largest_group(t: GradeTable, use: BoolArray | None) -> int:
    """Size of the largest group of graders joined by KRs they graded together."""
    kr = t.kr_index if use is None else t.kr_index[use]
    gr = t.grader_index if use is None else t.grader_index[use]
    n = t.n_graders + t.n_krs
    adj = scipy.sparse.coo_matrix((np.ones(kr.shape[0]), (gr, t.n_graders + kr)), shape=(n, n))
    _, lab = scipy.sparse.csgraph.connected_components(adj, directed=False)
    return int(np.bincount(lab[: t.n_graders]).max()) if t.n_graders else 0


def _identifiable(t: GradeTable) -> bool:
    obs = np.bincount(t.kr_index, minlength=t.n_krs) + t.has_evidence
    return bool((obs >= 2).any())


def _unidentified(t: GradeTable) -> _Estimates:
    nan_g = np.full(t.n_graders, np.nan)
    nan_k = np.full(t.n_krs, np.nan)
    reason = (
        "nothing links grades: no KR has evidence or a second grade, so grader "
        "leniency cannot be told apart from KR achievement"
    )
    return _Estimates(
        leniency=nan_g,
        leniency_se=nan_g,
        z=nan_g,
        kr_value=nan_k,
        kr_se=nan_k,
        owner_value={},
        variance=VarianceComponents(
            method="REML",
            kr=None,
            grader=None,
            residual=None,
            evidence=None,
            grader_share=None,
            reason=reason,
        ),
        kr_reason=reason,
        warnings=(reason,),
    )


def _mixed_estimates(
    t: GradeTable,
    graph: _Graph,
    fit: CrossedFit,
    use: BoolArray | None,
    *,
    with_ev: bool,
    fixed: bool,
    kr_grades: bool = True,
) -> _Estimates:
    """Estimates from a mixed-model fit; without ``kr_grades`` the KR grades' errors
    (NaN) and the owners' achievements (none) are left to the caller."""
    d = fit.data
    p = d.p
    col = None if fixed or not with_ev else 1
    own = None if col is None else _leniency(fit, None, fixed=fixed)
    leniency, leniency_se, z = _comparable_only(graph, _leniency(fit, col, fixed=fixed), own)

    # Calibrated KR grade: intercept + KR effect (what a grader with no leniency would give).
    mu = float(fit.beta[0]) if p else 0.0
    kr_value = mu + fit.a
    owners: dict[str, tuple[float, float]] = {}
    if kr_grades:
        kr_se = np.sqrt(np.maximum(kr_variance(fit), 0.0))

        def owner_var(row: IntArray, kr: IntArray, w: FloatArray, n_rows: int) -> FloatArray:
            return contrast_var_multi(fit, row, kr, w, n_rows)

        owners = _owner_mixed(t, graph, kr_value, owner_var)
    else:
        kr_se = np.full(d.n_kr, np.nan)

    # Residuals and their variances for infit/outfit and unexpected grades.
    coef = d.coef
    fitted = d.X @ fit.beta + coef * fit.a[d.kr] + fit.b[d.gr]
    rv = fit.var_resid - grade_fit_variance(fit)
    # per grade of the table; grades set aside (see _model_use) have no residual
    resid = np.full(t.n_grades, np.nan)
    resid_var = np.full(t.n_grades, np.nan)
    sel = slice(None) if use is None else use
    resid[sel] = d.y - fitted
    resid_var[sel] = np.maximum(rv, 1e-12 * fit.var_resid)

    if fixed:
        variance = VarianceComponents(
            method="least squares (fixed effects)",
            kr=None,
            grader=None,
            residual=_opt(fit.var_resid),
            evidence=None,
            grader_share=None,
            reason="fixed effects do not estimate KR and grader variances",
        )
    else:
        total = fit.var_kr + fit.var_grader + fit.var_resid
        variance = VarianceComponents(
            method="REML",
            kr=fit.var_kr,
            grader=fit.var_grader,
            residual=fit.var_resid,
            evidence=fit.var_evidence,
            grader_share=fit.var_grader / total if total > 0 else None,
        )
    warnings = []
    if not fit.converged:
        warnings.append("the REML optimiser did not report convergence; estimates may be rough")
    kr_reason = None
    if not math.isfinite(fit.var_resid):
        kr_reason = (
            "no residual degrees of freedom, or the grades fit the model exactly: "
            "standard errors cannot be estimated"
        )
        warnings.append(kr_reason)
    return _Estimates(
        leniency=leniency,
        leniency_se=leniency_se,
        z=z,
        kr_value=kr_value,
        kr_se=kr_se,
        owner_value=owners,
        variance=variance,
        resid=resid,
        resid_var=resid_var,
        converged=fit.converged,
        iterations=fit.iterations,
        kr_reason=kr_reason,
        warnings=tuple(warnings),
    )


def _owner_rows(t: GradeTable) -> tuple[list[str], IntArray, IntArray]:
    """Owners in sorted order; every KR that has an owner, and its owner's position."""
    names, code = t.owner_coding
    kr_rows = np.flatnonzero(code >= 0)
    return list(names), kr_rows, code[kr_rows]


def _leniency(
    fit: CrossedFit, col: int | None, *, fixed: bool
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Leniency of every grader, its error variance and its test statistic.

    Leniency of grader j is ``gamma + b_j`` with ``gamma = beta[col]`` the mean
    leniency against the evidence, or ``b_j`` alone when ``col`` is None.
    """
    if col is None:
        gamma_var = 0.0
        len_hat = fit.b.copy()
        len_var = fit.b_pev.copy()
    else:
        gamma_var = float(fit.beta_cov[col, col])
        len_hat = float(fit.beta[col]) + fit.b
        len_var = gamma_var + fit.b_pev + 2.0 * fit.b_beta_cov[:, col]
    len_var = np.maximum(len_var, 0.0)
    if fixed:
        with np.errstate(invalid="ignore", divide="ignore"):
            z = np.where(len_var > 0, len_hat / np.sqrt(len_var), 0.0)
    else:
        z = _deregressed_z(len_hat, fit.b, fit.b_pev, fit.var_grader, gamma_var)
    return len_hat, len_var, z


_Triple = tuple[FloatArray, FloatArray, FloatArray]


def _comparable_only(graph: _Graph, ref: _Triple, own: _Triple | None) -> _Triple:
    """Leniency, standard error and statistic per grader, from (estimate, variance, z).

    In the reference part ``ref`` applies (against the evidence where there is some).
    In a part no evidence reaches, ``own`` does: the grader effect alone, against the
    average grader, whose level there only that part's graders set (``None``: the
    same as ``ref``, as when nothing has evidence). NaN for a grader with nobody to
    be compared with.
    """
    own = ref if own is None else own
    linked, comparable = graph.grader_linked, graph.grader_comparable
    est, var, z = (
        np.where(linked, r, np.where(comparable, o, np.nan)) for r, o in zip(ref, own, strict=True)
    )
    return est, np.sqrt(var), z


def _owner_mixed(
    t: GradeTable,
    graph: _Graph,
    kr_value: FloatArray,
    variance: Callable[[IntArray, IntArray, FloatArray, int], FloatArray],
) -> dict[str, tuple[float, float]]:
    """Owner achievement; ``variance`` accounts for the errors the KRs share.

    ``variance(row, kr, w, n_rows)`` is the variance of ``sum w_k value[kr_k]`` per row.
    """
    owner_names, kr_rows, row = graph.owner_names, graph.owner_kr, graph.owner_row
    if not owner_names:
        return {}
    n = len(owner_names)
    w = t.kr_weight[kr_rows]
    wsum = np.bincount(row, weights=w, minlength=n)
    var = variance(row, kr_rows, w / np.where(wsum[row] > 0, wsum[row], 1.0), n)
    vals = _clip(kr_value[kr_rows], t)
    est = np.bincount(row, weights=w * vals, minlength=n)
    ok = wsum > 0
    value = np.where(ok, est / np.where(ok, wsum, 1.0), math.nan)
    se = np.where(ok, np.sqrt(np.maximum(var, 0.0)), math.nan)
    return dict(zip(owner_names, zip(value.tolist(), se.tolist(), strict=True), strict=True))


# --------------------------------------------------------------------------- affine


def _fit_affine(
    t: GradeTable, graph: _Graph, use: BoolArray | None, model: AffineModel
) -> _Estimates:
    if not _identifiable(t):
        return _unidentified(t)
    d, with_ev = _design(t, use=use)
    fit = _reml_or_held(d, model.hold_variance)
    n_gr = t.n_graders
    scale = np.ones(n_gr)
    scale_se = np.full(n_gr, np.nan)
    scale_z = np.full(n_gr, np.nan)
    converged = False
    iterations = fit.iterations
    base = d
    for _ in range(model.max_iterations):
        new_scale, new_se, raw_z = _update_scales(t, fit, scale)
        delta = float(np.max(np.abs(new_scale - scale))) if n_gr else 0.0
        scale, scale_se, scale_z = new_scale, new_se, raw_z
        # same structure, new coefficients; variance ratios held while the scales settle
        d = with_coef(base, scale[base.gr])
        fit = fit_crossed(d, start=log_ratios(fit), optimise=False)
        iterations += 1
        if delta < 1e-4:
            converged = True
            break
    # REML once more at the settled scales
    fit = _reml_or_held(d, model.hold_variance, start=log_ratios(fit))
    iterations += fit.iterations
    est = _mixed_estimates(t, graph, fit, use, with_ev=with_ev, fixed=False)
    linked = graph.grader_comparable
    warnings = list(est.warnings)
    if not converged:
        warnings.append(f"grader scales did not settle within {model.max_iterations} iterations")
    return _Estimates(
        leniency=est.leniency,
        leniency_se=est.leniency_se,
        z=est.z,
        kr_value=est.kr_value,
        kr_se=est.kr_se,
        owner_value=est.owner_value,
        variance=VarianceComponents(
            method=est.variance.method,
            kr=est.variance.kr,
            grader=est.variance.grader,
            residual=est.variance.residual,
            evidence=est.variance.evidence,
            grader_share=est.variance.grader_share,
            scale_sd=_scale_sd(scale, scale_se),
        ),
        scale=np.where(linked, scale, np.nan),
        scale_se=np.where(linked, scale_se, np.nan),
        scale_z=np.where(linked, scale_z, np.nan),
        resid=est.resid,
        resid_var=est.resid_var,
        converged=converged and est.converged,
        iterations=iterations,
        warnings=tuple(warnings),
    )


def _scale_sd(scale: FloatArray, se: FloatArray) -> float | None:
    ok = np.isfinite(se)
    if not ok.any():
        return None
    return float(math.sqrt(max(float(np.var(scale[ok])), 0.0)))


def _update_scales(
    t: GradeTable, fit: CrossedFit, scale: FloatArray
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """One empirical-Bayes update of every grader's scale.

    For each grade, the KR's achievement is predicted from everything *except* that
    grader (the evidence and the other graders' grades, corrected for their leniency
    and scale). Regressing the grader's grades on these predictions (posterior means,
    so the slope is not attenuated) gives the raw scale; the raw scales are then
    shrunk toward 1 with a between-grader variance estimated by moments.
    """
    d = fit.data
    n_gr = t.n_graders
    s2e = fit.var_resid
    s2a = max(fit.var_kr, 1e-12)
    mu = float(fit.beta[0])
    gamma = float(fit.beta[1]) if d.p > 1 else 0.0
    # each grade as a measurement of a_i: (y - mu - gamma - b_j) / s_j, precision s_j^2 / s2e
    s_k = scale[d.gr]
    meas = (d.y - mu - gamma - fit.b[d.gr]) / s_k
    prec = s_k * s_k / s2e
    kr_prec = _wsum(d.kr, prec, d.n_kr)
    kr_sum = _wsum(d.kr, prec * meas, d.n_kr)
    if d.n_ev and fit.var_evidence:
        ev_prec = d.ev_mask / fit.var_evidence
        kr_prec = kr_prec + ev_prec
        kr_sum = kr_sum + ev_prec * (d.ev_value - mu) * d.ev_mask
    # leave this grade's grader out (all of that grader's grades of the KR)
    own_prec = np.bincount(d.pair_idx, weights=prec, minlength=d.pair_kr.shape[0])[d.pair_idx]
    own_sum = np.bincount(d.pair_idx, weights=prec * meas, minlength=d.pair_kr.shape[0])[d.pair_idx]
    other_prec = kr_prec[d.kr] - own_prec
    other_sum = kr_sum[d.kr] - own_sum
    post_prec = other_prec + 1.0 / s2a
    a_tilde = other_sum / post_prec  # posterior mean of a_i without this grader
    usable = other_prec > 1e-9 * (1.0 / s2a)
    # per-grader regression of (y - mu - gamma) on a_tilde, with intercept (the leniency)
    yk = d.y - mu - gamma
    w = usable.astype(np.float64)
    sw = np.bincount(d.gr, weights=w, minlength=n_gr)
    sx = np.bincount(d.gr, weights=w * a_tilde, minlength=n_gr)
    sy = np.bincount(d.gr, weights=w * yk, minlength=n_gr)
    with np.errstate(invalid="ignore", divide="ignore"):
        mx = sx / sw
        my = sy / sw
        sxx = np.bincount(d.gr, weights=w * (a_tilde - mx[d.gr]) ** 2, minlength=n_gr)
        sxy = np.bincount(d.gr, weights=w * (a_tilde - mx[d.gr]) * (yk - my[d.gr]), minlength=n_gr)
        slope = sxy / sxx
        # residual variance of that regression: grader noise plus the slope times what
        # is still unknown about a_i
        resid_var = s2e + scale**2 * np.bincount(
            d.gr, weights=w / post_prec, minlength=n_gr
        ) / np.maximum(sw, 1)
        slope_var = resid_var / sxx
    ok = (sw >= 3) & (sxx > 0) & np.isfinite(slope) & np.isfinite(slope_var)
    raw = np.where(ok, slope, 1.0)
    var = np.where(ok, slope_var, np.inf)
    # between-grader variance of the scales, by moments, then shrink toward 1
    if ok.sum() >= 3:
        dev = raw[ok] - 1.0
        tau2 = max(float(np.mean(dev**2) - np.mean(var[ok])), 0.0)
    else:
        tau2 = 0.0
    lam = np.where(ok, tau2 / (tau2 + var), 0.0)
    shrunk = 1.0 + lam * (raw - 1.0)
    # keep scales positive: a grader whose grades go against the evidence stays at a floor
    shrunk = np.maximum(shrunk, 0.05)
    with np.errstate(invalid="ignore", divide="ignore"):
        # lam * var is 0 * inf where no scale is estimated: masked here, never seen
        post_se = np.where(ok, np.sqrt(lam * var), np.nan)
        z = np.where(ok, (raw - 1.0) / np.sqrt(var), np.nan)
    return shrunk, post_se, z


# --------------------------------------------------------------------------- results


def _assemble(
    model: Model, t: GradeTable, graph: _Graph, est: _Estimates, *, kr_rows: bool
) -> tuple[CalibrationFit, KRColumns]:
    zc = _z_crit(model.confidence)
    span = t.scale.span
    min_eff = model.min_effect * span
    n_gr = t.n_graders
    m = np.bincount(t.grader_index, minlength=n_gr)
    baseline = isinstance(model, MeanModel | ZScoreModel)

    # p-values and BH q-values over the graders that can be tested
    testable = np.isfinite(est.z) & (graph.n_linking >= model.min_linked)
    if isinstance(model, MeanModel | ZScoreModel):
        testable = np.isfinite(est.z) & (m >= model.min_linked)
    pvals = np.where(testable, 2.0 * scipy.special.ndtr(-np.abs(np.nan_to_num(est.z))), np.nan)
    q = np.full(n_gr, np.nan)
    q[testable] = benjamini_hochberg(pvals[testable])
    sq = np.full(n_gr, np.nan)
    s_testable = np.zeros(n_gr, dtype=bool)
    if est.scale_z is not None:
        s_testable = testable & np.isfinite(est.scale_z)
        sp = 2.0 * scipy.special.ndtr(-np.abs(est.scale_z[s_testable]))
        sq[s_testable] = benjamini_hochberg(sp)
    min_scale = model.min_scale_effect if isinstance(model, AffineModel) else math.inf

    # infit / outfit per grader
    infit = outfit = None
    if est.resid is not None and est.resid_var is not None:
        fin = np.flatnonzero(np.isfinite(est.resid))  # integer gathers beat a mask
        gi = t.grader_index[fin]
        r2 = est.resid[fin] ** 2
        rvar = est.resid_var[fin]
        with np.errstate(invalid="ignore", divide="ignore"):
            infit = np.bincount(gi, weights=r2, minlength=n_gr) / np.bincount(
                gi, weights=rvar, minlength=n_gr
            )
            outfit = np.bincount(gi, weights=r2 / rvar, minlength=n_gr) / np.bincount(
                gi, minlength=n_gr
            )

    # per-grader columns, vectorised and turned into Python values once (16k graders
    # one at a time cost more than the rest of the results together)
    lin = est.leniency
    has = np.isfinite(lin)
    se_col = np.where(has, est.leniency_se, np.nan)
    reason = np.full(n_gr, None, dtype=object)
    alone = ~has & ~graph.grader_comparable if not baseline else np.zeros(n_gr, dtype=bool)
    reason[alone] = _NOT_LINKED
    why_none = est.kr_reason if est.kr_reason and not baseline else "fewer than 2 grades"
    reason[~has & ~alone] = why_none
    short = has & ~testable
    for j in np.flatnonzero(short).tolist():
        reason[j] = (
            f"{int(graph.n_linking[j])} linking grade(s), fewer than the {model.min_linked} "
            "needed to flag"
        )
    flags = _flags(model, est, testable & has, q, sq, min_eff, min_scale)
    # what each grader's zero is: the evidence in the part it reaches, else the graders
    against = np.where(graph.grader_linked & bool(t.has_evidence.any()), "evidence", "graders")
    against_l: list[ComparedWith | None] = ["raw_mean"] * n_gr if baseline else against.tolist()
    for j in np.flatnonzero(~has).tolist():
        against_l[j] = None

    def col(values: FloatArray | None, mask: BoolArray | None = None) -> list[float | None]:
        if values is None:
            return [None] * n_gr
        ok = np.isfinite(values) if mask is None else np.isfinite(values) & mask
        return _nullable(values, ok)

    graders = [
        GraderEffect(
            grader_id=gid,
            n_grades=ng,
            n_linking=nl,
            component=cp,
            leniency=le,
            compared_with=cw,
            std_error=sev,
            ci_low=lo,
            ci_high=hi,
            z=zv,
            p_value=pv,
            q_value=qv,
            flag=fl,
            scale=sc,
            scale_std_error=scs,
            scale_q_value=sqv,
            infit=inf,
            outfit=outf,
            reason=rs,
        )
        for (
            gid,
            ng,
            nl,
            cp,
            le,
            cw,
            sev,
            lo,
            hi,
            zv,
            pv,
            qv,
            fl,
            sc,
            scs,
            sqv,
            inf,
            outf,
            rs,
        ) in zip(
            t.grader_ids,
            m.tolist(),
            graph.n_linking.tolist(),
            graph.grader_comp.tolist(),
            col(lin),
            against_l,
            col(se_col),
            col(lin - zc * se_col),
            col(lin + zc * se_col),
            col(est.z),
            col(pvals),
            col(q),
            flags,
            col(est.scale),
            col(est.scale_se),
            col(sq, s_testable),
            col(infit),
            col(outfit),
            reason.tolist(),
            strict=True,
        )
    ]

    raw, n_grades = _raw_means(t)
    # vectorised: a fit may hold hundreds of thousands of KRs; NaN where no estimate
    kval = est.kr_value
    kse = est.kr_se
    ok = np.isfinite(kval)
    se_ok = ok & np.isfinite(kse)
    crit = zc if est.kr_crit is None else est.kr_crit
    with np.errstate(invalid="ignore"):
        kr_columns = KRColumns(
            kr_id=t.kr_ids,
            owner_id=t.kr_owner,
            n_grades=n_grades,
            raw_grade=raw,
            evidence_grade=t.evidence,
            calibrated_grade=np.where(ok, np.clip(kval, t.scale.low, t.scale.high), np.nan),
            std_error=np.where(se_ok, kse, np.nan),
            ci_low=np.where(se_ok, np.maximum(kval - crit * kse, t.scale.low), np.nan),
            ci_high=np.where(se_ok, np.minimum(kval + crit * kse, t.scale.high), np.nan),
            missing_reason=est.kr_reason or "not estimable",
        )

    owner_names, owner_row = graph.owner_names, graph.owner_row
    nan_pair = (math.nan, math.nan)
    o_pairs = np.array([est.owner_value.get(o, nan_pair) for o in owner_names]).reshape(-1, 2)
    o_val, o_se = o_pairs[:, 0], o_pairs[:, 1]
    o_ok = np.isfinite(o_val)
    o_se_ok = o_ok & np.isfinite(o_se)
    o_why = est.kr_reason or "every KR of this owner has weight 0"
    owners = [
        OwnerAchievement(
            owner_id=o,
            n_krs=n,
            achievement=val,
            std_error=se_,
            ci_low=lo,
            ci_high=hi,
            reason=None if good else o_why,
        )
        for o, n, val, se_, lo, hi, good in zip(
            owner_names,
            np.bincount(owner_row, minlength=len(owner_names)).tolist(),
            _nullable(o_val, o_ok),
            _nullable(o_se, o_se_ok),
            _nullable(np.maximum(o_val - zc * o_se, t.scale.low), o_se_ok),
            _nullable(np.minimum(o_val + zc * o_se, t.scale.high), o_se_ok),
            o_se_ok.tolist(),
            strict=True,
        )
    ]

    unexpected: list[UnexpectedGrade] = []
    if est.resid is not None and est.resid_var is not None:
        zr = est.resid / np.sqrt(est.resid_var)
        for k in np.flatnonzero(np.nan_to_num(np.abs(zr)) >= UNEXPECTED_Z):
            unexpected.append(
                UnexpectedGrade(
                    kr_id=t.kr_ids[int(t.kr_index[k])],
                    grader_id=t.grader_ids[int(t.grader_index[k])],
                    grade=float(t.grade[k]),
                    expected=float(t.grade[k] - est.resid[k]),
                    std_residual=float(zr[k]),
                )
            )
        unexpected.sort(key=lambda u: -abs(u.std_residual))

    warnings = list(est.warnings)
    if not baseline:
        warnings.extend(_connectivity_notes(graph))
    fit = CalibrationFit(
        model=_model_name(model),
        model_spec=model.to_dict(),
        model_version=MODEL_VERSION,
        input_hash=t.input_hash,
        scale=t.scale.name,
        scale_low=t.scale.low,
        scale_high=t.scale.high,
        confidence=model.confidence,
        n_grades=t.n_grades,
        n_krs=t.n_krs,
        n_graders=t.n_graders,
        graders=tuple(graders),
        krs=kr_columns.rows() if kr_rows else (),
        owners=tuple(owners),
        variance=est.variance,
        components=graph.components,
        unexpected=tuple(unexpected),
        converged=est.converged,
        iterations=est.iterations,
        warnings=tuple(warnings),
    )
    return fit, kr_columns


def _connectivity_notes(graph: _Graph) -> list[str]:
    """What the parts of the grading graph mean for comparing graders (none if one part)."""
    notes = []
    within = graph.grader_comparable & ~graph.grader_linked
    if within.any():
        n_parts = np.unique(graph.grader_comp[within]).shape[0]
        notes.append(
            f"{int(within.sum())} grader(s) in {n_parts} part(s) of the grading graph that no "
            "evidence or shared KR links to the reference are compared only with the other "
            "graders of their own part (compared_with = graders)"
        )
    alone = int((~graph.grader_comparable).sum())
    if alone:
        notes.append(
            f"{alone} grader(s) share no KR with another grader and have no evidence: "
            "their leniency cannot be compared with anyone's"
        )
    return notes


def _model_name(model: Model) -> str:
    name = model.to_dict().get("name")
    return str(name)


def _flags(
    model: Model,
    est: _Estimates,
    testable: BoolArray,
    q: FloatArray,
    sq: FloatArray,
    min_eff: float,
    min_scale: float,
) -> list[GraderFlag]:
    """Every grader's flag: a leniency flag needs q < fdr and the practical minimum, a
    scale flag (affine) its own q < fdr and minimum; with both, the stronger signal."""
    n = testable.shape[0]
    fdr = model.fdr
    lin = np.nan_to_num(est.leniency)
    with np.errstate(invalid="ignore"):
        len_flag = (q < fdr) & (np.abs(lin) >= min_eff)
    len_name = np.where(lin > 0, "lenient", "severe")
    scale_flag = np.zeros(n, dtype=bool)
    scale_name = np.full(n, "ok")
    stronger_len = np.ones(n, dtype=bool)
    if est.scale is not None:
        with np.errstate(invalid="ignore"):
            sig = np.isfinite(sq) & (sq < fdr)
        comp = sig & (1.0 - est.scale >= min_scale)
        expa = sig & ~comp & (est.scale - 1.0 >= min_scale)
        scale_flag = comp | expa
        scale_name = np.where(comp, "compressing", "expanding")
        zs = np.abs(est.scale_z) if est.scale_z is not None else np.zeros(n)
        with np.errstate(invalid="ignore"):
            stronger_len = np.abs(est.z) >= zs  # NaN compares False, as in a scalar test
    flag = np.where(
        len_flag & (~scale_flag | stronger_len),
        len_name,
        np.where(scale_flag, scale_name, "ok"),
    )
    flag = np.where(testable, flag, "insufficient_data")
    out: list[GraderFlag] = flag.tolist()
    return out
