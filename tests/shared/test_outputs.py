"""Result files: written in the job's format and quality, each carrying the job's parameters as JSON that reads back."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import ExifTags, Image

from styleq.shared.adapters.outputs import FORMATS, encode_result, format_of_path, job_format, read_metadata
from styleq.shared.adapters.storage import RESULT_FILES, Storage
from styleq.shared.domain.params import CHOICES, resolve_params


def gradient_picture() -> Image.Image:
    """Return a 96x64 picture with detail enough for lossy quality to show in the file size."""
    y, x = np.mgrid[0:64, 0:96]
    pixels = np.stack([x * 2.6, y * 4, (x * y) % 255], axis=-1).astype(np.uint8)
    return Image.fromarray(pixels)


def test_every_format_the_parameters_allow_has_a_result_file_storage_accepts():
    assert tuple(FORMATS) == CHOICES["format"]
    assert sorted(output.file_name for output in FORMATS.values()) == sorted(RESULT_FILES)
    storage = Storage(Path("/nonexistent"))
    assert all(storage.job_path("0" * 32, output.file_name).name == output.file_name for output in FORMATS.values())


@pytest.mark.parametrize("format_", CHOICES["format"])
def test_a_result_is_written_in_its_format_with_the_parameters_and_weights_inside(format_):
    params = resolve_params({"format": format_, "style_loss": "moments"})

    data = encode_result(gradient_picture(), params)

    with Image.open(io.BytesIO(data)) as picture:
        assert picture.format == FORMATS[format_].pillow and picture.size == (96, 64)
        assert Image.MIME[picture.format] == FORMATS[format_].media_type
    metadata = read_metadata(data)
    assert metadata == {"software": "styleq", "weights": "vgg16-caffe", "params": params.to_dict()}
    assert json.loads(json.dumps(metadata)) == metadata


def test_png_keeps_the_parameters_in_text_chunks_and_jpeg_and_webp_in_exif():
    png = Image.open(io.BytesIO(encode_result(gradient_picture(), resolve_params({}))))
    assert png.text["Software"] == "styleq" and json.loads(png.text["Description"])["params"]["format"] == "png"
    for format_ in ("jpeg", "webp"):
        with Image.open(io.BytesIO(encode_result(gradient_picture(), resolve_params({"format": format_})))) as picture:
            exif = picture.getexif()
            assert exif[ExifTags.Base.Software] == "styleq"
            assert json.loads(exif[ExifTags.Base.ImageDescription])["params"]["format"] == format_


def test_a_png_is_lossless_and_lossy_formats_follow_the_quality():
    picture = gradient_picture()
    with Image.open(io.BytesIO(encode_result(picture, resolve_params({})))) as png:
        assert png.tobytes() == picture.tobytes()
    for format_ in ("jpeg", "webp"):
        sizes = [len(encode_result(picture, resolve_params({"format": format_, "quality": quality}))) for quality in (10, 92)]
        assert sizes[0] < sizes[1], (format_, sizes)


def test_a_weights_file_is_named_by_the_caller_not_by_its_path():
    params = resolve_params({"weights": "/home/someone/models/my-vgg.pth"})

    assert read_metadata(encode_result(gradient_picture(), params, weights="my-vgg.pth"))["weights"] == "my-vgg.pth"


def test_a_picture_without_styleq_metadata_reads_as_none():
    buffer = io.BytesIO()
    gradient_picture().save(buffer, format="PNG")

    assert read_metadata(buffer.getvalue()) is None


def test_the_format_follows_a_file_names_extension_and_a_stored_jobs_params():
    assert [format_of_path(name) for name in ("a.png", "b.JPG", "c.jpeg", "d.webp", "e.bmp", "f")] == [
        "png",
        "jpeg",
        "jpeg",
        "webp",
        None,
        None,
    ]
    assert job_format({"format": "webp"}).media_type == "image/webp"
    assert job_format({}).file_name == "result.png"  # a job stored before formats existed
