"""The service commands as users run them: ``okrcal keys``, and ``okrcal serve`` in a process."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import msgspec
import pytest

from service.cli import main
from service.embedded import EmbeddedRedis


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_keys_create_list_revoke(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    data = str(tmp_path / "data")
    assert main(["keys", "create", "--org", "acme", "--scope", "admin", "--data-dir", data]) == 0
    key = capsys.readouterr().out.strip()
    assert key.startswith("okr_")
    assert not EmbeddedRedis(Path(data)).is_alive()  # started for the command, then stopped
    assert main(["keys", "list", "--org", "acme", "--data-dir", data]) == 0
    listed = capsys.readouterr().out
    key_id = key.split("_")[1]
    assert key_id in listed
    assert "active" in listed
    assert key not in listed
    assert main(["keys", "revoke", "--org", "acme", "--key-id", key_id, "--data-dir", data]) == 0
    assert main(["keys", "list", "--org", "acme", "--data-dir", data]) == 0
    assert "revoked" in capsys.readouterr().out
    assert main(["keys", "create", "--org", "bad org", "--scope", "admin", "--data-dir", data]) == 2
    with pytest.raises(SystemExit):
        main(["keys", "create", "--org", "acme", "--scope", "root", "--data-dir", data])


def test_serve_in_a_real_process_stops_its_redis(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    data = tmp_path / "data"
    assert (
        main(["keys", "create", "--org", "acme", "--scope", "admin", "--data-dir", str(data)]) == 0
    )
    key = capsys.readouterr().out.strip()
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "service.cli",
            "serve",
            "--port",
            str(port),
            "--data-dir",
            str(data),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "service did not start"
            assert proc.poll() is None, "service exited at start"
            time.sleep(0.1)
        r = httpx.get(f"{base}/v1/orgs/acme/keys", headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 200
        assert EmbeddedRedis(data).is_alive()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    assert not EmbeddedRedis(data).is_alive()
    assert (data / "appendonly.aof").exists()


def test_worker_process_runs_a_queued_run(redis_url: str, org: str) -> None:
    import asyncio

    from service.store import RedisStore
    from tests.service.conftest import grades_rows

    async def enqueue() -> str:
        store = RedisStore(redis_url)
        try:
            items = [
                (f"{g['kr_id']}\x1f{g['grader_id']}", msgspec.msgpack.encode((g["grade"], None)))
                for g in grades_rows(6, 3)
            ]
            await store.upsert(org, "c1", "grades", items, time.time_ns() // 1000)
            fields = {
                "run_id": "r1",
                "org": org,
                "cycle": "c1",
                "status": "queued",
                "model": "mean",
                "scale": "google",
                "confidence": "0.9",
                "created_at": f"{time.time():.6f}",
                "attempts": "0",
            }
            await store.create_run(org, "c1", "r1", fields)
            await store.ensure_queue()
            await store.enqueue_run(org, "c1", "r1")
            return "r1"
        finally:
            await store.close()

    async def status() -> str:
        store = RedisStore(redis_url)
        try:
            run = await store.get_run(org, "c1", "r1")
            return run["status"] if run else "missing"
        finally:
            await store.close()

    asyncio.run(enqueue())
    env = {**os.environ, "REDIS_URL": redis_url, "OKRCAL_FIT_PROCESS": "0"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "worker"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while asyncio.run(status()) != "done":
            assert time.monotonic() < deadline, "the worker did not run it"
            assert proc.poll() is None, "worker exited"
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
