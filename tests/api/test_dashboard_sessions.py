"""Dashboard sessions live on the server: the signed cookie only names one, so signing out or revoking ends every copy of it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select, update

from styleq.api.auth import SESSION_LIFETIME
from styleq.shared.adapters.db import session_scope
from styleq.shared.adapters.models import ApiKey, DashboardSession
from styleq.shared.service.keys import revoke_api_key
from tests.api.test_dashboard_pages import csrf_of, signed_in

COOKIE = "styleq_session"


def copy_of(app: Flask, client: FlaskClient) -> FlaskClient:
    """Return another browser holding the same cookie, as one that stole or kept a copy would."""
    thief = app.test_client()
    cookie = client.get_cookie(COOKIE)
    assert cookie is not None, "the browser holds no session cookie"
    thief.set_cookie(COOKIE, cookie.value)
    return thief


def is_signed_in(client: FlaskClient) -> bool:
    page, api = client.get("/jobs"), client.get("/v1/jobs")
    assert (page.status_code == 200) == (api.status_code == 200), (page.status_code, api.status_code)
    return api.status_code == 200


def sessions(app: Flask) -> list[DashboardSession]:
    with session_scope(app.extensions["styleq"].session_factory) as session:
        return list(session.scalars(select(DashboardSession).order_by(DashboardSession.created_at)))


def test_signing_in_opens_a_session_row_that_the_cookie_names(app: Flask, keys):
    client = signed_in(app, keys, "alice")

    [row] = sessions(app)
    assert row.key_id == keys.ids["alice"] and row.ended_at is None
    with client.session_transaction() as cookie:
        assert cookie["session_id"] == row.id and set(cookie) <= {"session_id", "csrf_token", "_permanent"}


def test_signing_out_ends_the_session_for_every_copy_of_the_cookie(app: Flask, keys):
    client = signed_in(app, keys, "alice")
    kept = copy_of(app, client)
    assert is_signed_in(kept)

    token = csrf_of(client.get("/jobs").get_data(as_text=True))
    assert client.post("/signout", data={"csrf_token": token}).headers["Location"] == "/signin"

    assert not is_signed_in(client) and not is_signed_in(kept)
    assert kept.get("/jobs").headers["Location"].startswith("/signin")
    assert sessions(app)[0].ended_at is not None


def test_signing_out_ends_only_that_session(app: Flask, keys):
    laptop, phone = signed_in(app, keys, "alice"), signed_in(app, keys, "alice")

    laptop.post("/signout", data={"csrf_token": csrf_of(laptop.get("/jobs").get_data(as_text=True))})

    assert not is_signed_in(laptop) and is_signed_in(phone)


def test_revoking_the_key_ends_its_sessions_at_their_next_request(app: Flask, keys):
    alice, bob = signed_in(app, keys, "alice"), signed_in(app, keys, "bob")

    with session_scope(app.extensions["styleq"].session_factory) as session:
        revoke_api_key(session, session.get_one(ApiKey, keys.ids["alice"]))

    assert not is_signed_in(alice) and is_signed_in(bob)
    ended = {row.key_id: row.ended_at for row in sessions(app)}
    assert ended[keys.ids["alice"]] is not None and ended[keys.ids["bob"]] is None


def test_a_session_older_than_its_lifetime_is_refused_even_with_a_fresh_cookie(app: Flask, keys):
    client = signed_in(app, keys, "alice")
    with session_scope(app.extensions["styleq"].session_factory) as session:
        session.execute(update(DashboardSession).values(created_at=datetime.now(UTC) - SESSION_LIFETIME - timedelta(minutes=1)))

    assert not is_signed_in(client)


def test_a_signed_cookie_naming_no_open_session_is_refused(app: Flask, keys):
    client = app.test_client()
    with client.session_transaction() as cookie:
        cookie["session_id"] = "made-up"
    assert not is_signed_in(client)

    # A cookie from before migration 0007 named the key itself; it signs nobody in now.
    with client.session_transaction() as cookie:
        cookie.clear()
        cookie.update(key_id=keys.ids["alice"], key_check="0" * 16)
    assert not is_signed_in(client)


def test_signing_in_forgets_sessions_past_their_lifetime(app: Flask, keys):
    signed_in(app, keys, "alice")
    with session_scope(app.extensions["styleq"].session_factory) as session:
        session.execute(update(DashboardSession).values(created_at=datetime.now(UTC) - SESSION_LIFETIME - timedelta(hours=1)))

    signed_in(app, keys, "bob")

    with session_scope(app.extensions["styleq"].session_factory) as session:
        assert session.scalar(select(func.count()).select_from(DashboardSession)) == 1
    assert sessions(app)[0].key_id == keys.ids["bob"]
