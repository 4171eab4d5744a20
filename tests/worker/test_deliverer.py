"""A delivery attempt: signed, sent only to an address checked as the connection is made, never following a redirect, and recorded."""

from __future__ import annotations

import json
import logging
import socket
from datetime import timedelta
from ipaddress import ip_network

import pytest
from pythonjsonlogger.json import JsonFormatter

from styleq.shared.adapters.db import make_engine, make_session_factory, session_scope
from styleq.shared.adapters.models import ApiKey, DeliveryStatus, Job, utcnow
from styleq.shared.adapters.settings import Settings
from styleq.shared.domain.params import resolve_params
from styleq.shared.service import jobs
from styleq.shared.service.deliveries import ClaimedDelivery, deliveries_of
from styleq.shared.service.keys import create_api_key
from styleq.shared.service.webhooks import AddressPolicy, Subscription, webhook_secret
from styleq.worker.webhooks import deliver_one, guarded_session, send
from tests.receivers import Receiver, verify

LOOPBACK = AddressPolicy(allowed_networks=(ip_network("127.0.0.1/32"),))
SECRET = webhook_secret("server secret", 1, 1)


@pytest.fixture
def receiver():
    made = Receiver()
    yield made
    made.close()


@pytest.fixture
def resolving(monkeypatch):
    """Make host names resolve to addresses of the test's choosing, as a DNS server under someone else's control would."""
    names: dict[str, str] = {}
    real = socket.getaddrinfo

    def getaddrinfo(host, port, *args, **kwargs):
        if host in names:
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (names[host], port))]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return names


def delivery(url: str) -> ClaimedDelivery:
    return ClaimedDelivery(
        1, 1, "msg_test", '{"type":"job.running"}', url, utcnow() - timedelta(seconds=1), ApiKey(id=1, name="alice"), "j" * 32
    )


def test_a_delivery_is_signed_and_sent_to_the_host_by_its_name(receiver, resolving):
    resolving["hooks.example"] = "127.0.0.1"
    url = receiver.url.replace("127.0.0.1", "hooks.example")

    attempt = send(guarded_session(LOOPBACK), delivery(url), [SECRET], timeout=10)

    assert attempt.delivered and attempt.status_code == 204
    [request] = receiver.requests
    assert verify(SECRET, request)["type"] == "job.running"
    assert request.headers["host"] == f"hooks.example:{receiver.server.server_address[1]}"
    assert request.headers["content-type"] == "application/json" and request.headers["user-agent"].startswith("styleq-webhooks/")


def test_a_name_that_resolves_to_an_internal_address_by_the_time_of_delivery_is_not_called(receiver, resolving):
    resolving["rebound.example"] = "127.0.0.1"  # public at submit, loopback now
    url = receiver.url.replace("127.0.0.1", "rebound.example")

    attempt = send(guarded_session(AddressPolicy()), delivery(url), [SECRET], timeout=10)

    assert not attempt.delivered and attempt.status_code is None
    assert "not sent" in attempt.error and "resolves to 127.0.0.1, which is a loopback address" in attempt.error
    assert receiver.requests == []


def test_a_redirect_is_a_failure_and_is_not_followed(receiver):
    redirecting = Receiver(answers=[307], headers={"Location": receiver.url})
    try:
        attempt = send(guarded_session(LOOPBACK), delivery(redirecting.url), [SECRET], timeout=10)
    finally:
        redirecting.close()

    assert attempt.status_code == 307 and not attempt.delivered and receiver.requests == []


def test_a_receiver_s_retry_after_in_seconds_is_passed_on():
    busy = Receiver(answers=[503], headers={"Retry-After": "30"})
    try:
        attempt = send(guarded_session(LOOPBACK), delivery(busy.url), [SECRET], timeout=10)
    finally:
        busy.close()

    assert (attempt.status_code, attempt.retry_after, attempt.delivered) == (503, 30.0, False)


def test_a_receiver_that_is_not_listening_is_a_failed_attempt_with_the_reason(receiver):
    receiver.close()

    attempt = send(guarded_session(LOOPBACK), delivery(receiver.url), [SECRET], timeout=10)

    assert attempt.status_code is None and "ConnectionError" in attempt.error


def test_one_round_claims_the_due_delivery_sends_it_signed_with_the_owner_s_secret_and_records_it(database_url, receiver):
    engine = make_engine(database_url)
    factory = make_session_factory(engine)
    settings = Settings(database_url=database_url, webhook_allowed_networks="127.0.0.1/32")
    with session_scope(factory) as session:
        owner, _ = create_api_key(session, "alice", secret="server secret")
        job, _ = jobs.create_job(session, owner, resolve_params({"iterations": 10}), "a" * 64, "b" * 64, webhook=Subscription(receiver.url))
        jobs.request_cancel(session, job)
        job_id, secret = job.id, webhook_secret("server secret", owner.id, 1)
    http = guarded_session(AddressPolicy.from_settings(settings))

    try:
        assert deliver_one(factory, http, settings, "server secret") is True
        assert deliver_one(factory, http, settings, "server secret") is False  # nothing else is due
        with session_scope(factory) as session:
            [delivery] = deliveries_of(session, job_id)
            assert session.get(Job, job_id).status == "canceled"
    finally:
        engine.dispose()

    [request] = receiver.requests
    assert verify(secret, request)["type"] == "job.canceled"
    assert (delivery.status, delivery.attempts, delivery.last_status_code) == (DeliveryStatus.DELIVERED, 1, 204)
    assert delivery.message_id == request.headers["webhook-id"]


def test_a_failed_attempt_s_log_line_names_the_job(database_url, receiver, caplog):
    refusing = Receiver(answers=[500])
    engine = make_engine(database_url)
    factory = make_session_factory(engine)
    settings = Settings(database_url=database_url, webhook_allowed_networks="127.0.0.1/32")
    with session_scope(factory) as session:
        owner, _ = create_api_key(session, "alice", secret="server secret")
        job, _ = jobs.create_job(session, owner, resolve_params({"iterations": 10}), "a" * 64, "b" * 64, webhook=Subscription(refusing.url))
        jobs.request_cancel(session, job)
        job_id = job.id

    try:
        with caplog.at_level(logging.INFO, logger="styleq.worker.webhooks"):
            assert deliver_one(factory, guarded_session(AddressPolicy.from_settings(settings)), settings, "server secret") is True
    finally:
        refusing.close()
        engine.dispose()

    [line] = [record for record in caplog.records if "failed" in record.getMessage()]
    assert "500" in line.getMessage() and line.job_id == job_id
    # As a log collector reads it: the JSON line carries the job's id as a field.
    assert json.loads(JsonFormatter().format(line))["job_id"] == job_id
