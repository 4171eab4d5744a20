"""How large a job may be: the memory of the workers' devices decides, and the schedule a job runs is written out at submit."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from flask import Flask

from styleq.shared.adapters.db import session_scope
from styleq.shared.adapters.models import Worker
from styleq.shared.service import fleet
from tests.api.support import assert_error, count_jobs, first_group, image_bytes, submit

CONTENT = image_bytes(size=(48, 32))  # 3:2, so a long side of 600 makes 600x400
SMALL_DEVICE = 512 * 2**20  # holds about 0.13 megapixels in one pass, about 0.8 in tiles
LARGE_DEVICE = 8 * 2**30


def report(app: Flask, name: str, memory: int | None, *, seconds_ago: float = 0) -> None:
    """Record a worker as the fleet knows it: heard from `seconds_ago`, with a device of `memory` bytes."""
    with session_scope(app.extensions["styleq"].session_factory) as session:
        fleet.report_worker(session, name, host="host", gpu="cpu", pid=1, starting=True, device_memory_bytes=memory)
        session.flush()
        session.get_one(Worker, name).heartbeat_at = datetime.now(UTC) - timedelta(seconds=seconds_ago)


def largest_named(response) -> int:
    """Return the largest size a refusal names."""
    message = assert_error(response, 422, "too_large_for_memory")["message"]
    return int(first_group(r"the largest size that fits is (\d+) \(the long side", message))


def test_a_job_too_large_for_every_live_worker_even_in_tiles_is_refused_naming_the_largest_size_that_fits(app, client, keys, settings):
    settings.max_size = 4096
    report(app, "cpu@small", SMALL_DEVICE)
    alice = keys.headers("alice")

    refused = submit(client, alice, content=CONTENT, params=json.dumps({"size": 3000}))
    largest = largest_named(refused)

    assert 600 < largest < 3000 and count_jobs(app) == 0
    assert "3000 wide and 2000 high" in refused.get_json()["error"]["message"] and "even in tiles" in refused.get_json()["error"]["message"]
    assert submit(client, alice, content=CONTENT, params=json.dumps({"size": largest})).status_code == 202
    assert largest_named(submit(client, alice, content=CONTENT, params=json.dumps({"size": largest + 1}))) == largest
    # A [height, width] size is answered with the long side that fits in its own proportions.
    assert largest_named(submit(client, alice, content=CONTENT, params=json.dumps({"size": [2000, 3000]}))) == largest


def test_a_job_past_one_pass_is_accepted_to_run_in_tiles_unless_its_style_loss_has_no_tiled_form(app, client, keys):
    report(app, "cpu@small", SMALL_DEVICE)
    alice = keys.headers("alice")

    assert submit(client, alice, content=CONTENT, params=json.dumps({"size": 600})).status_code == 202
    refused = submit(client, alice, content=CONTENT, params=json.dumps({"size": 600, "style_loss": "moments"}))
    largest = largest_named(refused)

    assert 300 < largest < 600 and "in one pass" in refused.get_json()["error"]["message"]
    assert submit(client, alice, content=CONTENT, params=json.dumps({"size": largest, "style_loss": "moments"})).status_code == 202


def test_the_largest_live_worker_decides_and_silent_ones_do_not_count(app, client, keys, settings):
    settings.max_size = 4096
    report(app, "cpu@small", SMALL_DEVICE)
    report(app, "gpu0@gone", LARGE_DEVICE, seconds_ago=3600)
    params = json.dumps({"size": 3000})

    assert submit(client, keys.headers("alice"), content=CONTENT, params=params).status_code == 422
    report(app, "gpu0@big", LARGE_DEVICE)
    assert submit(client, keys.headers("alice"), content=CONTENT, params=params).status_code == 202


def test_without_a_report_the_setting_decides_and_without_either_nothing_is_refused_for_memory(app, client, keys, settings):
    settings.max_size = 4096
    params = json.dumps({"size": 3000})
    report(app, "cpu@old", None)  # a worker from before workers reported their memory

    assert submit(client, keys.headers("alice"), content=CONTENT, params=params).status_code == 202
    settings.device_memory_bytes = SMALL_DEVICE
    assert largest_named(submit(client, keys.headers("alice"), content=CONTENT, params=params)) < 3000


def test_a_larger_style_scale_needs_more_memory_in_one_pass(app, client, keys):
    report(app, "cpu@small", SMALL_DEVICE)
    one_pass = {"size": 600, "style_loss": "moments"}

    plain = largest_named(submit(client, keys.headers("alice"), content=CONTENT, params=json.dumps(one_pass)))
    enlarged = largest_named(submit(client, keys.headers("alice"), content=CONTENT, params=json.dumps({**one_pass, "style_scale": 4})))

    assert enlarged < plain


def test_the_automatic_schedule_is_written_into_the_job_at_submit(client, keys):
    small = submit(client, keys.headers("alice"), content=CONTENT, params=json.dumps({"size": 400})).get_json()
    large = submit(client, keys.headers("alice"), content=CONTENT, params=json.dumps({"size": 640, "iterations": 300})).get_json()
    explicit = submit(client, keys.headers("alice"), content=CONTENT, params=json.dumps({"size": 640, "scales": [0.5, 1]})).get_json()

    assert small["params"]["scales"] == [1.0] and small["params"]["scale_iterations"] is None
    # 640 px: a first scale 450 px long that settles the look with most of the budget, then the full size; the job's
    # iterations are what its scales get (shared.domain.params.auto_scale_iterations).
    assert large["params"]["scales"] == [0.7031, 1.0]
    first, last = large["params"]["scale_iterations"]
    assert first > last and large["params"]["iterations"] == first + last
    assert explicit["params"]["scales"] == [0.5, 1.0] and explicit["params"]["scale_iterations"] is None
