"""The audit log: an append-only Redis Stream per organisation, exported as JSON or CSV.

Every session event (created, what-if previewed, adjusted, locked, reopened) is
one stream entry. Entries that go with a change are written by the same Lua script
as the change (see :mod:`service.sessions`), so a change without its audit entry
cannot happen. Nothing in okrcal trims, edits or deletes the stream; no route does.

Entry fields: ``at_us`` (µs since the epoch), ``type``, ``cycle``, ``session_id``,
``actor_key_id``, ``actor_name`` and ``data`` (JSON: what changed, old and new values).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import msgspec

from service import keys as K  # noqa: N812 - read as "keys"
from service.store import ApiKeyRecord, Store
from service.streams import read_stream

__all__ = [
    "AUDIT_COLUMNS",
    "AuditEntry",
    "actor_fields",
    "append_audit",
    "audit_csv",
    "read_audit",
    "redis_of",
]

AUDIT_COLUMNS = (
    "id",
    "at",
    "type",
    "cycle",
    "session_id",
    "actor_key_id",
    "actor_name",
    "data",
)


class AuditEntry(msgspec.Struct, frozen=True, kw_only=True):
    """One audit entry; ``id`` is the stream id (time-ordered, unique)."""

    id: str
    at: datetime
    type: str
    cycle: str
    session_id: str
    actor_key_id: str
    actor_name: str | None
    data: dict[str, Any]


def redis_of(store: Store) -> Any:
    """The Redis client behind ``store`` (sessions, audit and events live next to its keys)."""
    client = getattr(store, "redis", None)
    if client is None:
        raise TypeError("sessions, audit and events need the Redis store")
    return client


def actor_fields(key: ApiKeyRecord) -> dict[str, str]:
    """Who did it, as audit fields: the API key's id and name."""
    return {"actor_key_id": key.key_id, "actor_name": key.name or ""}


async def append_audit(
    store: Store,
    org: str,
    *,
    kind: str,
    cycle: str,
    session_id: str,
    actor: ApiKeyRecord,
    data: dict[str, Any],
    at_us: int,
) -> str:
    """Append one entry (for events that change nothing; changes append in their script)."""
    fields = {
        "at_us": str(at_us),
        "type": kind,
        "cycle": cycle,
        "session_id": session_id,
        **actor_fields(actor),
        "data": msgspec.json.encode(data).decode(),
    }
    entry_id = await redis_of(store).xadd(K.OrgKeys(org).audit, fields)
    return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _entry(entry_id: bytes | str, raw: Mapping[bytes, bytes]) -> AuditEntry:
    f = {_s(k): _s(v) for k, v in raw.items()}
    return AuditEntry(
        id=_s(entry_id),
        at=datetime.fromtimestamp(int(f.get("at_us", "0")) / 1e6, UTC),
        type=f.get("type", ""),
        cycle=f.get("cycle", ""),
        session_id=f.get("session_id", ""),
        actor_key_id=f.get("actor_key_id", ""),
        actor_name=f.get("actor_name") or None,
        data=msgspec.json.decode(f.get("data", "{}")),
    )


async def read_audit(
    store: Store,
    org: str,
    *,
    cycle: str | None = None,
    session_id: str | None = None,
    after: str | None = None,
    limit: int = 10_000,
) -> list[AuditEntry]:
    """Entries oldest first, optionally of one cycle or session, after stream id ``after``."""

    def keep(e: AuditEntry) -> bool:
        return (cycle is None or e.cycle == cycle) and (
            session_id is None or e.session_id == session_id
        )

    key = K.OrgKeys(org).audit
    return await read_stream(redis_of(store), key, _entry, keep, limit=limit, after=after)


def audit_csv(entries: list[AuditEntry]) -> bytes:
    """The entries as CSV, one row each; ``data`` stays JSON in its column."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(AUDIT_COLUMNS)
    for e in entries:
        writer.writerow(
            [
                e.id,
                e.at.isoformat(),
                e.type,
                e.cycle,
                e.session_id,
                e.actor_key_id,
                e.actor_name or "",
                msgspec.json.encode(e.data).decode(),
            ]
        )
    return buf.getvalue().encode()
