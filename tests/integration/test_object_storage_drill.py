"""Hosts that share nothing but the database, the broker and the store: the API and two workers, each with a data
directory and weights cache of its own, on Postgres, Redis and SeaweedFS (object storage: STYLEQ_STORAGE_URL=s3://...).

A worker's host dies mid-job (its whole process group killed): its job finishes on the other host from the last state
it saved in the store, every checkpoint once, and the result is served through the API and by presigned URL. The store
stops mid-job: the job is not lost and finishes once it is back, while the API answers 503 storage_unavailable. The
clocks are the fault drills' short ones (tests/integration/drills.py), with the store waited for as briefly; the
workers are named for hosts other than this one, so no worker can see that the other's process died: the takeover
waits out the lease, as between machines.
"""

from __future__ import annotations

import io
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from PIL import Image

from styleq.shared.adapters.migrate import upgrade_database
from tests.integration.drills import FAST, FINAL, PICTURES, SMALL, submit_pair, whole
from tests.services import Client, Process, SeaweedFS, fresh_postgres_database, make_key, private_servers, start_api, start_worker

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
BUCKET = "styleq-drill"
# Each worker's host, by the name it reports (neither is this machine's, so a dead process there is known only by its lease).
HOSTS = {"w1": "gpu-host-1", "w2": "gpu-host-2"}
# The store's brief retries: a job whose store stays away past them goes back to the queue until it returns.
STORE_RETRY_DELAYS = "0.5,1,2,4"


@dataclass
class Hosts:
    root: Path
    environments: dict[str, dict[str, str]]
    api: Process
    workers: dict[str, Process]
    client: Client
    store: SeaweedFS
    logs: Path

    def submit(self, images_dir: Path, params: dict[str, Any]) -> str:
        return submit_pair(self.client, images_dir, params)

    def wait_final(self, job_id: str, timeout: float = 300) -> dict[str, Any]:
        return self.client.wait_for(job_id, lambda j: j["status"] in FINAL, timeout=timeout)

    def history(self, job_id: str) -> list[int]:
        return [c["iteration"] for c in self.client.get(f"/v1/jobs/{job_id}/checkpoints?limit=1000").json()["checkpoints"]]

    def objects(self, job_id: str) -> list[str]:
        """Return the names of the job's objects in the store."""
        listing = self.store.client().list_objects_v2(Bucket=BUCKET, Prefix=f"deployment/jobs/{job_id[:2]}/{job_id}/")
        return sorted(item["Key"].rsplit("/", 1)[-1] for item in listing.get("Contents", []))

    def holder(self, job: dict[str, Any]) -> str:
        """Return the name of the worker whose process holds `job` (its lease owner is `name@host/pid`)."""
        return job["worker"].split("@", 1)[0]

    def restart(self, name: str) -> None:
        self.workers[name].stop()
        self.workers[name] = start_worker(self.environments[name], self.logs, name, HOSTS[name])


@pytest.fixture(scope="module")
def deployment(tmp_path_factory, caffe_weights, models_dir) -> Iterator[Hosts]:
    root = tmp_path_factory.mktemp("deployment")
    logs = root / "logs"
    logs.mkdir()
    store = SeaweedFS(root / "seaweedfs")
    store.bucket(BUCKET)
    common = {key: value for key, value in os.environ.items() if not key.startswith(("STYLEQ_", "AWS_"))}
    common.update(
        FAST.environment,
        **store.environment,
        STYLEQ_STORAGE_URL=f"s3://{BUCKET}/deployment",
        STYLEQ_STORAGE_RETRY_DELAYS=STORE_RETRY_DELAYS,
        STYLEQ_QUEUE=f"styleq-deployment-{uuid.uuid4().hex[:8]}",
        # A state every second checkpoint, however fast they come: a killed host's job resumes close to where it was.
        STYLEQ_PREVIEW_EVERY="2",
        STYLEQ_PREVIEW_MIN_SECONDS="0",
        STYLEQ_MAX_REQUESTS_PER_MINUTE="0",
        STYLEQ_MAX_ACTIVE_JOBS="0",
        # Results leave through presigned URLs: the API redirects, the store serves the bytes.
        STYLEQ_RESULT_URL_SECONDS="300",
        OMP_NUM_THREADS="1",
    )
    environments = {name: {**common, **own_directories(root / name, models_dir)} for name in ("api", *HOSTS)}
    processes: list[Process] = []
    with private_servers() as (postgres, redis), fresh_postgres_database(postgres.admin_url) as database_url:
        for environment in environments.values():
            environment.update(STYLEQ_DATABASE_URL=database_url, STYLEQ_BROKER_URL=redis.url)
        upgrade_database(database_url)
        deployment = None
        try:
            api, url = start_api(environments["api"], logs)
            processes.append(api)
            workers = {name: start_worker(environments[name], logs, name, host) for name, host in HOSTS.items()}
            deployment = Hosts(root, environments, api, workers, Client(url, make_key(database_url, "alice")), store, logs)
            yield deployment
        finally:
            store.start()
            for process in {*processes, *(deployment.workers.values() if deployment else [])}:
                process.stop()
            store.remove()


def own_directories(host: Path, models_dir: Path) -> dict[str, str]:
    """Give a host its own data directory and weights cache (the weights hard-linked in: the same bytes, no path in common)."""
    (host / "data").mkdir(parents=True)
    (host / "models").mkdir()
    for weights in models_dir.iterdir():
        if weights.is_file():
            os.link(weights, host / "models" / weights.name)
    return {"STYLEQ_DATA_DIR": str(host / "data"), "STYLEQ_MODEL_DIR": str(host / "models")}


def files_on_hosts(deployment: Hosts) -> list[Path]:
    """Return every picture or saved state on any host's own disk (there should be none: they live in the store)."""
    names = ("result.", "preview.", "state")
    return [path for path in deployment.root.rglob("*") if path.is_file() and "seaweedfs" not in path.parts and path.name.startswith(names)]


def test_a_job_whose_host_dies_finishes_on_the_other_host_from_the_store(deployment, images_dir, record):
    iterations = 300
    first = deployment.submit(images_dir, {"size": SMALL, "iterations": iterations})
    running = deployment.client.wait_for(first, lambda j: j["status"] == "running" and j["iteration"] >= 100)
    victim = deployment.holder(running)
    survivor = next(name for name in HOSTS if name != victim)
    saved = [int(name[6:15]) for name in deployment.objects(first) if name.startswith("state-")]
    assert saved and saved[-1] > 0

    deployment.workers[victim].kill()  # the whole process group, as a host's power going
    killed = time.monotonic()
    try:
        deployment.client.wait_for(first, lambda j: j["status"] == "running" and j["attempts"] == 2, timeout=120)
        record(f"[{FAST.name} clocks] a worker's host lost, its files in object storage", time.monotonic() - killed, FAST.takeover)
        done = deployment.wait_final(first)
    finally:
        deployment.restart(victim)

    assert (done["status"], done["attempts"]) == ("succeeded", 2) and deployment.holder(done) == survivor
    assert done["resumed_from"] >= saved[-1]  # from the last state the dead host saved in the store
    assert deployment.history(first) == whole(iterations)  # every checkpoint once, in order
    # The service goes on with the dead host back, its own disk empty: a new job runs to its end.
    second = deployment.submit(images_dir, {"size": SMALL, "iterations": 20})
    assert deployment.wait_final(second)["status"] == "succeeded"
    assert f"resuming job {first} at iteration {done['resumed_from']}" in deployment.workers[survivor].output()
    # Its saved states are gone; the result is served by the store through a short-lived URL the API hands out.
    assert deployment.objects(first) == [".job", "preview.jpg", "result.png"]  # the marker stands for its folder
    redirect = deployment.client.get(f"/v1/jobs/{first}/result", allow_redirects=False)
    assert redirect.status_code == 307 and "X-Amz-Signature=" in redirect.headers["Location"]
    presigned = requests.get(redirect.headers["Location"], timeout=30)
    through_api = deployment.client.get(f"/v1/jobs/{first}/result")
    assert presigned.status_code == through_api.status_code == 200 and presigned.content == through_api.content
    assert Image.open(io.BytesIO(presigned.content)).size == (SMALL[1], SMALL[0])  # SMALL is height, width
    preview = deployment.client.get(f"/v1/jobs/{first}/preview")
    assert preview.status_code == 200 and preview.headers["Content-Type"] == "image/jpeg"
    assert files_on_hosts(deployment) == []


@pytest.mark.parametrize("outage", [pytest.param(15, id="15s"), pytest.param(60, id="60s", marks=pytest.mark.full)])
def test_a_store_outage_mid_job_loses_nothing_and_the_api_answers_503_meanwhile(deployment, images_dir, outage):
    iterations = 300
    job_id = deployment.submit(images_dir, {"size": SMALL, "iterations": iterations})
    deployment.client.wait_for(job_id, lambda j: j["status"] == "running" and j["iteration"] >= 40)

    deployment.store.stop()
    stopped = time.monotonic()
    try:
        refused = [
            deployment.client.get(f"/v1/jobs/{job_id}/preview"),
            deployment.client.get(f"/v1/jobs/{job_id}/content"),
            deployment.client.submit(images_dir / PICTURES[0], images_dir / PICTURES[1], {"size": SMALL, "iterations": 10}),
        ]
        for response in refused:
            assert (response.status_code, response.json()["error"]["code"]) == (503, "storage_unavailable"), response.text
            assert response.headers["Retry-After"]
        assert deployment.client.job(job_id)["status"] in ("running", "queued")  # what the database knows is still there
        time.sleep(max(0.0, outage - (time.monotonic() - stopped)))
    finally:
        deployment.store.start()

    done = deployment.wait_final(job_id)
    assert done["status"] == "succeeded", done
    assert deployment.history(job_id) == whole(iterations)
    assert deployment.client.get(f"/v1/jobs/{job_id}/result").status_code == 200
    assert deployment.objects(job_id) == [".job", "preview.jpg", "result.png"]
