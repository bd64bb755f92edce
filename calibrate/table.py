"""The grade table: validated grades, indexed for the models.

A :class:`GradeTable` is built once from records and never changes. It holds
the grades as integer-coded arrays (KR index, grader index, value), the evidence
grade of each KR on the input scale, owners and weights, and a hash of the
canonical input so that any fit can be traced to exactly what it was given.

>>> from anchors.scales import parse_scale
>>> t = GradeTable.from_records(
...     [GradeRecord(kr_id="k1", grader_id="ann", grade=0.7),
...      GradeRecord(kr_id="k1", grader_id="bob", grade=0.5)],
...     parse_scale("google"),
... )
>>> t.n_krs, t.n_graders
(1, 2)
"""

from __future__ import annotations

import contextlib
import hashlib
import math
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, TypeVar, cast

import msgspec
import numpy as np
import numpy.typing as npt

from anchors.scales import Scale
from calibrate.errors import InputError

__all__ = ["MAX_ID_LENGTH", "GradeRecord", "GradeTable", "factorise"]

#: Longest id accepted for KRs, graders and owners.
MAX_ID_LENGTH = 200

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
_K = TypeVar("_K", bound=Hashable)


class GradeRecord(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One grade: grader ``grader_id`` gave KR ``kr_id`` the grade ``grade`` (input scale)."""

    kr_id: str
    grader_id: str
    grade: float
    owner_id: str | None = None
    cycle: str | None = None


def _check_id(value: object, name: str, row: int | None) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InputError("must be a non-empty id", field=name, row=row)
    if len(value) > MAX_ID_LENGTH:
        raise InputError(f"is longer than {MAX_ID_LENGTH} characters", field=name, row=row)
    return value


def _ids_ok(ids: Sequence[object]) -> bool:
    """True when every id is a non-blank string of at most MAX_ID_LENGTH characters."""
    if not ids:
        return True
    if not set(map(type, ids)) <= {str}:
        return False
    texts: Sequence[str] = ids  # type: ignore[assignment]
    return min(map(len, map(str.strip, texts))) > 0 and max(map(len, texts)) <= MAX_ID_LENGTH


def _check_codes(
    names: Sequence[object], codes: IntArray, n: int, what: str, *, all_used: bool
) -> None:
    # A broken coding is a programming error, not bad input: ValueError, not InputError.
    if codes.shape != (n,):
        raise ValueError(f"{what} must have one entry per grade")
    if n and (codes.min() < 0 or codes.max() >= len(names)):
        raise ValueError(f"{what} points outside its ids")
    if len(set(names)) != len(names):
        raise ValueError(f"{what}: the ids must be distinct")
    if all_used and n and not np.bincount(codes, minlength=len(names)).all():
        raise ValueError(f"{what}: every id must have a grade")


def _sorted_names(names: Sequence[str]) -> tuple[list[str], IntArray | None]:
    """The ids sorted, and the old position -> new position map (None: already sorted)."""
    ordered = sorted(names)
    if ordered == list(names):
        return ordered, None
    remap = np.empty(len(names), dtype=np.int64)
    remap[sorted(range(len(names)), key=names.__getitem__)] = np.arange(len(names))
    return ordered, remap


def factorise(values: Sequence[_K]) -> tuple[list[_K], IntArray]:
    """The distinct values (sorted where they can be) and each value's position among them.

    >>> factorise(["b", "a", "b"])
    (['a', 'b'], array([1, 0, 1]))
    """
    names = list(dict.fromkeys(values))
    with contextlib.suppress(TypeError):  # None among strings (cycles) cannot be sorted
        cast("list[Any]", names).sort()
    index = dict(zip(names, range(len(names)), strict=True))
    codes = np.fromiter(map(index.__getitem__, values), np.int64, len(values))
    return names, codes


def _first_error(
    kr_ids: Sequence[str],
    grader_ids: Sequence[str],
    vals: FloatArray,
    scale: Scale,
    cycles: Sequence[str | None] | None,
) -> None:
    """Raise the InputError of the first bad grade, id or repeat in input order, if any."""
    n = vals.shape[0]
    bad = ~np.isfinite(vals)
    if bad.any():
        row = int(np.argmax(bad)) + 1
        raise InputError(f"grade {vals[row - 1]} is not a finite number", field="grade", row=row)
    out = (vals < scale.low) | (vals > scale.high)
    if out.any():
        row = int(np.argmax(out)) + 1
        raise InputError(
            f"grade {vals[row - 1]:g} is outside the {scale.name} scale "
            f"[{scale.low:g}, {scale.high:g}]",
            field="grade",
            row=row,
        )
    kr_map: dict[str, int] = {}
    gr_map: dict[str, int] = {}
    kr_idx = np.fromiter((kr_map.setdefault(k, len(kr_map)) for k in kr_ids), np.int64, n)
    gr_idx = np.fromiter((gr_map.setdefault(g, len(gr_map)) for g in grader_ids), np.int64, n)
    for mapping, codes, fname in ((kr_map, kr_idx, "kr_id"), (gr_map, gr_idx, "grader_id")):
        for name, code in mapping.items():
            if not isinstance(name, str) or not name.strip() or len(name) > MAX_ID_LENGTH:
                _check_id(name, fname, int(np.argmax(codes == code)) + 1)
    pair = kr_idx * len(gr_map) + gr_idx
    if cycles is not None:
        cyc_map: dict[str | None, int] = {}
        cyc_idx = np.fromiter((cyc_map.setdefault(c, len(cyc_map)) for c in cycles), np.int64, n)
        for cyc, code in cyc_map.items():
            if cyc is not None:
                _check_id(cyc, "cycle", int(np.argmax(cyc_idx == code)) + 1)
        pair = pair * max(len(cyc_map), 1) + cyc_idx
    uniq, counts = np.unique(pair, return_counts=True)
    if (counts > 1).any():
        dup = uniq[counts > 1][0]
        rows = np.flatnonzero(pair == dup)
        raise InputError(
            f"grader {grader_ids[rows[1]]!r} graded KR {kr_ids[rows[1]]!r} twice in one "
            f"cycle (first at row {rows[0] + 1})",
            field="grader_id",
            row=int(rows[1]) + 1,
        )


@dataclass(frozen=True, eq=False)
class GradeTable:
    """Validated grades of one calibration, integer-coded for the models.

    Build it with :meth:`from_records`; the constructor trusts its arguments.

    >>> from anchors.scales import parse_scale
    >>> t = GradeTable.from_records(
    ...     [GradeRecord(kr_id="k1", grader_id="g1", grade=0.7)], parse_scale("google"))
    >>> t.n_grades, t.kr_ids, t.grader_ids
    (1, ('k1',), ('g1',))
    """

    scale: Scale
    kr_ids: tuple[str, ...]
    grader_ids: tuple[str, ...]
    kr_index: IntArray  # per grade
    grader_index: IntArray  # per grade
    grade: FloatArray  # per grade, input scale
    evidence: FloatArray  # per KR, input scale; NaN where the KR has no evidence
    kr_owner: tuple[str | None, ...]  # per KR
    kr_weight: FloatArray  # per KR, for owner achievement
    input_hash: str
    cycles: tuple[str, ...] = field(default=())
    #: ``owner_coding`` as a builder that had it already made it (else derived when asked).
    owner_coding_given: tuple[tuple[str, ...], IntArray] | None = field(default=None, repr=False)

    @cached_property
    def owner_coding(self) -> tuple[tuple[str, ...], IntArray]:
        """The owners (sorted, each owning some KR) and per KR its owner's position among
        them, -1 for a KR without an owner: ``kr_owner`` in integers."""
        if self.owner_coding_given is not None:
            return self.owner_coding_given
        present: set[str | None] = set(self.kr_owner)
        present.discard(None)
        names: list[str] = sorted(present)  # type: ignore[arg-type]  # None discarded above
        pos: dict[str | None, int] = dict(zip(names, range(len(names)), strict=True))
        pos[None] = -1
        code = np.fromiter(map(pos.__getitem__, self.kr_owner), np.int64, len(self.kr_owner))
        return tuple(names), code

    @property
    def n_grades(self) -> int:
        return int(self.grade.shape[0])

    @property
    def n_krs(self) -> int:
        return len(self.kr_ids)

    @property
    def n_graders(self) -> int:
        return len(self.grader_ids)

    @property
    def has_evidence(self) -> BoolArray:
        """Per KR: True where an evidence grade exists."""
        return np.isfinite(self.evidence)

    @classmethod
    def from_records(
        cls,
        records: Iterable[GradeRecord],
        scale: Scale,
        *,
        evidence: Mapping[str, float] | None = None,
        owners: Mapping[str, str] | None = None,
        weights: Mapping[str, float] | None = None,
    ) -> GradeTable:
        """Validate and index grade records.

        Parameters
        ----------
        records
            The grades, on ``scale``.
        scale
            The input scale; every grade must lie inside it.
        evidence
            Evidence grades by KR id, on Google's 0–1 scale (as the anchors produce
            them); converted to ``scale`` through the anchor levels. KRs that appear
            only here (no grade) are ignored.
        owners, weights
            Owner and weight by KR id. An owner given on a grade record wins over
            none, but two different owners for one KR are an error.

        Raises
        ------
        InputError
            Grades outside the scale or not finite, empty or over-long ids, the same
            (kr_id, grader_id) twice in one cycle, no grades at all, conflicting owners,
            evidence or weights that are not finite.
        """
        recs: Sequence[GradeRecord] = records if isinstance(records, Sequence) else list(records)
        if not recs:
            raise InputError("no grades given", field="grade")
        kr_pos: dict[str, int] = {}
        grader_pos: dict[str, int] = {}
        owner_of: dict[str, str | None] = {}
        seen: dict[tuple[str | None, str, str], int] = {}
        kr_idx = np.empty(len(recs), dtype=np.int64)
        gr_idx = np.empty(len(recs), dtype=np.int64)
        vals = np.empty(len(recs), dtype=np.float64)
        cycles: set[str] = set()
        for row0, rec in enumerate(recs):
            row = row0 + 1
            kr = _check_id(rec.kr_id, "kr_id", row)
            gr = _check_id(rec.grader_id, "grader_id", row)
            if rec.owner_id is not None:
                _check_id(rec.owner_id, "owner_id", row)
            if rec.cycle is not None:
                _check_id(rec.cycle, "cycle", row)
                cycles.add(rec.cycle)
            g = rec.grade
            if isinstance(g, bool) or not isinstance(g, int | float) or not math.isfinite(g):
                raise InputError(f"grade {g!r} is not a finite number", field="grade", row=row)
            if not scale.low <= g <= scale.high:
                raise InputError(
                    f"grade {g} is outside the {scale.name} scale [{scale.low:g}, {scale.high:g}]",
                    field="grade",
                    row=row,
                )
            key = (rec.cycle, kr, gr)
            if key in seen:
                raise InputError(
                    f"grader {gr!r} graded KR {kr!r} twice in one cycle (first at row {seen[key]})",
                    field="grader_id",
                    row=row,
                )
            seen[key] = row
            kr_idx[row0] = kr_pos.setdefault(kr, len(kr_pos))
            gr_idx[row0] = grader_pos.setdefault(gr, len(grader_pos))
            vals[row0] = float(g)
            if rec.owner_id is not None:
                prev = owner_of.get(kr)
                if prev is not None and prev != rec.owner_id:
                    raise InputError(
                        f"KR {kr!r} has two owners: {prev!r} and {rec.owner_id!r}",
                        field="owner_id",
                        row=row,
                    )
                owner_of[kr] = rec.owner_id
        return cls._assemble_sorted(
            scale,
            *_canonical(kr_pos, grader_pos, kr_idx, gr_idx, vals),
            owner_of,
            evidence,
            owners,
            weights,
            cycles,
        )

    @classmethod
    def from_arrays(
        cls,
        kr_ids: Sequence[str],
        grader_ids: Sequence[str],
        grades: npt.ArrayLike,
        scale: Scale,
        *,
        evidence: Mapping[str, float] | None = None,
        owners: Mapping[str, str] | None = None,
        weights: Mapping[str, float] | None = None,
        cycles: Sequence[str | None] | None = None,
    ) -> GradeTable:
        """Vectorised builder for large tables. Same checks as :meth:`from_records`.

        ``cycles`` (one per grade, optional) allows the same grader to grade the same KR
        once per cycle.
        """
        vals = np.asarray(grades, dtype=np.float64)
        n = vals.shape[0]
        if n == 0:
            raise InputError("no grades given", field="grade")
        if len(kr_ids) != n or len(grader_ids) != n:
            raise InputError("kr_ids, grader_ids and grades differ in length", field="grade")
        if cycles is not None and len(cycles) != n:
            raise InputError("cycles and grades differ in length", field="cycle")
        kr_names, kr_codes = factorise(kr_ids)
        gr_names, gr_codes = factorise(grader_ids)
        cyc = None if cycles is None else factorise(cycles)
        return cls.from_codes(
            kr_names,
            kr_codes,
            gr_names,
            gr_codes,
            vals,
            scale,
            evidence=evidence,
            owners=owners,
            weights=weights,
            cycles=cyc,
        )

    @classmethod
    def from_codes(
        cls,
        kr_ids: Sequence[str],
        kr_index: IntArray,
        grader_ids: Sequence[str],
        grader_index: IntArray,
        grades: FloatArray,
        scale: Scale,
        *,
        evidence: Mapping[str, float] | None = None,
        owners: Mapping[str, str] | None = None,
        weights: Mapping[str, float] | None = None,
        cycles: tuple[Sequence[str | None], IntArray] | None = None,
        owner_codes: tuple[Sequence[str], IntArray] | None = None,
    ) -> GradeTable:
        """The fastest builder: ids already coded. Same checks and result as :meth:`from_arrays`.

        ``kr_ids`` and ``grader_ids`` hold distinct ids, each used by some grade (sorted
        is fastest); grade ``i`` is by grader ``grader_ids[grader_index[i]]`` of KR
        ``kr_ids[kr_index[i]]``. ``cycles``, when given, is ``(cycle ids, cycle index)``
        alike (``None`` for a grade without a cycle). :func:`factorise` makes these.
        ``owner_codes``, instead of ``owners``, is ``(owner ids, per KR of kr_ids the
        position of its owner, -1 for none)``; owner ids no KR uses are left out.

        >>> from anchors.scales import parse_scale
        >>> t = GradeTable.from_codes(["k1", "k2"], np.array([1, 0]), ["g"], np.array([0, 0]),
        ...                           np.array([0.2, 0.9]), parse_scale("google"))
        >>> t.kr_ids, t.grade.tolist()
        (('k1', 'k2'), [0.9, 0.2])
        """
        vals = np.asarray(grades, dtype=np.float64)
        ki = np.asarray(kr_index, dtype=np.int64)
        gi = np.asarray(grader_index, dtype=np.int64)
        n = vals.shape[0]
        _check_codes(kr_ids, ki, n, "kr_index", all_used=True)
        _check_codes(grader_ids, gi, n, "grader_index", all_used=True)
        ci: IntArray | None = None
        cycle_ids: Sequence[str | None] = ()
        if cycles is not None:
            cycle_ids, ci = cycles[0], np.asarray(cycles[1], dtype=np.int64)
            _check_codes(cycle_ids, ci, n, "cycle index", all_used=False)
        if n == 0:
            raise InputError("no grades given", field="grade")
        if owner_codes is not None and owners is not None:
            raise ValueError("give owners or owner_codes, not both")
        kr_names, kr_remap = _sorted_names(kr_ids)
        coding = None if owner_codes is None else _owner_coding(owner_codes, len(kr_ids), kr_remap)
        gr_names, gr_remap = _sorted_names(grader_ids)
        ki = kr_remap[ki] if kr_remap is not None else ki
        gi = gr_remap[gi] if gr_remap is not None else gi

        def first_error() -> None:
            # The per-grade checks find the first bad row and word the message alike.
            _first_error(
                [kr_names[c] for c in ki.tolist()],
                [gr_names[c] for c in gi.tolist()],
                vals,
                scale,
                None if ci is None else [cycle_ids[c] for c in ci.tolist()],
            )

        if not (
            np.isfinite(vals).all()
            and ((vals >= scale.low) & (vals <= scale.high)).all()
            and _ids_ok(kr_names)
            and _ids_ok(gr_names)
            and _ids_ok([c for c in cycle_ids if c is not None])
        ):
            first_error()  # raises, unless only the vectorised test was too strict
        pair = ki * len(gr_names) + gi
        if ci is None:
            # pairs are unique (checked next), so this is the (KR, grader, grade) order
            order = np.argsort(pair, kind="stable")
            key = pair[order]
        else:
            order = np.lexsort((vals, pair))
            key = np.sort(pair * max(len(cycle_ids), 1) + ci)
        if (key[1:] == key[:-1]).any():
            first_error()
            raise AssertionError("a repeated grade that the checks missed")  # pragma: no cover
        cycle_set: set[str] = set()
        if ci is not None:
            # a cycle id given but used by no grade is not one of the table's cycles
            used = np.bincount(ci, minlength=len(cycle_ids)).astype(bool).tolist()
            cycle_set = {c for c, u in zip(cycle_ids, used, strict=True) if u and c is not None}
        return cls._assemble_sorted(
            scale,
            kr_names,
            gr_names,
            ki[order],
            gi[order],
            vals[order],
            {},
            evidence,
            owners,
            weights,
            cycle_set,
            coding,
        )

    @classmethod
    def _assemble_sorted(
        cls,
        scale: Scale,
        kr_names: list[str],
        gr_names: list[str],
        ki: IntArray,
        gi: IntArray,
        vals: FloatArray,
        owner_of: dict[str, str | None],
        evidence: Mapping[str, float] | None,
        owners: Mapping[str, str] | None,
        weights: Mapping[str, float] | None,
        cycles: set[str],
        owner_coding: tuple[tuple[str, ...], IntArray] | None = None,
    ) -> GradeTable:
        """The table from grades in canonical order (ids sorted; by KR, grader, grade)."""
        ev = _per_kr(kr_names, evidence, np.nan, _check_evidence)
        known = np.isfinite(ev)
        ev[known] = scale.from_google(ev[known])
        if owner_coding is None:
            owner_list = _owner_list(kr_names, owner_of, owners or {})
        else:
            names_or_none: list[str | None] = [*owner_coding[0], None]  # code -1: None
            owner_list = list(map(names_or_none.__getitem__, owner_coding[1].tolist()))
        w = _per_kr(kr_names, weights, 1.0, _check_weight)

        digest = hashlib.sha256()
        digest.update(msgspec.json.encode([scale.name, scale.low, scale.high, list(scale.levels)]))
        digest.update(msgspec.json.encode(kr_names))
        digest.update(msgspec.json.encode(gr_names))
        digest.update(ki.tobytes())
        digest.update(gi.tobytes())
        digest.update(vals.tobytes())
        digest.update(ev.tobytes())
        digest.update(msgspec.json.encode(owner_list))
        digest.update(w.tobytes())
        digest.update(msgspec.json.encode(sorted(cycles)))
        return cls(
            scale=scale,
            kr_ids=tuple(kr_names),
            grader_ids=tuple(gr_names),
            kr_index=ki,
            grader_index=gi,
            grade=vals,
            evidence=ev,
            kr_owner=tuple(owner_list),
            kr_weight=w,
            input_hash="sha256:" + digest.hexdigest(),
            cycles=tuple(sorted(cycles)),
            owner_coding_given=owner_coding,
        )


def _canonical(
    kr_pos: dict[str, int],
    grader_pos: dict[str, int],
    kr_idx: IntArray,
    gr_idx: IntArray,
    vals: FloatArray,
) -> tuple[list[str], list[str], IntArray, IntArray, FloatArray]:
    """Canonical order: KRs and graders sorted by id, grades by (kr, grader, grade), so
    that the table does not depend on the order of the input rows."""
    kr_names = sorted(kr_pos)
    gr_names = sorted(grader_pos)
    kr_remap = np.empty(len(kr_pos), dtype=np.int64)
    kr_remap[[kr_pos[k] for k in kr_names]] = np.arange(len(kr_names))
    gr_remap = np.empty(len(grader_pos), dtype=np.int64)
    gr_remap[[grader_pos[g] for g in gr_names]] = np.arange(len(gr_names))
    ki = kr_remap[kr_idx]
    gi = gr_remap[gr_idx]
    order = np.lexsort((vals, gi, ki))
    return kr_names, gr_names, ki[order], gi[order], vals[order]


def _check_evidence(kr: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InputError(f"evidence grade for KR {kr!r} is not a finite number", field="evidence")
    if not 0.0 <= value <= 1.0:
        raise InputError(
            f"evidence grade {value} for KR {kr!r} is outside [0, 1]", field="evidence"
        )


def _check_weight(kr: str, value: object) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < 0
    ):
        raise InputError(f"weight for KR {kr!r} must be a finite number >= 0", field="weight")


def _per_kr(
    kr_names: Sequence[str],
    values: Mapping[str, float] | None,
    default: float,
    check: Callable[[str, object], None],
) -> FloatArray:
    """Per KR (sorted ids): its value from ``values``, else ``default``; checked by ``check``.

    Values for KRs that are not in the table are ignored. Plain floats that all pass
    the check are looked up in one go; otherwise each value of the table's KRs is
    checked in the mapping's order, so that the error names the first bad one.
    """
    out = np.full(len(kr_names), default)
    if not values:
        return out
    given = list(values.values())
    if set(map(type, given)) <= {float}:
        arr = np.array(given, dtype=np.float64)
        if np.isfinite(arr).all() and _passes(check, arr.min()) and _passes(check, arr.max()):
            # None (no value for the KR) becomes NaN, which no checked value is
            found = np.array(list(map(values.get, kr_names)), dtype=np.float64)
            mask = ~np.isnan(found)
            out[mask] = found[mask]
            return out
    pos = dict(zip(kr_names, range(len(kr_names)), strict=True))
    for kr, value in values.items():
        i = pos.get(kr)
        if i is None:
            continue
        check(kr, value)
        out[i] = float(value)
    return out


def _passes(check: Callable[[str, object], None], value: np.float64) -> bool:
    try:
        check("", float(value))
    except InputError:
        return False
    return True


def _owner_coding(
    owner_codes: tuple[Sequence[str], IntArray], n_krs: int, kr_remap: IntArray | None
) -> tuple[tuple[str, ...], IntArray]:
    """``owner_codes`` (per KR as given) as :attr:`GradeTable.owner_coding`: per KR in
    sorted order, owners sorted, only those some KR uses; owner ids checked."""
    names, code = owner_codes[0], np.asarray(owner_codes[1], dtype=np.int64)
    if code.shape != (n_krs,) or (n_krs and (code.min() < -1 or code.max() >= len(names))):
        raise ValueError("owner_codes must give one owner position (or -1) per KR")
    if len(set(names)) != len(names):
        raise ValueError("owner_codes: the owner ids must be distinct")
    if kr_remap is not None:
        moved = np.empty_like(code)
        moved[kr_remap] = code
        code = moved
    used = np.flatnonzero(np.bincount(code[code >= 0], minlength=len(names)))
    kept = [names[i] for i in used.tolist()]
    if not _ids_ok(kept):
        for owner in kept:
            _check_id(owner, "owner_id", None)  # raises at the first bad one, with the reason
    ordered, remap = _sorted_names(kept)
    new = np.full(len(names) + 1, -1, dtype=np.int64)  # the last slot takes code -1
    new[used] = np.arange(used.shape[0]) if remap is None else remap
    return tuple(ordered), new[code]


def _owner_list(
    kr_names: Sequence[str], owner_of: Mapping[str, str | None], owners: Mapping[str, str]
) -> list[str | None]:
    """Per KR: the owner from the grades (``owner_of``) or else from ``owners``; one at most."""
    given: list[str | None] = list(map(owners.get, kr_names))
    if not owner_of and _ids_ok(list({g for g in given if g is not None})):
        return given
    owner_list: list[str | None] = []
    for kr, giv in zip(kr_names, given, strict=True):
        rec_owner = owner_of.get(kr)
        if giv is not None:
            _check_id(giv, "owner_id", None)
        if rec_owner is not None and giv is not None and rec_owner != giv:
            raise InputError(
                f"KR {kr!r} has two owners: {rec_owner!r} and {giv!r}", field="owner_id"
            )
        owner_list.append(rec_owner if rec_owner is not None else giv)
    return owner_list
