"""Service settings: one frozen struct, read once from the environment and the CLI flags.

Settings hold values only; they never open a connection or start a server.
Environment variables (flags given on the command line win over them):

========================  ==========================================  ==================
variable                  meaning                                     default
========================  ==========================================  ==================
``REDIS_URL``             Redis to use; unset = embedded Redis        unset
``OKRCAL_DATA_DIR``       data directory of the embedded Redis        ``./data``
``OKRCAL_HOST``           address to listen on                        ``127.0.0.1``
``OKRCAL_PORT``           port to listen on                           ``8080``
``OKRCAL_WORKERS``        HTTP worker processes                       ``2``
``OKRCAL_RUN_WORKERS``    calibration workers inside the service      ``1``
``OKRCAL_MAX_BODY``       largest request body, bytes                 ``33554432``
``OKRCAL_RATE_LIMIT``     requests per second per API key             ``20000``
``OKRCAL_RUN_LEASE``      seconds a worker holds a run between beats  ``30``
``OKRCAL_RUN_ATTEMPTS``   attempts before a run is marked failed      ``3``
``OKRCAL_FIT_PROCESS``    fit in a child process (1) or a thread (0)  ``1``
``OKRCAL_RUN_SWEEP``      seconds between sweeps for lost runs        ``60``
``OKRCAL_WEBHOOK_ATTEMPTS``  webhook delivery attempts (1-100)        ``6``
``OKRCAL_WEBHOOK_BACKOFF``   seconds before the first retry, doubling ``1``
``OKRCAL_REDIS_FSYNC``    embedded Redis fsync: always, everysec      ``always``
========================  ==========================================  ==================
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import msgspec

__all__ = ["Settings", "SettingsError"]


class SettingsError(ValueError):
    """A setting with an invalid value; the message names the variable."""


class Settings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Everything the service needs to start, fixed for the life of the process."""

    redis_url: str | None = None
    data_dir: str = "data"
    host: str = "127.0.0.1"
    port: int = 8080
    #: HTTP worker processes; two beat one on the 2-core target (benchmarks/RESULTS.md, HTTP).
    workers: int = 2
    #: Calibration workers run inside the service process (0 = only ``okrcal worker``).
    run_workers: int = 1
    max_body_bytes: int = 32 * 1024 * 1024
    #: Requests per second allowed per API key unless the key carries its own limit.
    rate_limit: int = 20_000
    #: Seconds a run's lease lasts; a worker renews it while the fit runs.
    run_lease_seconds: float = 30.0
    #: Attempts before a run whose workers keep dying is marked failed.
    run_max_attempts: int = 3
    #: How long an ``Idempotency-Key`` is remembered.
    idempotency_ttl_seconds: int = 24 * 3600
    #: Largest number of rows in one bulk upsert.
    max_bulk_rows: int = 10_000
    #: Seconds between a worker's sweeps for runs whose queue entry was lost.
    run_sweep_seconds: float = 60.0
    #: Attempts at delivering one webhook event before it is logged as given up.
    webhook_attempts: int = 6
    #: Seconds before the first webhook retry; each further retry waits twice as long.
    webhook_backoff_seconds: float = 1.0
    #: Fit in a child process (isolated, off the GIL) rather than a thread of the service.
    fit_in_subprocess: bool = True
    #: fsync policy of the embedded Redis: ``always`` (acknowledged = on disk) or ``everysec``.
    redis_fsync: Literal["always", "everysec"] = "always"

    def __post_init__(self) -> None:
        checks = (
            ("port", 0 <= self.port <= 65535),
            ("workers", self.workers >= 1),
            ("run_workers", self.run_workers >= 0),
            ("max_body_bytes", self.max_body_bytes >= 1024),
            ("rate_limit", self.rate_limit >= 1),
            ("run_lease_seconds", self.run_lease_seconds > 0),
            ("run_max_attempts", self.run_max_attempts >= 1),
            ("idempotency_ttl_seconds", self.idempotency_ttl_seconds >= 1),
            ("max_bulk_rows", self.max_bulk_rows >= 1),
        )
        for name, ok in checks:
            if not ok:
                raise SettingsError(f"setting {name}={getattr(self, name)!r} is out of range")
        for name, var, low, high in _BOUNDS:
            value = getattr(self, name)
            if not (math.isfinite(value) and low <= value <= high):
                raise SettingsError(
                    f"{var} (setting {name}) must be between {low:g} and {high:g}, got {value!r}"
                )

    @property
    def data_path(self) -> Path:
        """The data directory as an absolute path."""
        return Path(self.data_dir).expanduser().resolve()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read the environment once; keyword ``overrides`` (CLI flags) win where not None.

        >>> Settings.from_env({"OKRCAL_PORT": "9000"}).port
        9000
        """
        env = os.environ if environ is None else environ
        raw: dict[str, Any] = {}
        if env.get("REDIS_URL"):
            raw["redis_url"] = env["REDIS_URL"]
        for name, var, kind in _ENV_VARS:
            value = env.get(var)
            if value is None or value == "":
                continue
            try:
                raw[name] = kind(value)
            except ValueError as exc:
                name_of = getattr(kind, "__name__", "value")
                raise SettingsError(f"{var}={value!r} is not a valid {name_of}") from exc
        raw.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return msgspec.convert(raw, cls)
        except msgspec.ValidationError as exc:
            raise SettingsError(str(exc)) from exc


def _flag(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(value)


_flag.__name__ = "flag (1/0)"

#: Settings checked against a range, named with their variable in the error.
_BOUNDS: tuple[tuple[str, str, float, float], ...] = (
    ("run_sweep_seconds", "OKRCAL_RUN_SWEEP", 0.01, 86400.0),
    ("webhook_attempts", "OKRCAL_WEBHOOK_ATTEMPTS", 1, 100),
    ("webhook_backoff_seconds", "OKRCAL_WEBHOOK_BACKOFF", 0.001, 3600.0),
)

_ENV_VARS: tuple[tuple[str, str, Callable[[str], Any]], ...] = (
    ("data_dir", "OKRCAL_DATA_DIR", str),
    ("host", "OKRCAL_HOST", str),
    ("port", "OKRCAL_PORT", int),
    ("workers", "OKRCAL_WORKERS", int),
    ("run_workers", "OKRCAL_RUN_WORKERS", int),
    ("max_body_bytes", "OKRCAL_MAX_BODY", int),
    ("rate_limit", "OKRCAL_RATE_LIMIT", int),
    ("run_lease_seconds", "OKRCAL_RUN_LEASE", float),
    ("run_max_attempts", "OKRCAL_RUN_ATTEMPTS", int),
    ("fit_in_subprocess", "OKRCAL_FIT_PROCESS", _flag),
    ("run_sweep_seconds", "OKRCAL_RUN_SWEEP", float),
    ("webhook_attempts", "OKRCAL_WEBHOOK_ATTEMPTS", int),
    ("webhook_backoff_seconds", "OKRCAL_WEBHOOK_BACKOFF", float),
    ("redis_fsync", "OKRCAL_REDIS_FSYNC", str),
)
