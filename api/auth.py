"""API keys: every /v1 request names the client it acts for, by a Bearer header or the dashboard's session cookie."""

from __future__ import annotations

import hmac

from flask import g, request, session
from werkzeug.exceptions import Forbidden

from shared.errors import Unauthorized
from shared.keys import authenticate
from shared.models import ApiKey

from .backends import db_session

# What the dashboard's signed session cookie holds: the key's id and the start of its stored hash
# (never the key itself), so a revoked key signs the browser out at its next request.
SESSION_KEY_ID = "key_id"
SESSION_KEY_CHECK = "key_check"
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
    key = authenticate(db_session(), token.strip())
    if key is None:
        raise Unauthorized("the API key is not valid (unknown or revoked)", code="invalid_token")
    g.api_key = key


def session_key() -> ApiKey | None:
    """Return the live key the browser signed in with (see `sign_in`), or None."""
    key_id, check = session.get(SESSION_KEY_ID), session.get(SESSION_KEY_CHECK)
    if not isinstance(key_id, int) or not isinstance(check, str):
        return None
    key = db_session().get(ApiKey, key_id)
    if key is None or key.revoked_at is not None or not hmac.compare_digest(session_check(key), check):
        return None
    return key


def session_check(key: ApiKey) -> str:
    """Return what the session cookie keeps to recognise `key`."""
    return key.key_hash[:16]


def sign_in(key: ApiKey) -> None:
    """Make the session cookie act for `key` (a fresh session: nothing from before signing in survives)."""
    session.clear()
    session.permanent = True
    session[SESSION_KEY_ID] = key.id
    session[SESSION_KEY_CHECK] = session_check(key)


def current_key() -> ApiKey:
    """Return the key the request was authenticated with."""
    return g.api_key
