"""``okrcal keys``: create, list and revoke API keys from the command line.

``create`` bootstraps the first ``admin`` key of an organisation; the key is printed
once and never stored. Without ``REDIS_URL`` the embedded Redis of ``--data-dir`` is
used: the running service's if there is one, else started for the command and stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from service.auth import new_api_key
from service.embedded import EmbeddedRedis, EmbeddedRedisError
from service.keys import ORG_PATTERN
from service.schemas import SCOPES
from service.settings import Settings, SettingsError
from service.store import RedisStore

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Subcommands ``create``, ``list`` and ``revoke``."""
    sub = parser.add_subparsers(dest="action", required=True)
    create = sub.add_parser("create", help="create a key and print it once")
    create.add_argument("--org", required=True, help="organisation the key belongs to")
    create.add_argument(
        "--scope", action="append", required=True, choices=SCOPES, help="repeat for several"
    )
    create.add_argument("--name", help="a label for the key")
    create.add_argument("--rate-limit", type=int, help="requests per second (default: service's)")
    listing = sub.add_parser("list", help="list an organisation's keys")
    listing.add_argument("--org", required=True)
    revoke = sub.add_parser("revoke", help="revoke a key by its id")
    revoke.add_argument("--org", required=True)
    revoke.add_argument("--key-id", required=True)
    for p in (create, listing, revoke):
        p.add_argument("--data-dir", help="data directory of the embedded Redis")


async def _act(args: argparse.Namespace, url: str) -> int:
    store = RedisStore(url)
    try:
        if args.action == "create":
            try:
                key, record = new_api_key(
                    args.org, args.scope, name=args.name, rate_limit=args.rate_limit
                )
            except ValueError as exc:
                print(f"okrcal keys: {exc}", file=sys.stderr)
                return 2
            await store.add_api_key(record)
            print(key)
            print(
                f"key id {record.key_id}, org {record.org}, scopes {','.join(record.scopes)}; "
                "the key is shown only now",
                file=sys.stderr,
            )
        elif args.action == "list":
            for r in await store.list_api_keys(args.org):
                state = "revoked" if r.revoked_us is not None else "active"
                print(f"{r.key_id}\t{state}\t{','.join(r.scopes)}\t{r.name or ''}")
        else:
            if await store.revoke_api_key(args.org, args.key_id, 0) is None:
                print(f"okrcal keys: no key {args.key_id!r} in {args.org!r}", file=sys.stderr)
                return 2
            print(f"revoked {args.key_id}")
        return 0
    finally:
        await store.close()


def run(args: argparse.Namespace) -> int:
    """Run the chosen action. Exit 2 for bad input, 1 when Redis cannot be reached."""
    if not ORG_PATTERN.match(args.org):
        print(f"okrcal keys: invalid organisation id {args.org!r}", file=sys.stderr)
        return 2
    try:
        settings = Settings.from_env(data_dir=args.data_dir)
    except SettingsError as exc:
        print(f"okrcal keys: {exc}", file=sys.stderr)
        return 2
    if settings.redis_url is not None:
        return asyncio.run(_act(args, settings.redis_url))
    server = EmbeddedRedis(settings.data_path, fsync=settings.redis_fsync)
    try:
        url = server.start()  # attaches to a running service's Redis if there is one
    except EmbeddedRedisError as exc:
        print(f"okrcal keys: {exc}", file=sys.stderr)
        return 1
    try:
        return asyncio.run(_act(args, url))
    finally:
        server.stop()  # only stops a server this command started
