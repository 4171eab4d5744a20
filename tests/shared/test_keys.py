"""API keys in the service layer: found by id or prefix, authenticated by keyed hash, revoked once with their dashboard sessions."""

from __future__ import annotations

from datetime import timedelta

import pytest

from styleq.shared.adapters.db import session_scope
from styleq.shared.adapters.models import ApiKey
from styleq.shared.domain.errors import Conflict, NotFound
from styleq.shared.service.dashboard_sessions import signed_in_key, start_dashboard_session
from styleq.shared.service.keys import authenticate, create_api_key, find_api_key, key_is_live, revoke_api_key
from tests.shared.conftest import SECRET_KEY

LIFETIME = timedelta(hours=12)


def test_a_key_is_found_by_its_id_or_its_exact_prefix(factory, owners):
    alice = owners["alice"]
    with session_scope(factory) as session:
        assert find_api_key(session, str(alice.id)).name == "alice"
        assert find_api_key(session, f" {alice.prefix} ").name == "alice"
        with pytest.raises(NotFound, match="prefix"):
            find_api_key(session, alice.prefix[:-1])


def test_an_unknown_id_or_a_prefix_two_keys_share_is_an_error(factory, owners):
    with session_scope(factory) as session:
        with pytest.raises(NotFound, match="no API key has the id 999"):
            find_api_key(session, "999")
        twin, _ = create_api_key(session, "twin", secret=SECRET_KEY)
        twin.prefix = owners["bob"].prefix
        session.flush()
        with pytest.raises(Conflict, match=rf"ids {owners['bob'].id}, {twin.id}\); name one by its id"):
            find_api_key(session, twin.prefix)


def test_revoking_is_recorded_once_and_ends_the_keys_open_sessions(factory, owners):
    with session_scope(factory) as session:
        alice, bob = session.get(ApiKey, owners["alice"].id), session.get(ApiKey, owners["bob"].id)
        mine, theirs = (start_dashboard_session(session, key, lifetime=LIFETIME) for key in (alice, bob))

        assert revoke_api_key(session, alice) is True
        revoked_at = alice.revoked_at
        assert revoke_api_key(session, alice) is False and alice.revoked_at == revoked_at

        assert mine.ended_at == revoked_at and theirs.ended_at is None
        assert signed_in_key(session, mine.id, lifetime=LIFETIME) is None
        assert signed_in_key(session, theirs.id, lifetime=LIFETIME) is bob
        assert not key_is_live(session, alice.id) and key_is_live(session, bob.id) and not key_is_live(session, 999)


def test_only_a_live_key_with_its_whole_secret_under_the_same_server_secret_authenticates(factory):
    with session_scope(factory) as session:
        key, token = create_api_key(session, "carol", secret=SECRET_KEY)
        assert authenticate(session, token, secret=SECRET_KEY) is key
        for wrong in (token[:-1], token + "x", token[3:], "", key.prefix):
            assert authenticate(session, wrong, secret=SECRET_KEY) is None, wrong
        assert authenticate(session, token, secret=SECRET_KEY + "-rotated") is None
        revoke_api_key(session, key)
        assert authenticate(session, token, secret=SECRET_KEY) is None
