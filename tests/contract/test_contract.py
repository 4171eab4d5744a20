"""The contract: every response, errors included, is JSON and documented in /openapi.json, checked against a
live gunicorn by hand-picked requests and by a bounded schemathesis run with a non-admin key."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import jsonschema_rs
import pytest
import requests

from styleq.shared.adapters.migrate import upgrade_database
from styleq.shared.domain.params import WEIGHTS_FILES
from tests.services import Client, Process, make_key, start_api

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def live(tmp_path_factory) -> Iterator[tuple[str, str]]:
    """gunicorn on the embedded default, with the default weights installed; yield its URL and a non-admin key."""
    root = tmp_path_factory.mktemp("contract")
    (root / "models").mkdir()
    (root / "models" / WEIGHTS_FILES["vgg16-caffe"]).write_bytes(b"")  # the API only looks for the file
    environment = {
        **os.environ,
        "STYLEQ_DATA_DIR": str(root),
        "STYLEQ_MODEL_DIR": str(root / "models"),
        # The fuzzer sends thousands of requests a minute with one key: fair use off, or most answers would be 429.
        "STYLEQ_MAX_REQUESTS_PER_MINUTE": "0",
        "STYLEQ_MAX_ACTIVE_JOBS": "0",
    }
    for name in ("STYLEQ_DATABASE_URL", "STYLEQ_BROKER_URL"):
        environment.pop(name, None)
    database = f"sqlite:///{root / 'styleq.db'}"
    upgrade_database(database)
    api: Process
    api, url = start_api(environment, root)
    try:
        yield url, make_key(database, "fuzzer")
    finally:
        api.stop()


def assert_json_error(response: requests.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/json"), response.headers
    assert response.json()["error"]["code"] == code


def test_gunicorn_s_own_refusals_are_json_too(live):
    url, key = live
    headers = {"Authorization": f"Bearer {key}"}

    assert_json_error(requests.get(f"{url}/v1/jobs?cursor={'a' * 5000}", headers=headers, timeout=30), 414, "uri_too_long")
    assert_json_error(requests.get(f"{url}/v1/jobs", headers={**headers, "X-Big": "a" * 9000}, timeout=30), 431, "headers_too_large")
    assert_json_error(requests.get(f"{url}/nowhere", headers=headers, timeout=30), 404, "not_found")
    wrong_method = requests.put(f"{url}/v1/jobs", headers=headers, timeout=30)
    assert_json_error(wrong_method, 405, "method_not_allowed")
    assert set(wrong_method.headers["Allow"].replace(" ", "").split(",")) >= {"GET", "POST"}


def test_every_answer_the_api_gives_is_documented_for_its_operation(live):
    url, _ = live
    document = requests.get(f"{url}/openapi.json", timeout=30).json()
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            documented = set(operation["responses"])
            assert {"414", "431", "503"} <= documented, (method, path)
            if operation.get("security") != []:
                assert "401" in documented, (method, path)
            if method in ("post", "delete") and operation.get("security") != []:
                assert "403" in documented, (method, path)
    assert "413" in document["paths"]["/v1/jobs"]["post"]["responses"]
    content_types = set(document["paths"]["/v1/jobs/{job_id}/content"]["get"]["responses"]["200"]["content"])
    assert {"image/webp", "image/tiff", "image/gif", "image/bmp"} <= content_types


def test_the_event_stream_s_events_match_their_documented_schemas(live, images_dir):
    url, key = live
    client = Client(url, key)
    document = requests.get(f"{url}/openapi.json", timeout=30).json()
    job = client.submit(images_dir / "rainier.jpg", images_dir / "autumn-oak.jpg", {"size": [32, 48], "iterations": 20}).json()
    assert client.post(f"/v1/jobs/{job['id']}/cancel").status_code == 202  # no worker here: the job ends at once

    events = parse_events(client.get(f"/v1/jobs/{job['id']}/events", timeout=60).text)

    assert [name for name, _ in events] == ["status", "status", "end"]
    schemas = document["paths"]["/v1/jobs/{job_id}/events"]["get"]["responses"]["200"]["content"]["text/event-stream"]["x-event-schemas"]
    for name, data in events:
        validator = jsonschema_rs.validator_for({**schemas[name], "components": document["components"]})
        assert validator.is_valid(data), (name, list(validator.iter_errors(data))[:3])


def parse_events(text: str) -> list[tuple[str, dict]]:
    events = []
    for block in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if not line.startswith(":") and ": " in line)
        if "event" in fields:
            events.append((fields["event"], json.loads(fields["data"])))
    return events


def test_schemathesis_finds_no_departure_from_the_document(live, tmp_path):
    url, key = live
    schemathesis = Path(sys.executable).with_name("schemathesis")
    started = time.monotonic()
    run = subprocess.run(
        [
            str(schemathesis),
            "--config-file",
            str(HERE / "schemathesis.toml"),
            "run",
            f"{url}/openapi.json",
            "--header",
            f"Authorization: Bearer {key}",
            "--checks",
            "all",
            # A schema cannot say "an image file" or "a cursor this client was given": such schema-valid requests
            # are rightly refused with 400, and the other checks cover those answers.
            "--exclude-checks",
            "positive_data_acceptance",
            # Bounded by examples, never by time: with --max-time, schemathesis repeats its fuzzing and stateful
            # phases until the time is up (it was 90 s: 2,800 to 4,700 cases, as many as the machine's load allowed).
            # One pass of every phase (coverage, fuzzing, stateful) over all 15 operations, with a fixed seed, is
            # about 460 cases, which find the same things each time; it found each departure the 90 s run found
            # when the document was edited to depart from the API (a status or a field's type taken out).
            "--max-examples",
            "10",
            "--seed",
            "20261127",
            "--no-shrink",
            "--warnings",
            "off",
            "--report",
            "junit",
            "--report-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert run.returncode == 0, run.stdout[-8000:] + run.stderr[-2000:]
    assert "No issues found" in run.stdout or " passed" in run.stdout
    # Every operation of the document was tested.
    assert re.search(r"Selected: (\d+)/\1\s+Tested: \1\s", run.stdout), run.stdout[-3000:]
    assert time.monotonic() - started < 300
