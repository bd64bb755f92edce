"""Fixtures of the web-page tests: the app served on 127.0.0.1, Debian's Chromium, a seeded org.

The browser is the system Chromium driven through the system chromedriver (Selenium);
nothing downloads a browser. When ``/usr/bin/chromium`` is missing and the tests run
as root, ``install_chromium.sh`` installs it with apt-get, once; otherwise the browser
tests are skipped with the reason. Screenshots go to ``test-artifacts/web/``.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import uvicorn

from service.app import create_app
from service.auth import new_api_key
from service.settings import Settings
from service.store import RedisStore
from tests.conftest import new_org

# The HTTP tests' fixtures serve the page tests too: a store of the test's own, and the
# app with one in-process calibration worker.
from tests.service.conftest import store, worker_client  # noqa: F401 - fixtures

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "web"
_INSTALL = Path(__file__).with_name("install_chromium.sh")
CHROME_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,900",
)
#: The main cycle: 24 KRs, 6 graders; g5 grades 0.3 above the evidence.
CYCLE = "2026Q3"
LENIENT = "g5"
#: Earlier cycles where g5 grades like everyone else: g5 drifts in 2026Q3.
EARLIER = ("2025Q4", "2026Q1", "2026Q2")


def _browser_missing() -> str | None:
    if CHROMIUM.exists() and CHROMEDRIVER.exists():
        return None
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return (
            "Debian's chromium and chromium-driver are not installed and this is not root "
            f"with apt-get: run {_INSTALL} as root"
        )
    done = subprocess.run(
        ["sh", str(_INSTALL)], capture_output=True, text=True, timeout=900, check=False
    )
    if done.returncode != 0 or not CHROMIUM.exists() or not CHROMEDRIVER.exists():
        return f"installing chromium failed: {done.stderr.strip()[-500:]}"
    return None


@pytest.fixture(scope="session")
def chromium() -> Path:
    """The system Chromium, installed once when missing (root), else the tests skip."""
    why = _browser_missing()
    if why is not None:
        pytest.skip(why)
    shutil.rmtree(ARTIFACTS, ignore_errors=True)  # this run's screenshots only
    return CHROMIUM


@dataclass
class LiveServer:
    """The app served by uvicorn in a thread, on a free port of 127.0.0.1."""

    url: str
    redis_url: str


@pytest.fixture(scope="module")
def live_server(redis_url: str) -> Iterator[LiveServer]:
    """create_app on the session's real Redis, one in-process calibration worker."""
    settings = Settings(run_workers=1, fit_in_subprocess=False, run_lease_seconds=5.0)
    app = create_app(settings, RedisStore(redis_url))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="web-test-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.05)
    try:
        yield LiveServer(url=f"http://127.0.0.1:{port}", redis_url=redis_url)
    finally:
        server.should_exit = True
        thread.join(timeout=20)


@pytest.fixture
def browser(chromium: Path) -> Iterator[Any]:
    """A headless Chromium with a fresh profile, 1280 px wide."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="okrcal-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(chromium)
    for flag in (*CHROME_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def make_keys(redis_url: str, org: str, **scopes: list[str]) -> dict[str, str]:
    """API keys of ``org`` by name, with the given scopes, stored in the real Redis."""
    out: dict[str, str] = {}
    records = []
    for name, wanted in scopes.items():
        key, record = new_api_key(org, wanted, name=name)
        out[name] = key
        records.append(record)

    async def store_all() -> None:
        keys_store = RedisStore(redis_url)
        try:
            for record in records:
                await keys_store.add_api_key(record)
        finally:
            await keys_store.close()

    asyncio.run(store_all())
    return out


def _cycle_data(
    seed: int, lenient_shift: float
) -> tuple[list[dict[str, object]], list[dict[str, object]]]:
    rng = np.random.default_rng(seed)
    krs: list[dict[str, object]] = []
    grades: list[dict[str, object]] = []
    for k in range(24):
        actual = int(rng.integers(15, 96))
        krs.append(
            {
                "kr_id": f"kr{k:02d}",
                "owner_id": f"o{k % 6}",
                "kr_type": "metric",
                "baseline": 0,
                "target": 100,
                "actual": actual,
                "description": "Ran 12 workshops" if k == 3 else "Raise weekly active teams",
            }
        )
        for g in range(6):
            if (k + g) % 3 == 0:
                continue
            shift = lenient_shift if g == 5 else 0.0
            value = actual / 100 + float(rng.normal(0, 0.04)) + shift
            grades.append(
                {
                    "kr_id": f"kr{k:02d}",
                    "grader_id": f"g{g}",
                    "grade": round(min(1.0, max(0.0, value)), 3),
                    "owner_id": f"o{k % 6}",
                }
            )
    return krs, grades


def seed_cycle(client: httpx.Client, org: str, cycle: str, seed: int, lenient_shift: float) -> str:
    """KRs and grades of one cycle, calibrated and published; the run id."""
    krs, grades = _cycle_data(seed, lenient_shift)
    base = f"/v1/orgs/{org}/cycles/{cycle}"
    assert client.post(f"{base}/krs", json={"krs": krs}).status_code == 200
    assert client.post(f"{base}/grades", json={"grades": grades}).status_code == 200
    run = client.post(f"{base}/calibrations", json={})
    assert run.status_code == 202, run.text
    run_id = str(run.json()["run_id"])
    deadline = time.monotonic() + 60
    while True:
        status = client.get(f"{base}/calibrations/{run_id}").json()
        if status["status"] in ("done", "failed"):
            break
        assert time.monotonic() < deadline, "calibration did not finish"
        time.sleep(0.1)
    assert status["status"] == "done", status
    assert client.post(f"{base}/calibrations/{run_id}/publish").status_code == 200
    return run_id


@dataclass
class Seeded:
    """An organisation with four published cycles and keys of several scopes."""

    org: str
    keys: dict[str, str]
    run_id: str


@pytest.fixture(scope="module")
def seeded(live_server: LiveServer) -> Seeded:
    """Four published cycles; in the last, grader g5 is lenient by 0.3."""
    org = new_org()
    keys = make_keys(
        live_server.redis_url,
        org,
        admin=["admin"],
        facilitator=["calibration:run", "scores:read"],
        hr=["hr:read"],
        writer=["grades:write"],
    )
    headers = {"Authorization": f"Bearer {keys['admin']}"}
    with httpx.Client(base_url=live_server.url, headers=headers, timeout=60) as client:
        for i, cycle in enumerate(EARLIER):
            seed_cycle(client, org, cycle, seed=10 + i, lenient_shift=0.0)
        run_id = seed_cycle(client, org, CYCLE, seed=3, lenient_shift=0.3)
    return Seeded(org=org, keys=keys, run_id=run_id)


def screenshot(driver: Any, name: str) -> None:
    """Full-page screenshots at 1280 and 390 px wide; fails if the page scrolls sideways."""
    import base64

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for width in (1280, 390):
        driver.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": 900, "deviceScaleFactor": 1, "mobile": width < 600},
        )
        overflow = driver.execute_script(
            "return document.documentElement.scrollWidth - window.innerWidth"
        )
        assert overflow <= 1, f"{name} scrolls sideways by {overflow} px at {width} px"
        height = driver.execute_script("return document.documentElement.scrollHeight")
        shot = driver.execute_cdp_cmd(
            "Page.captureScreenshot",
            {
                "format": "png",
                "captureBeyondViewport": True,
                "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1},
            },
        )
        (ARTIFACTS / f"{name}-{width}.png").write_bytes(base64.b64decode(shot["data"]))
    driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
