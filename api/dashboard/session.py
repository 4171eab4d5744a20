"""Signing in with an API key, signing out, and the guards every dashboard page passes: a session and a CSRF token."""

from __future__ import annotations

import hmac
import secrets
from urllib.parse import urlsplit

from flask import abort, flash, g, redirect, render_template, request, session, url_for
from werkzeug.wrappers import Response  # what redirect() makes; flask's Response is one

from styleq.shared.domain.errors import Unauthorized

from .. import auth
from ..auth import authenticate_token, session_key, sign_in
from . import bp

CSRF_FIELD = "csrf_token"
# Pages anyone may open: the sign-in form and the files it needs.
PUBLIC_ENDPOINTS = {"dashboard.sign_in_form", "dashboard.sign_in_submit", "dashboard.static"}


@bp.context_processor
def signed_in_key() -> dict[str, object]:
    """Give every page the key it is shown for (None on the sign-in page)."""
    return {"key": g.get("api_key")}


@bp.app_template_global()
def csrf_token() -> str:
    """Return this session's CSRF token, making one on first use."""
    if CSRF_FIELD not in session:
        session[CSRF_FIELD] = secrets.token_urlsafe(32)
    return session[CSRF_FIELD]


def csrf_ok() -> bool:
    """Tell whether the submitted form carries this session's CSRF token."""
    expected, given = session.get(CSRF_FIELD), request.form.get(CSRF_FIELD, "")
    return isinstance(expected, str) and hmac.compare_digest(expected, given)


@bp.before_request
def require_session() -> Response | None:
    """Send a browser that is not signed in to the sign-in page; refuse a form post without its CSRF token."""
    if request.endpoint in PUBLIC_ENDPOINTS:
        return None
    key = session_key()
    if key is None:
        return redirect(url_for("dashboard.sign_in_form", next=request.full_path.rstrip("?")))
    g.api_key = key
    if request.method == "POST" and not csrf_ok():
        abort(400, "the form is out of date (its security token does not match); reload the page and try again")
    return None


def safe_next(target: str | None) -> str:
    """Return `target` if it is a path on this site, else the jobs list (no open redirects)."""
    if target and target.startswith("/") and not target.startswith("//") and not urlsplit(target).netloc and "\\" not in target:
        return target
    return url_for("dashboard.list_jobs")


@bp.get("/signin")
def sign_in_form() -> str | Response:
    """Show the sign-in form (or go on to the dashboard when already signed in)."""
    if session_key() is not None:
        return redirect(safe_next(request.args.get("next")))
    return render_template("signin.html", next=request.args.get("next", ""))


@bp.post("/signin")
def sign_in_submit() -> tuple[str, int] | Response:
    """Sign in with the API key typed into the form."""
    next_page = request.form.get("next", "")
    if not csrf_ok():
        return render_template("signin.html", next=next_page, error="The form had expired. Please sign in again."), 400
    try:
        key = authenticate_token(request.form.get("key", "").strip())
    except Unauthorized:
        return render_template("signin.html", next=next_page, error="That API key is not valid: it is unknown or was revoked."), 401
    sign_in(key)
    csrf_token()
    return redirect(safe_next(next_page))


@bp.post("/signout")
def sign_out() -> Response:
    """End the session on the server (a copy of the cookie no longer works) and forget it in the browser."""
    auth.sign_out()
    flash("You are signed out.")
    return redirect(url_for("dashboard.sign_in_form"))
