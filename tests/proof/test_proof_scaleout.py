"""Scale-out: two API processes and one calibration worker against one Redis.

One deployment for the module (starting processes is what costs time here): a
redis-server on a loopback port, two ``okrcal serve`` processes with no workers of
their own, and one ``okrcal worker``. Writes through one process are read through the
other, a run queued through one is executed by the worker, a key revoked through one
is refused at once by both, and nothing any process logged contains a key.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import new_org
from tests.proof.conftest import all_grades, bearer
from tests.proof.procs import (
    ApiProcess,
    RedisServer,
    WorkerProcess,
    create_key,
    running,
    wait_until,
)
from tests.service.conftest import grades_rows


class Deployment:
    def __init__(self, redis: RedisServer, apis: list[ApiProcess], worker: WorkerProcess) -> None:
        self.redis = redis
        self.apis = apis
        self.worker = worker
        self.org = new_org()
        self.key, _ = create_key(redis.url, self.org, "admin")
        #: every key handed out in this module, checked against the logs at the end
        self.secrets = [self.key]

    def client(self, i: int, key: str | None = None) -> httpx.Client:
        return httpx.Client(base_url=self.apis[i].base, headers=bearer(key or self.key), timeout=30)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    tmp = tmp_path_factory.mktemp("scaleout")
    env = {"OKRCAL_RUN_LEASE": "5", "OKRCAL_FIT_PROCESS": "0"}
    with RedisServer(Path(tmp) / "redis") as server:
        apis = [ApiProcess(server.url, Path(tmp) / f"api{i}.log", env=env) for i in range(2)]
        worker = WorkerProcess(server.url, Path(tmp) / "worker.log", env=env)
        with running(*apis, worker):
            worker.start()
            for api in apis:
                api.start()
            yield Deployment(server, apis, worker)


def test_writes_through_one_process_are_read_through_the_other(deployment: Deployment) -> None:
    d = deployment
    base = f"/v1/orgs/{d.org}/cycles/c1"
    with d.client(0) as a, d.client(1) as b:
        r = a.post(f"{base}/grades", json=grades_rows(10, 4))
        assert r.status_code == 200
        assert r.json()["created"] == 40
        krs = [{"kr_id": "k1", "owner_id": "o1", "kr_type": "binary", "done": True}]
        assert b.post(f"{base}/krs", json=krs).status_code == 200
        assert a.get(f"{base}/krs/k1").json()["evidence"]["grade"] == 1.0
        # an update through b, seen with its history through a
        change = [{"kr_id": "k3", "grader_id": "g2", "grade": 0.05}]
        assert b.post(f"{base}/grades", json=change).json()["updated"] == 1
        hist = a.get(f"{base}/grades/history", params={"kr_id": "k3", "grader_id": "g2"}).json()
        assert [v["grade"] for v in hist][-1] == 0.05
        # an Idempotency-Key used through a is replayed through b
        h = {"Idempotency-Key": "batch-7"}
        rows = [{"kr_id": "k99", "grader_id": "g1", "grade": 0.4}]
        assert a.post(f"{base}/grades", json=rows, headers=h).json()["replayed"] is False
        assert b.post(f"{base}/grades", json=rows, headers=h).json()["replayed"] is True
    assert len(all_grades(d.apis[1].base, d.org, "c1", d.key)) == 41


def test_a_run_queued_through_one_process_is_executed_by_the_worker(
    deployment: Deployment,
) -> None:
    d = deployment
    base = f"/v1/orgs/{d.org}/cycles/c2"
    with d.client(0) as a, d.client(1) as b:
        assert a.post(f"{base}/grades", json=grades_rows(20, 5)).status_code == 200
        r = a.post(f"{base}/calibrations", json={"model": "additive"})
        assert r.status_code == 202
        run_url = f"{base}/calibrations/{r.json()['run_id']}"
        # neither API process runs fits (OKRCAL_RUN_WORKERS=0): only the worker can
        wait_until(
            lambda: b.get(run_url).json()["status"] in ("done", "failed"), 90, "the run", step=0.1
        )
        run = b.get(run_url).json()
        assert run["status"] == "done", run
        assert run["n_grades"] == 100
        assert b.post(f"{run_url}/publish").status_code == 200
        owners_a = a.get(f"{base}/owners").json()["items"]
        owners_b = b.get(f"{base}/owners").json()["items"]
        assert owners_a == owners_b
        assert len(owners_a) == 5
        assert {o["state"] for o in owners_a} == {"published-provisional"}
    assert d.worker.alive()


def test_a_revoked_key_is_refused_at_once_by_every_process(deployment: Deployment) -> None:
    d = deployment
    with d.client(0) as a:
        r = a.post(f"/v1/orgs/{d.org}/keys", json={"scopes": ["scores:read"], "name": "tool"})
        assert r.status_code == 201
        key, key_id = r.json()["key"], r.json()["record"]["key_id"]
    d.secrets.append(key)
    url = f"/v1/orgs/{d.org}/cycles/c1/grades"
    with d.client(0, key) as a_tool, d.client(1, key) as b_tool:
        assert a_tool.get(url).status_code == 200
        assert b_tool.get(url).status_code == 200
        with d.client(1) as b_admin:
            assert b_admin.delete(f"/v1/orgs/{d.org}/keys/{key_id}").status_code == 200
        # the very next request, on either process: no cache to go stale
        for tool in (a_tool, b_tool, a_tool):
            r = tool.get(url)
            assert r.status_code == 401, r.text
            assert key not in r.text
    listed = {k["key_id"]: k for k in d.client(0).get(f"/v1/orgs/{d.org}/keys").json()}
    assert listed[key_id]["revoked_at"] is not None


def test_bad_keys_and_errors_never_echo_a_key(deployment: Deployment) -> None:
    d = deployment
    wrong = d.key[:-4] + "AAAA"
    d.secrets.append(wrong)
    with httpx.Client(base_url=d.apis[0].base, timeout=30) as c:
        for headers in (
            bearer(wrong),
            {"Authorization": wrong},
            {"Authorization": f"Basic {wrong}"},
        ):
            r = c.get(f"/v1/orgs/{d.org}/cycles/c1/grades", headers=headers)
            assert r.status_code == 401
            assert wrong not in r.text
            assert wrong not in str(r.headers)
        # a malformed request with a valid key: the 4xx names the problem, not the key
        r = c.post(
            f"/v1/orgs/{d.org}/cycles/c1/grades",
            content=b"{not json",
            headers={**bearer(d.key), "content-type": "application/json"},
        )
        assert r.status_code == 400
        assert d.key not in r.text


def test_no_process_logged_a_key(deployment: Deployment) -> None:
    # Last in the module: by now every test above has sent its keys through both processes.
    d = deployment
    logs = {p.log.name: p.output() for p in [*d.apis, d.worker]}
    for name, text in logs.items():
        for secret in d.secrets:
            assert secret not in text, f"{name} contains a key"
            assert secret.rsplit("_", 1)[-1] not in text, f"{name} contains a key's secret part"
    assert (d.redis.data_dir / "redis.log").exists()
    assert not any(s in (d.redis.data_dir / "redis.log").read_text() for s in d.secrets)
