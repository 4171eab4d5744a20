"""The dashboard in headless Chromium against a real API and worker: sign in, submit, watch, cancel, download."""

from __future__ import annotations

import json
import re
import time

import pytest
from PIL import Image
from playwright.sync_api import Page, expect

from styleq.shared.adapters.db import make_engine, make_session_factory, session_scope
from styleq.shared.adapters.models import ApiKey, Job, JobStatus, utcnow
from styleq.shared.domain.params import resolve_params
from styleq.shared.service.jobs import create_job
from tests.browser.conftest import screenshot

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]
# Small on real weights, yet long enough (a minute or so here) to watch the chart and the picture change.
WATCHED = {"height": 48, "width": 72, "iterations": 400}
FINISHED = ("succeeded", "failed", "canceled")
JOB_PAGE = re.compile(r"/jobs/[0-9a-f]{32}$")


def chart_points(page: Page) -> int:
    return int(page.locator("#chart").get_attribute("data-points") or 0)


def picture_version(page: Page) -> int:
    return int(page.locator("#picture").get_attribute("data-version") or 0)


def wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.2)


def submit_through_form(page: Page, images_dir, *, height: int, width: int, iterations: int, scales: str | None = None) -> str:
    """Fill in and send the new-job form; return the id of the job page it lands on."""
    page.get_by_role("link", name="New job", exact=True).first.click()
    page.wait_for_url("**/jobs/new")
    page.locator("#content-file").set_input_files(images_dir / "rainier.jpg")
    page.locator("#style-file").set_input_files(images_dir / "autumn-oak.jpg")
    expect(page.get_by_alt_text("Preview of the content image rainier.jpg")).to_be_visible()
    expect(page.get_by_alt_text("Preview of the style image autumn-oak.jpg")).to_be_visible()
    page.get_by_label("Width follows the content image's proportions").uncheck()
    page.get_by_label("Height in pixels").fill(str(height))
    page.get_by_label("Width in pixels").fill(str(width))
    page.get_by_label("Iterations").fill(str(iterations))
    if scales is not None:
        page.get_by_text("More settings").click()
        page.get_by_label("Scales").fill(scales)
    page.get_by_role("button", name="Start job").click()
    page.wait_for_url(JOB_PAGE)
    return page.url.rstrip("/").rsplit("/", 1)[1]


def record_failure(deployment, like_job_id: str, code: str, message: str) -> str:
    """Add a failed job with the inputs of another, as a worker records a failure; return its id."""
    engine = make_engine(deployment.database_url)
    with session_scope(make_session_factory(engine)) as session:
        template = session.get_one(Job, like_job_id)
        owner = session.get_one(ApiKey, template.owner_id)
        job, _ = create_job(session, owner, resolve_params(template.params), template.content_sha256, template.style_hashes)
        job.status, job.lease_owner, job.gpu, job.attempts = JobStatus.FAILED, "w1@test/1", "cpu", 1
        job.started_at = job.finished_at = utcnow()
        job.error_code, job.error_message = code, message
        job_id = job.id
    engine.dispose()
    return job_id


def test_sign_in_refuses_a_wrong_key_and_sign_out_ends_the_session(browser, deployment):
    context = browser.new_context()
    page = context.new_page()
    page.goto(f"{deployment.url}/jobs")
    page.get_by_label("API key").fill("sq_not-a-key")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("not valid")

    page.get_by_label("API key").fill(deployment.keys["alice"])
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Jobs", exact=True)).to_be_visible()
    cookie = next(c for c in context.cookies() if c["name"] == "styleq_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Lax"
    assert deployment.keys["alice"] not in json.dumps(context.cookies())
    # The API takes the cookie instead of a key, and refuses a change that lacks the dashboard's header.
    assert page.evaluate("fetch('/v1/jobs').then(r => r.status)") == 200
    assert page.evaluate("fetch('/v1/jobs/x/cancel', {method: 'POST'}).then(r => r.status)") == 403

    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_text("You are signed out.")).to_be_visible()
    assert page.evaluate("fetch('/v1/jobs').then(r => r.status)") == 401
    page.goto(f"{deployment.url}/jobs")
    assert "/signin" in page.url
    context.close()


def test_a_job_submitted_through_the_form_is_watched_live_and_downloaded(open_session, deployment, images_dir, tmp_path):
    page = open_session("alice")
    job_id = submit_through_form(page, images_dir, **WATCHED)
    expect(page.get_by_role("heading", name=f"Job {job_id[:8]}")).to_be_visible()

    # The chart gains points and the picture changes while the job runs.
    wait_until(lambda: chart_points(page) >= 3, 120, "the first checkpoints on the chart")
    points, version = chart_points(page), picture_version(page)
    assert version >= 1
    wait_until(lambda: chart_points(page) >= points + 3 and picture_version(page) >= version + 2, 60, "more points and new pictures")
    expect(page.locator("#live-text")).to_have_text("Live")
    expect(page.locator(".title-row .badge")).to_have_text("Running")
    expect(page.locator("[data-field='rate']")).not_to_have_text("—")
    expect(page.locator("[data-field='eta']")).not_to_have_text("—")
    # The picture for the README: well into the run, with the losses bending on the chart.
    wait_until(lambda: chart_points(page) >= 15, 60, "iteration 150")
    expect(page.locator(".title-row .badge")).to_have_text("Running")
    screenshot(page, "job-running")

    # A second tab opened mid-run shows the history so far, then goes on live.
    late = page.context.new_page()
    late.goto(page.url)
    wait_until(lambda: chart_points(late) >= chart_points(page) - 1 > 0, 20, "the history on a page opened mid-run")
    list_page = page.context.new_page()
    list_page.goto(f"{deployment.url}/jobs")
    row = list_page.locator(f"tr[data-key='{job_id}']")
    expect(row.locator(".badge")).to_have_text("Running")
    first_progress = row.locator(".progress-text").inner_text()
    expect(row.locator(".progress-text")).not_to_have_text(first_progress, timeout=15_000)  # updated without a reload

    expect(page.locator(".title-row .badge")).to_have_text("Succeeded", timeout=180_000)
    expect(late.locator(".title-row .badge")).to_have_text("Succeeded", timeout=20_000)
    assert chart_points(page) == WATCHED["iterations"] // 10
    assert chart_points(late) == chart_points(page)
    expect(page.locator("#picture-title")).to_have_text("Result")
    expect(row.locator(".badge")).to_have_text("Succeeded", timeout=10_000)
    expect(row.get_by_alt_text("Result")).to_be_visible()

    with page.expect_download() as download_info:
        page.get_by_role("link", name="Download result").click()
    saved = tmp_path / "result.png"
    download_info.value.save_as(saved)
    with Image.open(saved) as result:
        assert result.size == (WATCHED["width"], WATCHED["height"])

    # A page opened after the end shows the complete history.
    page.reload()
    wait_until(lambda: chart_points(page) == WATCHED["iterations"] // 10, 20, "the complete history")
    expect(page.locator("#live-text")).to_have_text("Complete history")
    screenshot(page, "job-finished")


def test_a_job_is_canceled_from_its_page_and_run_again(open_session, deployment, images_dir):
    page = open_session("alice")
    job_id = submit_through_form(page, images_dir, height=48, width=72, iterations=5000)
    expect(page.locator(".title-row .badge")).to_have_text("Running", timeout=120_000)
    page.get_by_role("button", name="Cancel job").click()
    expect(page.locator(".title-row .badge")).to_have_text("Canceled", timeout=60_000)
    expect(page.get_by_role("button", name="Cancel job")).to_have_count(0)
    assert deployment.client("alice").job(job_id)["status"] == "canceled"

    page.get_by_role("button", name="Run again").click()
    page.wait_for_url(lambda url: job_id not in url)
    expect(page.get_by_role("status").filter(has_text="Queued a new run")).to_be_visible()
    again = deployment.client("alice").job(page.url.rsplit("/", 1)[1])
    original = deployment.client("alice").job(job_id)
    assert again["params"] == original["params"] and again["id"] != job_id
    content = deployment.client("alice").get(again["links"]["content"]).content
    assert content == deployment.client("alice").get(original["links"]["content"]).content
    page.get_by_role("button", name="Cancel job").click()
    expect(page.locator(".title-row .badge")).to_have_text("Canceled", timeout=60_000)

    page.goto(f"{deployment.url}/jobs?status=canceled")
    expect(page.locator(f"tr[data-key='{job_id}'] .badge")).to_have_text("Canceled")
    expect(page.locator("tbody tr .badge").filter(has_text="Succeeded")).to_have_count(0)


def test_a_client_sees_only_its_own_jobs(open_session, deployment, images_dir):
    alice = deployment.client("alice")
    response = alice.submit(images_dir / "rainier.jpg", images_dir / "autumn-oak.jpg", {"size": [16, 24], "iterations": 10})
    assert response.status_code == 202, response.text
    alices_job = response.json()["id"]

    page = open_session("bob")
    expect(page.get_by_text("No jobs yet")).to_be_visible()
    assert page.locator(f"tr[data-key='{alices_job}']").count() == 0
    expect(page.get_by_role("link", name="Operator")).to_have_count(0)
    response = page.goto(f"{deployment.url}/jobs/{alices_job}")
    assert response.status == 404
    expect(page.get_by_role("heading", name="Not found")).to_be_visible()
    assert page.evaluate(f"fetch('/v1/jobs/{alices_job}').then(r => r.status)") == 404
    assert page.goto(f"{deployment.url}/operator").status == 403

    admin = open_session("ops")
    expect(admin.locator(f"tr[data-key='{alices_job}']")).to_be_visible()
    # A job submitted meanwhile appears at the top of the open list, without a reload.
    newer = alice.submit(images_dir / "tubingen.jpg", images_dir / "the_scream.jpg", {"size": [16, 24], "iterations": 10}).json()["id"]
    expect(admin.locator("tbody tr").first).to_have_attribute("data-key", newer, timeout=10_000)
    expect(admin.locator(f"tr[data-key='{alices_job}']")).to_be_visible()


def test_the_operator_view_shows_workers_queue_and_failures(open_session, deployment, images_dir):
    alice = deployment.client("alice")
    # One job to keep the worker busy, two waiting behind it.
    running = alice.submit(images_dir / "rainier.jpg", images_dir / "autumn-oak.jpg", {"size": [48, 72], "iterations": 5000}).json()["id"]
    waiting = [
        alice.submit(images_dir / "tubingen.jpg", images_dir / "starry_night.jpg", {"size": [48, 72], "iterations": 200}).json()["id"]
        for _ in range(2)
    ]
    alice.wait_for(running, lambda job: job["status"] == "running" and job["iteration"] >= 20, timeout=120)

    failure = record_failure(
        deployment, running, "out_of_memory", "the picture did not fit in the GPU's memory; submit it again with a smaller size"
    )

    page = open_session("ops")
    page.get_by_role("link", name="Operator").click()
    page.wait_for_url("**/operator")
    worker_row = page.locator("table.workers tbody tr").filter(has_text="bw1@test")
    expect(worker_row).to_contain_text(running[:8])
    expect(worker_row).to_contain_text("cpu")
    expect(page.locator(".metric").filter(has_text="Queue depth").locator(".value")).to_have_text("2")
    expect(page.locator(".metric").filter(has_text="Oldest waiting job")).to_contain_text(waiting[0][:8])
    failures = page.locator("section").filter(has=page.get_by_role("heading", name="Recent failures"))
    expect(failures.locator("tbody tr").filter(has_text=failure[:8])).to_contain_text("did not fit in the GPU's memory")
    screenshot(page, "operator")
    jobs = open_session("alice")
    expect(jobs.locator(f"tr[data-key='{running}'] .badge")).to_have_text("Running")
    expect(jobs.locator(f"tr[data-key='{failure}'] .badge")).to_have_text("Failed")
    screenshot(jobs, "jobs-list")

    for job_id in [*waiting, running]:
        alice.post(f"/v1/jobs/{job_id}/cancel")
    expect(page.locator(".metric").filter(has_text="Queue depth").locator(".value")).to_have_text("0", timeout=15_000)
    alice.wait_for(running, lambda job: job["status"] in FINISHED, timeout=60)


DROP_IMAGE = """async () => {
    const canvas = Object.assign(document.createElement("canvas"), {width: 30, height: 20});
    canvas.getContext("2d").fillRect(0, 0, 30, 20);
    const blob = await new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
    const transfer = new DataTransfer();
    transfer.items.add(new File([blob], "dropped.png", {type: "image/png"}));
    const zone = document.querySelector("[data-dropzone=content]");
    zone.dispatchEvent(new DragEvent("drop", {dataTransfer: transfer, bubbles: true, cancelable: true}));
}"""
# Every image has a text alternative, and every form control a label.
UNLABELLED = """() => [
    ...[...document.querySelectorAll("img:not([alt])")].map((img) => img.outerHTML),
    ...[...document.querySelectorAll("input:not([type=hidden]), select, button")]
        .filter((control) => !(control.labels && control.labels.length) && !control.getAttribute("aria-label") && !control.textContent.trim())
        .map((control) => control.outerHTML),
]"""


def test_an_image_dropped_on_the_form_is_previewed_and_sets_the_width(open_session, deployment):
    page = open_session("alice")
    page.goto(f"{deployment.url}/jobs/new")
    page.get_by_label("Height in pixels").fill("200")
    page.evaluate(DROP_IMAGE)
    expect(page.get_by_alt_text("Preview of the content image dropped.png")).to_be_visible()
    assert page.evaluate("document.getElementById('content-file').files[0].name") == "dropped.png"
    expect(page.get_by_label("Width in pixels")).to_have_value("300")  # 30 x 20 kept at a height of 200


def test_a_blend_of_two_styles_is_submitted_through_the_form_and_its_page_shows_each_with_its_share(open_session, deployment, images_dir):
    page = open_session("alice")
    page.goto(f"{deployment.url}/jobs/new")
    page.locator("#content-file").set_input_files(images_dir / "rainier.jpg")
    page.locator("#style-file").set_input_files(images_dir / "autumn-oak.jpg")
    expect(page.get_by_label("Share of style 1")).to_be_hidden()  # one style: no shares to give
    page.get_by_role("button", name="Blend in another style").click()
    page.locator("#style2-file").set_input_files(images_dir / "starry_night.jpg")
    expect(page.get_by_alt_text("Preview of the style 2 image starry_night.jpg")).to_be_visible()
    page.get_by_label("Share of style 1").fill("3")
    page.get_by_label("Share of style 2").fill("1")
    page.get_by_label("Width follows the content image's proportions").uncheck()
    page.get_by_label("Height in pixels").fill("32")
    page.get_by_label("Width in pixels").fill("48")
    page.get_by_label("Iterations").fill("20")
    screenshot(page, "new-job-blend")
    page.get_by_role("button", name="Start job").click()
    page.wait_for_url(JOB_PAGE)

    expect(page.get_by_alt_text("Style image 1 of job")).to_be_visible()
    expect(page.locator("figcaption", has_text="Style 1")).to_have_text("Style 1 · 75% of the blend")
    expect(page.locator("figcaption", has_text="Style 2")).to_have_text("Style 2 · 25% of the blend")
    job = deployment.client("alice").job(page.url.rsplit("/", 1)[1])
    assert job["params"]["style_weights"] == [3, 1] and len(job["styles"]) == 2
    expect(page.locator(".title-row .badge")).to_have_text("Succeeded", timeout=120_000)


def test_pages_are_labelled_and_fit_a_phone_screen(open_session, deployment, images_dir):
    alice = deployment.client("alice")
    job_id = alice.submit(images_dir / "shipwreck.jpg", images_dir / "the_scream.jpg", {"size": [16, 24], "iterations": 10}).json()["id"]
    alice.wait_for(job_id, lambda job: job["status"] in FINISHED)
    page = open_session("alice", viewport={"width": 390, "height": 844})
    for path in ("/jobs", "/jobs/new", f"/jobs/{job_id}", "/jobs?status=failed"):
        page.goto(f"{deployment.url}{path}")
        overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
        assert overflow <= 0, f"{path} scrolls sideways by {overflow}px on a phone"
        assert page.evaluate(UNLABELLED) == [], path
    page.goto(f"{deployment.url}/jobs/new")
    screenshot(page, "new-job-phone")
    page.goto(f"{deployment.url}/jobs")
    screenshot(page, "jobs-phone")


def test_the_chart_of_a_coarse_to_fine_job_marks_where_each_scale_begins(open_session, deployment, images_dir):
    page = open_session("alice")
    job_id = submit_through_form(page, images_dir, height=64, width=96, iterations=50, scales="0.5, 1")
    job = deployment.client("alice").wait_for(job_id, lambda job: job["status"] in FINISHED, timeout=180)
    assert job["params"]["scales"] == [0.5, 1.0] and job["params"]["scale_iterations"] is None

    page.reload()
    wait_until(lambda: chart_points(page) == 5, 30, "the whole history on the chart")
    # Half size from the start (40 of 50 iterations: a quarter of the pixels), full size from iteration 40 on:
    # the chart draws a labelled line at each.
    expect(page.locator("#chart")).to_have_attribute("data-scale-starts", "0:0.5 40:1")
    screenshot(page, "job-coarse-to-fine")


def test_no_page_breaks_the_content_security_policy(open_session, deployment, images_dir):
    ops = deployment.client("ops")
    job_id = ops.submit(images_dir / "shipwreck.jpg", images_dir / "the_scream.jpg", {"size": [16, 24], "iterations": 10}).json()["id"]
    ops.wait_for(job_id, lambda job: job["status"] in FINISHED)
    page = open_session("ops")
    # Chromium reports each thing the policy blocks (an inline script, style or handler) on the console.
    refused = []
    page.on("console", lambda message: refused.append(message.text) if "Content Security Policy" in message.text else None)

    for path in ("/jobs", "/jobs/new", f"/jobs/{job_id}", "/operator"):
        response = page.goto(f"{deployment.url}{path}")
        assert "script-src 'self'" in response.headers["content-security-policy"], path
        page.wait_for_timeout(500)
    page.goto(f"{deployment.url}/jobs")

    assert refused == []
    # The progress bars take their widths from data-fill, through the script, not from a style attribute.
    filled = f"""() => {{
        const bar = document.querySelector('tr[data-key="{job_id}"] .progress');
        return bar.firstElementChild.getBoundingClientRect().width / bar.getBoundingClientRect().width;
    }}"""
    wait_until(lambda: page.evaluate(filled) > 0.99, 5, "the finished job's progress bar to fill")
