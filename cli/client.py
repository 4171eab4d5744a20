"""`styleq submit`, over `StyleqClient`: a styleq API as one API key sees it, usable from Python too."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
import requests
from tqdm import tqdm

from styleq.shared.adapters.outputs import EXTENSIONS, format_of_path
from styleq.shared.adapters.settings import load_settings

from .options import check_style_count, parameter_options, style_images
from .service import local_key_file

FINISHED = {"succeeded", "failed", "canceled"}


class ApiError(Exception):
    """An answer other than success from the API, or no answer at all."""


def read_events(response: requests.Response) -> Iterator[tuple[str, str, str]]:
    """Yield (event, id, data) for each Server-Sent Event in a streaming response."""
    event, event_id = "message", ""
    data: list[str] = []
    for line in response.iter_lines(decode_unicode=True):
        if line is None:
            continue
        # Decoded: bytes come only from a response that names no charset, and the API's text/event-stream names utf-8.
        assert isinstance(line, str)
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


def _body(response: requests.Response) -> dict[str, Any]:
    """Return the JSON body of a successful response, or raise ApiError with the API's own words."""
    try:
        body = response.json()
    except ValueError:
        body = {}
    if not response.ok:
        error = body.get("error", {}) if isinstance(body, dict) else {}
        raise ApiError(f"{response.status_code} {error.get('code', response.reason)}: {error.get('message', response.text[:200])}")
    return body


class StyleqClient:
    """Submit jobs to a styleq API, follow them and fetch their results, with one API key."""

    def __init__(self, url: str, key: str) -> None:
        self.url = url.rstrip("/")
        self.http = requests.Session()
        self.http.headers["Authorization"] = f"Bearer {key}"

    def submit(
        self,
        content: Path,
        style: Path | Sequence[Path],
        params: dict[str, Any],
        style_weights: Sequence[float] | None = None,
        *,
        webhook_url: str | None = None,
        webhook_events: str | None = None,
    ) -> dict[str, Any]:
        """Upload the content and the style image (or several to blend, with their weights) with `params` (and a webhook,
        its events comma-separated); return the new job."""
        styles = [style] if isinstance(style, Path) else list(style)
        data = {"params": json.dumps(params)}
        if style_weights is not None:
            data["style_weights"] = ",".join(repr(float(weight)) for weight in style_weights)
        if webhook_url:
            data["webhook_url"] = webhook_url
        if webhook_events:
            data["webhook_events"] = webhook_events
        with ExitStack() as files_open:
            # The style field repeated, in order: the API's form for a blend.
            files = [("content", (content.name, files_open.enter_context(content.open("rb"))))]
            files += [("style", (path.name, files_open.enter_context(path.open("rb")))) for path in styles]
            try:
                response = self.http.post(f"{self.url}/v1/jobs", files=files, data=data, timeout=120)
            except requests.ConnectionError:
                raise ApiError(f"cannot reach the styleq API at {self.url}; is `styleq up` running?") from None
        return _body(response)

    def job(self, job_id: str) -> dict[str, Any]:
        """Return the job as the API shows it now."""
        return _body(self.http.get(f"{self.url}/v1/jobs/{job_id}", timeout=30))

    def result(self, job_id: str) -> bytes:
        """Return the finished job's picture, in the job's format."""
        response = self.http.get(f"{self.url}/v1/jobs/{job_id}/result", timeout=120)
        if not response.ok:
            _body(response)
        return response.content

    def follow(
        self,
        job: dict[str, Any],
        *,
        on_checkpoint: Callable[[dict[str, Any]], None] | None = None,
        on_status: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Read the job's events until it ends, reconnecting where the stream left off; return the job."""
        last_id = ""
        while True:
            headers = {"Last-Event-ID": last_id} if last_id else {}
            try:
                with self.http.get(f"{self.url}/v1/jobs/{job['id']}/events", headers=headers, stream=True, timeout=(10, 60)) as response:
                    if not response.ok:
                        _body(response)
                    for event, event_id, data in read_events(response):
                        last_id = event_id or last_id
                        if event == "checkpoint" and on_checkpoint is not None:
                            on_checkpoint(json.loads(data))
                        elif event == "status":
                            job = json.loads(data)
                            if on_status is not None:
                                on_status(job)
                        elif event == "end":
                            return job
            except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError):
                time.sleep(1)  # the API restarted or a proxy cut the stream: pick up from the last event
            job = self.job(job["id"])
            if job["status"] in FINISHED:
                return job


def _api_url(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    """Refuse a `--url` that is not an http(s) address with a host, before anything is uploaded."""
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 (reading it raises ValueError for a port that is not a number)
    except ValueError as error:
        raise click.BadParameter(f"{value!r} is not a URL: {error}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise click.BadParameter(f"{value!r} is not an http:// or https:// URL of a styleq API, such as http://127.0.0.1:8000")
    return value


def _api_key(key: str | None) -> str:
    if key:
        return key
    path = local_key_file(load_settings())
    if path.is_file():
        return path.read_text().strip()
    raise click.UsageError(f"no API key: pass --key, set STYLEQ_API_KEY, or run `styleq up` (it keeps one in {path})")


def _job_params(params_json: str | None, preset: str | None, output: Path | None = None, **overrides: Any) -> dict[str, Any]:
    """Merge --params with the options that override it; the result's format follows -o's extension unless set."""
    try:
        params = json.loads(params_json) if params_json else {}
    except json.JSONDecodeError as error:
        raise click.BadParameter(f"not JSON: {error}", param_hint="--params") from None
    if not isinstance(params, dict):
        raise click.BadParameter("must be a JSON object", param_hint="--params")
    if preset:
        params["preset"] = preset
    params.update({name: value for name, value in overrides.items() if value is not None})
    if output is not None:
        params.update(output_format(output, params.get("format")))
    return params


def output_format(output: Path, chosen: str | None) -> dict[str, str]:
    """Return the format a result saved as `output` takes ({} to leave it to the parameters), refusing a name that contradicts `chosen`."""
    implied = format_of_path(output)
    if chosen is not None and implied != chosen:
        extensions = ", ".join(suffix for suffix, name in EXTENSIONS.items() if name == chosen)
        raise click.BadParameter(
            f"{output} is not a {chosen} file name: with format {chosen} it should end in {extensions}", param_hint="--output"
        )
    return {"format": implied} if implied is not None and chosen is None else {}


def _follow_with_bar(client: StyleqClient, job: dict[str, Any], quiet: bool) -> dict[str, Any]:
    """Follow the job with a progress bar of its iterations and latest losses."""
    with tqdm(total=job["iterations"], unit="it", desc=job["id"][:8], disable=quiet, dynamic_ncols=True) as bar:

        def on_checkpoint(point: dict[str, Any]) -> None:
            bar.set_postfix(content=f"{point['content']:.3g}", style=f"{point['style']:.3g}", tv=f"{point['tv']:.3g}", refresh=False)
            bar.update(point["iteration"] - bar.n)

        def on_status(changed: dict[str, Any]) -> None:
            bar.set_description(f"{changed['id'][:8]} {changed['status']}")

        return client.follow(job, on_checkpoint=on_checkpoint, on_status=on_status)


@click.command("submit")
@click.argument("content", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@style_images
@click.option(
    "--url",
    default=lambda: os.environ.get("STYLEQ_URL", "http://127.0.0.1:8000"),
    show_default="$STYLEQ_URL or http://127.0.0.1:8000",
    callback=_api_url,
)
@click.option("--key", envvar="STYLEQ_API_KEY", help="API key (default: $STYLEQ_API_KEY, else the one `styleq up` made).")
@click.option("--params", "params_json", help='Job parameters as JSON, e.g. \'{"preset": "seed", "iterations": 100}\'.')
@click.option("--preset", help="Preset name (styleq, seed).")
@click.option("--webhook-url", help="POST the job's events here, signed (Standard Webhooks) with the key's webhook secret.")
@click.option(
    "--webhook-events", help="Which, comma-separated: running, checkpoint, succeeded, failed, canceled (default: all but checkpoint)."
)
@parameter_options
@click.option("--wait", is_flag=True, help="Follow the job with a progress bar until it ends.")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="With --wait: where to save the result (.png, .jpg or .webp sets the format).",
)
@click.option("-q", "--quiet", is_flag=True)
def submit(
    content: Path,
    styles: tuple[Path, ...],
    style_weights: tuple[float, ...] | None,
    url: str,
    key: str | None,
    params_json: str | None,
    preset: str | None,
    webhook_url: str | None,
    webhook_events: str | None,
    wait: bool,
    output: Path | None,
    quiet: bool,
    **options: Any,
) -> None:
    """Submit a style-transfer job of one STYLE image or a blend of several; print its id (and with --wait, follow it and save the result)."""
    check_style_count(len(styles), style_weights)
    if output is not None and not wait:
        raise click.UsageError("--output needs --wait")
    if webhook_events and not webhook_url:
        raise click.UsageError("--webhook-events needs --webhook-url")
    params = _job_params(params_json, preset, output, **options)
    client = StyleqClient(url, _api_key(key))
    try:
        job = client.submit(content, styles, params, style_weights, webhook_url=webhook_url, webhook_events=webhook_events)
        click.echo(job["id"])
        if not wait:
            return
        job = _follow_with_bar(client, job, quiet)
        if job["status"] != "succeeded":
            error = job.get("error") or {}
            raise click.ClickException(f"job {job['id']} {job['status']}" + (f": {error.get('message')}" if error else ""))
        if output is not None:
            output.write_bytes(client.result(job["id"]))
            click.echo(f"Wrote {output}", err=True)
    except ApiError as error:
        raise click.ClickException(str(error)) from None
    except requests.RequestException as error:
        # Past the submit (which says so itself): the API went away while the job was followed or fetched.
        raise click.ClickException(f"lost the styleq API at {url}: {error}; the job goes on: `styleq submit` printed its id") from None
