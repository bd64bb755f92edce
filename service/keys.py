"""Every Redis key name okrcal uses, built here and nowhere else.

Layout (``{org}`` is a Redis Cluster hash tag: one organisation's keys share a slot,
so the Lua scripts that touch several of them stay legal on a cluster)::

    okrcal:{acme}:clock                        last change timestamp (µs), keeps them unique
    okrcal:{acme}:grades:2026Q3                hash "kr_id\\x1fgrader_id" -> grade (msgpack)
    okrcal:{acme}:grades:2026Q3:upd            zset pair -> change timestamp (µs)
    okrcal:{acme}:grades:2026Q3:ver            hash pair -> changes so far (version - 1)
    okrcal:{acme}:grades:2026Q3:hist           hash "pair\\x1fversion" -> "µs:old grade"
    okrcal:{acme}:krs:2026Q3 (+ :upd :ver :hist)   the same for Key Results
    okrcal:{acme}:cycle:2026Q3                 hash: scale of the cycle, lock state
    okrcal:{acme}:idem:grades:2026Q3:<key>     a remembered Idempotency-Key
    okrcal:{acme}:runs:2026Q3                  zset run id -> creation time
    okrcal:{acme}:run:2026Q3:<run>             hash: run status, lease and summary
    okrcal:{acme}:run:2026Q3:<run>:a1:fit      msgpack fit of attempt 1
    okrcal:{acme}:run:2026Q3:<run>:a1:owners   hash owner -> result (+ :owners:ix zset)
    okrcal:{acme}:published:2026Q3             "run_id:attempt" of the published run
    okrcal:{acme}:catalogue                    hash version -> TOML text, "current" -> version
    okrcal:{acme}:apikeys                      hash key id -> key record (what requests check)
    okrcal:{acme}:rl:<sha256 prefix>:<second>  per-key request counter
    okrcal:{auth}:key:<sha256>                 key record by hash of the secret (sign-in, and
                                               telling a key of another organisation from none)
    okrcal:{queue}:runs                        stream of runs to execute (consumer group)
    okrcal:{acme}:sessions:2026Q3              zset session id -> creation time
    okrcal:{acme}:session:2026Q3:<id>          hash: status, scope record, lock fields
    okrcal:{acme}:session:2026Q3:<id>:adj      hash kr_id -> current adjustment (msgpack)
    okrcal:{acme}:session:2026Q3:<id>:adjlog   list of every adjustment, oldest first
    okrcal:{acme}:final:2026Q3                 hash owner -> final achievement of a locked session
    okrcal:{acme}:audit                        stream: append-only audit log of sessions
    okrcal:{acme}:events                       stream of events (pull consumers use groups)
    okrcal:{acme}:webhooks                     hash endpoint id -> webhook endpoint
    okrcal:{acme}:deliveries                   stream: webhook delivery log
    okrcal:{queue}:webhooks                    stream of deliveries to make (consumer group)
    okrcal:{queue}:webhooks:retry              zset delivery job -> time it is due again
    okrcal:{auth}:web:<sha256>                 web-page session by hash of its cookie (expires)

Organisation and cycle ids are restricted to ``[A-Za-z0-9._-]`` (see :data:`ORG_PATTERN`),
so they cannot contain a brace and break the hash tag.
"""

from __future__ import annotations

import re

__all__ = [
    "CYCLE_PATTERN",
    "ORG_PATTERN",
    "RUN_GROUP",
    "RUN_STREAM",
    "RUN_SWEEP_LOCK",
    "WEBHOOK_GROUP",
    "WEBHOOK_RETRY",
    "WEBHOOK_STREAM",
    "Collection",
    "OrgKeys",
    "api_key",
    "web_session",
]

#: Organisation ids: what may appear inside the ``{org}`` hash tag.
ORG_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
#: Cycle ids, e.g. ``2026Q3``.
CYCLE_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

_PREFIX = "okrcal"
#: The stream of queued calibration runs, and its consumer group.
RUN_STREAM = f"{_PREFIX}:{{queue}}:runs"
RUN_GROUP = "okrcal-workers"
#: Held by the worker that sweeps lost runs, for one interval (beside the stream it reads).
RUN_SWEEP_LOCK = f"{RUN_STREAM}:sweep"
#: Webhook deliveries to make, their consumer group, and the deliveries waiting to retry.
WEBHOOK_STREAM = f"{_PREFIX}:{{queue}}:webhooks"
WEBHOOK_GROUP = "okrcal-webhooks"
WEBHOOK_RETRY = f"{_PREFIX}:{{queue}}:webhooks:retry"


def api_key(key_hash: str) -> str:
    """The record of an API key, found by the SHA-256 of its secret."""
    return f"{_PREFIX}:{{auth}}:key:{key_hash}"


def web_session(session_hash: str) -> str:
    """A web-page session, by the SHA-256 of its id (a dump reveals no live cookie).

    In the ``{auth}`` slot with the key records: a session is found before its org is known.
    """
    return f"{_PREFIX}:{{auth}}:web:{session_hash}"


class Collection:
    """The four keys of one upserted collection (grades or KRs) of one cycle."""

    __slots__ = ("data", "hist", "updated", "versions")

    def __init__(self, base: str) -> None:
        self.data = base
        self.updated = f"{base}:upd"
        self.versions = f"{base}:ver"
        self.hist = f"{base}:hist"

    def all(self) -> tuple[str, str, str, str]:
        """The keys in the order the upsert script expects them."""
        return (self.data, self.updated, self.versions, self.hist)


class OrgKeys:
    """Key names of one organisation."""

    __slots__ = ("org", "prefix")

    def __init__(self, org: str) -> None:
        if not ORG_PATTERN.match(org):
            raise ValueError(f"invalid organisation id {org!r}")
        self.org = org
        self.prefix = f"{_PREFIX}:{{{org}}}"

    @property
    def clock(self) -> str:
        return f"{self.prefix}:clock"

    @property
    def catalogue(self) -> str:
        return f"{self.prefix}:catalogue"

    @property
    def api_keys(self) -> str:
        return f"{self.prefix}:apikeys"

    def rate_counter(self, key_hash: str, second: int) -> str:
        """The request counter of one key in one second, in the slot of the key's organisation.

        Keyed by the hash of the presented secret, not by the key id it names, so a
        caller who knows only a key id cannot spend that key's allowance.
        """
        return f"{self.prefix}:rl:{key_hash[:24]}:{second}"

    def grades(self, cycle: str) -> Collection:
        return Collection(f"{self.prefix}:grades:{cycle}")

    def krs(self, cycle: str) -> Collection:
        return Collection(f"{self.prefix}:krs:{cycle}")

    def cycle(self, cycle: str) -> str:
        return f"{self.prefix}:cycle:{cycle}"

    def idempotency(self, kind: str, cycle: str, key: str) -> str:
        return f"{self.prefix}:idem:{kind}:{cycle}:{key}"

    def runs(self, cycle: str) -> str:
        return f"{self.prefix}:runs:{cycle}"

    def run_prefix(self, cycle: str) -> str:
        """What every run key of ``cycle`` starts with (a script completes result keys from it)."""
        return f"{self.prefix}:run:{cycle}:"

    def run(self, cycle: str, run_id: str) -> str:
        return f"{self.run_prefix(cycle)}{run_id}"

    def run_part(self, cycle: str, run_id: str, attempt: int, part: str) -> str:
        """Result part (``fit``, ``owners``, ``krs``, ``graders``, ``<part>:ix``) of an attempt."""
        return f"{self.run_prefix(cycle)}{run_id}:a{attempt}:{part}"

    def published(self, cycle: str) -> str:
        return f"{self.prefix}:published:{cycle}"

    def published_pattern(self) -> str:
        """SCAN pattern of the published-run pointers of every cycle (drift reads them)."""
        return f"{self.prefix}:published:*"

    def sessions(self, cycle: str) -> str:
        return f"{self.prefix}:sessions:{cycle}"

    def session(self, cycle: str, session_id: str) -> str:
        return f"{self.prefix}:session:{cycle}:{session_id}"

    def session_adjustments(self, cycle: str, session_id: str) -> str:
        return f"{self.session(cycle, session_id)}:adj"

    def session_adjustment_log(self, cycle: str, session_id: str) -> str:
        return f"{self.session(cycle, session_id)}:adjlog"

    def final_owners(self, cycle: str) -> str:
        return f"{self.prefix}:final:{cycle}"

    @property
    def audit(self) -> str:
        return f"{self.prefix}:audit"

    @property
    def events(self) -> str:
        return f"{self.prefix}:events"

    @property
    def webhooks(self) -> str:
        return f"{self.prefix}:webhooks"

    @property
    def deliveries(self) -> str:
        return f"{self.prefix}:deliveries"
