"""What a webhook may be: the URLs it may reach, the events it may name, and the Standard Webhooks signature of each delivery."""

from __future__ import annotations

import base64
from datetime import timedelta
from ipaddress import ip_network

import pytest
import standardwebhooks

from styleq.shared.adapters.models import ApiKey, utcnow
from styleq.shared.domain.errors import Unprocessable
from styleq.shared.service.webhooks import (
    DEFAULT_EVENTS,
    ROTATION_GRACE,
    AddressPolicy,
    WebhookRefused,
    address_refusal,
    check_url,
    parse_events,
    sign,
    signature_header,
    signing_secrets,
    webhook_secret,
)

PUBLIC = AddressPolicy()


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("10.0.0.1", "private"),
        ("172.16.5.4", "private"),
        ("192.168.1.1", "private"),
        ("169.254.169.254", "link-local"),
        ("fe80::1%eth0", "link-local"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("240.0.0.1", "private"),
        ("100.64.0.1", "non-public"),
        ("::ffff:10.0.0.1", "private"),
        ("2002:a00:1::", "private"),
        ("fc00::1", "private"),
    ],
)
def test_internal_addresses_are_refused_with_what_they_are(address, reason):
    assert address_refusal(address, PUBLIC) == reason


@pytest.mark.parametrize("address", ["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946", "8.8.8.8"])
def test_public_addresses_are_allowed(address):
    assert address_refusal(address, PUBLIC) is None


def test_an_allowed_network_or_allow_private_lets_internal_addresses_through():
    allowed = AddressPolicy(allowed_networks=(ip_network("127.0.0.1/32"), ip_network("10.1.0.0/16")))

    assert address_refusal("127.0.0.1", allowed) is None and address_refusal("10.1.2.3", allowed) is None
    assert address_refusal("127.0.0.2", allowed) == "loopback" and address_refusal("::1", allowed) == "loopback"
    assert address_refusal("169.254.169.254", AddressPolicy(allow_private=True)) is None


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("http://10.0.0.1/hook", "10.0.0.1 is a private address"),
        ("http://169.254.169.254/latest/meta-data", "169.254.169.254 is a link-local address"),
        ("http://localhost:8080/hook", "'localhost' resolves to 127.0.0.1, which is a loopback address"),
        ("http://[::1]/hook", "::1 is a loopback address"),
        ("ftp://example.com/hook", "http or https"),
        ("file:///etc/passwd", "http or https"),
        ("https://user:secret@example.com/hook", "credentials"),
        ("http:///hook", "no host"),
        ("http://example.com:99999/hook", "not a valid URL"),
        ("http://no-such-host.invalid/hook", "does not resolve"),
        ("https://example.com/" + "a" * 2000, "longer than 2000"),
    ],
)
def test_urls_a_webhook_may_not_call_are_refused_naming_the_problem(url, words):
    with pytest.raises(WebhookRefused) as refused:
        check_url(url, PUBLIC)

    assert words in refused.value.message and refused.value.code == "invalid_webhook_url"


def test_a_loopback_url_passes_where_the_network_is_allowed():
    assert (
        check_url(" http://127.0.0.1:9/hook ", AddressPolicy(allowed_networks=(ip_network("127.0.0.1/32"),))) == "http://127.0.0.1:9/hook"
    )


def test_events_default_to_running_and_the_ends_and_come_back_in_their_order():
    assert parse_events(None) == parse_events(" ") == list(DEFAULT_EVENTS) == ["running", "succeeded", "failed", "canceled"]
    assert parse_events("succeeded, checkpoint,Succeeded") == ["checkpoint", "succeeded"]
    with pytest.raises(Unprocessable, match="webhook_events names finished, queued") as refused:
        parse_events("queued,finished,running")
    assert refused.value.code == "invalid_webhook_events"


def test_the_signature_is_the_standard_webhooks_one():
    # The specification's reference libraries' own test vector.
    secret, message_id, timestamp, body = (
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "msg_p5jXN8AQM9LWM0D4loKWxJek",
        1614265330,
        '{"test": 2432232314}',
    )

    assert sign(secret, message_id, timestamp, body) == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_a_key_s_secret_is_derived_from_the_server_secret_its_id_and_version_and_verifies_with_the_reference_library():
    secret = webhook_secret("server secret", 7, 1)
    now = int(utcnow().timestamp())
    body = '{"type":"job.succeeded"}'
    headers = {"webhook-id": "msg_1", "webhook-timestamp": str(now), "webhook-signature": signature_header([secret], "msg_1", now, body)}

    assert secret.startswith("whsec_") and len(base64.b64decode(secret[6:])) == 32
    assert secret == webhook_secret("server secret", 7, 1)
    assert len({secret, webhook_secret("server secret", 8, 1), webhook_secret("server secret", 7, 2), webhook_secret("other", 7, 1)}) == 4
    assert standardwebhooks.Webhook(secret).verify(body, headers) == {"type": "job.succeeded"}
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        standardwebhooks.Webhook(webhook_secret("server secret", 7, 2)).verify(body, headers)


def test_after_a_rotation_the_previous_secret_signs_too_for_a_day():
    now = utcnow()
    key = ApiKey(id=3, webhook_secret_version=2, webhook_secret_rotated_at=now - timedelta(hours=1))

    assert signing_secrets("s", key, now) == [webhook_secret("s", 3, 2), webhook_secret("s", 3, 1)]
    assert signing_secrets("s", key, now + ROTATION_GRACE) == [webhook_secret("s", 3, 2)]
    assert signing_secrets("s", ApiKey(id=3, webhook_secret_version=1), now) == [webhook_secret("s", 3, 1)]
