"""``okrcal worker``: calibration workers in a process of their own, to scale runs out.

They join the same Redis Streams consumer group as the service's in-process workers.
Redis is ``REDIS_URL``, or the embedded Redis of a running ``okrcal serve`` with the
same ``--data-dir``. SIGINT or SIGTERM finish the current run's bookkeeping and exit.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys

import anyio

from service.embedded import EmbeddedRedis
from service.runs import RunWorker
from service.settings import Settings, SettingsError
from service.store import RedisStore

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``okrcal worker``."""
    parser.add_argument("--data-dir", help="data directory of the service's embedded Redis")
    parser.add_argument("--concurrency", type=int, default=1, help="runs at a time (default 1)")


async def _work(url: str, settings: Settings, concurrency: int) -> None:
    store = RedisStore(url)
    stop = anyio.Event()
    try:
        async with anyio.create_task_group() as tg:
            for _ in range(concurrency):
                tg.start_soon(RunWorker(store, settings).run, stop)
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    stop.set()
                    break
    finally:
        await store.close()


def run(args: argparse.Namespace) -> int:
    """Work until a signal. Exit 2 for bad settings, 1 when there is no Redis to work from."""
    try:
        settings = Settings.from_env(data_dir=args.data_dir)
    except SettingsError as exc:
        print(f"okrcal worker: {exc}", file=sys.stderr)
        return 2
    if args.concurrency < 1:
        print("okrcal worker: --concurrency must be at least 1", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    url = settings.redis_url
    if url is None:
        server = EmbeddedRedis(settings.data_path)
        if not server.is_alive():
            print(
                f"okrcal worker: no Redis: set REDIS_URL or start `okrcal serve --data-dir "
                f"{settings.data_path}` first",
                file=sys.stderr,
            )
            return 1
        url = server.url
    anyio.run(_work, url, settings, args.concurrency)
    return 0
