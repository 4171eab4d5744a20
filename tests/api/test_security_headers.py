"""Browser security headers on every response, HTTPS-only headers only over HTTPS, and proxy headers believed only from a configured proxy."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path
from typing import NoReturn

import pytest
from flask import Flask, request
from flask.testing import FlaskClient

from styleq.api import create_app
from styleq.shared.adapters.settings import Settings
from tests.api.support import add_checkpoints, add_job, set_job
from tests.api.test_dashboard_pages import csrf_of, sign_in, signed_in

STATIC = Path(__file__).resolve().parents[2] / "api" / "static"
HTTPS_PROXY = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "styleq.example", "X-Forwarded-For": "198.51.100.7, 203.0.113.9"}


def policy(response) -> dict[str, list[str]]:
    """Return the response's Content-Security-Policy as {directive: sources}."""
    directives = [part.split() for part in response.headers["Content-Security-Policy"].split(";") if part.strip()]
    return {name: sources for name, *sources in directives}


def assert_browser_headers(response) -> None:
    csp = policy(response)
    assert csp["default-src"] == ["'self'"] and csp["script-src"] == ["'self'"] and csp["style-src"] == ["'self'"]
    assert csp["frame-ancestors"] == ["'none'"] and csp["object-src"] == ["'none'"]
    assert not any("'unsafe-inline'" in sources or "'unsafe-eval'" in sources for sources in csp.values())
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["Referrer-Policy"] == "no-referrer"


@pytest.fixture
def app_with_probe(app: Flask) -> Flask:
    """The app with two extra routes: one that fails unexpectedly, one that echoes what the app believes of the request."""

    def fail() -> NoReturn:
        raise ZeroDivisionError("division by zero")  # a failure no handler expects

    app.add_url_rule("/probe/fail", "probe_fail", fail)
    app.add_url_rule(
        "/probe/request", "probe_request", lambda: {"scheme": request.scheme, "host": request.host, "client": request.remote_addr}
    )
    return app


def test_every_kind_of_response_carries_the_browser_security_headers(app_with_probe: Flask, keys):
    app = app_with_probe
    job_id = add_job(app, keys.ids["alice"], status="running")
    add_checkpoints(app, job_id, [10])
    set_job(app, job_id, status="succeeded", iteration=10)
    client, browser, alice = app.test_client(), signed_in(app, keys, "alice"), keys.headers("alice")
    responses = {
        "API JSON": client.get("/v1/jobs", headers=alice),
        "event stream": client.get(f"/v1/jobs/{job_id}/events", headers=alice),
        "no key (401)": client.get("/v1/jobs"),
        "unknown URL (404)": client.get("/v1/nothing-here", headers=alice),
        "wrong method (405)": client.put("/v1/jobs", headers=alice),
        "server error (500)": client.get("/probe/fail"),
        "OpenAPI": client.get("/openapi.json"),
        "health": client.get("/healthz"),
        "sign-in page": client.get("/signin"),
        "redirect": client.get("/jobs"),
        "sign-in refused": sign_in(app.test_client(), "sq_wrong"),
        "dashboard page": browser.get("/jobs"),
        "dashboard error page": browser.get("/jobs/" + "0" * 32),
        "static script": client.get("/static/dashboard.js"),
        "static vendor file": client.get("/static/vendor/uplot/uPlot.min.css"),
        "missing static file": client.get("/static/nothing.js"),
        "HEAD": client.head("/healthz"),
    }
    assert responses["server error (500)"].status_code == 500
    for what, response in responses.items():
        with response:
            try:
                assert_browser_headers(response)
            except (AssertionError, KeyError) as error:
                raise AssertionError(f"{what} ({response.status_code}): {error!r}") from None
            assert "Strict-Transport-Security" not in response.headers, what


def test_static_files_have_the_types_that_nosniff_requires(client: FlaskClient):
    for name, mimetype in [("dashboard.js", "text/javascript"), ("dashboard.css", "text/css"), ("icon.svg", "image/svg+xml")]:
        with client.get(f"/static/{name}") as response:
            assert response.status_code == 200
            # A script or stylesheet of another type is refused outright under nosniff.
            assert response.mimetype in ({mimetype, "application/javascript"} if name.endswith(".js") else {mimetype}), name


class InlineCode(HTMLParser):
    """Collect what a Content-Security-Policy without 'unsafe-inline' would block in a page."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "script" and "src" not in attributes and attributes.get("type") != "application/json":
            self.found.append("an inline <script>")
        if tag == "style":
            self.found.append("a <style> element")
        for name, value in attrs:
            if name == "style":
                self.found.append(f"a style attribute on <{tag}>: {value}")
            elif name.startswith("on"):
                self.found.append(f"an {name} handler on <{tag}>")
            elif (value or "").strip().lower().startswith("javascript:"):
                self.found.append(f"a javascript: URL in {name} on <{tag}>")


def inline_code(html: str) -> list[str]:
    parser = InlineCode()
    parser.feed(html)
    return parser.found


def test_no_page_holds_inline_script_style_or_handlers(app: Flask, keys):
    running = add_job(app, keys.ids["admin"], status="running", iteration=40)
    add_checkpoints(app, running, [10, 20])
    add_job(app, keys.ids["admin"], status="failed", error_code="internal_error", error_message="boom")
    add_job(app, keys.ids["alice"])
    admin = signed_in(app, keys, "admin")
    pages = {
        "/signin": app.test_client().get("/signin"),
        "/jobs": admin.get("/jobs"),
        "/jobs/<id>": admin.get(f"/jobs/{running}"),
        "/jobs/new": admin.get("/jobs/new"),
        "/operator": admin.get("/operator"),
        "error page": admin.get("/jobs/" + "0" * 32),
    }
    for name, response in pages.items():
        assert response.mimetype == "text/html", name
        assert inline_code(response.get_data(as_text=True)) == [], name
    # The bars that had inline widths now carry them as data, for dashboard.js to apply.
    assert 'data-fill="40.0"' in pages["/jobs"].get_data(as_text=True)
    assert "data-fill=" in pages["/operator"].get_data(as_text=True)


def test_the_dashboards_own_scripts_need_no_eval_or_inline_styles():
    # Setting `element.style.width` is allowed; writing a style attribute, in markup or as one, is not.
    for script in STATIC.glob("*.js"):
        text = script.read_text()
        for forbidden in ("eval(", "new Function", 'setAttribute("style"', "cssText", "style="):
            assert forbidden not in text, f"{script.name} uses {forbidden}"


def test_with_no_proxy_configured_forwarded_headers_are_ignored(app_with_probe: Flask, keys):
    client = app_with_probe.test_client()

    believed = client.get("/probe/request", headers=HTTPS_PROXY).get_json()
    assert believed == {"scheme": "http", "host": "localhost", "client": "127.0.0.1"}
    response = sign_in(app_with_probe.test_client(), keys.alice, **HTTPS_PROXY)
    assert "Secure" not in response.headers["Set-Cookie"]
    assert "Strict-Transport-Security" not in response.headers


def test_behind_a_configured_proxy_its_forwarded_headers_are_believed(app: Flask, settings: Settings, keys):
    # A second app on the same database and data directory (so the same server secret), told of one proxy.
    app = create_app(settings.model_copy(update={"trusted_proxies": 1}))
    try:
        app.add_url_rule(
            "/probe/request", "probe_request", lambda: {"scheme": request.scheme, "host": request.host, "client": request.remote_addr}
        )
        client = app.test_client()

        # Only the last address is the proxy's own; the one before it is whatever the client claimed.
        assert client.get("/probe/request", headers=HTTPS_PROXY).get_json() == {
            "scheme": "https",
            "host": "styleq.example",
            "client": "203.0.113.9",
        }
        over_https, over_http = client.get("/signin", headers=HTTPS_PROXY), client.get("/signin")
        assert over_https.headers["Strict-Transport-Security"] == "max-age=31536000"
        assert "Strict-Transport-Security" not in over_http.headers
        assert_browser_headers(over_https)
        assert "Secure" in sign_in(app.test_client(), keys.alice, **HTTPS_PROXY).headers["Set-Cookie"]
    finally:
        app.extensions["styleq"].close()


def test_over_https_the_cookie_is_secure_and_hsts_is_sent(app: Flask, keys):
    client, https = app.test_client(), "https://localhost"
    form = client.get("/signin", base_url=https)
    assert form.headers["Strict-Transport-Security"] == "max-age=31536000"

    data = {"csrf_token": csrf_of(form.get_data(as_text=True)), "key": keys.alice, "next": ""}
    response = client.post("/signin", data=data, base_url=https)

    assert response.status_code == 302 and "Secure" in response.headers["Set-Cookie"]
