"""`styleq submit`: send a job to a styleq API and follow it to the end through its event stream."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import requests
from tqdm import tqdm

from shared.settings import load_settings

from .commands import local_key_file

_FINISHED = {"succeeded", "failed", "canceled"}


def read_events(response: requests.Response) -> Iterator[tuple[str, str, str]]:
    """Yield (event, id, data) for each Server-Sent Event in a streaming response."""
    event, event_id, data = "message", "", []
    for line in response.iter_lines(decode_unicode=True):
        if line is None:
            continue
        if line == "":
            if data:
                yield event, event_id, "\n".join(data)
            event, data = "message", []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)
        elif name == "id":
            event_id = value


def _api_key(key: str | None) -> str:
    if key:
        return key
    path = local_key_file(load_settings())
    if path.is_file():
        return path.read_text().strip()
    raise click.UsageError(f"no API key: pass --key, set STYLEQ_API_KEY, or run `styleq up` (it keeps one in {path})")


def _fail_on_error(response: requests.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        body = {}
    if not response.ok:
        error = body.get("error", {}) if isinstance(body, dict) else {}
        raise click.ClickException(f"{response.status_code} {error.get('code', response.reason)}: {error.get('message', response.text[:200])}")
    return body


def follow(session: requests.Session, url: str, job: dict[str, Any], quiet: bool) -> dict[str, Any]:
    """Show a progress bar fed by the job's events until it ends (reconnecting where it left off); return the job."""
    last_id = ""
    with tqdm(total=job["iterations"], unit="it", desc=job["id"][:8], disable=quiet, dynamic_ncols=True) as bar:
        while True:
            headers = {"Last-Event-ID": last_id} if last_id else {}
            try:
                with session.get(f"{url}/v1/jobs/{job['id']}/events", headers=headers, stream=True, timeout=(10, 60)) as response:
                    if not response.ok:
                        _fail_on_error(response)
                    for event, event_id, data in read_events(response):
                        last_id = event_id or last_id
                        if event == "checkpoint":
                            point = json.loads(data)
                            bar.set_postfix(content=f"{point['content']:.3g}", style=f"{point['style']:.3g}", tv=f"{point['tv']:.3g}", refresh=False)
                            bar.update(point["iteration"] - bar.n)
                        elif event == "status":
                            job = json.loads(data)
                            bar.set_description(f"{job['id'][:8]} {job['status']}")
                        elif event == "end":
                            return job
            except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError):
                time.sleep(1)  # the API restarted or a proxy cut the stream: pick up from the last event
            job = _fail_on_error(session.get(f"{url}/v1/jobs/{job['id']}", timeout=30))
            if job["status"] in _FINISHED:
                return job


@click.command("submit")
@click.argument("content", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("style", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--url", default=lambda: os.environ.get("STYLEQ_URL", "http://127.0.0.1:8000"), show_default="$STYLEQ_URL or http://127.0.0.1:8000")
@click.option("--key", envvar="STYLEQ_API_KEY", help="API key (default: $STYLEQ_API_KEY, else the one `styleq up` made).")
@click.option("--params", "params_json", help='Job parameters as JSON, e.g. \'{"preset": "seed", "iterations": 100}\'.')
@click.option("--preset", help="Preset name (styleq, seed).")
@click.option("--size", help="HEIGHTxWIDTH like 300x450, or the long side.")
@click.option("--iterations", type=int)
@click.option("--wait", is_flag=True, help="Follow the job with a progress bar until it ends.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="With --wait: where to save the result.")
@click.option("-q", "--quiet", is_flag=True)
def submit(content: Path, style: Path, url: str, key: str | None, params_json: str | None, preset: str | None, size: str | None, iterations: int | None, wait: bool, output: Path | None, quiet: bool) -> None:
    """Submit a style-transfer job; print its id (and with --wait, follow it and save the result)."""
    try:
        params = json.loads(params_json) if params_json else {}
    except json.JSONDecodeError as error:
        raise click.BadParameter(f"not JSON: {error}", param_hint="--params") from None
    if not isinstance(params, dict):
        raise click.BadParameter("must be a JSON object", param_hint="--params")
    if preset:
        params["preset"] = preset
    if iterations is not None:
        params["iterations"] = iterations
    if size:
        height, _, width = size.lower().partition("x")
        if not (height.strip().isdigit() and (not width or width.strip().isdigit())):
            raise click.BadParameter(f"expected HEIGHTxWIDTH like 300x450, or one number; got {size!r}", param_hint="--size")
        params["size"] = [int(height), int(width)] if width else int(height)
    if output is not None and not wait:
        raise click.UsageError("--output needs --wait")
    url = url.rstrip("/")
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {_api_key(key)}"
    with content.open("rb") as content_file, style.open("rb") as style_file:
        files = {"content": (content.name, content_file), "style": (style.name, style_file)}
        try:
            response = session.post(f"{url}/v1/jobs", files=files, data={"params": json.dumps(params)}, timeout=120)
        except requests.ConnectionError:
            raise click.ClickException(f"cannot reach the styleq API at {url}; is `styleq up` running?") from None
    job = _fail_on_error(response)
    click.echo(job["id"])
    if not wait:
        return
    job = follow(session, url, job, quiet)
    if job["status"] != "succeeded":
        error = job.get("error") or {}
        raise click.ClickException(f"job {job['id']} {job['status']}" + (f": {error.get('message')}" if error else ""))
    if output is not None:
        result = session.get(f"{url}/v1/jobs/{job['id']}/result", timeout=120)
        if not result.ok:
            _fail_on_error(result)
        output.write_bytes(result.content)
        click.echo(f"Wrote {output}", err=True)
