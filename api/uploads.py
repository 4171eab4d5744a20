"""Check a submission before anything is stored: the two images, the parameters, the service's limits."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from werkzeug.datastructures import FileStorage

from sqlalchemy.orm import Session

from shared import fleet
from shared.errors import InvalidInput
from shared.images import decode_image
from shared.memory import HEADROOM, fits_one_pass, job_peak_bytes, largest_one_pass_long_side
from shared.params import WEIGHTS_NAMES, TransferParams, installed_weights, long_side_output, resolve_params
from shared.settings import Settings

from .errors import TooLarge, Unprocessable

IMAGE_FIELDS = ("content", "style")
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


def read_images(files: Any, max_bytes: int) -> dict[str, UploadedImage]:
    """Return the `content` and `style` file fields, each decoded whole once to prove a worker can decode it."""
    missing = [name for name in IMAGE_FIELDS if not isinstance(files.get(name), FileStorage)]
    if missing:
        raise InvalidInput(
            f"the {missing[0]} image is missing: send it as the multipart/form-data file field {missing[0]!r}",
            code="missing_file",
        )
    images = {}
    for name in IMAGE_FIELDS:
        data = files[name].stream.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise TooLarge(f"the {name} image is larger than the limit of {max_bytes} bytes")
        images[name] = check_image(name, data)
    return images


def check_image(name: str, data: bytes) -> UploadedImage:
    """Decode `data` as the worker will (shared.images.decode_image), refusing what it cannot decode.

    Raises:
        InvalidImage: an empty file, a foreign format, a damaged or truncated picture, too many pixels.
    """
    if not data:
        raise InvalidInput(f"the {name} file is empty", code="invalid_image")
    width, height = decode_image(data, role=name).size
    return UploadedImage(data, width, height)


def read_params(form: Any, files: Any, settings: Settings, content: UploadedImage, *, device_memory_bytes: int | None = None) -> TransferParams:
    """Parse the `params` form field (a JSON object) and check it against the network and the service's limits for `content`.

    The parameters come back with their coarse-to-fine schedule written out for `content` (`with_schedule`), and
    a job too large for `device_memory_bytes` (the largest live worker's device; None: unknown) is refused.
    """
    if "params" in files and "params" not in form:
        raise InvalidInput("params must be a plain form field holding a JSON object, not a file", code="invalid_params")
    values = parse_params(form.get("params"))
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
    check_memory(params, height, width, device_memory_bytes, settings.max_size)
    # The schedule depends on the output size, known now: the job's stored parameters show the one it runs.
    return params.with_schedule(content.width, content.height)


def device_memory(session: Session, settings: Settings) -> int | None:
    """Return the memory jobs are planned by: the largest a live worker reported, else the setting (None: unknown)."""
    # A worker reports itself every sweep; one silent for longer than a job's lease is not counted on.
    reported = fleet.largest_device_memory(session, live_within_seconds=settings.lease_seconds)
    return reported if reported is not None else settings.device_memory_bytes


def check_memory(params: TransferParams, height: int, width: int, memory_bytes: int | None, max_size: int) -> None:
    """Refuse an output of (height, width) that one pass cannot hold in `memory_bytes`, naming the largest size that fits.

    Raises:
        Unprocessable: `too_large_for_memory`, with the largest long side that fits an output of this shape.
    """
    if memory_bytes is None or fits_one_pass(height, width, params.precision, memory_bytes, style_scale=params.style_scale):
        return
    needs = job_peak_bytes(height, width, params.precision, style_scale=params.style_scale)
    largest = largest_one_pass_long_side(memory_bytes, params.precision, width, height, style_scale=params.style_scale, limit=max_size)
    made = f"size {_written(params.size)} makes an output {width} wide and {height} high, which needs about {needs / 2**30:.1f} GiB"
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
        raise InvalidInput(
            f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} printable characters", code="invalid_idempotency_key"
        )
    return value.strip()
