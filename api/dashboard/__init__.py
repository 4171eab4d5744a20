"""The browser dashboard: server-rendered pages over the service layer, signed in by a session cookie."""

from __future__ import annotations

from flask import Blueprint, Flask, request
from flask.sessions import SecureCookieSessionInterface

from ..auth import SESSION_LIFETIME

bp = Blueprint("dashboard", __name__, static_folder="../static", static_url_path="/static")


class DashboardSessions(SecureCookieSessionInterface):
    """Flask's signed cookie, marked Secure whenever the browser reached us over HTTPS.

    Behind a proxy, `request.is_secure` reflects X-Forwarded-Proto only when STYLEQ_TRUSTED_PROXIES
    says a proxy is there (see api.security); a client's own header is never believed.
    """

    def get_cookie_secure(self, app: Flask) -> bool:
        return bool(app.config["SESSION_COOKIE_SECURE"]) or request.is_secure


def init_app(app: Flask, secret_key: str) -> None:
    """Give `app` its session secret and cookie settings, and mount the dashboard at `/`."""
    app.secret_key = secret_key
    app.config.update(
        SESSION_COOKIE_NAME="styleq_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        PERMANENT_SESSION_LIFETIME=SESSION_LIFETIME,
    )
    app.session_interface = DashboardSessions()
    app.register_blueprint(bp)


# The views register themselves on `bp`.
from . import overview, pages, session  # noqa: E402, F401 (the views import `bp` from here, so they come after it)
