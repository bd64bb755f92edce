"""A finished run's result tables read whole through the :class:`~service.store.Store`.

The sessions, the drift endpoints and the web pages all need every row of one result
table (KR scores, grader effects or owner achievements) of one run attempt; they read
it here, page by page, with the decoders made once.
"""

from __future__ import annotations

import msgspec

from calibrate import GraderEffect, KRScore, OwnerAchievement
from service.store import ResultPart, Store

__all__ = [
    "GRADER_DECODER",
    "KR_SCORE_DECODER",
    "OWNER_DECODER",
    "all_rows",
    "grader_effects",
    "kr_scores",
    "owner_achievements",
]

KR_SCORE_DECODER = msgspec.msgpack.Decoder(KRScore)
GRADER_DECODER = msgspec.msgpack.Decoder(GraderEffect)
OWNER_DECODER = msgspec.msgpack.Decoder(OwnerAchievement)
_PAGE = 5000


async def all_rows(
    store: Store, org: str, cycle: str, run_id: str, attempt: int, part: ResultPart
) -> list[bytes]:
    """Every stored row of one result table of a run attempt, in the table's order."""
    out: list[bytes] = []
    after: str | None = None
    while True:
        rows = await store.result_page(org, cycle, run_id, attempt, part, after, _PAGE)
        out.extend(raw for _, raw in rows)
        if len(rows) < _PAGE:
            return out
        after = rows[-1][0]


async def kr_scores(store: Store, org: str, cycle: str, run_id: str, attempt: int) -> list[KRScore]:
    """Every KR score of a run attempt."""
    rows = await all_rows(store, org, cycle, run_id, attempt, "krs")
    return [KR_SCORE_DECODER.decode(raw) for raw in rows]


async def grader_effects(
    store: Store, org: str, cycle: str, run_id: str, attempt: int
) -> list[GraderEffect]:
    """Every grader effect of a run attempt."""
    rows = await all_rows(store, org, cycle, run_id, attempt, "graders")
    return [GRADER_DECODER.decode(raw) for raw in rows]


async def owner_achievements(
    store: Store, org: str, cycle: str, run_id: str, attempt: int
) -> list[OwnerAchievement]:
    """Every owner achievement of a run attempt."""
    rows = await all_rows(store, org, cycle, run_id, attempt, "owners")
    return [OWNER_DECODER.decode(raw) for raw in rows]
