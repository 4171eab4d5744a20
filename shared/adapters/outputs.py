"""The result file: its format's file name and media type, and the job's parameters written inside it.

One function writes every result (the worker's and `styleq transfer`'s), so a picture says how it was made
wherever it goes: a JSON document `{"software": "styleq", "weights": ..., "precision": ..., "params": {...}}` in a PNG's tEXt
chunk `Description`, or in the EXIF tag ImageDescription (0x010E) of a JPEG or WebP; `Software` is "styleq"
in both. `read_metadata` reads it back.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import ExifTags, Image, PngImagePlugin

from ..domain.params import TransferParams

SOFTWARE = "styleq"


@dataclass(frozen=True)
class OutputFormat:
    """How one of CHOICES["format"] is written and served."""

    pillow: str  # Pillow's format name
    media_type: str
    extension: str  # without the dot
    lossy: bool

    @property
    def file_name(self) -> str:
        """Return the name of a job's result file in this format (one of shared/adapters/storage.py RESULT_FILES)."""
        return f"result.{self.extension}"


FORMATS: dict[str, OutputFormat] = {
    "png": OutputFormat("PNG", "image/png", "png", lossy=False),
    "jpeg": OutputFormat("JPEG", "image/jpeg", "jpg", lossy=True),
    "webp": OutputFormat("WEBP", "image/webp", "webp", lossy=True),
}
# What an output file's name may end in, and the format it asks for (`styleq transfer -o out.webp`).
EXTENSIONS: dict[str, str] = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".webp": "webp"}


def job_format(params: dict[str, Any]) -> OutputFormat:
    """Return the result format of a job's stored parameters (PNG for jobs stored before formats existed)."""
    return FORMATS[params.get("format", "png")]


def format_of_path(path: str | os.PathLike[str]) -> str | None:
    """Return the format a file name's extension names (".jpg": "jpeg"), or None for any other."""
    return EXTENSIONS.get(Path(path).suffix.lower())


def encode_result(image: Image.Image, params: TransferParams, *, weights: str | None = None, precision: str | None = None) -> bytes:
    """Return `image` written in `params.format` (at `params.quality` where lossy), the parameters inside it.

    `weights` names the weights in the metadata where `params.weights` is a local file (its name, not its path);
    `precision` is the one the network ran in ("fp32" or "bf16"), which `params.precision` "auto" leaves to the device.
    """
    output = FORMATS[params.format]
    metadata = {"software": SOFTWARE, "weights": weights or params.weights, "params": params.to_dict()}
    if precision is not None:
        metadata["precision"] = precision
    description = json.dumps(metadata, sort_keys=True)
    buffer = io.BytesIO()
    if output.pillow == "PNG":
        text = PngImagePlugin.PngInfo()
        text.add_text("Software", SOFTWARE)
        text.add_text("Description", description)
        image.save(buffer, format="PNG", pnginfo=text)
    else:
        exif = Image.Exif()
        exif[ExifTags.Base.Software] = SOFTWARE
        exif[ExifTags.Base.ImageDescription] = description
        image.save(buffer, format=output.pillow, quality=params.quality, exif=exif.tobytes())
    return buffer.getvalue()


def read_metadata(source: bytes | str | os.PathLike[str]) -> dict[str, Any] | None:
    """Return the metadata `encode_result` wrote into a result file, or None where there is none."""
    with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
        if isinstance(image, PngImagePlugin.PngImageFile):
            description = image.text.get("Description")
        else:
            description = image.getexif().get(ExifTags.Base.ImageDescription)
    if not description:
        return None
    try:
        metadata = json.loads(description)
    except ValueError:
        return None
    return metadata if isinstance(metadata, dict) and metadata.get("software") == SOFTWARE else None
