"""Decoding a picture into the 8-bit RGB the engine works on: one function for the API, the worker and the CLI.

Pillow only (no torch), so the API checks an upload by decoding it exactly as the worker will, and a job
it accepts never fails later on a picture that was damaged, truncated or too large all along.
"""

from __future__ import annotations

import io
import os
import warnings

from PIL import ExifTags, Image, UnidentifiedImageError

from ..domain.errors import InvalidImage

# Formats a browser or camera produces; anything else (EPS, PSD, ...) is refused before it is decoded.
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")
MAX_IMAGE_PIXELS = 40_000_000
# Transparent pixels are laid on white, as a page shows a transparent picture: the engine sees no alpha.
BACKGROUND = (255, 255, 255)
# How to turn a picture stored with each EXIF orientation upright: Pillow's ImageOps.exif_transpose table,
# kept here because the orientation is read before decoding (see `_orientation`).
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
# Orientations whose upright picture has width and height swapped (a portrait photo stored sideways).
_SWAPS_SIDES = {5, 6, 7, 8}
# Greyscale with more than 8 bits a sample: 16-bit PNGs and TIFFs ('I' is 32-bit, but what Pillow puts
# there from a PNG or TIFF is 16-bit greyscale).
_WIDE_GREY_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I"}

ImageSource = bytes | str | os.PathLike[str]


def decode_image(
    source: ImageSource, *, role: str = "", max_pixels: int | None = MAX_IMAGE_PIXELS, reduce_to: int | None = None
) -> Image.Image:
    """Decode every byte of a picture's first frame into upright 8-bit RGB.

    The EXIF orientation is applied, 16-bit greyscale scaled to 8 bits, transparency laid on `BACKGROUND`
    (white), and CMYK, palette, greyscale and the rest converted; an animation gives its first frame.
    `role` ("content", "style") names the picture in messages ("the file" without one); `max_pixels` None leaves only Pillow's own
    decompression-bomb limit. `reduce_to` (thumbnails) lets a JPEG decode at 1/2, 1/4 or 1/8 of its size
    while both sides keep at least that many pixels.

    Raises:
        InvalidImage: not one of IMAGE_FORMATS, damaged or truncated, or over `max_pixels`.
        FileNotFoundError: a path that names no file.
    """
    described = f"the {role} image" if role else "the file"
    try:
        with warnings.catch_warnings():
            # Pillow only warns below twice its own limit; a picture that large is refused either way.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(_readable(source), formats=IMAGE_FORMATS) as image:
                width, height = image.size
                if max_pixels is not None and width * height > max_pixels:
                    raise InvalidImage(f"{described} is {width}x{height}, over the limit of {max_pixels / 1e6:g} megapixels")
                orientation = _orientation(image)
                if reduce_to is not None:
                    image.draft(None, (reduce_to, reduce_to))
                # Decodes the whole first frame: a file cut short or damaged anywhere fails here, where
                # `verify()` would have looked at little more than the header of a JPEG, GIF, BMP or TIFF.
                image.load()
                picture = _to_rgb(image)
    except (InvalidImage, FileNotFoundError):
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise InvalidImage(f"{described} has too many pixels to decode safely") from None
    except UnidentifiedImageError:
        raise InvalidImage(f"{described} is not a picture in one of the formats {', '.join(IMAGE_FORMATS)}") from None
    except Exception as error:  # noqa: BLE001 (Pillow raises many types for damaged files)
        raise InvalidImage(f"{described} is damaged or incomplete ({error})") from None
    if orientation in _UPRIGHT:
        picture = picture.transpose(_UPRIGHT[orientation])
    # The pixels are upright now: an orientation tag carried along would turn them a second time if saved.
    picture.info.clear()
    return picture


def image_size(source: ImageSource) -> tuple[int, int]:
    """Return the upright (width, height) that `decode_image` gives `source`, reading only the file's header.

    Raises:
        OSError: not a picture in one of IMAGE_FORMATS (UnidentifiedImageError), or no such file.
    """
    with Image.open(_readable(source), formats=IMAGE_FORMATS) as image:
        width, height = image.size
        return (height, width) if _orientation(image) in _SWAPS_SIDES else (width, height)


# How many of a file's first bytes `media_type` needs: every format's signature fits in them.
MEDIA_TYPE_BYTES = 16


def media_type(head: bytes) -> str:
    """Return the media type of a picture from its first MEDIA_TYPE_BYTES bytes, as PIL's format plugins recognise them."""
    Image.init()
    for name in IMAGE_FORMATS:
        accept = Image.OPEN[name][1]
        if accept is not None and accept(head):
            return Image.MIME.get(name, "application/octet-stream")
    return "application/octet-stream"


def _readable(source: ImageSource) -> io.BytesIO | str | os.PathLike[str]:
    return io.BytesIO(source) if isinstance(source, bytes) else source


def _orientation(image: Image.Image) -> int:
    """Return the EXIF orientation (1 to 8) still to apply after decoding: 1 where the file states none, or garbage."""
    if image.format == "TIFF":
        # Pillow's TIFF reader turns the picture itself as it decodes, and gives the upright size on opening.
        return 1
    try:
        # Image.Image's own getexif reads what opening the file found (EXIF, XMP, TIFF tags); PNG's override
        # would decode every pixel to look for an eXIf chunk after them. Reading the header alone is what
        # lets `image_size` (a worker matching batch-mates) agree with `decode_image` without decoding.
        orientation = Image.Image.getexif(image).get(ExifTags.Base.Orientation, 1)
        return orientation if orientation in _UPRIGHT else 1
    except Exception:  # noqa: BLE001 (a damaged EXIF block: browsers show such a photo as stored, and so do we)
        return 1


def _to_rgb(image: Image.Image) -> Image.Image:
    """Return a decoded frame as a new 8-bit RGB image, transparency laid on BACKGROUND."""
    if image.mode in _WIDE_GREY_MODES:
        # Pillow's own conversion clips each 16-bit value at 255, which turns nearly every grey white:
        # scale 0-65535 to 0-255 (rounded) instead. A 16-bit transparency key is not honoured.
        grey = image.convert("I").point(lambda value: value / 257 + 0.5).convert("L")
        return grey.convert("RGB")
    if image.has_transparency_data:
        layered = Image.new("RGBA", image.size, (*BACKGROUND, 255))
        layered.alpha_composite(image.convert("RGBA"))
        return layered.convert("RGB")
    return image.convert("RGB")
