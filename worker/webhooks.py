"""The deliverer: threads in each worker's main process that send the webhook outbox (`shared.service.deliveries`).

They never touch a running job: the pool process only writes delivery rows, and these threads claim
due rows, POST them, signed, and record what came of it. Connections go only to addresses
`shared.service.webhooks` allows, checked as each one is made (a name cannot resolve to a public address for
the check and an internal one for the connection), with no redirects and no proxies from the environment.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from styleq.shared.adapters import logs
from styleq.shared.adapters.db import make_engine, make_session_factory, session_scope
from styleq.shared.adapters.models import utcnow
from styleq.shared.adapters.settings import Settings
from styleq.shared.service import deliveries
from styleq.shared.service.webhooks import AddressPolicy, WebhookRefused, public_address, signature_header, signing_secrets

log = logging.getLogger(__name__)
# Threads per worker process: one receiver that is slow or down delays the others' deliveries only so much.
DELIVERY_THREADS = 4
# How often an idle deliverer looks for due deliveries (a read; it writes only when one is due).
POLL_SECONDS = 1.0
# How long a deliverer rests after a round failed (the database unreachable) before it tries again.
ERROR_PAUSE_SECONDS = 10.0
# A claim outlasts the attempt's timeout by this much before another deliverer may take the delivery again.
CLAIM_MARGIN_SECONDS = 30.0
USER_AGENT = "styleq-webhooks/1"


def guarded_session(policy: AddressPolicy) -> requests.Session:
    """Return an HTTP session that connects only to addresses `policy` allows, resolving and checking each time it connects."""

    class Guarded:
        _dns_host: str
        port: int

        def _new_conn(self) -> Any:
            # The address checked is the address connected to. Only for the connect: urllib3 reads the host's
            # name from the same attribute for the Host header and for TLS (SNI, the certificate's name).
            name = self._dns_host
            self._dns_host = public_address(name, self.port, policy)
            try:
                return super()._new_conn()  # type: ignore[misc]  # a mixin: urllib3's connection class after it in the MRO has it
            finally:
                self._dns_host = name

    class GuardedHTTPConnection(Guarded, HTTPConnection):
        pass

    class GuardedHTTPSConnection(Guarded, HTTPSConnection):
        pass

    class GuardedHTTPPool(HTTPConnectionPool):
        ConnectionCls = GuardedHTTPConnection

    class GuardedHTTPSPool(HTTPSConnectionPool):
        ConnectionCls = GuardedHTTPSConnection

    class GuardedAdapter(HTTPAdapter):
        def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
            super().init_poolmanager(*args, **kwargs)
            self.poolmanager.pool_classes_by_scheme = {"http": GuardedHTTPPool, "https": GuardedHTTPSPool}

    session = requests.Session()
    session.trust_env = False  # no proxy from the environment: it would make the connection the check does not see
    session.headers["User-Agent"] = USER_AGENT
    for prefix in ("http://", "https://"):
        session.mount(prefix, GuardedAdapter())
    return session


def send(http: requests.Session, claimed: deliveries.ClaimedDelivery, secrets: list[str], timeout: float) -> deliveries.Attempt:
    """POST the delivery, signed with each of `secrets`, and return what came of it (never raises for the receiver's faults)."""
    timestamp = int(time.time())
    headers = {
        "Content-Type": "application/json",
        "webhook-id": claimed.message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature_header(secrets, claimed.message_id, timestamp, claimed.body),
    }
    try:
        # stream=True: the answer's body is never read, however large; a redirect is a failure, never followed.
        with http.post(
            claimed.url, data=claimed.body.encode(), headers=headers, timeout=timeout, allow_redirects=False, stream=True
        ) as response:
            return deliveries.Attempt(status_code=response.status_code, retry_after=_seconds(response.headers.get("Retry-After")))
    except WebhookRefused as refused:
        return deliveries.Attempt(error=f"not sent: {refused.message}")
    except Exception as error:  # noqa: BLE001 (requests' errors, and whatever else a URL or a receiver can cause: this attempt failed)
        return deliveries.Attempt(error=f"{type(error).__name__}: {error}")


def _seconds(retry_after: str | None) -> float | None:
    """Return a Retry-After given in seconds (its date form is ignored: the backoff applies)."""
    try:
        return max(0.0, float(retry_after)) if retry_after else None
    except ValueError:
        return None


def deliver_one(session_factory: sessionmaker[Session], http: requests.Session, settings: Settings, server_secret: str) -> bool:
    """Claim one due delivery, send it and record the attempt; return False when none was due."""
    timeout = settings.webhook_timeout_seconds
    with session_scope(session_factory) as session:
        claimed = deliveries.claim_due(session, lease_seconds=timeout + CLAIM_MARGIN_SECONDS)
    if claimed is None:
        return False
    # Every line about this delivery, its failure's included, names the job it is about (shared/adapters/logs.py adds the field).
    with logs.log_context(job_id=claimed.job_id):
        attempt = send(http, claimed, signing_secrets(server_secret, claimed.owner, utcnow()), timeout)
        with session_scope(session_factory) as session:
            status = deliveries.record_attempt(
                session,
                claimed,
                attempt,
                backoff_seconds=settings.webhook_backoff_seconds,
                retry_for_seconds=settings.webhook_retry_for_seconds,
            )
        if status is not None and not attempt.delivered:
            log.info(
                "webhook delivery %s (attempt %d) failed: %s; now %s",
                claimed.message_id,
                claimed.attempt,
                attempt.error or attempt.status_code,
                status,
                extra={"job_id": claimed.job_id},
            )
    return True


class Deliverer(threading.Thread):
    """Send due webhook deliveries until stopped; idle, look again every POLL_SECONDS."""

    def __init__(self, session_factory: sessionmaker[Session], settings: Settings, server_secret: str, index: int = 0) -> None:
        super().__init__(name=f"styleq-webhooks-{index}", daemon=True)
        self.session_factory = session_factory
        self.settings = settings
        self.server_secret = server_secret
        self.stopped = threading.Event()

    def run(self) -> None:
        http = guarded_session(AddressPolicy.from_settings(self.settings))  # one each: a requests.Session is not shared across threads
        while not self.stopped.is_set():
            try:
                busy = deliver_one(self.session_factory, http, self.settings, self.server_secret)
            except OperationalError as error:
                # The database is down for a while: the deliveries wait in it, and a line now and then says so.
                log.warning("webhook deliveries paused for %g s: the database is unreachable (%s)", ERROR_PAUSE_SECONDS, error.orig)
                self.stopped.wait(ERROR_PAUSE_SECONDS)
                continue
            except Exception:
                log.exception("a webhook delivery round failed; trying again in %g s", ERROR_PAUSE_SECONDS)
                self.stopped.wait(ERROR_PAUSE_SECONDS)
                continue
            if not busy:
                self.stopped.wait(POLL_SECONDS)


def start_deliverers(settings: Settings, server_secret: str, count: int = DELIVERY_THREADS) -> list[Deliverer]:
    """Start `count` deliverer threads on one connection pool and return them."""
    session_factory = make_session_factory(make_engine(settings.database))
    threads = [Deliverer(session_factory, settings, server_secret, index) for index in range(count)]
    for thread in threads:
        thread.start()
    return threads
