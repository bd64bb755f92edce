"""The Containerfile, checked without a container engine (none is available here).

* its syntax, with the Dockerfile parser of BuildKit (the ``dockerfile`` package), and
  what it must do: two stages (wheel, then a slim runtime), a non-root user, a
  HEALTHCHECK on /healthz, ``okrcal serve --host 0.0.0.0``, REDIS_URL left to run time;
* the steps it runs, here: ``pip wheel`` from exactly the files it copies, an install
  into a fresh virtual environment, and ``okrcal serve`` from that environment answering
  /healthz. The default run installs only the okrcal wheel and borrows the project
  venv's dependencies; ``-m slow`` builds every wheel and installs with ``--no-index``,
  as the image does (this needs the package index or pip's cache).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import time
import zipfile
from pathlib import Path

import dockerfile  # type: ignore[import-not-found]  # no stubs
import httpx
import pytest

from tests.proof.procs import REPO, RedisServer, free_port, wait_until

CONTAINERFILE = REPO / "Containerfile"


def _commands() -> list[dockerfile.Command]:
    return list(dockerfile.parse_file(str(CONTAINERFILE)))


def test_containerfile_parses_and_does_what_the_issue_asks() -> None:
    commands = _commands()
    stages = [c for c in commands if c.cmd == "FROM"]
    assert len(stages) == 2
    assert stages[0].value[-1] == "builder"
    assert all(s.value[0].endswith("-slim") for s in stages)
    runtime = commands[commands.index(stages[1]) :]
    # the runtime stage installs the builder's wheels and nothing is compiled there
    assert any(c.cmd == "COPY" and "--from=builder" in c.flags for c in runtime)
    assert not any(c.cmd == "RUN" and "gcc" in c.value[0] for c in runtime)
    users = [c for c in runtime if c.cmd == "USER"]
    assert users
    assert users[-1].value[0].split(":")[0] not in ("root", "0")
    # USER comes before what starts the service
    assert commands.index(users[-1]) < commands.index(next(c for c in runtime if c.cmd == "CMD"))
    (health,) = [c for c in runtime if c.cmd == "HEALTHCHECK"]
    assert "/healthz" in " ".join(health.value)
    assert any(f.startswith("--interval=") for f in health.flags)
    (entry,) = [c for c in runtime if c.cmd == "ENTRYPOINT"]
    (cmd,) = [c for c in runtime if c.cmd == "CMD"]
    assert [*entry.value, *cmd.value] == ["okrcal", "serve", "--host", "0.0.0.0"]
    env = " ".join(" ".join(c.value) for c in runtime if c.cmd == "ENV")
    assert "REDIS_URL" not in env  # configured at run time; unset means embedded Redis
    assert "REDIS_URL" in CONTAINERFILE.read_text()  # and the file says how
    copied = [c.value[0] for c in commands[: commands.index(stages[1])] if c.cmd == "COPY"]
    assert copied == ["pyproject.toml", "calibrate", "anchors", "service"]
    ignored = (REPO / ".containerignore").read_text().split()
    assert ".venv" in ignored
    assert ".git" in ignored


def _build_context(dest: Path) -> Path:
    """Exactly what the builder stage copies, and nothing else."""
    src = dest / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    for package in ("calibrate", "anchors", "service"):
        shutil.copytree(REPO / package, src / package, ignore=skip)
    return src


def _fresh_venv(path: Path) -> Path:
    subprocess.run(
        [sys._base_executable, "-m", "venv", "--without-pip", str(path)],  # type: ignore[attr-defined]
        check=True,
    )
    return path / "bin" / "python"


def _pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", *args], check=True)


def _serve_and_check(venv: Path, tmp: Path) -> None:
    python = venv / "bin" / "python"
    where = subprocess.run(
        [str(python), "-c", "import service, anchors; print(service.__file__)"],
        cwd=tmp,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert where.startswith(str(venv)), f"okrcal imported from {where}, not from the install"
    with RedisServer(tmp / "redis", fsync="no") as redis_server:
        port = free_port()
        log = (tmp / "serve.log").open("wb")
        proc = subprocess.Popen(
            [str(venv / "bin" / "okrcal"), "serve", "--host", "127.0.0.1", "--port", str(port)],
            cwd=tmp,
            env={"PATH": "/usr/bin:/bin", "REDIS_URL": redis_server.url, "HOME": str(tmp)},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:

            def healthy() -> bool:
                assert proc.poll() is None, (tmp / "serve.log").read_text()
                try:
                    return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).is_success
                except httpx.TransportError:
                    return False

            wait_until(healthy, 60, "the installed okrcal to answer /healthz", step=0.2)
            # what the image's HEALTHCHECK runs, with the installed interpreter
            probe = (
                "import urllib.request; "
                f"urllib.request.urlopen('http://127.0.0.1:{port}/healthz', timeout=2)"
            )
            subprocess.run([str(python), "-c", probe], check=True, timeout=30)
            assert httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200
        finally:
            proc.terminate()
            proc.wait(30)
            log.close()


def test_the_wheel_installs_into_a_fresh_venv_and_serves(tmp_path: Path) -> None:
    src = _build_context(tmp_path)
    wheels = tmp_path / "wheels"
    _pip("wheel", "--no-deps", "--wheel-dir", str(wheels), str(src))
    (wheel,) = wheels.glob("okrcal-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for expected in ("anchors/default_catalogue.toml", "service/py.typed", "calibrate/engine.py"):
        assert expected in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert b"okrcal = service.cli:main" in zipfile.ZipFile(wheel).read(entry_points)
    venv = tmp_path / "venv"
    python = _fresh_venv(venv)
    _pip("--python", str(python), "install", "--no-deps", "--no-index", str(wheel))
    # dependencies borrowed from the project venv, appended after the fresh site-packages
    site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    (site / "borrowed_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _serve_and_check(venv, tmp_path)


@pytest.mark.slow
def test_the_image_steps_with_every_wheel(tmp_path: Path) -> None:
    src = _build_context(tmp_path)
    wheels = tmp_path / "wheels"
    started = time.monotonic()
    _pip("wheel", "--wheel-dir", str(wheels), str(src))
    venv = tmp_path / "venv"
    python = _fresh_venv(venv)
    _pip("--python", str(python), "install", "--no-index", "--find-links", str(wheels), "okrcal")
    assert time.monotonic() - started < 1800
    _serve_and_check(venv, tmp_path)
