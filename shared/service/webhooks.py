"""Webhooks, what they are: the events a job may report, the URLs allowed to receive them, and how each
delivery is signed (Standard Webhooks, https://www.standardwebhooks.com/).

A URL is checked when a job names it and again, address by address, each time a delivery connects
(`public_address`), so a host name that resolves to a public address at submit and to an internal one
later (DNS rebinding) is refused then too.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import socket
from dataclasses import dataclass
from datetime import datetime, timedelta
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address
from urllib.parse import urlsplit

from ..adapters.models import ApiKey, WebhookEvent
from ..adapters.settings import Settings
from ..domain.errors import Unprocessable

EVENTS = tuple(event.value for event in WebhookEvent)
# What a job names no events for: each run starting and the end, not the checkpoints (many, and chatty).
DEFAULT_EVENTS = (WebhookEvent.RUNNING.value, WebhookEvent.SUCCEEDED.value, WebhookEvent.FAILED.value, WebhookEvent.CANCELED.value)
MAX_URL_LENGTH = 2000
# Room for every event name and then some; longer is a mistake, not a list.
MAX_EVENTS_LENGTH = 200
SECRET_PREFIX = "whsec_"
# Keys the server secret for this one use, as shared.service.keys does for the hashes of API keys.
SECRET_PURPOSE = b"styleq webhook signing secret v1"
# After a rotation the previous secret signs too, for this long: receivers switch with no delivery refused
# (the spec's zero-downtime rotation: one signature per secret, space-separated).
ROTATION_GRACE = timedelta(hours=24)


@dataclass(frozen=True)
class Subscription:
    """A job's webhook: the URL its events are POSTed to, and which events."""

    url: str
    events: tuple[str, ...] = DEFAULT_EVENTS


class WebhookRefused(Unprocessable):
    """A webhook URL the service will not call: not http(s), with credentials, unresolvable, or not public."""

    code = "invalid_webhook_url"


@dataclass(frozen=True)
class AddressPolicy:
    """Which addresses a webhook may reach: public ones, those in `allowed_networks`, or any with `allow_private`."""

    allow_private: bool = False
    allowed_networks: tuple[IPv4Network | IPv6Network, ...] = ()

    @classmethod
    def from_settings(cls, settings: Settings) -> AddressPolicy:
        """Return the policy the settings describe."""
        return cls(settings.webhook_allow_private, settings.webhook_allowed_networks)


def parse_events(text: str | None) -> list[str]:
    """Return the events a comma-separated list names, in their canonical order (DEFAULT_EVENTS when none).

    Raises:
        Unprocessable: an unknown event.
    """
    if text is not None and len(text) > MAX_EVENTS_LENGTH:
        raise Unprocessable(
            f"webhook_events is longer than {MAX_EVENTS_LENGTH} characters; it names at most {len(EVENTS)} events",
            code="invalid_webhook_events",
        )
    names = [name.strip().lower() for name in (text or "").split(",") if name.strip()]
    if not names:
        return list(DEFAULT_EVENTS)
    unknown = sorted(set(names) - set(EVENTS))
    if unknown:
        raise Unprocessable(
            f"webhook_events names {', '.join(unknown)}; the events are {', '.join(EVENTS)} (comma-separated)",
            code="invalid_webhook_events",
        )
    return [event for event in EVENTS if event in names]


def check_url(url: str, policy: AddressPolicy) -> str:
    """Return `url` if a webhook may be sent to it: http or https, no credentials, and every address it resolves to allowed.

    Raises:
        WebhookRefused: naming what is wrong.
    """
    url = url.strip()
    if len(url) > MAX_URL_LENGTH:
        raise WebhookRefused(f"webhook_url is longer than {MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as error:
        raise WebhookRefused(f"webhook_url is not a valid URL: {error}") from None
    if parts.scheme not in ("http", "https"):
        raise WebhookRefused(f"webhook_url must be an http or https URL, got {parts.scheme or 'no'} scheme")
    if parts.username is not None or parts.password is not None:
        raise WebhookRefused("webhook_url must not carry credentials (user:password@); verify deliveries by their signature instead")
    if not parts.hostname:
        raise WebhookRefused("webhook_url names no host")
    public_address(parts.hostname, port or (443 if parts.scheme == "https" else 80), policy)
    return url


def public_address(host: str, port: int, policy: AddressPolicy) -> str:
    """Resolve `host` and return its first address, if every address it resolves to is allowed.

    Every one, not only the first: a name with one public and one internal address could be made to
    reach the internal one.

    Raises:
        WebhookRefused: the name does not resolve, or one of its addresses is not allowed.
    """
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as error:
        raise WebhookRefused(f"the webhook host {host!r} does not resolve: {error}") from None
    addresses = list(dict.fromkeys(str(entry[4][0]) for entry in found))
    for address in addresses:
        reason = address_refusal(address, policy)
        if reason is not None:
            shown = host if host == address else f"{host!r} resolves to {address}, which"
            raise WebhookRefused(f"the webhook host {shown} is a {reason} address; webhooks go only to public addresses on this service")
    return addresses[0]


def address_refusal(address: str, policy: AddressPolicy) -> str | None:
    """Return why a webhook may not reach `address` ("loopback", "private", ...), or None when it may."""
    ip: IPv4Address | IPv6Address = ip_address(address.split("%", 1)[0])  # a scoped IPv6 address ends in %interface
    if isinstance(ip, IPv6Address):
        # An IPv4 address written as IPv6 reaches that IPv4 address: judge that one.
        ip = ip.ipv4_mapped or ip.sixtofour or ip
    if policy.allow_private or any(ip in network for network in policy.allowed_networks):
        return None
    for reason, applies in (
        ("unspecified", ip.is_unspecified),
        ("loopback", ip.is_loopback),
        ("link-local", ip.is_link_local),
        ("multicast", ip.is_multicast),
        ("private", ip.is_private),
        ("reserved", ip.is_reserved),
    ):
        if applies:
            return reason
    return None if ip.is_global else "non-public"


def webhook_secret(server_secret: str, key_id: int, version: int) -> str:
    """Return the signing secret of the key's webhooks at `version`, as `whsec_<base64>` (32 random-looking bytes).

    Derived, not stored: HMAC-SHA256, under a key made from the server secret for this one purpose,
    of the key's id and secret version. The server can sign with it at any time, and the database
    holds nothing more to leak: a stored secret would be readable by anyone who reads the database,
    and one stored encrypted would need a key of its own, which would be the server secret anyway.
    Rotating counts the version up. The price: changing STYLEQ_SECRET_KEY changes every webhook
    secret, as it already invalidates every API key.
    """
    purpose_key = hmac.new(server_secret.encode(), SECRET_PURPOSE, hashlib.sha256).digest()
    raw = hmac.new(purpose_key, f"{key_id}:{version}".encode(), hashlib.sha256).digest()
    return SECRET_PREFIX + base64.b64encode(raw).decode()


def signing_secrets(server_secret: str, key: ApiKey, now: datetime) -> list[str]:
    """Return the secrets that sign the key's deliveries now: its current one, and the previous one during ROTATION_GRACE."""
    secrets = [webhook_secret(server_secret, key.id, key.webhook_secret_version)]
    rotated_at = key.webhook_secret_rotated_at
    if key.webhook_secret_version > 1 and rotated_at is not None and now - rotated_at < ROTATION_GRACE:
        secrets.append(webhook_secret(server_secret, key.id, key.webhook_secret_version - 1))
    return secrets


def sign(secret: str, message_id: str, timestamp: int, body: str) -> str:
    """Return the `v1,<base64>` signature of a delivery: HMAC-SHA256 under the decoded secret of `{id}.{timestamp}.{body}`."""
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    digest = hmac.new(key, f"{message_id}.{timestamp}.{body}".encode(), hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signature_header(secrets: list[str], message_id: str, timestamp: int, body: str) -> str:
    """Return the `webhook-signature` header: one signature per secret, space-separated."""
    return " ".join(sign(secret, message_id, timestamp, body) for secret in secrets)
