"""A real API (gunicorn) and worker on the embedded default, and headless Chromium driven by Playwright."""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from styleq.shared.adapters.migrate import upgrade_database
from tests.services import Client, Process, make_key, start_api, start_worker

REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO / "artifacts" / "screenshots"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-gpu"]
VIEWPORT = {"width": 1280, "height": 900}


@dataclass
class Deployment:
    """The running service: its URL, data directory and processes, and an API client per key."""

    url: str
    data_dir: Path
    database_url: str
    api: Process
    worker: Process
    keys: dict[str, str]

    def client(self, name: str) -> Client:
        return Client(self.url, self.keys[name])


@pytest.fixture(scope="session")
def deployment(tmp_path_factory, caffe_weights, models_dir) -> Iterator[Deployment]:
    """Start the API and one worker on SQLite and the SQLite broker; stop them after the session."""
    root = tmp_path_factory.mktemp("dashboard")
    data_dir = root / "data"
    data_dir.mkdir()
    environment = {
        **os.environ,
        "STYLEQ_DATA_DIR": str(data_dir),
        "STYLEQ_MODEL_DIR": str(models_dir),
        "STYLEQ_QUEUE": f"styleq-browser-{uuid.uuid4().hex[:8]}",
        # A new preview at every checkpoint (every ten iterations), as the notebook shows it.
        "STYLEQ_PREVIEW_EVERY": "1",
        "STYLEQ_PREVIEW_MIN_SECONDS": "0",
        "STYLEQ_SWEEP_EVERY_SECONDS": "1",
        # Fair use off: a job page fetches the preview at every checkpoint here, and the tests share two
        # non-admin keys for the whole session (tests/api/test_api_limits.py covers the limits).
        "STYLEQ_MAX_REQUESTS_PER_MINUTE": "0",
        "STYLEQ_MAX_ACTIVE_JOBS": "0",
        "OMP_NUM_THREADS": "1",
    }
    database_url = f"sqlite:///{data_dir / 'styleq.db'}"
    upgrade_database(database_url)
    logs = root / "logs"
    logs.mkdir()
    api, url = start_api(environment, logs)
    worker = start_worker(environment, logs, "bw1")
    keys = {
        "alice": make_key(database_url, "alice"),
        "bob": make_key(database_url, "bob"),
        "ops": make_key(database_url, "ops", admin=True),
    }
    try:
        yield Deployment(url, data_dir, database_url, api, worker, keys)
    finally:
        for process in (worker, api):
            process.stop()


@pytest.fixture(scope="session")
def browser():
    """One headless Chromium (Debian's) for the session."""
    from playwright.sync_api import sync_playwright

    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: install it with `apt-get install -y chromium` (never `playwright install`)")
    playwright = sync_playwright().start()
    try:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()
    finally:
        playwright.stop()


@pytest.fixture
def open_session(browser, deployment):
    """Return a function that signs a fresh browser context in with a named key and returns its page."""
    contexts = []

    def sign_in(name: str, viewport: dict[str, int] = VIEWPORT):
        context = browser.new_context(viewport=viewport, accept_downloads=True)
        context.set_default_timeout(20_000)
        contexts.append(context)
        page = context.new_page()
        page.goto(f"{deployment.url}/")
        assert re.search(r"/signin\?next=", page.url), page.url
        page.get_by_label("API key").fill(deployment.keys[name])
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url(f"{deployment.url}/jobs")
        return page

    yield sign_in
    for context in contexts:
        context.close()


def screenshot(page, name: str) -> Path:
    """Save the page's viewport as artifacts/screenshots/<name>.png."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path))
    return path
