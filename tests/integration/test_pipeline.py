"""Jobs submitted over HTTP run on real worker processes and stream their progress back, on both backends."""

from __future__ import annotations

import io
import json
import threading

import pytest
import requests
from celery import Celery
from PIL import Image

from styleq.cli.client import StyleqClient, read_events
from styleq.shared.adapters.settings import Settings
from tests.services import Client

FINISHED = {"succeeded", "failed", "canceled"}
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
# Small and quick on real weights; long enough that a job can be watched and canceled mid-run.
SMALL_JOB = {"size": [32, 48], "iterations": 100}


def finished(job):
    return job["status"] in FINISHED


def test_job_runs_from_queued_to_succeeded_and_streams_checkpoints_in_order(service, images_dir):
    response = service.alice.submit(images_dir / "rainier.jpg", images_dir / "autumn-oak.jpg", {**SMALL_JOB, "iterations": 150})
    assert response.status_code == 202, response.text
    job = response.json()
    assert response.headers["Location"].endswith(f"/v1/jobs/{job['id']}")
    assert job["status"] in ("queued", "running")

    # Mid-run, both views of the history already hold checkpoints, in order.
    running = service.alice.wait_for(job["id"], lambda j: j["status"] == "running" and j["iteration"] >= 20)
    assert running["iteration"] < 150 and running["worker"] and running["started_at"]
    mid_run = service.alice.get(f"/v1/jobs/{job['id']}/checkpoints").json()["checkpoints"]
    assert mid_run and [c["iteration"] for c in mid_run] == list(range(10, 10 * len(mid_run) + 1, 10))
    events = []
    with service.alice.get(f"/v1/jobs/{job['id']}/events", stream=True, timeout=120) as stream:
        assert stream.headers["Content-Type"].startswith("text/event-stream")
        for event, event_id, data in read_events(stream):
            events.append((event, event_id, json.loads(data) if data.startswith("{") else data))
            if event == "end":
                break

    kinds = [event for event, _, _ in events]
    assert kinds[0] == "status" and kinds[-1] == "end"
    iterations = [data["iteration"] for event, _, data in events if event == "checkpoint"]
    assert iterations == list(range(10, 151, 10))
    assert [data["status"] for event, _, data in events if event == "status"][-1] == "succeeded"

    done = service.alice.job(job["id"])
    assert done["status"] == "succeeded" and done["progress"] == 1.0 and done["iteration"] == 150
    assert done["losses"]["total"] > 0 and done["finished_at"] >= done["started_at"] >= done["created_at"]
    assert done["attempts"] == 1
    result = service.alice.get(f"/v1/jobs/{job['id']}/result")
    assert result.status_code == 200 and result.headers["Content-Type"] == "image/png"
    image = Image.open(io.BytesIO(result.content))
    assert image.size == (48, 32)
    history = service.alice.get(f"/v1/jobs/{job['id']}/checkpoints", params={"after": 100}).json()["checkpoints"]
    assert [c["iteration"] for c in history] == [110, 120, 130, 140, 150]
    assert service.alice.get(f"/v1/jobs/{job['id']}/preview").headers["Content-Type"] == "image/jpeg"


def test_a_blend_of_two_styles_sent_by_the_cli_client_runs_on_a_worker_to_success(service, images_dir):
    styles = [images_dir / "autumn-oak.jpg", images_dir / "the_scream.jpg"]
    client = StyleqClient(service.url, service.alice.key)

    job = client.submit(images_dir / "rainier.jpg", styles, {**SMALL_JOB, "iterations": 30}, style_weights=[0.7, 0.3])
    done = service.alice.wait_for(job["id"], finished)

    assert done["status"] == "succeeded", done["error"]
    assert done["params"]["style_weights"] == [0.7, 0.3] and [style["weight"] for style in done["styles"]] == pytest.approx([0.7, 0.3])
    assert [service.alice.get(style["link"]).content for style in done["styles"]] == [path.read_bytes() for path in styles]
    assert Image.open(io.BytesIO(client.result(job["id"]))).size == (48, 32)


def test_cancel_stops_a_running_job_within_one_checkpoint_interval(service, images_dir):
    job = service.alice.submit(images_dir / "rainier.jpg", images_dir / "autumn-oak.jpg", {**SMALL_JOB, "iterations": 5000}).json()
    service.alice.wait_for(job["id"], lambda j: j["status"] == "running" and j["iteration"] >= 10)

    response = service.alice.post(f"/v1/jobs/{job['id']}/cancel")
    assert response.status_code == 202, response.text
    asked_at = service.alice.job(job["id"])["iteration"]
    canceled = service.alice.wait_for(job["id"], finished, timeout=60)

    assert canceled["status"] == "canceled"
    assert canceled["iteration"] <= asked_at + 10
    assert service.alice.get(f"/v1/jobs/{job['id']}/result").status_code == 409
    assert service.alice.post(f"/v1/jobs/{job['id']}/cancel").status_code == 409


def test_another_clients_key_can_neither_see_nor_touch_a_job(service, images_dir):
    job = service.alice.submit(images_dir / "rainier.jpg", images_dir / "autumn-oak.jpg", {**SMALL_JOB, "iterations": 20}).json()

    for path in ("", "/checkpoints", "/events", "/result", "/preview", "/content", "/style"):
        response = service.bob.get(f"/v1/jobs/{job['id']}{path}")
        assert response.status_code == 404, (path, response.text)
        assert response.json()["error"]["code"] == "not_found"
    assert service.bob.post(f"/v1/jobs/{job['id']}/cancel").status_code == 404
    assert service.bob.delete(f"/v1/jobs/{job['id']}").status_code == 404
    assert job["id"] not in [j["id"] for j in service.bob.get("/v1/jobs").json()["jobs"]]
    assert service.alice.wait_for(job["id"], finished)["status"] == "succeeded"
    assert job["id"] in [j["id"] for j in service.admin.get("/v1/jobs").json()["jobs"]]


def test_ten_jobs_at_once_all_finish_each_run_by_exactly_one_worker(service, images_dir):
    def submit(results, index):
        results[index] = service.alice.submit(
            images_dir / "tubingen.jpg", images_dir / "starry_night.jpg", {**SMALL_JOB, "iterations": 30, "seed": index}
        )

    responses = [None] * 10
    threads = [threading.Thread(target=submit, args=(responses, index)) for index in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [response.status_code for response in responses] == [202] * 10
    ids = [response.json()["id"] for response in responses]

    # Send every job's message a second time, as a broker redelivery would: still one run each.
    producer = Celery(broker=Settings(**_settings_from(service.environment)).broker)
    for job_id in ids:
        producer.send_task("styleq.run_job", args=[job_id], queue=service.environment["STYLEQ_QUEUE"])
    jobs = [service.alice.wait_for(job_id, finished, timeout=240) for job_id in ids]

    assert [job["status"] for job in jobs] == ["succeeded"] * 10
    assert [job["attempts"] for job in jobs] == [1] * 10
    for job in jobs:
        history = service.alice.get(f"/v1/jobs/{job['id']}/checkpoints").json()["checkpoints"]
        assert [c["iteration"] for c in history] == [10, 20, 30]
    assert len({job["worker"].split("/")[0] for job in jobs}) == 2, "both workers took jobs"


def test_bad_submissions_get_a_json_4xx_and_leave_no_job(service, images_dir, tmp_path):
    before = service.admin.get("/v1/jobs", params={"limit": 100}).json()["jobs"]
    not_an_image = tmp_path / "notes.jpg"
    not_an_image.write_text("not a picture")

    cases = [
        (service.alice.submit(not_an_image, images_dir / "autumn-oak.jpg", SMALL_JOB), 400),
        (service.alice.submit(images_dir / "rainier.jpg", images_dir / "autumn-oak.jpg", {"colour": "red"}), 422),
        (service.alice.submit(images_dir / "rainier.jpg", images_dir / "autumn-oak.jpg", {"iterations": -5}), 422),
        (Client(service.url, "sq_wrong").submit(images_dir / "rainier.jpg", images_dir / "autumn-oak.jpg", SMALL_JOB), 401),
    ]
    for response, status in cases:
        assert response.status_code == status, response.text
        assert set(response.json()["error"]) >= {"code", "message"}
    assert service.admin.get("/v1/jobs", params={"limit": 100}).json()["jobs"] == before


def test_readiness_reports_database_and_broker(service):
    response = requests.get(f"{service.url}/readyz", timeout=30)

    assert response.status_code == 200, response.text


def _settings_from(environment):
    return {
        name.removeprefix("STYLEQ_").lower(): value
        for name, value in environment.items()
        if name in ("STYLEQ_DATA_DIR", "STYLEQ_DATABASE_URL", "STYLEQ_BROKER_URL")
    }
