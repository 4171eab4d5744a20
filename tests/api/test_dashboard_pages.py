"""The dashboard's server side through Flask's test client, on the API tests' app: sessions, CSRF, the pages and what they show."""

from __future__ import annotations

import dataclasses
import io
import re
import stat
from datetime import UTC, datetime, timedelta

from flask import Flask
from flask.testing import FlaskClient
from PIL import ExifTags, Image
from sqlalchemy import update

from styleq.api import create_app
from styleq.api.dashboard.formatting import SHOWN_WITH_INPUTS
from styleq.shared.adapters.db import session_scope
from styleq.shared.adapters.models import ApiKey, Job
from styleq.shared.adapters.outputs import encode_result
from styleq.shared.adapters.settings import Settings
from styleq.shared.domain.params import TransferParams, parameters, resolve_params
from tests.api.support import add_job, broker_messages, csrf_of, first_group, image_bytes, set_job, sign_in, signed_in, submit


def read(client: FlaskClient, path: str) -> bytes:
    """Return a file response's body, closing the file behind it."""
    with client.get(path) as response:
        assert response.status_code == 200, response.status_code
        return response.data


def test_the_session_secret_is_made_once_private_and_shared(settings: Settings):
    first, second = create_app(settings), create_app(settings)
    path = settings.data_dir / "secret-key"
    assert first.secret_key == second.secret_key == path.read_text().strip()
    assert len(first.secret_key) >= 64
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    configured = create_app(settings.model_copy(update={"secret_key": "from-the-environment"}))
    assert configured.secret_key == "from-the-environment"
    for made in (first, second, configured):
        made.extensions["styleq"].close()


def test_signing_in_sets_an_httponly_lax_cookie_without_the_key(app: Flask, keys):
    client = app.test_client()
    response = sign_in(client, keys.alice, "/jobs?status=running")
    assert response.status_code == 302 and response.headers["Location"] == "/jobs?status=running"
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" not in cookie
    assert keys.alice not in cookie
    # With no proxy configured, a client's own claim to have come over HTTPS is not believed.
    claimed = sign_in(app.test_client(), keys.alice, **{"X-Forwarded-Proto": "https"})
    assert "Secure" not in claimed.headers["Set-Cookie"]


def test_a_wrong_key_or_a_foreign_next_page_goes_nowhere(app: Flask, keys):
    client = app.test_client()
    assert client.get("/jobs/new").headers["Location"] == "/signin?next=/jobs/new"
    refused = sign_in(client, "sq_wrong")
    assert refused.status_code == 401 and "not valid" in refused.get_data(as_text=True)
    for target in ("//evil.example/", "https://evil.example/", "/\\evil.example"):
        assert sign_in(app.test_client(), keys.alice, target).headers["Location"] == "/jobs"


def test_a_cookie_request_that_changes_something_needs_the_dashboard_header(app: Flask, keys):
    job_id = add_job(app, keys.ids["alice"])
    client = signed_in(app, keys, "alice")
    assert client.get("/v1/jobs").status_code == 200
    refused = client.post(f"/v1/jobs/{job_id}/cancel")
    assert refused.status_code == 403 and refused.get_json()["error"]["code"] == "forbidden"
    assert client.delete(f"/v1/jobs/{job_id}").status_code == 403
    assert client.post(f"/v1/jobs/{job_id}/cancel", headers={"X-Requested-With": "styleq-dashboard"}).status_code == 202
    # A Bearer key needs no such header, and no cookie.
    bearer = app.test_client().post(f"/v1/jobs/{add_job(app, keys.ids['alice'])}/cancel", headers={"Authorization": f"Bearer {keys.alice}"})
    assert bearer.status_code == 202


def test_forms_without_the_session_token_are_refused(app: Flask, keys):
    job_id = add_job(app, keys.ids["alice"])
    client = signed_in(app, keys, "alice")
    assert client.post(f"/jobs/{job_id}/rerun").status_code == 400
    assert client.post("/signout", data={"csrf_token": "forged"}).status_code == 400
    assert client.get("/jobs").status_code == 200


def test_signing_out_or_revoking_the_key_ends_the_session(app: Flask, keys):
    client = signed_in(app, keys, "alice")
    token = csrf_of(client.get("/jobs").get_data(as_text=True))
    assert client.post("/signout", data={"csrf_token": token}).headers["Location"] == "/signin"
    assert client.get("/v1/jobs").status_code == 401

    client = signed_in(app, keys, "bob")
    with session_scope(app.extensions["styleq"].session_factory) as session:
        session.execute(update(ApiKey).where(ApiKey.id == keys.ids["bob"]).values(revoked_at=datetime.now(UTC)))
    assert client.get("/jobs").headers["Location"].startswith("/signin")
    assert client.get("/v1/jobs").status_code == 401


def test_the_jobs_list_filters_by_status_and_pages(app: Flask, keys):
    start = datetime.now(UTC) - timedelta(hours=1)
    ids = [add_job(app, keys.ids["alice"], created_at=start + timedelta(minutes=i)) for i in range(23)]
    set_job(app, ids[0], status="failed", error_code="internal_error", error_message="boom")
    add_job(app, keys.ids["bob"])
    client = signed_in(app, keys, "alice")

    first = client.get("/jobs").get_data(as_text=True)
    rows = re.findall(r'<tr data-key="([0-9a-f]{32})"', first)
    assert rows == ids[::-1][:20]
    older = first_group(r'href="(/jobs\?cursor=[0-9a-f]+)">Older jobs', first)
    second = client.get(older).get_data(as_text=True)
    assert re.findall(r'<tr data-key="([0-9a-f]{32})"', second) == ids[::-1][20:]
    assert "Older jobs" not in second and "Newest jobs" in second

    failed = client.get("/jobs?status=failed").get_data(as_text=True)
    assert re.findall(r'<tr data-key="([0-9a-f]{32})"', failed) == [ids[0]]
    assert re.search(r"Failed <span class=\"count\">1</span>", failed)
    assert client.get("/jobs?status=lost").status_code == 400
    admin = signed_in(app, keys, "admin").get("/jobs").get_data(as_text=True)
    assert "bob" in admin and len(re.findall(r"<tr data-key=", admin)) == 20


def test_run_again_queues_a_new_job_with_the_same_uploads_and_parameters(app: Flask, keys, settings: Settings):
    response = submit(app.test_client(), {"Authorization": f"Bearer {keys.alice}"}, params='{"iterations": 40, "style_weight": 5}')
    original = response.get_json()
    broker_messages(settings)
    client = signed_in(app, keys, "alice")
    token = csrf_of(client.get(f"/jobs/{original['id']}").get_data(as_text=True))

    response = client.post(f"/jobs/{original['id']}/rerun", data={"csrf_token": token})
    new_id = response.headers["Location"].rsplit("/", 1)[1]
    assert new_id != original["id"]
    again = client.get(f"/v1/jobs/{new_id}").get_json()
    assert again["status"] == "queued" and again["params"] == original["params"]
    assert read(client, again["links"]["content"]) == read(client, original["links"]["content"])
    assert broker_messages(settings) == [("styleq.run_job", [new_id])]
    assert "Queued a new run" in client.get(f"/jobs/{new_id}").get_data(as_text=True)


def test_the_job_page_shows_inputs_parameters_and_failure(app: Flask, keys):
    job_id = submit(app.test_client(), {"Authorization": f"Bearer {keys.alice}"}).get_json()["id"]
    set_job(app, job_id, status="failed", error_code="out_of_memory", error_message="did not fit")
    page = signed_in(app, keys, "alice").get(f"/jobs/{job_id}").get_data(as_text=True)
    assert "did not fit" in page and "out_of_memory" in page
    assert f'src="/v1/jobs/{job_id}/content"' in page and f'src="/v1/jobs/{job_id}/style"' in page
    assert "Learning rate" in page and "Cancel job" not in page and "Download result" not in page
    assert signed_in(app, keys, "bob").get(f"/jobs/{job_id}").status_code == 404


def test_the_operator_view_is_for_admin_keys(app: Flask, keys):
    add_job(app, keys.ids["alice"], status="failed", error_code="worker_lost", error_message="the worker stopped answering")
    add_job(app, keys.ids["bob"])
    assert signed_in(app, keys, "alice").get("/operator").status_code == 403
    page = signed_in(app, keys, "admin").get("/operator").get_data(as_text=True)
    assert "the worker stopped answering" in page and "Queue depth" in page
    assert re.search(r"Queued <b>1</b>", page) and re.search(r"Failed <b>1</b>", page)


def test_thumbnails_are_small_jpegs_of_the_clients_own_jobs(app: Flask, keys):
    response = submit(app.test_client(), {"Authorization": f"Bearer {keys.alice}"}, content=image_bytes(size=(400, 300)))
    job_id = response.get_json()["id"]
    client = signed_in(app, keys, "alice")
    thumbnail = client.get(f"/thumbnails/{job_id}/content.jpg")
    assert thumbnail.status_code == 200 and thumbnail.mimetype == "image/jpeg"
    with Image.open(io.BytesIO(thumbnail.data)) as image:
        assert image.size == (160, 120)
    assert client.get(f"/thumbnails/{job_id}/content.jpg", headers={"If-None-Match": thumbnail.headers["ETag"]}).status_code == 304
    assert client.get(f"/thumbnails/{job_id}/result.jpg").status_code == 404
    assert signed_in(app, keys, "bob").get(f"/thumbnails/{job_id}/content.jpg").status_code == 404


def test_a_thumbnail_shows_the_picture_upright_as_the_worker_decodes_it(app: Flask, keys):
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6  # stored 400 wide and 300 high, upright 300 wide and 400 high
    buffer = io.BytesIO()
    Image.new("RGB", (400, 300), (30, 90, 160)).save(buffer, "JPEG", exif=exif.tobytes())
    job_id = submit(app.test_client(), {"Authorization": f"Bearer {keys.alice}"}, content=buffer.getvalue()).get_json()["id"]

    thumbnail = signed_in(app, keys, "alice").get(f"/thumbnails/{job_id}/content.jpg")

    with Image.open(io.BytesIO(thumbnail.data)) as image:
        assert image.size == (120, 160)


def test_the_new_job_form_offers_every_colour_choice_and_the_job_page_shows_the_chosen_one(app: Flask, keys):
    client = signed_in(app, keys, "alice")
    form = client.get("/jobs/new").get_data(as_text=True)
    select = first_group(r'<select id="colors" name="colors"[^>]*>(.*?)</select>', form, re.S)
    assert re.findall(r'<option value="(\w+)"', select) == ["style", "content", "histogram"]
    assert '<option value="style" selected>' in select

    job_id = add_job(app, keys.ids["alice"], params=resolve_params({"colors": "content"}).to_dict())
    page = client.get(f"/jobs/{job_id}").get_data(as_text=True)
    assert "<tr><td>Colours from</td><td>the content image</td></tr>" in page


def test_the_operator_view_shows_the_storage_each_kind_of_file_takes(app: Flask, keys):
    storage = app.extensions["styleq"].storage
    storage.write_job_file("e" * 32, "result.png", b"r" * 2500)
    storage.save_upload(b"u" * 1200)

    page = signed_in(app, keys, "admin").get("/operator").get_data(as_text=True)

    assert "Storage in use" in page and "3.7 kB in all" in page
    assert 'data-storage="results" data-bytes="2500">2.5 kB<' in page and 'data-storage="uploads" data-bytes="1200">1.2 kB<' in page
    assert "kept 30 days" in page


def test_the_new_job_form_offers_the_style_losses_and_file_formats_and_the_job_page_shows_the_chosen_ones(app: Flask, keys):
    client = signed_in(app, keys, "alice")
    form = client.get("/jobs/new").get_data(as_text=True)
    losses = first_group(r'<select id="style_loss" name="style_loss"[^>]*>(.*?)</select>', form, re.S)
    formats = first_group(r'<select id="format" name="format"[^>]*>(.*?)</select>', form, re.S)
    assert re.findall(r'<option value="(\w+)"', losses) == ["gram", "moments"] and '<option value="gram" selected>' in losses
    assert re.findall(r'<option value="(\w+)"', formats) == ["png", "jpeg", "webp"] and '<option value="png" selected>' in formats
    assert re.search(r'<input id="quality" name="quality" type="number"[^>]* min="1" max="100" step="1" value="92"', form)

    job_id = add_job(app, keys.ids["alice"], params=resolve_params({"style_loss": "moments", "format": "webp", "quality": 80}).to_dict())
    page = client.get(f"/jobs/{job_id}").get_data(as_text=True)
    rows = (
        "<tr><td>Style measured by</td><td>feature mean and covariance</td></tr>",
        "<tr><td>File format</td><td>WebP</td></tr>",
        "<tr><td>Quality</td><td>80</td></tr>",
    )
    for row in rows:
        assert row in page

    set_job(app, job_id, status="succeeded")
    page = client.get(f"/jobs/{job_id}").get_data(as_text=True)
    assert f'download="styleq-{job_id[:8]}.webp"' in page


def parameter_rows(page: str) -> dict[str, str]:
    """Return the job page's parameters table as {label: value}."""
    table = first_group(r'<table class="params">(.*?)</table>', page, re.S)
    return dict(re.findall(r"<tr><td>(.*?)</td><td>(.*?)</td></tr>", table))


def test_every_parameter_has_a_label_in_words():
    fields = {field.name for field in dataclasses.fields(TransferParams)}
    labels = {parameter.name: parameter.spec.label for parameter in parameters()}

    assert fields == set(labels) and SHOWN_WITH_INPUTS <= fields
    assert all(re.fullmatch(r"[A-Z][A-Za-z -]+", label) for label in labels.values())


def test_the_job_page_shows_every_parameter_in_words_and_none_unresolved(app: Flask, keys):
    client = signed_in(app, keys, "alice")
    jobs = {
        "default": resolve_params({}).with_schedule(640, 480),
        "seed": resolve_params({"preset": "seed"}),
        "lbfgs": resolve_params({"optimizer": "lbfgs", "line_search": "strong_wolfe", "scales": [0.5, 1.0], "size": 640, "format": "jpeg"}),
    }
    pages = {
        name: parameter_rows(client.get(f"/jobs/{add_job(app, keys.ids['alice'], params=params.to_dict())}").get_data(as_text=True))
        for name, params in jobs.items()
    }

    for name, rows in pages.items():
        assert rows and all("_" not in label and label[0].isupper() for label in rows), (name, rows)
        assert not {"None", "none", "auto", "lbfgs", "strong_wolfe", ""} & set(rows.values()), (name, rows)
    default, seed, lbfgs = pages["default"], pages["seed"], pages["lbfgs"]
    assert default["Precision"] == "automatic (bf16 where the worker&#39;s device supports it, else fp32)"
    assert default["Scales"] == "100% of the size (one pass)" and "Iterations per scale" not in default
    # Parameters that change nothing for the job are left out: L-BFGS's for Adam, the quality of a lossless PNG.
    assert default["Optimizer"] == "Adam" and not {"L-BFGS history", "Line search", "Quality"} & set(default)
    assert seed["Precision"] == "fp32" and seed["Size"] == "300 × 450 px" and seed["Start from"] == "the content image"
    assert (lbfgs["Optimizer"], lbfgs["L-BFGS history"], lbfgs["Line search"]) == ("L-BFGS", "100 steps", "strong Wolfe")
    # Scales given without their iterations: the split the worker runs by.
    assert (lbfgs["Scales"], lbfgs["Iterations per scale"]) == ("50%, 100% of the size", "240, 60")
    assert (lbfgs["Size"], lbfgs["File format"], lbfgs["Quality"]) == ("640 px on the long side", "JPEG", "92")


def test_the_job_page_says_which_precision_automatic_precision_ran_in(app: Flask, keys):
    client = signed_in(app, keys, "alice")
    params = resolve_params({"precision": "auto"})
    job_id = add_job(app, keys.ids["alice"], params=params.to_dict(), status="running")
    assert parameter_rows(client.get(f"/jobs/{job_id}").get_data(as_text=True))["Precision"].startswith("automatic (bf16 where")

    # The worker writes the precision it ran in inside the result file (worker/runner.py).
    storage = app.extensions["styleq"].storage
    storage.write_job_file(job_id, "result.png", encode_result(Image.new("RGB", (45, 30)), params, precision="bf16"))
    set_job(app, job_id, status="succeeded")
    assert parameter_rows(client.get(f"/jobs/{job_id}").get_data(as_text=True))["Precision"] == "bf16 (chosen for the worker&#39;s device)"


def test_the_job_page_says_an_upload_was_removed_instead_of_showing_a_broken_picture(app: Flask, keys):
    job_id = submit(app.test_client(), {"Authorization": f"Bearer {keys.alice}"}).get_json()["id"]
    client = signed_in(app, keys, "alice")
    storage = app.extensions["styleq"].storage
    with session_scope(app.extensions["styleq"].session_factory) as session:
        content_sha = session.get_one(Job, job_id).content_sha256
    storage.upload_path(content_sha).unlink()  # as the retention sweep removes it

    page = client.get(f"/jobs/{job_id}").get_data(as_text=True)

    assert f'src="/v1/jobs/{job_id}/content"' not in page and "Removed: uploads are kept only a while" in page
    assert f'src="/v1/jobs/{job_id}/style"' in page
