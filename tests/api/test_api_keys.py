"""API keys as the API sees them: stored only as a hash keyed by the server secret, refused the moment they are revoked."""

from __future__ import annotations

import hashlib
import threading
import time

from flask import Flask
from flask.testing import FlaskClient

from styleq.api import create_app
from styleq.cli.service import make_key_with_webhook_secret
from styleq.shared.adapters.db import session_scope
from styleq.shared.adapters.models import ApiKey, KeyHashScheme
from styleq.shared.adapters.settings import Settings
from styleq.shared.service.keys import create_api_key, hash_key, revoke_api_key
from tests.api.support import add_checkpoints, add_job, assert_error


def stored_key(app: Flask, key_id: int) -> ApiKey:
    with session_scope(app.extensions["styleq"].session_factory) as session:
        return session.get_one(ApiKey, key_id)


def revoke(app: Flask, key_id: int) -> None:
    with session_scope(app.extensions["styleq"].session_factory) as session:
        revoke_api_key(session, session.get_one(ApiKey, key_id))


def test_the_database_holds_only_an_hmac_of_each_key_under_the_server_secret(app: Flask, keys):
    stored = stored_key(app, keys.ids["alice"])

    assert stored.hash_scheme == KeyHashScheme.HMAC_SHA256
    assert stored.key_hash == hash_key(keys.alice, app.extensions["styleq"].secret_key)
    assert stored.key_hash != hashlib.sha256(keys.alice.encode()).hexdigest()
    assert keys.alice not in {stored.key_hash, stored.prefix} and keys.alice.startswith(stored.prefix)


def test_a_key_hashed_under_another_secret_is_not_recognised(app: Flask, client: FlaskClient):
    with session_scope(app.extensions["styleq"].session_factory) as session:
        _, token = create_api_key(session, "elsewhere", secret="another server's secret")

    assert_error(client.get("/v1/jobs", headers={"Authorization": f"Bearer {token}"}), 401, "invalid_token")


def test_a_key_stored_as_plain_sha256_still_works_and_is_rehashed_at_its_first_use(app: Flask, client: FlaskClient):
    # As `styleq keys create` stored keys before migration 0007.
    token = "sq_" + "legacy-key-made-before-0007".ljust(43, "x")
    with session_scope(app.extensions["styleq"].session_factory) as session:
        legacy = ApiKey(
            name="old", key_hash=hashlib.sha256(token.encode()).hexdigest(), hash_scheme=KeyHashScheme.SHA256, prefix=token[:10]
        )
        session.add(legacy)
        session.flush()
        key_id = legacy.id
    bearer = {"Authorization": f"Bearer {token}"}

    assert client.get("/v1/jobs", headers=bearer).status_code == 200

    rehashed = stored_key(app, key_id)
    assert rehashed.hash_scheme == KeyHashScheme.HMAC_SHA256
    assert rehashed.key_hash == hash_key(token, app.extensions["styleq"].secret_key)
    assert client.get("/v1/jobs", headers=bearer).status_code == 200


def test_a_plain_sha256_is_not_accepted_in_place_of_a_keyed_hash(app: Flask, client: FlaskClient, keys):
    # A row that says it holds an HMAC is never matched by the plain hash of a token.
    with session_scope(app.extensions["styleq"].session_factory) as session:
        session.get_one(ApiKey, keys.ids["bob"]).key_hash = hashlib.sha256(keys.bob.encode()).hexdigest()

    assert_error(client.get("/v1/jobs", headers=keys.headers("bob")), 401, "invalid_token")


def test_a_revoked_key_is_refused_at_its_next_request(app: Flask, client: FlaskClient, keys):
    job_id = add_job(app, keys.ids["alice"])
    assert client.get(f"/v1/jobs/{job_id}", headers=keys.headers("alice")).status_code == 200

    revoke(app, keys.ids["alice"])

    for response in (
        client.get(f"/v1/jobs/{job_id}", headers=keys.headers("alice")),
        client.get("/v1/jobs", headers=keys.headers("alice")),
    ):
        assert_error(response, 401, "invalid_token")
    assert client.get("/v1/jobs", headers=keys.headers("bob")).status_code == 200


def test_an_open_event_stream_stops_when_its_key_is_revoked(app: Flask, client: FlaskClient, keys):
    app.config.update(EVENTS_MAX_SECONDS=20.0)
    job_id = add_job(app, keys.ids["alice"], status="running")
    add_checkpoints(app, job_id, [10])
    revoker = threading.Timer(0.3, revoke, (app, keys.ids["alice"]))
    started = time.monotonic()
    revoker.start()
    try:
        with client.get(f"/v1/jobs/{job_id}/events", headers=keys.headers("alice")) as response:
            text = response.get_data(as_text=True)
    finally:
        revoker.join()

    assert time.monotonic() - started < 5, "the stream of a revoked key ran on"
    assert "event: checkpoint" in text and "event: end" not in text
    assert_error(client.get(f"/v1/jobs/{job_id}/events", headers=keys.headers("alice")), 401, "invalid_token")


def test_a_key_made_by_the_cli_works_on_an_api_with_the_same_settings(app: Flask, client: FlaskClient, settings: Settings):
    # Neither sets STYLEQ_SECRET_KEY: both use the one kept in the data directory.
    token, _ = make_key_with_webhook_secret(settings, "from-the-cli")
    assert client.get("/v1/jobs", headers={"Authorization": f"Bearer {token}"}).status_code == 200

    configured = settings.model_copy(update={"secret_key": "set-in-the-environment"})
    token, _ = make_key_with_webhook_secret(configured, "configured")
    assert_error(client.get("/v1/jobs", headers={"Authorization": f"Bearer {token}"}), 401, "invalid_token")
    other = create_app(configured)
    try:
        assert other.test_client().get("/v1/jobs", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    finally:
        other.extensions["styleq"].close()
