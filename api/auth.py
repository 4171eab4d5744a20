"""API keys: every /v1 request names the client it acts for, by a Bearer header or the dashboard's session cookie."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

from flask import g, request, session
from sqlalchemy.orm import Session
from werkzeug.exceptions import Forbidden

from styleq.shared.adapters.models import ApiKey
from styleq.shared.domain.errors import Unauthorized
from styleq.shared.service.dashboard_sessions import end_dashboard_session, signed_in_key, start_dashboard_session
from styleq.shared.service.keys import authenticate, key_is_live

from .backends import backends, db_session

# What the dashboard's signed cookie holds: the id of a server-side session row (never the key), so
# signing out, or revoking the key, ends every copy of the cookie at its next request.
SESSION_ID = "session_id"
SESSION_LIFETIME = timedelta(hours=12)
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# A page of another site cannot send a custom header without a CORS preflight, which this API never allows.
CSRF_HEADER = "X-Requested-With"


def require_api_key() -> None:
    """Authenticate the request's `Authorization: Bearer <key>`, or the dashboard's session cookie, or refuse it with 401."""
    if "Authorization" not in request.headers:
        key = session_key()
        if key is not None:
            if request.method not in SAFE_METHODS and not request.headers.get(CSRF_HEADER):
                raise Forbidden(f"a request signed in by the session cookie that changes something must send the header {CSRF_HEADER}")
            g.api_key = key
            return
    scheme, _, token = request.headers.get("Authorization", "").strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("this endpoint needs an API key: send the header 'Authorization: Bearer <key>'")
    g.api_key = authenticate_token(token.strip())


def authenticate_token(token: str) -> ApiKey:
    """Return the live key whose secret is `token`, or refuse with 401."""
    key = authenticate(db_session(), token, secret=backends().secret_key)
    if key is None:
        raise Unauthorized("the API key is not valid (unknown or revoked)", code="invalid_token")
    if db_session().dirty:
        # A legacy key's hash was just rewritten as HMAC (see `authenticate`): keep that, whatever the view does.
        db_session().commit()
    return key


def session_key() -> ApiKey | None:
    """Return the live key of the dashboard session the browser's cookie names (see `sign_in`), or None."""
    session_id = session.get(SESSION_ID)
    if not isinstance(session_id, str):
        return None
    key = signed_in_key(db_session(), session_id, lifetime=SESSION_LIFETIME)
    if key is not None:
        g.dashboard_session_id = session_id
    return key


def sign_in(key: ApiKey) -> None:
    """Open a server-side session for `key` and make the cookie name it (a fresh cookie: nothing from before survives)."""
    dashboard_session = start_dashboard_session(db_session(), key, lifetime=SESSION_LIFETIME)
    db_session().commit()
    session.clear()
    session.permanent = True
    session[SESSION_ID] = dashboard_session.id


def sign_out() -> None:
    """End the cookie's server-side session, so no copy of the cookie works again, and clear the cookie."""
    session_id = session.get(SESSION_ID)
    if isinstance(session_id, str):
        end_dashboard_session(db_session(), session_id)
        db_session().commit()
    session.clear()


def current_key() -> ApiKey:
    """Return the key the request was authenticated with."""
    return g.api_key


def credentials_check() -> Callable[[Session], bool]:
    """Return a check, for work that outlives this request, that its key is not revoked nor its dashboard session ended."""
    key_id, session_id = current_key().id, g.get("dashboard_session_id")
    if session_id is None:
        return lambda database: key_is_live(database, key_id)
    return lambda database: signed_in_key(database, session_id, lifetime=SESSION_LIFETIME) is not None
