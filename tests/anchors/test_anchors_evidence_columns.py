"""grade_columns (a column at a time) against grade_many (one KR at a time)."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from anchors import EvidenceError, KeyResult
from anchors.evidence import (
    EvidenceColumns,
    EvidenceProblem,
    grade_columns,
    grade_evidence,
    grade_many,
)
from anchors.kr import DIRECTIONS, KR_TYPES

_NUMBERS = st.one_of(
    st.none(),
    st.none(),
    st.sampled_from([0.0, -0.0, 1.0, 5.0, 10.0, 100.0, -3.0, 0.5, 1e308, -1e308]),
    st.floats(-200, 200),
    st.sampled_from([float("nan"), float("inf")]),
)
_PLAIN_NUMBERS = st.one_of(
    st.sampled_from([0.0, -0.0, 1.0, 5.0, 10.0, 100.0, -3.0, 0.5]), st.floats(-200, 200)
)
_COUNTS = st.one_of(st.none(), st.none(), st.integers(-2, 12), st.just(2**60))


@st.composite
def _rows(draw: st.DrawFn) -> EvidenceColumns:
    n = draw(st.integers(0, 12))
    ids = [draw(st.sampled_from(["a", "b", "c", "d", "e", "f", "g"])) for _ in range(n)]
    if draw(st.booleans()):
        ids = [f"{k}{i}" for i, k in enumerate(ids)]  # mostly unique ids

    def col(strategy: st.SearchStrategy[object]) -> list[object]:
        return [draw(strategy) for _ in range(n)]

    # rows of one kind, then anything: plain rows reach the vectorised path
    kind = draw(st.sampled_from(["metric", "milestone", "binary", "maintain", "any"]))
    if draw(st.booleans()):
        numbers: st.SearchStrategy[object] = _PLAIN_NUMBERS
        counts: st.SearchStrategy[object] = st.integers(0, 12)
        kinds: st.SearchStrategy[object] = st.none()
        directions: st.SearchStrategy[object] = st.none()
    else:
        numbers, counts = _NUMBERS, _COUNTS
        kinds = st.none() | st.none() | st.sampled_from(KR_TYPES)
        directions = st.none() | st.none() | st.sampled_from(DIRECTIONS)
    none = [None] * n
    fields: dict[str, list[object]] = {
        "baseline": none,
        "target": none,
        "actual": none,
        "milestones_done": none,
        "milestones_total": none,
        "done": none,
        "threshold": none,
        "tolerance": none,
    }
    if kind == "metric":
        fields |= {"baseline": col(numbers), "target": col(numbers), "actual": col(numbers)}
    elif kind == "milestone":
        fields |= {"milestones_done": col(counts), "milestones_total": col(counts)}
    elif kind == "binary":
        fields |= {"done": col(st.none() | st.booleans()), "actual": col(st.none() | numbers)}
    elif kind == "maintain":
        fields |= {
            "threshold": col(numbers),
            "actual": col(numbers),
            "tolerance": col(st.none() | numbers),
        }
    else:
        fields = {name: col(_NUMBERS) for name in fields}
        fields |= {
            "milestones_done": col(_COUNTS),
            "milestones_total": col(_COUNTS),
            "done": col(st.none() | st.booleans()),
        }
    return EvidenceColumns(
        kr_id=ids,
        kr_type=col(kinds),  # type: ignore[arg-type]
        direction=col(directions),  # type: ignore[arg-type]
        **fields,  # type: ignore[arg-type]
    )


def _reference(cols: EvidenceColumns) -> tuple[dict[str, object], list[EvidenceProblem]]:
    """What the CLI did before: build each KR (a failure is a problem), then grade_many."""
    krs: list[KeyResult] = []
    problems: list[EvidenceProblem] = []
    for i in range(len(cols)):
        try:
            kr = cols.key_result(i)
        except EvidenceError as exc:
            if any(getattr(cols, name)[i] is not None for name in _EVIDENCE):
                problems.append(EvidenceProblem.from_error(exc))
            continue
        if kr.has_evidence:
            krs.append(kr)
    grades, graded_problems = grade_many(krs)
    return dict(grades), sorted(
        problems + graded_problems, key=lambda p: (p.kr_id, p.field, p.message)
    )


_EVIDENCE = ("baseline", "target", "actual", "milestones_done", "milestones_total", "done",
             "threshold")  # fmt: skip


@settings(max_examples=600, deadline=None)
@given(_rows())
def test_columns_grade_as_grade_many_does(cols: EvidenceColumns) -> None:
    batch = grade_columns(cols)
    grades, problems = _reference(cols)
    assert batch.grades() == grades
    assert sorted(batch.problems, key=lambda p: (p.kr_id, p.field, p.message)) == problems
    # the vectorised numbers are the very doubles grade_evidence gives, warnings alike
    by_id = {}
    for i in np.flatnonzero(np.isfinite(batch.grade)).tolist():
        by_id.setdefault(cols.kr_id[i], i)
    for kr_id, g in grades.items():
        i = by_id[kr_id]
        assert np.array([batch.grade[i]]).tobytes() == np.array([g.grade]).tobytes()  # type: ignore[attr-defined]
        assert batch.warnings.get(i, ()) == g.warnings  # type: ignore[attr-defined]
    graded_rows = {by_id[k] for k in grades}
    assert {i for i in range(len(cols)) if not math.isnan(batch.grade[i])} == graded_rows
    assert set(batch.warnings) <= graded_rows
    for row, problem in zip(batch.problem_rows, batch.problems, strict=True):
        assert cols.kr_id[row] == problem.kr_id


def test_a_large_plain_batch_is_graded_without_building_krs() -> None:
    n = 2000
    rng = np.random.default_rng(3)
    actual = rng.uniform(-5, 30, n).tolist()
    cols = EvidenceColumns(
        kr_id=[f"k{i}" for i in range(n)],
        kr_type=[None] * n,
        baseline=[0.0] * n,
        target=[10.0] * n,
        actual=actual,
        milestones_done=[None] * n,
        milestones_total=[None] * n,
        done=[None] * n,
        threshold=[None] * n,
        tolerance=[None] * n,
        direction=[None] * n,
    )
    batch = grade_columns(cols)
    assert not batch.problems
    for i in range(0, n, 97):
        g = grade_evidence(cols.key_result(i))
        assert g is not None
        assert batch.grade[i] == g.grade
        assert batch.warnings.get(i, ()) == g.warnings
    assert any(batch.warnings.values())
