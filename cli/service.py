"""`styleq up`, `db upgrade`, `keys create|list|revoke|rotate-webhook-secret`, `worker` and `gc`: running the job service on this machine."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import click
import requests
from sqlalchemy.exc import SQLAlchemyError

from styleq.api import gunicorn_command
from styleq.shared.adapters.db import session_scope
from styleq.shared.adapters.migrate import upgrade_database
from styleq.shared.adapters.models import ApiKey
from styleq.shared.adapters.secret_key import load_secret_key
from styleq.shared.adapters.settings import Settings, load_settings
from styleq.shared.adapters.storage import open_storage
from styleq.shared.domain.errors import Conflict, NotFound
from styleq.shared.service.keys import PREFIX_LENGTH, create_api_key, find_api_key, list_api_keys, revoke_api_key, rotate_webhook_secret
from styleq.shared.service.retention import RetentionPolicy, find_expired, remove_expired
from styleq.shared.service.webhooks import ROTATION_GRACE, webhook_secret

from .database import checked_url, database_problem, opened_database


def local_key_file(settings: Settings) -> Path:
    """Return where `styleq up` keeps the local admin key, so `styleq submit` works with no flags."""
    return settings.data_dir / "local-api-key"


def make_key_with_webhook_secret(settings: Settings, name: str, *, admin: bool = False) -> tuple[str, str]:
    """Create an API key in the configured database; return its secret and the secret that signs its jobs' webhooks."""
    # Hashed under the same server secret the API loads, so the API recognises it; the workers derive
    # the same webhook secret from it.
    secret = load_secret_key(settings)
    with opened_database(settings.database) as session_factory, session_scope(session_factory) as session:
        key, token = create_api_key(session, name, secret=secret, is_admin=admin)
        signing = webhook_secret(secret, key.id, key.webhook_secret_version)
    return token, signing


@click.group("db")
def db() -> None:
    """Manage the job database."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Apply every migration to the configured database."""
    settings = load_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    migrate(settings.database)
    click.echo("database is up to date", err=True)


def migrate(url: str) -> None:
    """Apply every migration to the database at `url`; one that cannot be reached fails the command in one line."""
    try:
        upgrade_database(checked_url(url))
    except SQLAlchemyError as error:
        raise click.ClickException(database_problem(error, url)) from None


@click.group("keys")
def keys() -> None:
    """Manage API keys."""


@keys.command("create")
@click.option("--name", required=True, help="Who or what the key is for.")
@click.option("--admin", is_flag=True, help="The key sees every job and the operator view.")
def keys_create(name: str, admin: bool) -> None:
    """Make a new API key and print it as the last line (it is shown only this once), its webhook signing secret before it."""
    try:
        token, signing = make_key_with_webhook_secret(load_settings(), name, admin=admin)
    except ValueError as error:
        raise click.UsageError(str(error)) from None
    # The webhook secret goes to stderr, so that the key stays the only thing a script reads from stdout.
    click.echo(f"Its jobs' webhook deliveries are signed with this secret (shown only now): {signing}", err=True)
    click.echo(f"Created {'an admin' if admin else 'a'} key named {name!r}; it is shown only once:", err=True)
    click.echo(token)


@keys.command("list")
def keys_list() -> None:
    """Show every key: id, name, prefix, admin, created, revoked (never the key itself, which is not stored)."""
    with opened_database(load_settings().database) as session_factory, session_scope(session_factory) as session:
        rows = [key_row(key) for key in list_api_keys(session)]
    if not rows:
        click.echo("no API keys yet; `styleq keys create --name NAME` makes one", err=True)
        return
    header = ("ID", "NAME", "PREFIX", "ADMIN", "CREATED", "REVOKED")
    widths = [max(len(row[column]) for row in (header, *rows)) for column in range(len(header))]
    for row in (header, *rows):
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


def key_row(key: ApiKey) -> tuple[str, str, str, str, str, str]:
    """Return how `styleq keys list` shows `key`."""

    def moment(value: datetime | None) -> str:
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ") if value else "-"

    return (str(key.id), key.name, key.prefix, "yes" if key.is_admin else "no", moment(key.created_at), moment(key.revoked_at))


@keys.command("revoke")
@click.argument("id_or_prefix")
def keys_revoke(id_or_prefix: str) -> None:
    """Revoke the key with this id or prefix (see `styleq keys list`): the API and the dashboard refuse it at once."""
    try:
        with opened_database(load_settings().database) as session_factory, session_scope(session_factory) as session:
            key = find_api_key(session, id_or_prefix)
            revoked = revoke_api_key(session, key)
            description = f"key {key.id} ({key.name!r}, {key.prefix})"
    except (NotFound, Conflict) as error:
        raise click.ClickException(f"{error.message}; `styleq keys list` shows every key") from None
    if revoked:
        click.echo(f"Revoked {description}; requests and dashboard sessions using it are refused from now on.", err=True)
    else:
        click.echo(f"{description.capitalize()} was already revoked; nothing changed.", err=True)


@keys.command("rotate-webhook-secret")
@click.argument("id_or_prefix")
def keys_rotate_webhook_secret(id_or_prefix: str) -> None:
    """Give the key with this id or prefix a new webhook signing secret and print it (shown only now)."""
    settings = load_settings()
    secret = load_secret_key(settings)
    try:
        with opened_database(settings.database) as session_factory, session_scope(session_factory) as session:
            key = find_api_key(session, id_or_prefix)
            rotate_webhook_secret(session, key)
            signing = webhook_secret(secret, key.id, key.webhook_secret_version)
            description = f"key {key.id} ({key.name!r}, {key.prefix})"
    except (NotFound, Conflict) as error:
        raise click.ClickException(f"{error.message}; `styleq keys list` shows every key") from None
    click.echo(
        f"New webhook signing secret of {description}; for {ROTATION_GRACE.total_seconds() / 3600:g} hours deliveries carry a "
        "signature by the old secret too, so receivers can switch without refusing any:",
        err=True,
    )
    click.echo(signing)


def pull_default_weights(settings: Settings) -> None:
    """Fetch the default preset's weights into the model directory if they are not there, so the first job can run.

    Here, before the worker starts, because a worker never downloads: it runs what the model directory holds.
    """
    from styleq.shared.domain.params import DEFAULT_PRESET, PRESETS, installed_weights

    default = str(PRESETS[DEFAULT_PRESET]["weights"])
    if default not in installed_weights(settings.models_path):
        from .pulling import pull_with_progress_bar

        pull_with_progress_bar(default, settings.models_path)


def _wait_until_healthy(url: str, processes: list[subprocess.Popen[bytes]], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(process.poll() is not None for process in processes):
            raise click.ClickException("the API or the worker exited while starting; see the messages above")
        try:
            if requests.get(f"{url}/healthz", timeout=2).ok:
                return
        except requests.RequestException:
            pass
        time.sleep(0.3)
    raise click.ClickException(f"the API did not answer at {url} within {timeout:.0f} s")


@click.command("up")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address the API listens on.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option("--gpus", default="all", show_default=True, help="GPUs for the worker: all, none, or indices like 0,1.")
@click.option("--api-workers", default=2, show_default=True, type=click.IntRange(1, 64), help="gunicorn processes.")
def up(host: str, port: int, gpus: str, api_workers: int) -> None:
    """Set up the data directory, database and default weights, then run the API and a worker until Ctrl-C."""
    checked_gpus(gpus)  # refused here, before anything starts, rather than by the worker once the API runs
    settings = load_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    migrate(settings.database)
    pull_default_weights(settings)
    key_file = local_key_file(settings)
    if not key_file.is_file():
        token, signing = make_key_with_webhook_secret(settings, "local", admin=True)
        key_file.touch(mode=0o600)
        key_file.write_text(token + "\n")
        click.echo(f"Local admin API key (kept in {key_file}, shown only now):\n  {token}")
        click.echo(
            f"Its webhook signing secret (shown only now; `styleq keys rotate-webhook-secret {token[:PREFIX_LENGTH]}` makes another):\n  {signing}"
        )
    else:
        click.echo(f"Local admin API key: in {key_file}")

    url = f"http://{host}:{port}"
    # gevent: an open event stream is a greenlet waiting on the process's one poller, not a thread, so hundreds of
    # them leave every other request its turn (see api.stream_hub). gunicorn itself believes X-Forwarded-Proto from
    # 127.0.0.1; only the app decides that, from STYLEQ_TRUSTED_PROXIES, so a local client cannot pass for HTTPS.
    api = subprocess.Popen(
        gunicorn_command(
            f"{host}:{port}",
            api_workers,
            "gevent",
            *("--worker-connections", "1000", "--timeout", "120", "--graceful-timeout", "5"),
            *("--access-logfile", "-", "--forwarded-allow-ips", ""),
        )
    )
    worker = subprocess.Popen([sys.executable, "-m", "styleq.cli", "worker", "--gpus", gpus])
    processes = [api, worker]

    def stop() -> None:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)

    # A SIGTERM (from a service manager) stops everything the way Ctrl-C does; and Ctrl-C itself even
    # when started in the background of a script, which leaves SIGINT ignored (Python then keeps it so).
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        _wait_until_healthy(url, processes)
        click.echo(f"styleq is running at {url} (data in {settings.data_dir}); Ctrl-C stops it.")
        while all(process.poll() is None for process in processes):
            time.sleep(0.5)
        raise click.ClickException("the API or the worker stopped; see the messages above")
    except KeyboardInterrupt:
        click.echo("stopping...", err=True)
    finally:
        stop()
        _wait_or_escalate(api, worker)


def _wait_or_escalate(api: subprocess.Popen[bytes], worker: subprocess.Popen[bytes]) -> None:
    """Give the API and the worker a few seconds to stop; a job still running is cut off and resumes next time."""
    try:
        api.wait(timeout=15)
    except subprocess.TimeoutExpired:
        api.kill()
    try:
        worker.wait(timeout=10)
    except subprocess.TimeoutExpired:
        # Celery's cold shutdown: the running job keeps its saved state and the sweeper resumes it later.
        worker.send_signal(signal.SIGQUIT)
        try:
            worker.wait(timeout=20)
        except subprocess.TimeoutExpired:
            worker.kill()


@click.command("worker")
@click.option(
    "--gpus", default="all", show_default=True, help="all (one process per visible GPU), none (one CPU worker), or indices like 0,1."
)
@click.option(
    "--loglevel",
    default=None,
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
    help="Overrides STYLEQ_LOG_LEVEL (INFO).",
)
def worker_command(gpus: str, loglevel: str | None) -> None:
    """Run job workers: one process per GPU, pinned with CUDA_VISIBLE_DEVICES, one job at a time each."""
    from styleq.worker.launcher import launch

    raise SystemExit(launch(load_settings(), checked_gpus(gpus), loglevel))


def checked_gpus(spec: str) -> list[str]:
    """Return the GPU indices `--gpus` names, refusing a malformed list, or a GPU this machine does not have, in one line."""
    from styleq.worker.launcher import NoSuchGpu, visible_gpus

    try:
        return visible_gpus(spec)
    except NoSuchGpu as error:
        raise click.ClickException(str(error)) from None
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--gpus") from None


_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([dhms]?)\s*$")
_AGE_UNITS = {"d": "days", "": "days", "h": "hours", "m": "minutes", "s": "seconds"}


class Age(click.ParamType):
    """A duration such as `30d`, `12h`, `90m` or `45s` (a bare number is days)."""

    name = "age"

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> timedelta:
        if isinstance(value, timedelta):
            return value
        match = _AGE.match(str(value))
        if not match or float(match.group(1)) <= 0:
            self.fail(f"{value!r} is not a positive age such as 30d, 12h, 90m or 45s", param, ctx)
        return timedelta(**{_AGE_UNITS[match.group(2)]: float(match.group(1))})


@click.command("gc")
@click.option(
    "--older-than",
    type=Age(),
    default=None,
    help="Remove every kind of file this long after its job ended (e.g. 30d), instead of each kind's STYLEQ_KEEP_*_DAYS.",
)
@click.option("--dry-run", is_flag=True, help="List what would be removed, and remove nothing.")
def gc(older_than: timedelta | None, dry_run: bool) -> None:
    """Remove results, previews, saved states and uploads past their retention, one line each, then the total in bytes.

    Each line is KIND, OWNER (job id or upload hash), BYTES and PATH, separated by tabs. Nothing a
    queued or running job needs is removed; a removed result's job stays, marked expired (410 Gone).
    """
    settings = load_settings()
    policy = RetentionPolicy.uniform(older_than) if older_than is not None else RetentionPolicy.from_settings(settings)
    if not policy.removes_anything:
        click.echo("every STYLEQ_KEEP_*_DAYS is 0 (keep for ever): nothing to remove; --older-than 30d sets an age", err=True)
        return
    storage = open_storage(settings)
    with opened_database(settings.database) as session_factory:
        now = datetime.now(UTC)
        with session_scope(session_factory) as session:
            removals = find_expired(session, storage, policy, now=now)
        if not dry_run:
            removals = remove_expired(session_factory, storage, removals, policy, now=now)
    for removal in removals:
        click.echo(f"{removal.kind}\t{removal.owner}\t{removal.size}\t{removal.path}")
    total = sum(removal.size for removal in removals)
    click.echo(f"total\t{len(removals)} files\t{total}\t{'would be freed (dry run: nothing removed)' if dry_run else 'freed'}")
