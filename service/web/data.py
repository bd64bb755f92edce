"""What the web pages read: cycles, runs and results, through the :class:`~service.store.Store`.

The pages show the same numbers as the JSON API, read the same way (the published run
unless a run is named); this module only gathers them into one struct per page.
The one read the store port lacks, the list of an organisation's cycles, is a SCAN over
key names built by :mod:`service.keys`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec

from anchors import Scale, parse_scale
from calibrate import CalibrationFit, KRScore
from service import keys as K  # noqa: N812 - read as "keys"
from service.results import GRADER_DECODER, KR_SCORE_DECODER, OWNER_DECODER, all_rows
from service.schemas import GradeValue, KRIn
from service.store import ResultPart, Store

__all__ = [
    "CycleResults",
    "RunRow",
    "kr_grades",
    "kr_record",
    "kr_score",
    "list_cycles",
    "load_results",
    "load_runs",
    "read_part",
]

_fit_decoder = msgspec.msgpack.Decoder(CalibrationFit)
_grade_decoder = msgspec.msgpack.Decoder(GradeValue)
_kr_decoder = msgspec.msgpack.Decoder(KRIn)


class RunRow(msgspec.Struct, frozen=True, kw_only=True):
    """One run as the overview lists it."""

    run_id: str
    status: str
    model: str
    scale: str
    confidence: float
    created_at: datetime
    published: bool
    n_grades: int | None
    n_graders: int | None
    error: str | None


class CycleResults(msgspec.Struct, frozen=True, kw_only=True):
    """One run's results of a cycle: the fit overview and whichever tables were asked for."""

    cycle: str
    run_id: str
    attempt: int
    published: bool
    locked: bool
    fit: CalibrationFit
    scale: Scale


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def list_cycles(store: Store, org: str) -> list[str]:
    """The organisation's cycles: those with grades (a scale recorded) or runs, newest name last."""
    client: Any = getattr(store, "redis", None)
    if client is None:
        return []
    okeys = K.OrgKeys(org)
    found: set[str] = set()
    for pattern in (okeys.cycle("*"), okeys.runs("*")):
        prefix = pattern[:-1]
        async for name in client.scan_iter(match=pattern, count=500):
            found.add(_s(name)[len(prefix) :])
    return sorted(c for c in found if K.CYCLE_PATTERN.match(c))


async def load_runs(store: Store, org: str, cycle: str, limit: int = 50) -> list[RunRow]:
    """The cycle's runs, newest first, the published one marked."""
    runs = await store.list_runs(org, cycle, limit)
    published, _ = await store.published_run(org, cycle)
    pub_id = published[0] if published else None
    out = []
    for r in runs:
        out.append(
            RunRow(
                run_id=r["run_id"],
                status=r["status"],
                model=r.get("model", ""),
                scale=r.get("scale", ""),
                confidence=float(r.get("confidence") or 0.9),
                created_at=datetime.fromtimestamp(float(r["created_at"]), UTC),
                published=r["run_id"] == pub_id,
                n_grades=int(r["n_grades"]) if r.get("n_grades") else None,
                n_graders=int(r["n_graders"]) if r.get("n_graders") else None,
                error=r.get("error") or None,
            )
        )
    return out


async def load_results(
    store: Store, org: str, cycle: str, run_id: str | None
) -> tuple[CycleResults | None, str | None]:
    """The run to show (named, else the published one, else the newest done one) or why none.

    Returns the results and ``None``, or ``None`` and a sentence saying why there is nothing.
    """
    published, locked = await store.published_run(org, cycle)
    chosen: tuple[str, int] | None = None
    if run_id is not None:
        if published is not None and published[0] == run_id:
            chosen = published
        else:
            run = await store.get_run(org, cycle, run_id)
            if run is None:
                return None, f"no run {run_id!r} in cycle {cycle!r}"
            if run["status"] != "done":
                return None, f"run {run_id!r} is {run['status']}; it has no results"
            chosen = (run_id, int(run["result_attempt"]))
    elif published is not None:
        chosen = published
    else:
        for run in await store.list_runs(org, cycle, 50):
            if run["status"] == "done":
                chosen = (run["run_id"], int(run["result_attempt"]))
                break
        if chosen is None:
            return None, f"cycle {cycle!r} has no finished calibration run yet"
    raw = await store.run_fit(org, cycle, chosen[0], chosen[1])
    if raw is None:
        return None, f"the results of run {chosen[0]!r} are missing"
    fit = _fit_decoder.decode(raw)
    is_published = published is not None and published[0] == chosen[0]
    return (
        CycleResults(
            cycle=cycle,
            run_id=chosen[0],
            attempt=chosen[1],
            published=is_published,
            locked=locked and is_published,
            fit=fit,
            scale=parse_scale(fit.scale),
        ),
        None,
    )


async def read_part(store: Store, org: str, res: CycleResults, part: ResultPart) -> list[Any]:
    """Every row of one result table of the run: KR scores, grader effects or owners."""
    decoder: Any = {"krs": KR_SCORE_DECODER, "graders": GRADER_DECODER, "owners": OWNER_DECODER}[
        part
    ]
    rows = await all_rows(store, org, res.cycle, res.run_id, res.attempt, part)
    return [decoder.decode(raw) for raw in rows]


async def kr_score(store: Store, org: str, res: CycleResults, kr_id: str) -> KRScore | None:
    """One KR's calibrated score in the run, or None when the run did not score it."""
    raw = await store.result_item(org, res.cycle, res.run_id, res.attempt, "krs", kr_id)
    return None if raw is None else KR_SCORE_DECODER.decode(raw)


async def kr_grades(store: Store, org: str, cycle: str, kr_id: str) -> list[tuple[str, float]]:
    """Every current grade of one KR: (grader id, grade on the cycle's scale), by grader."""
    client: Any = getattr(store, "redis", None)
    prefix = f"{kr_id}\x1f"
    out: list[tuple[str, float]] = []
    if client is not None:
        # HSCAN with a prefix match reads only this KR's grades, not the cycle's.
        pattern = _glob_escape(prefix) + "*"
        data = K.OrgKeys(org).grades(cycle).data
        async for field, raw in client.hscan_iter(data, match=pattern, count=1000):
            out.append((_s(field)[len(prefix) :], _grade_decoder.decode(raw).grade))
    else:
        for key, raw in (await store.all_items(org, cycle, "grades")).items():
            if key.startswith(prefix):
                out.append((key[len(prefix) :], _grade_decoder.decode(raw).grade))
    return sorted(out)


async def kr_record(store: Store, org: str, cycle: str, kr_id: str) -> KRIn | None:
    """The stored KR (type, evidence, description), or None."""
    item = await store.get_item(org, cycle, "krs", kr_id)
    return None if item is None else _kr_decoder.decode(item.value)


def _glob_escape(text: str) -> str:
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in text)
