"""Settings of webhook retries and of the run sweep: read from the environment, validated,
and what the webhook worker then does."""

from __future__ import annotations

import asyncio
import re

import anyio
import pytest

from service import keys as K  # noqa: N812 - read as "keys"
from service.events import WebhookWorker, emit
from service.settings import Settings, SettingsError
from service.store import RedisStore
from tests.service.test_events import Receiver, register_endpoint


def test_settings_read_from_the_environment() -> None:
    s = Settings.from_env(
        {
            "OKRCAL_WEBHOOK_ATTEMPTS": "3",
            "OKRCAL_WEBHOOK_BACKOFF": "0.25",
            "OKRCAL_RUN_SWEEP": "15",
        }
    )
    assert (s.webhook_attempts, s.webhook_backoff_seconds, s.run_sweep_seconds) == (3, 0.25, 15.0)
    d = Settings.from_env({})
    assert (d.webhook_attempts, d.webhook_backoff_seconds, d.run_sweep_seconds) == (6, 1.0, 60.0)


@pytest.mark.parametrize(
    ("var", "value", "message"),
    [
        ("OKRCAL_WEBHOOK_ATTEMPTS", "0", "OKRCAL_WEBHOOK_ATTEMPTS (setting webhook_attempts) must"),
        ("OKRCAL_WEBHOOK_ATTEMPTS", "101", "between 1 and 100, got 101"),
        ("OKRCAL_WEBHOOK_ATTEMPTS", "two", "OKRCAL_WEBHOOK_ATTEMPTS='two' is not a valid int"),
        ("OKRCAL_WEBHOOK_BACKOFF", "0", "OKRCAL_WEBHOOK_BACKOFF (setting webhook_backoff_seconds)"),
        ("OKRCAL_WEBHOOK_BACKOFF", "-1", "between 0.001 and 3600, got -1.0"),
        ("OKRCAL_WEBHOOK_BACKOFF", "nan", "got nan"),
        ("OKRCAL_WEBHOOK_BACKOFF", "inf", "got inf"),
        ("OKRCAL_RUN_SWEEP", "0", "OKRCAL_RUN_SWEEP (setting run_sweep_seconds) must be"),
    ],
)
def test_bad_values_are_refused_naming_the_variable(var: str, value: str, message: str) -> None:
    with pytest.raises(SettingsError, match=re.escape(message)):
        Settings.from_env({var: value})


def test_the_worker_takes_its_retries_from_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    store = RedisStore("redis://127.0.0.1:1")  # never connected here
    w = WebhookWorker(store, Settings(webhook_attempts=4, webhook_backoff_seconds=0.5))
    assert (w.max_attempts, w.backoff) == (4, 0.5)
    # what the service builds (``WebhookWorker(store)``): the environment's settings
    monkeypatch.setenv("OKRCAL_WEBHOOK_ATTEMPTS", "2")
    monkeypatch.setenv("OKRCAL_WEBHOOK_BACKOFF", "3")
    w = WebhookWorker(store)
    assert (w.max_attempts, w.backoff) == (2, 3.0)
    # arguments given to the worker win
    w = WebhookWorker(store, Settings(webhook_attempts=4), max_attempts=1, backoff_seconds=0.1)
    assert (w.max_attempts, w.backoff) == (1, 0.1)
    with pytest.raises(ValueError, match="max_attempts >= 1"):
        WebhookWorker(store, max_attempts=0)


async def test_deliveries_retry_and_give_up_as_the_settings_say(
    store: RedisStore, org: str
) -> None:
    settings = Settings(webhook_attempts=3, webhook_backoff_seconds=0.2)
    async with Receiver([500] * 10) as rx:
        await register_endpoint(store, org, rx.url)
        worker = WebhookWorker(store, settings, reclaim_after_seconds=1)
        stop = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(worker.run, stop)
            await emit(store, org, "scores.final", {"cycle": "c1"})
            await rx.wait_for(3)
            await asyncio.sleep(0.6)  # a fourth attempt would be due 0.8 s after the third
            stop.set()
    assert len(rx.requests) == 3
    times = [r[3] for r in rx.requests]
    # backoff 0.2 s, then 0.4 s (not the default 1 s, 2 s)
    assert 0.19 <= times[1] - times[0] < 0.9
    assert 0.39 <= times[2] - times[1] < 1.5
    raw = await store.redis.xrevrange(K.OrgKeys(org).deliveries, count=10)
    last = {k.decode(): v.decode() for k, v in raw[0][1].items()}
    assert last["attempt"] == "3"
    assert "gave up after 3 attempt(s)" in last["error"]
