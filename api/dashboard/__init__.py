"""The browser dashboard: server-rendered pages over the service layer, signed in by a session cookie."""

from __future__ import annotations

import secrets
from datetime import timedelta
from pathlib import Path

from flask import Blueprint, Flask, request
from flask.sessions import SecureCookieSessionInterface

from shared.settings import Settings
from shared.storage import write_atomically

bp = Blueprint("dashboard", __name__, static_folder="../static", static_url_path="/static")
SESSION_LIFETIME = timedelta(hours=12)


class DashboardSessions(SecureCookieSessionInterface):
    """Flask's signed cookie, marked Secure whenever the browser reached us over HTTPS (directly or through a proxy)."""

    def get_cookie_secure(self, app: Flask) -> bool:
        forwarded = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
        return bool(app.config["SESSION_COOKIE_SECURE"]) or request.is_secure or forwarded == "https"


def init_app(app: Flask, settings: Settings) -> None:
    """Give `app` its session secret and cookie settings, and mount the dashboard at `/`."""
    app.secret_key = settings.secret_key or load_secret_key(settings.data_dir / "secret-key")
    app.config.update(
        SESSION_COOKIE_NAME="styleq_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        PERMANENT_SESSION_LIFETIME=SESSION_LIFETIME,
    )
    app.session_interface = DashboardSessions()
    app.register_blueprint(bp)


def load_secret_key(path: Path) -> str:
    """Return the secret kept in `path`, making it first if there is none (safe when several processes race)."""
    if not path.is_file():
        write_atomically(path, (secrets.token_hex(32) + "\n").encode(), replace=False)
    secret = path.read_text().strip()
    if not secret:
        raise RuntimeError(f"the session secret file {path} is empty; delete it to have a new one made")
    return secret


# The views register themselves on `bp`.
from . import overview, pages, session  # noqa: F401
