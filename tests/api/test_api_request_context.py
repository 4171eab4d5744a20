"""Each request has an id (`X-Request-ID`), and the lines logged while it handles a job name the job."""

from __future__ import annotations

import json
import logging

import pytest

from styleq.shared.adapters.logs import configure_logging
from tests.api.support import submit


@pytest.fixture
def log_lines(settings, capsys):
    """Log as a deployment does (JSON lines on standard error); return a reader of the lines written so far."""
    root = logging.getLogger()
    level = root.level
    handler = configure_logging(settings.model_copy(update={"log_format": "json"}))
    capsys.readouterr()
    yield lambda: [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    root.removeHandler(handler)
    root.setLevel(level)


def test_lines_logged_for_a_submission_and_a_cancel_name_the_job_and_the_request(client, keys, log_lines):
    alice = keys.headers("alice")

    submitted = submit(client, alice)
    job_id = submitted.get_json()["id"]
    canceled = client.post(f"/v1/jobs/{job_id}/cancel", headers=alice)
    logging.getLogger("styleq.test").info("between requests")

    queued, cancel, between = log_lines()
    assert (queued["logger"], queued["job_id"], queued["request_id"]) == ("styleq.api.jobs", job_id, submitted.headers["X-Request-ID"])
    assert "queued" in queued["message"] and "canceled" in cancel["message"]
    assert (cancel["job_id"], cancel["request_id"]) == (job_id, canceled.headers["X-Request-ID"])
    assert submitted.headers["X-Request-ID"] != canceled.headers["X-Request-ID"]
    assert "job_id" not in between and "request_id" not in between


@pytest.mark.parametrize(("given", "kept"), [("proxy-7f3a:1", True), ("two words", False), ("x" * 200, False)])
def test_a_sensible_request_id_from_the_client_is_kept_and_any_other_replaced(client, keys, given, kept):
    response = client.get("/v1/jobs", headers={**keys.headers("alice"), "X-Request-ID": given})

    assert response.status_code == 200
    assert (response.headers["X-Request-ID"] == given) is kept and response.headers["X-Request-ID"]
