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

import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import msgspec
import numpy as np
import numpy.typing as npt

from anchors.scales import Scale
from calibrate.errors import InputError

__all__ = ["MAX_ID_LENGTH", "GradeRecord", "GradeTable"]

#: Longest id accepted for KRs, graders and owners.
MAX_ID_LENGTH = 200

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]


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
        return cls._assemble(
            scale,
            kr_pos,
            grader_pos,
            kr_idx,
            gr_idx,
            vals,
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
        bad = ~np.isfinite(vals)
        if bad.any():
            row = int(np.argmax(bad)) + 1
            raise InputError(
                f"grade {vals[row - 1]} is not a finite number", field="grade", row=row
            )
        out = (vals < scale.low) | (vals > scale.high)
        if out.any():
            row = int(np.argmax(out)) + 1
            raise InputError(
                f"grade {vals[row - 1]:g} is outside the {scale.name} scale "
                f"[{scale.low:g}, {scale.high:g}]",
                field="grade",
                row=row,
            )
        # dict-based coding: much faster than sorting 1M Python strings with numpy
        kr_map: dict[str, int] = {}
        gr_map: dict[str, int] = {}
        kr_idx = np.fromiter((kr_map.setdefault(k, len(kr_map)) for k in kr_ids), np.int64, n)
        gr_idx = np.fromiter((gr_map.setdefault(g, len(gr_map)) for g in grader_ids), np.int64, n)
        for mapping, codes, fname in ((kr_map, kr_idx, "kr_id"), (gr_map, gr_idx, "grader_id")):
            for name, code in mapping.items():
                if not isinstance(name, str) or not name.strip() or len(name) > MAX_ID_LENGTH:
                    _check_id(name, fname, int(np.argmax(codes == code)) + 1)
        pair = kr_idx * len(gr_map) + gr_idx
        cycle_set: set[str] = set()
        if cycles is not None:
            if len(cycles) != n:
                raise InputError("cycles and grades differ in length", field="cycle")
            cyc_map: dict[str | None, int] = {}
            cyc_idx = np.fromiter(
                (cyc_map.setdefault(c, len(cyc_map)) for c in cycles), np.int64, n
            )
            for cyc, code in cyc_map.items():
                if cyc is not None:
                    _check_id(cyc, "cycle", int(np.argmax(cyc_idx == code)) + 1)
                    cycle_set.add(cyc)
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
        return cls._assemble(
            scale, kr_map, gr_map, kr_idx, gr_idx, vals, {}, evidence, owners, weights, cycle_set
        )

    @classmethod
    def _assemble(
        cls,
        scale: Scale,
        kr_pos: dict[str, int],
        grader_pos: dict[str, int],
        kr_idx: IntArray,
        gr_idx: IntArray,
        vals: FloatArray,
        owner_of: dict[str, str | None],
        evidence: Mapping[str, float] | None,
        owners: Mapping[str, str] | None,
        weights: Mapping[str, float] | None,
        cycles: set[str],
    ) -> GradeTable:
        # Canonical order: KRs and graders sorted by id, grades by (kr, grader), so that
        # the result does not depend on the order of the input rows.
        kr_names = sorted(kr_pos)
        gr_names = sorted(grader_pos)
        kr_remap = np.empty(len(kr_pos), dtype=np.int64)
        kr_remap[[kr_pos[k] for k in kr_names]] = np.arange(len(kr_names))
        gr_remap = np.empty(len(grader_pos), dtype=np.int64)
        gr_remap[[grader_pos[g] for g in gr_names]] = np.arange(len(gr_names))
        ki = kr_remap[kr_idx]
        gi = gr_remap[gr_idx]
        order = np.lexsort((vals, gi, ki))
        ki, gi, vals = ki[order], gi[order], vals[order]

        ev = np.full(len(kr_names), np.nan)
        for kr, value in (evidence or {}).items():
            pos = kr_pos.get(kr)
            if pos is None:
                continue
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
            ):
                raise InputError(
                    f"evidence grade for KR {kr!r} is not a finite number", field="evidence"
                )
            if not 0.0 <= value <= 1.0:
                raise InputError(
                    f"evidence grade {value} for KR {kr!r} is outside [0, 1]", field="evidence"
                )
            ev[kr_remap[pos]] = scale.from_google(float(value))

        owner_list: list[str | None] = []
        for kr in kr_names:
            rec_owner = owner_of.get(kr)
            given = (owners or {}).get(kr)
            if given is not None:
                _check_id(given, "owner_id", None)
            if rec_owner is not None and given is not None and rec_owner != given:
                raise InputError(
                    f"KR {kr!r} has two owners: {rec_owner!r} and {given!r}", field="owner_id"
                )
            owner_list.append(rec_owner if rec_owner is not None else given)

        w = np.ones(len(kr_names))
        for kr, value in (weights or {}).items():
            pos = kr_pos.get(kr)
            if pos is None:
                continue
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
                or value < 0
            ):
                raise InputError(
                    f"weight for KR {kr!r} must be a finite number >= 0", field="weight"
                )
            w[kr_remap[pos]] = float(value)

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
        )
