"""Reading a Redis Stream page by page, the way the audit export and the delivery log do.

Both read an organisation's stream in id order (oldest or newest first), decode each
entry into a struct, keep the entries that pass a filter, and stop at a limit. Paging
continues after the last id of a chunk (an exclusive ``(id`` bound), so an entry is
never read twice and a filter that keeps few entries still reaches the end.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

__all__ = ["read_stream"]

T = TypeVar("T")


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def read_stream(
    client: Any,
    key: str,
    decode: Callable[[bytes | str, Mapping[bytes, bytes]], T],
    keep: Callable[[T], bool],
    *,
    limit: int,
    after: str | None = None,
    newest_first: bool = False,
    chunk: int = 1000,
) -> list[T]:
    """Up to ``limit`` decoded entries of stream ``key`` that ``keep`` accepts.

    Oldest first (``XRANGE``) from after stream id ``after``, or newest first
    (``XREVRANGE``) from before it. ``decode(entry_id, fields)`` makes each entry.
    """
    out: list[T] = []
    bound: str | None = None if after is None else f"({after}"
    while len(out) < limit:
        if newest_first:
            page = await client.xrevrange(key, max=bound or "+", min="-", count=chunk)
        else:
            page = await client.xrange(key, min=bound or "-", max="+", count=chunk)
        if not page:
            break
        for entry_id, raw in page:
            item = decode(entry_id, raw)
            if keep(item):
                out.append(item)
                if len(out) >= limit:
                    break
        bound = f"({_s(page[-1][0])}"
    return out
