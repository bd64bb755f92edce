"""``okrcal serve``: the HTTP service, with an embedded Redis unless ``REDIS_URL`` is set.

The embedded Redis keeps its data in ``--data-dir`` and is stopped (saving) when the
service stops, whether by Ctrl-C or SIGTERM. The ASGI server is granian (chosen by
measurement against uvicorn: ``benchmarks/http_load.py``, figures in
``benchmarks/RESULTS.md``); with ``--workers N`` it runs N processes that each build the
app from the environment (:func:`app_from_env`).
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import signal
import sys

from litestar import Litestar

from service.embedded import EmbeddedRedis, EmbeddedRedisError
from service.settings import Settings, SettingsError

__all__ = ["add_arguments", "app_from_env", "run"]

_log = logging.getLogger("okrcal.serve")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``okrcal serve``; unset flags fall back to the environment, then defaults."""
    parser.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to listen on (default 8080)")
    parser.add_argument("--data-dir", help="directory of the embedded Redis (default ./data)")
    parser.add_argument("--workers", type=int, help="HTTP worker processes (default 2)")
    parser.add_argument(
        "--run-workers", type=int, help="calibration workers per process (default 1; 0 = none)"
    )


def app_from_env() -> Litestar:
    """The app built from the environment: the factory each server worker process calls."""
    from service.app import create_app
    from service.store import RedisStore

    settings = Settings.from_env()
    if settings.redis_url is None:
        raise SettingsError("REDIS_URL must be set for worker processes")
    app = create_app(settings, RedisStore(settings.redis_url))
    # The ~200,000 objects of the app (routes, schemas, modules) live as long as the
    # process: frozen, the garbage collector no longer walks them in every full
    # collection. Under GET load these took up to 120-160 ms each, and set the p99
    # (87-91 ms); frozen, the longest is 7-12 ms and p99 22-23 ms (benchmarks/http_load.py).
    gc.collect()
    gc.freeze()
    return app


def _exit_on_signal(_signum: int, _frame: object) -> None:
    raise SystemExit(0)


def run(args: argparse.Namespace) -> int:
    """Serve until interrupted. Exit 2 for bad settings, 1 when Redis cannot start."""
    from granian import Granian
    from granian.constants import HTTPModes, Interfaces, Loops
    from granian.log import LogLevels

    try:
        settings = Settings.from_env(
            host=args.host,
            port=args.port,
            data_dir=args.data_dir,
            workers=args.workers,
            run_workers=args.run_workers,
        )
    except SettingsError as exc:
        print(f"okrcal serve: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    embedded: EmbeddedRedis | None = None
    url = settings.redis_url
    if url is None:
        embedded = EmbeddedRedis(settings.data_path, fsync=settings.redis_fsync)
        try:
            url = embedded.start()
        except EmbeddedRedisError as exc:
            print(f"okrcal serve: {exc}", file=sys.stderr)
            return 1
        _log.info("embedded Redis on %s, data in %s", url, settings.data_path)
    # granian installs its own SIGINT/SIGTERM handlers once started and returns from
    # serve() after a graceful stop; a signal before that becomes SystemExit here, so
    # the finally clause below stops the embedded Redis either way.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    try:
        # Worker processes read the same settings from the environment.
        os.environ["REDIS_URL"] = url
        os.environ["OKRCAL_RUN_WORKERS"] = str(settings.run_workers)
        os.environ["OKRCAL_MAX_BODY"] = str(settings.max_body_bytes)
        os.environ["OKRCAL_RATE_LIMIT"] = str(settings.rate_limit)
        Granian(
            "service.cmd_serve:app_from_env",
            factory=True,
            address=settings.host,
            port=settings.port,
            interface=Interfaces.ASGI,
            workers=settings.workers,
            loop=Loops.auto,  # uvloop, a dependency of granian[uvloop]
            http=HTTPModes.http1,
            websockets=False,
            log_level=LogLevels.warning,
            log_access=False,
            workers_kill_timeout=10,
        ).serve()
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        if embedded is not None:
            embedded.stop()
            _log.info("embedded Redis stopped")
    return 0
