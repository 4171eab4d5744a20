"""Check a submission before anything is stored: the two images, the parameters, the service's limits."""

from __future__ import annotations

import io
import json
import warnings
from typing import Any

from PIL import Image
from werkzeug.datastructures import FileStorage

from shared.errors import InvalidInput
from shared.params import WEIGHTS_NAMES, TransferParams, installed_weights, resolve_params
from shared.settings import Settings

from .errors import TooLarge, Unprocessable

IMAGE_FIELDS = ("content", "style")
# Formats a browser or camera produces; anything else (EPS, PSD, ...) is refused before a worker decodes it.
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")
MAX_IMAGE_PIXELS = 40_000_000
MAX_IDEMPOTENCY_KEY = 200


def read_images(files: Any, max_bytes: int) -> dict[str, bytes]:
    """Return the bytes of the `content` and `style` file fields, each checked to be a real image."""
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
        check_image(name, data)
        images[name] = data
    return images


def check_image(name: str, data: bytes) -> None:
    """Refuse `data` unless Pillow can open and verify it as an image of at most MAX_IMAGE_PIXELS."""
    if not data:
        raise InvalidInput(f"the {name} file is empty", code="invalid_image")
    try:
        with warnings.catch_warnings():
            # Pillow only warns below twice its own limit; an oversized image is the client's error.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as image:
                width, height = image.size
                if width * height > MAX_IMAGE_PIXELS:
                    raise InvalidInput(
                        f"the {name} image is {width}x{height}, over the limit of {MAX_IMAGE_PIXELS // 1_000_000} megapixels",
                        code="invalid_image",
                    )
                image.verify()
    except InvalidInput:
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise InvalidInput(f"the {name} image has too many pixels", code="invalid_image") from None
    except Exception as error:  # noqa: BLE001 (Pillow raises many types for damaged or foreign files)
        raise InvalidInput(
            f"the {name} file is not an image Pillow can read ({', '.join(IMAGE_FORMATS)}): {error}",
            code="invalid_image",
        ) from None


def read_params(form: Any, files: Any, settings: Settings) -> TransferParams:
    """Parse the `params` form field (a JSON object) and check it against the service's limits."""
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
    height, width = params.size if isinstance(params.size, tuple) else (params.size, params.size)
    if height * width > settings.max_pixels:
        raise Unprocessable(
            f"size {list(params.size) if isinstance(params.size, tuple) else params.size} makes {height * width} pixels, "
            f"over this service's limit of {settings.max_pixels}"
        )
    return params


def parse_params(text: str | None) -> dict[str, Any]:
    """Return the JSON object in `text` ({} when absent)."""
    if text is None or not text.strip():
        return {}
    try:
        values = json.loads(text, parse_constant=_refuse_constant)
    except ValueError as error:
        raise InvalidInput(f"params is not valid JSON: {error}", code="invalid_params") from None
    if not isinstance(values, dict):
        raise InvalidInput(f"params must be a JSON object, got {type(values).__name__}", code="invalid_params")
    return values


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
