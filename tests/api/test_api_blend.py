"""POST /v1/jobs with several style images: the repeated `style` field, `style_weights`, and everything that must refuse or keep working."""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Iterator

import numpy as np
import pytest
from flask import Flask
from PIL import Image

from styleq.api import create_app
from styleq.shared.adapters.db import session_scope
from styleq.shared.adapters.settings import Settings
from styleq.shared.service.keys import create_api_key
from tests.api.conftest import MAX_UPLOAD_BYTES, api_settings
from tests.api.support import (
    assert_error,
    assert_refused_storing_nothing,
    broker_messages,
    count_jobs,
    file_field,
    image_bytes,
    submit,
    upload_files,
)
from tests.api.test_dashboard_pages import csrf_of, read, signed_in

OAK, NIGHT, SCREAM = image_bytes((200, 120, 40)), image_bytes((20, 40, 120)), image_bytes((230, 90, 20))


def test_repeated_style_fields_make_one_job_that_blends_them_by_their_weights(app, client, keys, settings):
    response = submit(client, keys.headers("alice"), style=[OAK, NIGHT], fields={"style_weights": "0.7,0.3"})

    assert response.status_code == 202, response.get_data(as_text=True)
    job = response.get_json()
    assert job["params"]["style_weights"] == [0.7, 0.3]
    assert [style["weight"] for style in job["styles"]] == pytest.approx([0.7, 0.3])
    assert [style["link"] for style in job["styles"]] == [f"/v1/jobs/{job['id']}/styles/0", f"/v1/jobs/{job['id']}/styles/1"]
    assert [read(client_with(app, keys), style["link"]) for style in job["styles"]] == [OAK, NIGHT]
    assert read(client_with(app, keys), job["links"]["style"]) == OAK
    assert_error(client.get(f"/v1/jobs/{job['id']}/styles/2", headers=keys.headers("alice")), 404, "not_found")
    assert len(upload_files(settings)) == 3 and count_jobs(app) == 1
    assert broker_messages(settings) == [("styleq.run_job", [job["id"]])]


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def shared(request, tmp_path_factory) -> Iterator[tuple[Flask, Settings]]:
    """One app, and its settings, for the tests that look only at what their own requests did, each with a key of its own.

    As the `app` fixture's, on a migrated database (a copy of the session's SQLite one, or the session's Postgres one),
    with fair use at its defaults; made once per module and backend rather than once per test.
    """
    folder = tmp_path_factory.mktemp("shared-app")
    if request.param == "sqlite":
        database = request.getfixturevalue("migrated_sqlite")(folder / "styleq.db")
    else:
        database = request.getfixturevalue("postgres_url")
    settings = api_settings(folder, database)
    app = create_app(settings)
    app.config.update(TESTING=True)
    yield app, settings
    app.extensions["styleq"].close()


@pytest.fixture
def own_key(shared) -> dict[str, str]:
    """The headers of a new key on the shared app: no earlier test's jobs count against its fair use."""
    resources = shared[0].extensions["styleq"]
    with session_scope(resources.session_factory) as session:
        _, token = create_api_key(session, f"case-{uuid.uuid4().hex[:8]}", secret=resources.secret_key)
    return {"Authorization": f"Bearer {token}"}


def client_with(app: Flask, keys):
    """A client sending alice's key with every request, for reading files."""
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = keys.headers("alice")["Authorization"]
    return client


@pytest.mark.parametrize(
    ("styles", "fields", "params", "shares", "stored"),
    [
        (2, {"style_weights": "3, 1"}, None, [0.75, 0.25], [3.0, 1.0]),
        (3, {}, None, [1 / 3] * 3, None),
        (2, {}, '{"style_weights": [1, 3]}', [0.25, 0.75], [1, 3]),
        (1, {}, None, [1.0], None),
        (1, {"style_weights": "2"}, None, [1.0], [2.0]),
    ],
    ids=["weights normalised", "equal shares by default", "weights in params", "one style", "one style with a weight"],
)
def test_each_style_gets_its_share_of_the_blend(shared, own_key, styles, fields, params, shares, stored):
    response = submit(shared[0].test_client(), own_key, style=[OAK, NIGHT, SCREAM][:styles], fields=fields, params=params)

    assert response.status_code == 202, response.get_data(as_text=True)
    job = response.get_json()
    assert [style["weight"] for style in job["styles"]] == pytest.approx(shares)
    assert job["params"]["style_weights"] == stored


def noise_png(seed: int, side: int) -> bytes:
    """Return a PNG of random pixels: it barely compresses, so its size in bytes is about 3 x side x side."""
    pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


NOT_AN_IMAGE = b"just some text, not a picture\n" * 10
BAD_BLENDS = {
    "five styles": ({"style": [OAK] * 5}, 400, "too_many_files", "at most 4"),
    "a second style as style2": ({"style": OAK, "fields": {"style2": file_field("style2", NIGHT)}}, 400, "unknown_field", "style2"),
    "two content images": (
        {"omit": ("content",), "fields": {"content": [file_field("content", OAK), file_field("content", NIGHT)]}},
        400,
        "too_many_files",
        "one content",
    ),
    "one weight for two styles": (
        {"style": [OAK, NIGHT], "fields": {"style_weights": "1"}},
        422,
        "invalid_style_weights",
        "1 weight(s) for 2",
    ),
    "two weights for one style": ({"style": OAK, "fields": {"style_weights": "1,1"}}, 422, "invalid_style_weights", "2 weight(s) for 1"),
    "a weight that is no number": (
        {"style": [OAK, NIGHT], "fields": {"style_weights": "0.7,lots"}},
        422,
        "invalid_style_weights",
        "numbers",
    ),
    "a zero weight": ({"style": [OAK, NIGHT], "fields": {"style_weights": "1,0"}}, 422, "invalid_style_weights", "positive"),
    "a negative weight": ({"style": [OAK, NIGHT], "fields": {"style_weights": "1,-1"}}, 422, "invalid_style_weights", "positive"),
    "a NaN weight": ({"style": [OAK, NIGHT], "fields": {"style_weights": "nan,1"}}, 422, "invalid_style_weights", "positive"),
    "an infinite weight": ({"style": [OAK, NIGHT], "fields": {"style_weights": "1e400,1"}}, 422, "invalid_style_weights", "positive"),
    "empty weights": ({"style": [OAK, NIGHT], "fields": {"style_weights": ""}}, 422, "invalid_style_weights", "numbers"),
    "weights as a file": (
        {"style": [OAK, NIGHT], "fields": {"style_weights": file_field("style_weights", b"1,1")}},
        400,
        "invalid_params",
        "style_weights",
    ),
    "weights twice": ({"style": [OAK, NIGHT], "fields": {"style_weights": ["1,1", "1,2"]}}, 400, "invalid_style_weights", "once"),
    "weights in the form and in params": (
        {"style": [OAK, NIGHT], "fields": {"style_weights": "1,1"}, "params": '{"style_weights": [1, 1]}'},
        400,
        "invalid_style_weights",
        "once",
    ),
    "weights in params of another count": (
        {"style": [OAK, NIGHT], "params": '{"style_weights": [1, 1, 1]}'},
        422,
        "invalid_style_weights",
        "3 weight(s) for 2",
    ),
    "weights in params as a string": (
        {"style": [OAK, NIGHT], "params": '{"style_weights": "1,1"}'},
        422,
        "invalid_params",
        "style_weights",
    ),
    "a huge weight in params": (
        {"style": [OAK, NIGHT], "params": '{"style_weights": [1, 1' + "0" * 400 + "]}"},
        422,
        "invalid_params",
        "style_weights",
    ),
    "a second style that is no picture": ({"style": [OAK, NOT_AN_IMAGE]}, 400, "invalid_image", "style 2"),
    "a second style over the size limit": ({"style": [OAK, b"\x89PNG" + bytes(MAX_UPLOAD_BYTES)]}, 413, "too_large", "style 2"),
}


@pytest.mark.parametrize("case", list(BAD_BLENDS), ids=list(BAD_BLENDS))
def test_a_bad_blend_is_refused_naming_the_problem_and_leaves_nothing_behind(shared, own_key, case):
    # It counts the jobs and files before and after the refused request: the earlier tests' stay out of it.
    app, settings = shared
    assert_refused_storing_nothing(app, app.test_client(), own_key, settings, *BAD_BLENDS[case])


def test_the_request_limit_takes_the_content_and_four_styles_each_near_the_upload_limit(app, client, keys, settings):
    pictures = [noise_png(seed, 140) for seed in range(5)]
    assert all(MAX_UPLOAD_BYTES * 0.8 < len(picture) <= MAX_UPLOAD_BYTES for picture in pictures)

    response = submit(client, keys.headers("alice"), content=pictures[0], style=pictures[1:])

    assert response.status_code == 202, response.get_data(as_text=True)
    assert len(upload_files(settings)) == 5
    # One byte more than five full files and the form's allowance is refused before it is read.
    assert_error(submit(client, keys.headers("alice"), content=bytes(app.config["MAX_CONTENT_LENGTH"] + 1)), 413, "too_large")


def test_an_idempotency_key_repeats_a_blend_but_refuses_its_styles_in_another_order_or_other_weights(app, client, keys, settings):
    headers = {**keys.headers("alice"), "Idempotency-Key": "blend-1"}
    first = submit(client, headers, style=[OAK, NIGHT], fields={"style_weights": "0.7,0.3"})
    again = submit(client, headers, style=[OAK, NIGHT], fields={"style_weights": "0.7,0.3"})
    assert (first.status_code, again.status_code) == (202, 200) and again.get_json()["id"] == first.get_json()["id"]

    swapped = submit(client, headers, style=[NIGHT, OAK], fields={"style_weights": "0.7,0.3"})
    reweighted = submit(client, headers, style=[OAK, NIGHT], fields={"style_weights": "0.5,0.5"})
    fewer = submit(client, headers, style=OAK)

    assert "style images" in assert_error(swapped, 422, "idempotency_key_reused")["message"]
    assert "params" in assert_error(reweighted, 422, "idempotency_key_reused")["message"]
    assert "style image" in assert_error(fewer, 422, "idempotency_key_reused")["message"]
    assert count_jobs(app) == 1 and len(upload_files(settings)) == 3 and len(broker_messages(settings)) == 1


def test_deleting_a_blend_removes_the_style_uploads_no_other_job_uses(app, client, keys, settings):
    blend = submit(client, keys.headers("alice"), style=[OAK, NIGHT]).get_json()
    other = submit(client, keys.headers("alice"), content=image_bytes((1, 2, 3)), style=OAK).get_json()

    assert client.delete(f"/v1/jobs/{blend['id']}", headers=keys.headers("alice")).status_code == 204

    # The blend's content and its second style were its own; the first style is the other job's too.
    assert len(upload_files(settings)) == 2
    assert read(client_with(app, keys), other["links"]["style"]) == OAK


def test_the_job_page_shows_every_style_with_its_share_and_the_list_marks_a_blend(app, client, keys):
    job = submit(client, keys.headers("alice"), style=[OAK, NIGHT, SCREAM], fields={"style_weights": "2,1,1"}).get_json()
    dashboard = signed_in(app, keys, "alice")

    page = dashboard.get(f"/jobs/{job['id']}").get_data(as_text=True)
    listing = dashboard.get("/jobs").get_data(as_text=True)

    for index, share in enumerate(("50%", "25%", "25%")):
        assert f'src="/v1/jobs/{job["id"]}/styles/{index}"' in page
        assert f"Style {index + 1} · <span data-style-weight>{share}</span> of the blend" in page
    assert "The first of 3 blended style images" in listing and ">+2</span>" in listing


def test_run_again_repeats_a_blend_with_its_styles_and_weights(app, client, keys, settings):
    original = submit(client, keys.headers("alice"), style=[OAK, NIGHT], fields={"style_weights": "0.7,0.3"}).get_json()
    dashboard = signed_in(app, keys, "alice")
    token = csrf_of(dashboard.get(f"/jobs/{original['id']}").get_data(as_text=True))

    response = dashboard.post(f"/jobs/{original['id']}/rerun", data={"csrf_token": token})

    again = dashboard.get(f"/v1/jobs/{response.headers['Location'].rsplit('/', 1)[1]}").get_json()
    assert (
        again["id"] != original["id"]
        and again["params"] == original["params"]
        and again["styles"] == [{**style, "link": style["link"].replace(original["id"], again["id"])} for style in original["styles"]]
    )
    assert [read(dashboard, style["link"]) for style in again["styles"]] == [OAK, NIGHT]


def test_a_blend_counts_as_one_job_against_the_active_jobs_limit(app, client, keys, settings):
    settings.max_active_jobs = 2
    assert submit(client, keys.headers("alice"), style=[OAK, NIGHT, SCREAM]).status_code == 202
    assert submit(client, keys.headers("alice"), content=image_bytes((1, 1, 1)), style=[OAK, NIGHT]).status_code == 202

    assert_error(submit(client, keys.headers("alice"), content=image_bytes((2, 2, 2))), 429, "too_many_active_jobs")
    assert json.loads(client.get("/v1/jobs", headers=keys.headers("alice")).get_data())["jobs"][0]["styles"][1]["weight"] == 0.5
