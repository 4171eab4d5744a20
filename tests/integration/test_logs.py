"""The log lines of one job, as gunicorn and the Celery workers write them: JSON, every one naming the job.

The deployment's processes write to files, not a terminal, so with STYLEQ_LOG_FORMAT unset (`auto`)
they write JSON lines; the test reads them back from the processes' output.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def json_lines(output: str) -> list[dict[str, Any]]:
    """Parse every line of a process's output, failing on one that is not a JSON object."""
    lines = []
    for line in output.splitlines():
        if line.strip():
            parsed = json.loads(line)
            assert isinstance(parsed, dict), line
            lines.append(parsed)
    return lines


def mentions(line: dict[str, Any], job_id: str) -> bool:
    return job_id in json.dumps(line)


def test_every_log_line_of_a_job_from_the_api_and_the_worker_carries_its_id(service, images_dir):
    submitted = service.alice.submit(images_dir / "rainier.jpg", images_dir / "autumn-oak.jpg", {"size": [32, 48], "iterations": 20})
    assert submitted.status_code == 202, submitted.text
    job_id = submitted.json()["id"]
    done = service.alice.wait_for(job_id, lambda job: job["status"] == "succeeded", timeout=120)
    canceled_late = service.alice.post(f"/v1/jobs/{job_id}/cancel")
    assert canceled_late.status_code == 409
    worker_name = done["worker"].rpartition("/")[0]

    # Access lines are written once each response is sent; Celery's last line once the task has returned.
    deadline = time.monotonic() + 10
    while True:
        api = json_lines(service.api.output())
        workers = [line for process in service.workers for line in json_lines(process.output())]
        access = [line for line in api if line["logger"] == "gunicorn.access" and line.get("job_id") == job_id]
        if any(line["path"].endswith("/cancel") for line in access) and any(
            "succeeded in" in line["message"] for line in workers if mentions(line, job_id)
        ):
            break
        assert time.monotonic() < deadline, f"missing lines:\n{access}"
        time.sleep(0.2)

    about_job = [line for line in api + workers if mentions(line, job_id)]
    assert about_job and all(line.get("job_id") == job_id for line in about_job), [
        line for line in about_job if line.get("job_id") != job_id
    ]

    submit = next(line for line in access if line["method"] == "POST" and line["path"] == "/v1/jobs")
    assert submit["status"] == 202 and submit["key_name"] == "alice" and submit["duration_ms"] > 0 and submit["request_id"]
    assert {(line["method"], line["path"], line["status"]) for line in access} >= {
        ("GET", f"/v1/jobs/{job_id}", 200),
        ("POST", f"/v1/jobs/{job_id}/cancel", 409),
    }
    assert any(
        line["logger"] == "styleq.api.jobs" and "queued" in line["message"] and line["request_id"] == submit["request_id"] for line in api
    )

    # Another worker may log about the job too (its sweeper sending it again, a duplicate message skipped), under its own name.
    ran = [line for line in workers if line.get("job_id") == job_id]
    assert all(line["worker"].endswith("@test") for line in ran)
    in_run = [line for line in ran if "attempt" in line]
    assert {(line["worker"], line["attempt"]) for line in in_run} == {(worker_name, 1)}
    assert any(line["message"] == f"running job {job_id} (attempt 1)" and line["level"] == "INFO" and line["time"] for line in in_run)
    # Celery's own lines, before the run (in the worker) and after it (in its pool process).
    assert any(line["logger"] == "celery.worker.strategy" and "received" in line["message"] for line in ran)
    assert any(line["logger"] == "celery.app.trace" and "'succeeded'" in line["message"] for line in ran)
