"""Engine behaviour: reference values, invariances, edge cases and honest non-estimates."""

from __future__ import annotations

import csv
import math
import subprocess
import sys
from pathlib import Path

import msgspec
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anchors.scales import parse_scale
from calibrate import (
    AdditiveModel,
    AffineModel,
    CalibrationFit,
    FixedModel,
    GradeRecord,
    GradeTable,
    HeldVariance,
    InputError,
    MeanModel,
    ModelError,
    ZScoreModel,
    model_from_name,
)
from calibrate.engine import benjamini_hochberg, fit_columns
from calibrate.errors import BlockTooLargeError
from calibrate.reml import fit_crossed, fit_fixed, prepare_crossed

DATASETS = Path(__file__).resolve().parents[3] / "shared" / "datasets"
GOOGLE = parse_scale("google")


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"reference dataset {path} is not on this machine")
    return path


def _load(
    path: Path, k: str, g: str, y: str
) -> tuple[list[dict[str, str]], list[str], list[str], np.ndarray, np.ndarray, np.ndarray]:
    with path.open() as fh:
        rows = list(csv.DictReader(fh))
    ks = sorted({r[k] for r in rows})
    gs = sorted({r[g] for r in rows})
    ki = {v: i for i, v in enumerate(ks)}
    gi = {v: i for i, v in enumerate(gs)}
    kr = np.array([ki[r[k]] for r in rows], dtype=np.int64)
    gr = np.array([gi[r[g]] for r in rows], dtype=np.int64)
    yy = np.array([float(r[y]) for r in rows])
    return rows, ks, gs, kr, gr, yy


def _rel(a: float, b: float) -> float:
    return abs(a - b) / abs(b)


# ---------------------------------------------------------------- reference values (lme4, lm)


def test_shrout_fleiss_variance_components_match_lme4() -> None:
    path = _need(DATASETS / "shrout-fleiss-1979-icc" / "shrout_fleiss_1979_long.csv")
    _, _, gs, kr, gr, y = _load(path, "target", "judge", "rating")
    fit = fit_crossed(prepare_crossed(y, kr, gr, 6, 4, np.ones((y.size, 1))))
    assert _rel(fit.var_kr, 2.555563) < 1e-3
    assert _rel(fit.var_grader, 5.244451) < 1e-3
    assert _rel(fit.var_resid, 1.019443) < 1e-3
    blups = dict(zip(gs, fit.b, strict=True))
    for judge, ref in {"J1": 2.300470, "J2": -2.704062, "J3": -0.928260, "J4": 1.331851}.items():
        assert blups[judge] == pytest.approx(ref, abs=1e-4)


def test_shrout_fleiss_fixed_effects_match_lm() -> None:
    path = _need(DATASETS / "shrout-fleiss-1979-icc" / "shrout_fleiss_1979_long.csv")
    _, _, gs, kr, gr, y = _load(path, "target", "judge", "rating")
    fit = fit_fixed(prepare_crossed(y, kr, gr, 6, 4, np.zeros((y.size, 0))))
    ref = {"J1": 2.3750, "J2": -2.7917, "J3": -0.9583, "J4": 1.3750}
    for judge, value in zip(gs, fit.b, strict=True):
        assert value == pytest.approx(ref[judge], abs=1e-4)
    assert math.sqrt(fit.var_resid) == pytest.approx(1.009675, abs=1e-6)


def test_ptam4long_matches_lme4_with_item_fixed_effects() -> None:
    path = _need(DATASETS / "robitzsch-rater-datasets" / "data.ptam4long.csv")
    rows, _, gs, kr, gr, y = _load(path, "idstud", "rater", "value")
    items = sorted({r["item"] for r in rows})
    X = np.array([[1.0] + [float(r["item"] == it) for it in items[1:]] for r in rows])
    fit = fit_crossed(prepare_crossed(y, kr, gr, int(kr.max()) + 1, len(gs), X))
    assert _rel(fit.var_kr, 0.33220166) < 1e-3
    assert _rel(fit.var_grader, 0.03243795) < 1e-3
    assert _rel(fit.var_resid, 0.34851183) < 1e-3
    assert fit.beta == pytest.approx([1.44592693, 0.17736486, 0.09966216], abs=1e-5)
    ref = {"802.0": 0.0131, "803.0": -0.2841, "837.0": 0.3927, "835.0": -0.1634}
    blups = dict(zip(gs, fit.b, strict=True))
    for rater, value in ref.items():
        assert blups[rater] == pytest.approx(value, abs=1e-4)


def _kuhlisch_table() -> GradeTable:
    path = _need(DATASETS / "kuhlisch2016-conference-reviews" / "data.immer09.csv")
    with path.open() as fh:
        rows = list(csv.DictReader(fh))
    return GradeTable.from_records(
        [
            GradeRecord(kr_id=r["idpaper"], grader_id=r["idreviewer"], grade=float(r["score"]))
            for r in rows
        ],
        parse_scale("1:7"),
    )


def test_kuhlisch_fixed_effects_match_lm_through_the_model() -> None:
    fit = FixedModel().fit(_kuhlisch_table())
    # fmt: off
    ref = [0.279, -0.510, -0.423, 0.978, -0.740, 1.112, 1.694, -0.076, 0.043, 0.054,
           -0.743, 0.470, 0.129, -1.105, -0.263, 1.236, -0.549, 0.613, -1.525, -0.672]
    # fmt: on
    got = {g.grader_id: g.leniency for g in fit.graders}
    for i, value in enumerate(ref, start=1):
        assert got[str(i)] == pytest.approx(value, abs=5e-4)
    assert math.sqrt(fit.variance.residual or 0.0) == pytest.approx(1.0522, abs=1e-4)


def test_kuhlisch_fixed_effects_to_1e6_against_lm_solution() -> None:
    # The published table has 3 decimals; check the solution itself to 1e-6 by
    # solving the same least-squares problem densely.
    t = _kuhlisch_table()
    n = t.n_grades
    X = np.zeros((n, t.n_krs + t.n_graders))
    X[np.arange(n), t.kr_index] = 1.0
    X[np.arange(n), t.n_krs + t.grader_index] = 1.0
    # sum-to-zero grader effects: append the constraint as a heavily weighted row
    Xc = np.vstack([X, np.r_[np.zeros(t.n_krs), np.ones(t.n_graders)] * 1e6])
    yc = np.r_[t.grade, 0.0]
    sol = np.linalg.lstsq(Xc, yc, rcond=None)[0]
    fit = FixedModel().fit(t)
    got = np.array([g.leniency for g in fit.graders], dtype=float)
    assert np.max(np.abs(got - sol[t.n_krs :])) < 1e-6


def test_kuhlisch_reml_matches_lme4() -> None:
    fit = AdditiveModel().fit(_kuhlisch_table())
    v = fit.variance
    assert v.kr is not None
    assert v.grader is not None
    assert v.residual is not None
    assert _rel(v.kr, 1.3517899) < 1e-3
    assert _rel(v.grader, 0.1305714) < 1e-3
    assert _rel(v.residual, 1.2187353) < 1e-3


# ---------------------------------------------------------------- simulated organisation


def _org(
    seed: int = 7,
    *,
    evidence: bool = True,
    shift: dict[int, float] | None = None,
    n_gr: int = 40,
    n_kr: int = 900,
    scale: str = "google",
    perm_seed: int | None = None,
) -> tuple[GradeTable, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    g1 = rng.integers(0, n_gr, n_kr)
    g2 = (g1 + rng.integers(1, 4, n_kr)) % n_gr
    dbl = rng.random(n_kr) < 0.25
    truth = rng.beta(3, 2, n_kr)
    len_ = np.zeros(n_gr)
    len_[:6] = 0.18
    len_[6:12] = -0.18
    kr = np.concatenate([np.arange(n_kr), np.flatnonzero(dbl)])
    gr = np.concatenate([g1, g2[dbl]])
    y = truth[kr] + len_[gr] + rng.normal(0, 0.05, kr.size)
    y = np.clip(np.round(y / 0.05) * 0.05, 0, 1)
    for j, c in (shift or {}).items():
        y = np.where(gr == j, y + c, y)
    ev = {}
    if evidence:
        for i in np.flatnonzero(rng.random(n_kr) < 0.5):
            ev[f"k{i:04d}"] = float(np.clip(truth[i] + rng.normal(0, 0.06), 0, 1))
    if perm_seed is not None:
        perm = np.random.default_rng(perm_seed).permutation(kr.size)
        kr, gr, y = kr[perm], gr[perm], y[perm]
    table = GradeTable.from_arrays(
        [f"k{i:04d}" for i in kr],
        [f"g{j:02d}" for j in gr],
        y,
        parse_scale(scale),
        evidence=ev,
        owners={f"k{i:04d}": f"o{i // 4:03d}" for i in range(n_kr)},
    )
    return table, truth, len_


def test_recovers_lenient_and_severe_graders_and_beats_raw() -> None:
    t, truth, _ = _org()
    fit = AdditiveModel().fit(t)
    flags = {g.grader_id: g.flag for g in fit.graders}
    assert all(flags[f"g{j:02d}"] == "lenient" for j in range(6))
    assert all(flags[f"g{j:02d}"] == "severe" for j in range(6, 12))
    assert sum(f in ("lenient", "severe") for f in list(flags.values())[12:]) <= 1
    idx = np.array([int(k.kr_id[1:]) for k in fit.krs])
    cal = np.array([k.calibrated_grade for k in fit.krs], dtype=float)
    raw = np.array([k.raw_grade for k in fit.krs])
    assert np.sqrt(np.mean((cal - truth[idx]) ** 2)) < 0.6 * np.sqrt(
        np.mean((raw - truth[idx]) ** 2)
    )
    lo = np.array([k.ci_low for k in fit.krs], dtype=float)
    hi = np.array([k.ci_high for k in fit.krs], dtype=float)
    cover = np.mean((lo <= truth[idx]) & (truth[idx] <= hi))
    assert 0.8 <= cover <= 0.97
    lenient = [g for g in fit.graders if g.grader_id < "g06"]
    assert all(g.leniency is not None and abs(g.leniency - 0.18) < 0.06 for g in lenient)


def test_row_order_does_not_matter() -> None:
    t, _, _ = _org(seed=3, n_gr=15, n_kr=200)
    t2, _, _ = _org(seed=3, n_gr=15, n_kr=200, perm_seed=0)
    assert t2.input_hash == t.input_hash
    a, b = AdditiveModel().fit(t), AdditiveModel().fit(t2)
    assert a == b


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(c=st.floats(min_value=-0.2, max_value=0.2), j=st.integers(min_value=0, max_value=14))
def test_shifting_a_grader_shifts_leniency_by_c_and_leaves_scores(c: float, j: int) -> None:
    # Fixed effects: exactly. Grades are on -1..2 so the shift never leaves the scale.
    base, _, _ = _org(seed=5, n_gr=15, n_kr=200, scale="-1:2")
    moved, _, _ = _org(seed=5, n_gr=15, n_kr=200, shift={j: c}, scale="-1:2")
    fa, fb = FixedModel().fit(base), FixedModel().fit(moved)
    la = fa.graders[j].leniency
    lb = fb.graders[j].leniency
    assert la is not None
    assert lb is not None
    assert lb - la == pytest.approx(c, abs=1e-9)
    for ka, kb in zip(fa.krs, fb.krs, strict=True):
        assert kb.calibrated_grade == pytest.approx(ka.calibrated_grade, abs=1e-9)


def test_additive_shift_moves_leniency_by_about_c() -> None:
    base, _, _ = _org(seed=5, scale="-1:2")
    moved, _, _ = _org(seed=5, shift={20: 0.3}, scale="-1:2")
    la = AdditiveModel().fit(base).graders[20].leniency
    lb = AdditiveModel().fit(moved).graders[20].leniency
    assert la is not None
    assert lb is not None
    # The leniency prior is spike-and-slab: the unshifted grader sits in the spike
    # (no effect) and is shrunk to about 0, the shifted one in the slab and is
    # shrunk little, so the move is c up to a fraction of its standard
    # error (about 0.02 here), either side.
    assert lb - la == pytest.approx(0.3, abs=0.03)


def test_90_percent_interval_inside_95_percent() -> None:
    t, _, _ = _org(seed=11, n_gr=15, n_kr=200)
    f90 = AdditiveModel(confidence=0.90).fit(t)
    f95 = AdditiveModel(confidence=0.95).fit(t)
    for a, b in zip(f90.krs, f95.krs, strict=True):
        assert a.ci_low is not None
        assert b.ci_low is not None
        assert a.ci_high is not None
        assert b.ci_high is not None
        assert b.ci_low <= a.ci_low <= a.ci_high <= b.ci_high
    for ga, gb in zip(f90.graders, f95.graders, strict=True):
        if ga.ci_low is not None:
            assert ga.ci_high is not None
            assert gb.ci_low is not None
            assert gb.ci_high is not None
            assert gb.ci_low <= ga.ci_low
            assert ga.ci_high <= gb.ci_high


def test_fit_is_deterministic_and_carries_spec_version_and_hash() -> None:
    t, _, _ = _org(seed=2, n_gr=12, n_kr=150)
    a = AffineModel().fit(t)
    b = AffineModel().fit(t)
    assert a == b
    assert a.model == "affine"
    assert a.model_spec["confidence"] == 0.9
    assert a.input_hash == t.input_hash
    assert a.model_version


def test_no_nan_crosses_the_boundary() -> None:
    t, _, _ = _org(seed=4, n_gr=12, n_kr=150)
    for name in ("mean", "zscore", "fixed", "additive", "affine"):
        fit = model_from_name(name).fit(t)
        for value in _floats(fit):
            assert math.isfinite(value), name


def _floats(fit: CalibrationFit) -> list[float]:
    import msgspec

    out: list[float] = []

    def walk(x: object) -> None:
        if isinstance(x, float):
            out.append(x)
        elif isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, list | tuple):
            for v in x:
                walk(v)

    walk(msgspec.to_builtins(fit))
    return out


def test_compressing_grader_found_by_affine() -> None:
    rng = np.random.default_rng(21)
    n_gr, n_kr = 30, 900
    g1 = rng.integers(0, n_gr, n_kr)
    truth = rng.beta(3, 2, n_kr)
    scale = np.ones(n_gr)
    scale[:4] = 0.35
    m = truth.mean()
    y = m + scale[g1] * (truth - m) + rng.normal(0, 0.04, n_kr)
    y = np.clip(np.round(y / 0.05) * 0.05, 0, 1)
    ev = {
        f"k{i}": float(np.clip(truth[i] + rng.normal(0, 0.05), 0, 1))
        for i in np.flatnonzero(rng.random(n_kr) < 0.7)
    }
    t = GradeTable.from_arrays(
        [f"k{i}" for i in range(n_kr)], [f"g{j:02d}" for j in g1], y, GOOGLE, evidence=ev
    )
    fit = AffineModel().fit(t)
    flags = {g.grader_id: g.flag for g in fit.graders}
    assert [flags[f"g{j:02d}"] for j in range(4)] == ["compressing"] * 4
    assert sum(flags[f"g{j:02d}"] != "ok" for j in range(4, n_gr)) <= 1
    s = {g.grader_id: g.scale for g in fit.graders}
    assert all(s[f"g{j:02d}"] is not None and s[f"g{j:02d}"] < 0.7 for j in range(4))  # type: ignore[operator]


# ---------------------------------------------------------------- connectivity, honesty


def test_grader_not_linked_gets_no_number() -> None:
    recs = [
        GradeRecord(kr_id=f"a{i}", grader_id=g, grade=0.5 + 0.05 * (i % 5))
        for i in range(12)
        for g in ("x", "y")
    ] + [GradeRecord(kr_id=f"b{i}", grader_id="lonely", grade=0.9) for i in range(8)]
    t = GradeTable.from_records(recs, GOOGLE)
    fit = AdditiveModel().fit(t)
    lonely = next(g for g in fit.graders if g.grader_id == "lonely")
    assert lonely.leniency is None
    assert lonely.std_error is None
    assert lonely.flag == "insufficient_data"
    assert lonely.reason
    assert "not comparable" in lonely.reason
    assert sum(c.is_reference for c in fit.components) == 1
    assert len(fit.components) == 2


def _two_departments(
    *, evidence_in_a: bool = False, shift_b: float = 0.0
) -> tuple[GradeTable, dict[str, float]]:
    """Departments a and b that share no grader and no KR; 30% of KRs graded twice.

    In each, grader 0 is lenient (+0.2) and grader 1 severe (-0.2). ``shift_b`` moves
    every grade of department b (a department-wide shift nothing can see without
    evidence). Grades on -1..2 so that shifts never leave the scale; with evidence
    (which is on the 0-1 scale of the anchors) on Google's scale, clipped.
    """
    rng = np.random.default_rng(11)
    kr_ids: list[str] = []
    gr_ids: list[str] = []
    grades: list[float] = []
    evidence: dict[str, float] = {}
    true_len: dict[str, float] = {}
    n_gr, n_kr = 12, 400
    for dept in ("a", "b"):
        len_ = np.zeros(n_gr)
        len_[0], len_[1] = 0.2, -0.2
        true_len.update({f"{dept}{j:02d}": float(len_[j]) for j in range(n_gr)})
        truth = rng.beta(3, 2, n_kr)
        g1 = rng.integers(0, n_gr, n_kr)
        g2 = (g1 + rng.integers(1, n_gr, n_kr)) % n_gr
        dbl = rng.random(n_kr) < 0.3
        kr = np.concatenate([np.arange(n_kr), np.flatnonzero(dbl)])
        gr = np.concatenate([g1, g2[dbl]])
        y = np.round((truth[kr] + len_[gr] + rng.normal(0, 0.04, kr.size)) / 0.05) * 0.05
        if dept == "b":
            y = y + shift_b
        if evidence_in_a:
            y = np.clip(y, 0.0, 1.0)
        kr_ids += [f"{dept}k{i:04d}" for i in kr]
        gr_ids += [f"{dept}{j:02d}" for j in gr]
        grades += y.tolist()
        if dept == "a" and evidence_in_a:
            evidence.update(
                {
                    f"ak{i:04d}": float(np.clip(truth[i] + rng.normal(0, 0.05), 0.0, 1.0))
                    for i in range(0, n_kr, 2)
                }
            )
    scale = parse_scale("google" if evidence_in_a else "-1:2")
    table = GradeTable.from_arrays(kr_ids, gr_ids, np.array(grades), scale, evidence=evidence)
    return table, true_len


@pytest.mark.parametrize("model", [AdditiveModel(), FixedModel()])
def test_departments_without_evidence_are_compared_within_themselves(
    model: AdditiveModel | FixedModel,
) -> None:
    t, true_len = _two_departments()
    fit = model.fit(t)
    assert len(fit.components) == 2
    assert sum(c.is_reference for c in fit.components) == 1
    by_id = {g.grader_id: g for g in fit.graders}
    # every grader of both departments has a leniency against the average grader
    assert all(g.leniency is not None and g.std_error is not None for g in fit.graders)
    assert {g.compared_with for g in fit.graders} == {"graders"}
    for dept in ("a", "b"):
        assert by_id[f"{dept}00"].flag == "lenient"
        assert by_id[f"{dept}01"].flag == "severe"
        others = [by_id[f"{dept}{j:02d}"] for j in range(2, 12)]
        assert sum(g.flag in ("lenient", "severe") for g in others) <= 1
    for gid, want in true_len.items():
        got = by_id[gid].leniency
        assert got is not None
        assert got == pytest.approx(want, abs=0.06)
    assert any("compared only with the other graders of their own part" in w for w in fit.warnings)


def test_a_whole_department_shift_is_invisible_without_evidence() -> None:
    # What "compared within their own part" means: a shift of every grade of an
    # unlinked department moves its KRs, not its graders' leniencies.
    base, _ = _two_departments()
    moved, _ = _two_departments(shift_b=0.15)
    fa, fb = FixedModel().fit(base), FixedModel().fit(moved)
    for ga, gb in zip(fa.graders, fb.graders, strict=True):
        assert ga.leniency is not None
        assert gb.leniency == pytest.approx(ga.leniency, abs=1e-9)
    for ka, kb in zip(fa.krs, fb.krs, strict=True):
        assert ka.calibrated_grade is not None
        shift = 0.15 if ka.kr_id.startswith("b") else 0.0
        assert kb.calibrated_grade == pytest.approx(ka.calibrated_grade + shift, abs=1e-9)


@pytest.mark.parametrize("model", [AdditiveModel(), AffineModel(), FixedModel()])
def test_department_beyond_the_evidence_says_what_it_is_compared_with(
    model: AdditiveModel | AffineModel | FixedModel,
) -> None:
    t, _ = _two_departments(evidence_in_a=True)
    fit = model.fit(t)
    ref = next(c for c in fit.components if c.is_reference)
    assert ref.n_evidence > 0
    for g in fit.graders:
        assert g.leniency is not None
        want = "evidence" if g.grader_id.startswith("a") else "graders"
        assert g.compared_with == want
        assert (g.component == ref.id) == g.grader_id.startswith("a")
    assert next(g for g in fit.graders if g.grader_id == "b00").flag in ("lenient", "expanding")


def test_baselines_compare_with_the_raw_mean() -> None:
    t, _ = _two_departments()
    for model in (MeanModel(), ZScoreModel()):
        assert {g.compared_with for g in model.fit(t).graders} == {"raw_mean"}


@pytest.mark.parametrize("model", [AdditiveModel(), AffineModel(), FixedModel()])
def test_a_grader_without_a_comparison_raises_no_numpy_warning(
    model: AdditiveModel | AffineModel | FixedModel,
) -> None:
    # pytest turns warnings into errors here; a user's -W error would see the same
    recs = [
        GradeRecord(kr_id=f"a{i}", grader_id=g, grade=0.5 + 0.05 * (i % 5))
        for i in range(12)
        for g in ("x", "y")
    ] + [GradeRecord(kr_id=f"b{i}", grader_id="lonely", grade=0.9) for i in range(8)]
    fit = model.fit(GradeTable.from_records(recs, GOOGLE))
    lonely = next(g for g in fit.graders if g.grader_id == "lonely")
    assert lonely.leniency is None
    assert lonely.scale_std_error is None


@pytest.mark.parametrize("name", ["mean", "zscore", "fixed", "additive", "affine"])
def test_fit_columns_hold_the_rows_fit_model_gives(name: str) -> None:
    t, _, _ = _org(seed=2, n_gr=12, n_kr=150)
    model = model_from_name(name)
    fit = model.fit(t)
    overview, columns = fit_columns(model, t)
    assert overview.krs == ()
    assert columns.rows() == fit.krs
    assert msgspec.structs.replace(overview, krs=columns.rows()) == fit


def test_fit_columns_give_the_reason_where_nothing_is_estimable() -> None:
    recs = [
        GradeRecord(kr_id=f"k{i}", grader_id=f"g{i % 3}", grade=0.1 * (i % 10)) for i in range(30)
    ]
    _, columns = fit_columns(AdditiveModel(), GradeTable.from_records(recs, GOOGLE))
    assert np.isnan(columns.calibrated_grade).all()
    assert all(r is not None and "nothing links" in r for r in columns.reason())


def test_nothing_linked_says_so() -> None:
    recs = [
        GradeRecord(kr_id=f"k{i}", grader_id=f"g{i % 3}", grade=0.1 * (i % 10)) for i in range(30)
    ]
    fit = AdditiveModel().fit(GradeTable.from_records(recs, GOOGLE))
    assert all(k.calibrated_grade is None and k.reason for k in fit.krs)
    assert all(g.leniency is None for g in fit.graders)
    assert fit.variance.reason


def test_few_linking_grades_is_insufficient_data() -> None:
    t, _, _ = _org(seed=1, n_gr=40, n_kr=900)
    fit = AdditiveModel(min_linked=10_000).fit(t)
    assert {g.flag for g in fit.graders} == {"insufficient_data"}
    assert all(g.leniency is not None for g in fit.graders)


def test_owner_achievement_has_interval() -> None:
    t, truth, _ = _org(seed=9)
    fit = AdditiveModel().fit(t)
    assert fit.owners
    for o in fit.owners:
        assert o.achievement is not None
        assert o.ci_low is not None
        assert o.ci_high is not None
        assert o.ci_low <= o.achievement <= o.ci_high
    del truth


def test_benjamini_hochberg_matches_definition() -> None:
    p = np.array([0.001, 0.008, 0.039, 0.041, 0.042, 0.06, 0.074, 0.205])
    q = benjamini_hochberg(p)
    assert q.round(4).tolist() == [0.008, 0.032, 0.0672, 0.0672, 0.0672, 0.08, 0.0846, 0.205]


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("record", "field"),
    [
        ({"kr_id": "k", "grader_id": "g", "grade": 1.5}, "grade"),
        ({"kr_id": "k", "grader_id": "g", "grade": float("nan")}, "grade"),
        ({"kr_id": "k", "grader_id": "g", "grade": float("inf")}, "grade"),
        ({"kr_id": "", "grader_id": "g", "grade": 0.5}, "kr_id"),
        ({"kr_id": "k", "grader_id": " ", "grade": 0.5}, "grader_id"),
        ({"kr_id": "k" * 201, "grader_id": "g", "grade": 0.5}, "kr_id"),
    ],
)
def test_grade_table_rejects(record: dict[str, object], field: str) -> None:
    with pytest.raises(InputError) as err:
        GradeTable.from_records([GradeRecord(**record)], GOOGLE)  # type: ignore[arg-type]
    assert err.value.field == field
    assert err.value.row == 1


def test_duplicate_pair_in_cycle_rejected_but_not_across_cycles() -> None:
    a = GradeRecord(kr_id="k", grader_id="g", grade=0.5, cycle="Q1")
    with pytest.raises(InputError, match="twice"):
        GradeTable.from_records([a, a], GOOGLE)
    GradeTable.from_records(
        [a, GradeRecord(kr_id="k", grader_id="g", grade=0.5, cycle="Q2")], GOOGLE
    )
    with pytest.raises(InputError, match="twice"):
        GradeTable.from_arrays(["k", "k"], ["g", "g"], [0.1, 0.2], GOOGLE)


def test_empty_table_rejected() -> None:
    with pytest.raises(InputError, match="no grades"):
        GradeTable.from_records([], GOOGLE)


@pytest.mark.parametrize(
    "kw",
    [
        {"confidence": 1.0},
        {"confidence": 0.0},
        {"fdr": 0.0},
        {"min_linked": 0},
        {"min_effect": -0.1},
    ],
)
def test_model_spec_validation(kw: dict[str, float]) -> None:
    with pytest.raises(ModelError):
        AdditiveModel(**kw)  # type: ignore[arg-type]


def test_unknown_model_name() -> None:
    with pytest.raises(ModelError, match="unknown model"):
        model_from_name("bayesian")


def test_core_has_no_io_imports() -> None:
    code = (
        "import calibrate, calibrate.engine, anchors, sys; "
        "print(sorted({'litestar','redis','service'} & set(sys.modules)))"
    )
    out = subprocess.check_output([sys.executable, "-c", code])
    assert out.strip() == b"[]"


def test_oversized_grader_group_sets_aside_weak_links(monkeypatch: pytest.MonkeyPatch) -> None:
    # Departments of 6 graders whose KRs are second-graded inside the department, plus
    # one cross-department peer per department: one big connected group.
    import calibrate.engine as engine

    rng = np.random.default_rng(8)
    n_dept, size = 8, 6
    kr_ids, grader_ids, grades, ev = [], [], [], {}
    k = 0
    for dept in range(n_dept):
        members = [f"d{dept}g{m}" for m in range(size)]
        for m, grader in enumerate(members):
            for _ in range(12):
                kid = f"k{k}"
                k += 1
                truth = float(rng.uniform(0.2, 0.9))
                peer = members[(m + 1 + int(rng.integers(0, size - 1))) % size]
                for g in (grader, peer):
                    kr_ids.append(kid)
                    grader_ids.append(g)
                    grades.append(round(truth + float(rng.normal(0, 0.05)), 2))
                if rng.random() < 0.5:
                    ev[kid] = truth
        kid = f"x{dept}"
        other = f"d{(dept + 1) % n_dept}g0"
        for g in (members[0], other):
            kr_ids.append(kid)
            grader_ids.append(g)
            grades.append(0.5)
    t = GradeTable.from_arrays(kr_ids, grader_ids, np.clip(grades, 0, 1), GOOGLE, evidence=ev)
    monkeypatch.setattr(engine, "MAX_BLOCK", 10)
    fit = AdditiveModel().fit(t)
    assert any("set aside" in w for w in fit.warnings)
    assert all(g.leniency is not None for g in fit.graders)
    assert all(kr.calibrated_grade is not None for kr in fit.krs)
    monkeypatch.setattr(engine, "MAX_BLOCK", 1)
    with pytest.raises(BlockTooLargeError):
        AdditiveModel().fit(t)


def test_exact_fixed_effects_fit_has_estimates_but_no_standard_errors() -> None:
    recs = [
        GradeRecord(kr_id=f"k{i}", grader_id=f"g{j}", grade=float(1 + i + j))
        for i in range(4)
        for j in range(2)
    ]
    fit = FixedModel().fit(GradeTable.from_records(recs, parse_scale("1:9")))
    assert [g.leniency for g in fit.graders] == pytest.approx([-0.5, 0.5])
    assert all(g.std_error is None for g in fit.graders)
    assert all(k.calibrated_grade is not None and k.ci_low is None for k in fit.krs)
    assert all(k.reason and "exactly" in k.reason for k in fit.krs)
    assert fit.variance.residual is None


def test_held_variance_reproduces_the_fit_it_came_from() -> None:
    t, _, _ = _org(seed=12, n_gr=20, n_kr=300)
    free = AdditiveModel().fit(t)
    v = free.variance
    assert v.kr is not None
    assert v.grader is not None
    assert v.residual is not None
    held = AdditiveModel(
        hold_variance=HeldVariance(
            kr=v.kr, grader=v.grader, residual=v.residual, evidence=v.evidence
        )
    ).fit(t)
    assert held.model_spec["hold_variance"] is not None
    for a, b in zip(free.krs, held.krs, strict=True):
        assert b.calibrated_grade == pytest.approx(a.calibrated_grade, abs=1e-6)
    with pytest.raises(ModelError):
        HeldVariance(kr=0.0, grader=0.01, residual=0.01)
