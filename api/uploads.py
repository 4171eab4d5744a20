"""Check a submission before anything is stored: the content and style images, the parameters, the service's limits."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session
from werkzeug.datastructures import FileStorage

from styleq.shared.adapters.images import decode_image
from styleq.shared.adapters.settings import Settings
from styleq.shared.domain.errors import InvalidInput
from styleq.shared.domain.memory import HEADROOM, fits, job_peak_bytes, largest_long_side, tiled_peak_bytes
from styleq.shared.domain.params import (
    MAX_STYLES,
    WEIGHTS_NAMES,
    TransferParams,
    installed_weights,
    long_side_output,
    parse_style_weights,
    resolve_params,
    style_roles,
)
from styleq.shared.service import fleet
from styleq.shared.service.webhooks import AddressPolicy, Subscription, check_url, parse_events

from .errors import TooLarge, Unprocessable

IMAGE_FIELDS = ("content", "style")
# The plain form fields: sent as files they are refused by name where each is read.
FORM_FIELDS = ("params", "style_weights")
MAX_IDEMPOTENCY_KEY = 200
# How deep `params` may nest: an object of lists ({"size": [300, 450]}) is 2. Deeper JSON is refused before
# anything walks it, since a value nested a few hundred deep still parses but breaks Python's repr in a message.
MAX_PARAMS_DEPTH = 4


@dataclass(frozen=True)
class UploadedImage:
    """One uploaded picture: its bytes as sent, and its upright size as the worker will decode it."""

    data: bytes
    width: int
    height: int


@dataclass(frozen=True)
class UploadedPictures:
    """A submission's pictures: the content, and the style pictures in the order sent (one, or several to blend)."""

    content: UploadedImage
    styles: list[UploadedImage]


def read_images(files: Any, max_bytes: int) -> UploadedPictures:
    """Return the `content` file field and the `style` file fields (one, or repeated up to MAX_STYLES times for a blend).

    Each is at most `max_bytes` and decoded whole once, to prove a worker can decode it.
    """
    unknown = sorted(set(files) - {*IMAGE_FIELDS, *FORM_FIELDS})
    if unknown:
        # A client guessing `style2` would otherwise get a job of one style without noticing.
        raise InvalidInput(
            f"unknown file field {unknown[0]!r}: send the content image as the field 'content' and each style image as a "
            f"field named 'style', repeated for a blend of up to {MAX_STYLES}",
            code="unknown_field",
        )
    fields = {name: [file for file in files.getlist(name) if isinstance(file, FileStorage)] for name in IMAGE_FIELDS}
    for name in IMAGE_FIELDS:
        if not fields[name]:
            raise InvalidInput(
                f"the {name} image is missing: send it as the multipart/form-data file field {name!r}",
                code="missing_file",
            )
    if len(fields["content"]) > 1:
        raise InvalidInput(f"send one content image; got {len(fields['content'])} 'content' files", code="too_many_files")
    if len(fields["style"]) > MAX_STYLES:
        raise InvalidInput(
            f"a job blends at most {MAX_STYLES} style images; got {len(fields['style'])} 'style' files",
            code="too_many_files",
        )
    content = read_image("content", fields["content"][0], max_bytes)
    styles = fields["style"]
    return UploadedPictures(content, [read_image(role, file, max_bytes) for role, file in zip(style_roles(len(styles)), styles)])


def read_image(name: str, file: FileStorage, max_bytes: int) -> UploadedImage:
    """Read one uploaded file of at most `max_bytes` and check that it decodes."""
    data = file.stream.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise TooLarge(f"the {name} image is larger than the limit of {max_bytes} bytes")
    return check_image(name, data)


def check_image(name: str, data: bytes) -> UploadedImage:
    """Decode `data` as the worker will (shared.adapters.images.decode_image), refusing what it cannot decode.

    Raises:
        InvalidImage: an empty file, a foreign format, a damaged or truncated picture, too many pixels.
    """
    if not data:
        raise InvalidInput(f"the {name} file is empty", code="invalid_image")
    width, height = decode_image(data, role=name).size
    return UploadedImage(data, width, height)


def read_params(
    form: Any,
    files: Any,
    settings: Settings,
    content: UploadedImage,
    style_count: int = 1,
    *,
    device_memory_bytes: int | None = None,
) -> TransferParams:
    """Parse the `params` form field (a JSON object) and `style_weights`, and check them against the network, the service's
    limits for `content`, and the `style_count` pictures.

    The parameters come back with their coarse-to-fine schedule written out for `content` (`with_schedule`), and
    a job too large for `device_memory_bytes` (the largest live worker's device; None: unknown) is refused.
    """
    for name in FORM_FIELDS:
        if name in files and name not in form:
            raise InvalidInput(f"{name} must be a plain form field, not a file", code="invalid_params")
    values = parse_params(form.get("params"))
    given = form.getlist("style_weights")
    if given:
        values = {**values, "style_weights": read_style_weights(given, values)}
    weights = values.get("weights")
    if weights is not None and weights not in WEIGHTS_NAMES:
        raise Unprocessable(f"weights must be one of {', '.join(WEIGHTS_NAMES)}, got {weights!r}; files cannot be named")
    try:
        params = resolve_params(values)
    except ValueError as error:
        raise Unprocessable(str(error)) from None
    except TypeError as error:  # a value of a type the checks did not foresee
        raise Unprocessable(f"a parameter has a value of the wrong type: {error}") from None
    if params.weights not in WEIGHTS_NAMES:
        raise Unprocessable(f"weights must be one of {', '.join(WEIGHTS_NAMES)}, got {params.weights!r}")
    installed = installed_weights(settings.models_path)
    if params.weights not in installed:
        # Workers run only weights an operator has pulled; they never download at a client's request.
        raise Unprocessable(
            f"weights {params.weights!r} are not installed on this service; installed: {', '.join(installed) or 'none'}",
            code="weights_unavailable",
        )
    if params.iterations > settings.max_iterations:
        raise Unprocessable(f"iterations must be at most {settings.max_iterations} on this service, got {params.iterations}")
    try:
        # A size the network cannot take is known now: refused here, it cannot fail a worker later.
        params.check_output_size(content.width, content.height)
    except ValueError as error:
        raise Unprocessable(str(error)) from None
    height, width = params.output_size(content.width, content.height)
    if max(height, width) > settings.max_size:
        raise Unprocessable(
            f"size {_written(params.size)} makes an output {width} wide and {height} high, longer than this service's "
            f"limit of {settings.max_size} pixels on the long side"
        )
    try:
        params.check_style_count(style_count)
    except ValueError as error:
        raise Unprocessable(str(error), code="invalid_style_weights") from None
    check_memory(params, height, width, device_memory_bytes, settings.max_size)
    # The schedule depends on the output size, known now: the job's stored parameters show the one it runs.
    return params.with_schedule(content.width, content.height)


def device_memory(session: Session, settings: Settings) -> int | None:
    """Return the memory jobs are planned by: the largest a live worker reported, else the setting (None: unknown)."""
    # A worker reports itself every sweep; one silent for longer than a job's lease is not counted on.
    reported = fleet.largest_device_memory(session, live_within_seconds=settings.lease_seconds)
    return reported if reported is not None else settings.device_memory_bytes


def check_memory(params: TransferParams, height: int, width: int, memory_bytes: int | None, max_size: int) -> None:
    """Refuse an output of (height, width) that `memory_bytes` cannot hold, naming the largest size that fits.

    An output past one pass is accepted when its Gram loss can be optimised in tiles (the worker cuts them by
    its free memory, worker/engine/tiles.py); the moments loss has no tiled form, so it must fit one pass.

    Raises:
        Unprocessable: `too_large_for_memory`, with the largest long side that fits an output of this shape.
    """
    tiles = params.style_loss == "gram"
    if memory_bytes is None or fits(height, width, params.precision, memory_bytes, style_scale=params.style_scale, tiles=tiles):
        return
    needs = (
        tiled_peak_bytes(height, width, params.precision)
        if tiles
        else job_peak_bytes(height, width, params.precision, style_scale=params.style_scale)
    )
    largest = largest_long_side(memory_bytes, params.precision, width, height, style_scale=params.style_scale, limit=max_size, tiles=tiles)
    how = "even in tiles" if tiles else "in one pass (the moments loss is not made in tiles)"
    made = f"size {_written(params.size)} makes an output {width} wide and {height} high, which needs about {needs / 2**30:.1f} GiB {how}"
    available = f"more than this service's workers can give one job ({memory_bytes * HEADROOM / 2**30:.1f} GiB)"
    if largest is None:
        raise Unprocessable(f"{made}, {available}; no size fits", code="too_large_for_memory")
    fitting = long_side_output(largest, width, height)
    raise Unprocessable(
        f"{made}, {available}: the largest size that fits is {largest} (the long side; {fitting[1]} wide and {fitting[0]} high)",
        code="too_large_for_memory",
    )


def _written(size: tuple[int, int] | int) -> str:
    return str(list(size)) if isinstance(size, tuple) else str(size)


def read_webhook(form: Any, settings: Settings) -> Subscription | None:
    """Return the webhook the `webhook_url` and `webhook_events` form fields ask for (None without a URL), its URL checked."""
    url, events = form.get("webhook_url"), form.get("webhook_events")
    if url is None or not url.strip():
        if events is not None and events.strip():
            raise Unprocessable("webhook_events was given without a webhook_url to send them to", code="invalid_webhook_events")
        return None
    chosen = tuple(parse_events(events))  # checked before the URL, whose check resolves its host
    return Subscription(check_url(url, AddressPolicy.from_settings(settings)), chosen)


def read_style_weights(given: list[str], values: dict[str, Any]) -> list[float]:
    """Parse the `style_weights` form field ("0.7,0.3"), which must come once, and not in `params` too."""
    if len(given) > 1 or "style_weights" in values:
        raise InvalidInput(
            "style_weights is given more than once; give it once, as a form field like 0.7,0.3 or in params",
            code="invalid_style_weights",
        )
    try:
        return list(parse_style_weights(given[0]))
    except ValueError as error:
        raise Unprocessable(str(error), code="invalid_style_weights") from None


def parse_params(text: str | None) -> dict[str, Any]:
    """Return the JSON object in `text` ({} when absent)."""
    if text is None or not text.strip():
        return {}
    too_deep = InvalidInput(f"params nests deeper than {MAX_PARAMS_DEPTH} levels; no parameter needs more than 2", code="invalid_params")
    try:
        values = json.loads(text, parse_constant=_refuse_constant)
    except ValueError as error:
        raise InvalidInput(f"params is not valid JSON: {error}", code="invalid_params") from None
    except RecursionError:  # thousands of nested brackets exhaust the parser's stack
        raise too_deep from None
    if not isinstance(values, dict):
        raise InvalidInput(f"params must be a JSON object, got {type(values).__name__}", code="invalid_params")
    if _nesting_depth(values) > MAX_PARAMS_DEPTH:
        raise too_deep
    return values


def _nesting_depth(value: Any) -> int:
    """Return how deep JSON `value` nests (a scalar 0, {"a": 1} 1), walking it without recursion."""
    deepest, pending = 0, [(value, 1)]
    while pending:
        item, depth = pending.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        deepest = max(deepest, depth)
        if depth > MAX_PARAMS_DEPTH:
            break  # deep enough to refuse: no need to walk the rest
        pending.extend((child, depth + 1) for child in children)
    return deepest


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def read_idempotency_key(value: str | None) -> str | None:
    """Return the Idempotency-Key header's value, checked, or None."""
    if value is None or not value.strip():
        return None
    if len(value) > MAX_IDEMPOTENCY_KEY or not value.isprintable():
        raise InvalidInput(f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} printable characters", code="invalid_idempotency_key")
    return value.strip()
