"""GradeTable builders: records, arrays and codes give the same table or the same error."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from anchors.scales import parse_scale
from calibrate import GradeTable, InputError
from calibrate.table import GradeRecord, factorise

GOOGLE = parse_scale("google")


def _summary(t: GradeTable) -> tuple[object, ...]:
    return (
        t.kr_ids,
        t.grader_ids,
        t.kr_index.tolist(),
        t.grader_index.tolist(),
        t.grade.tobytes(),
        t.evidence.tobytes(),
        t.kr_owner,
        t.kr_weight.tobytes(),
        t.cycles,
        t.input_hash,
    )


def _outcome(build: object) -> object:
    try:
        return _summary(build())  # type: ignore[operator]
    except InputError as exc:
        return ("error", exc.field, exc.row, str(exc))


_IDS = st.sampled_from(["k1", "k2", "k10", "a", "b", "", " ", "x" * 201])


@settings(max_examples=300, deadline=None)
@given(
    rows=st.lists(
        st.tuples(
            _IDS,
            st.sampled_from(["g1", "g2", "g3", "", "h"]),
            st.sampled_from([0.0, 0.25, 0.5, 0.7, 1.0, 1.5, float("nan"), -0.0]),
            st.sampled_from([None, "c1", "c2"]),
        ),
        min_size=0,
        max_size=12,
    ),
    with_cycles=st.booleans(),
    evidence=st.dictionaries(_IDS, st.sampled_from([0.0, 0.4, 1.0, 2.0, float("inf")])),
    owners=st.dictionaries(_IDS, st.sampled_from(["o1", "o2", "", "p" * 201])),
    weights=st.dictionaries(_IDS, st.sampled_from([0.0, 1.0, 2.5, -1.0])),
)
def test_codes_and_arrays_agree(
    rows: list[tuple[str, str, float, str | None]],
    with_cycles: bool,
    evidence: dict[str, float],
    owners: dict[str, str],
    weights: dict[str, float],
) -> None:
    krs = [r[0] for r in rows]
    graders = [r[1] for r in rows]
    vals = np.array([r[2] for r in rows], dtype=np.float64)
    cycles = [r[3] for r in rows] if with_cycles else None
    extra = {"evidence": evidence, "owners": owners, "weights": weights}
    by_arrays = _outcome(
        lambda: GradeTable.from_arrays(krs, graders, vals, GOOGLE, cycles=cycles, **extra)
    )

    def by_codes() -> GradeTable:
        kr_names, kr_codes = factorise(krs)
        gr_names, gr_codes = factorise(graders)
        # reversed ids: from_codes must not rely on them being sorted
        kr_rev = kr_names[::-1]
        kr_codes_rev = len(kr_names) - 1 - kr_codes
        coded = None if cycles is None else factorise(cycles)
        return GradeTable.from_codes(
            kr_rev, kr_codes_rev, gr_names, gr_codes, vals, GOOGLE, cycles=coded, **extra
        )

    assert _outcome(by_codes) == by_arrays


@settings(max_examples=200, deadline=None)
@given(
    rows=st.lists(
        st.tuples(
            st.sampled_from(["k1", "k2", "k10", "a"]),
            st.sampled_from(["g1", "g2", "g3"]),
            st.sampled_from([0.0, 0.25, 0.5, 1.0]),
        ),
        min_size=1,
        max_size=12,
        unique_by=lambda r: (r[0], r[1]),
    ),
    evidence=st.dictionaries(st.sampled_from(["k1", "a", "zz"]), st.sampled_from([0.0, 0.4])),
    owners=st.dictionaries(st.sampled_from(["k2", "a", "zz"]), st.sampled_from(["o1", "o2"])),
)
def test_arrays_and_records_agree_on_valid_grades(
    rows: list[tuple[str, str, float]], evidence: dict[str, float], owners: dict[str, str]
) -> None:
    records = [GradeRecord(kr_id=k, grader_id=g, grade=v) for k, g, v in rows]
    by_records = GradeTable.from_records(records, GOOGLE, evidence=evidence, owners=owners)
    by_arrays = GradeTable.from_arrays(
        [r[0] for r in rows],
        [r[1] for r in rows],
        [r[2] for r in rows],
        GOOGLE,
        evidence=evidence,
        owners=owners,
    )
    assert _summary(by_arrays) == _summary(by_records)


def test_factorise_sorts_and_codes() -> None:
    names, codes = factorise(["b", "a", "b", "c"])
    assert names == ["a", "b", "c"]
    assert codes.tolist() == [1, 0, 1, 2]
    names_with_none, _ = factorise([None, "x"])
    assert set(names_with_none) == {None, "x"}


@pytest.mark.parametrize(
    ("kr_index", "problem"),
    [
        ([0, 2], "outside its ids"),
        ([0], "one entry per grade"),
        ([0, 0], "every id must have a grade"),
    ],
)
def test_from_codes_refuses_a_broken_coding(kr_index: list[int], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        GradeTable.from_codes(
            ["k1", "k2"], np.array(kr_index), ["g"], np.array([0, 0]), np.array([0.1, 0.2]), GOOGLE
        )


@settings(max_examples=100, deadline=None)
@given(
    n_krs=st.integers(1, 12),
    data=st.data(),
)
def test_owner_codes_give_the_table_owners_give(n_krs: int, data: st.DataObject) -> None:
    # KR ids in any order, owner ids in any order (some unused), some KRs without one
    kr_ids = data.draw(st.permutations([f"k{i:02d}" for i in range(n_krs)]))
    owner_ids = data.draw(st.permutations([f"o{i}" for i in range(4)]))
    code = np.array(data.draw(st.lists(st.integers(-1, 3), min_size=n_krs, max_size=n_krs)))
    kr_index = np.arange(n_krs)
    grader_index = np.zeros(n_krs, dtype=np.int64)
    grades = np.linspace(0.0, 1.0, n_krs)
    owners = {k: owner_ids[c] for k, c in zip(kr_ids, code.tolist(), strict=True) if c >= 0}
    args = (kr_ids, kr_index, ["g"], grader_index, grades, GOOGLE)
    by_map = GradeTable.from_codes(*args, owners=owners)
    by_code = GradeTable.from_codes(*args, owner_codes=(owner_ids, code))
    assert by_code.kr_owner == by_map.kr_owner
    assert by_code.input_hash == by_map.input_hash
    names, codes = by_code.owner_coding
    assert names == tuple(sorted(set(owners.values())))
    assert codes.tolist() == by_map.owner_coding[1].tolist()
    assert [names[c] if c >= 0 else None for c in codes.tolist()] == list(by_map.kr_owner)


def test_owner_codes_are_checked() -> None:
    args = (["k1", "k2"], np.array([0, 1]), ["g"], np.array([0, 0]), np.array([0.2, 0.4]), GOOGLE)
    with pytest.raises(ValueError, match="not both"):
        GradeTable.from_codes(*args, owners={"k1": "o"}, owner_codes=(["o"], np.array([0, -1])))
    with pytest.raises(ValueError, match="one owner position"):
        GradeTable.from_codes(*args, owner_codes=(["o"], np.array([0])))
    with pytest.raises(ValueError, match="one owner position"):
        GradeTable.from_codes(*args, owner_codes=(["o"], np.array([0, 1])))
    with pytest.raises(InputError, match="owner_id"):
        GradeTable.from_codes(*args, owner_codes=(["x" * 1000], np.array([0, -1])))
