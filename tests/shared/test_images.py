"""decode_image: every picture the service accepts, decoded one way, upright, in 8-bit RGB; image_size agrees from the header."""

from __future__ import annotations

import io

import pytest
from PIL import ExifTags, Image, ImageOps

from styleq.shared.adapters.images import BACKGROUND, IMAGE_FORMATS, decode_image, image_size
from styleq.shared.domain.errors import InvalidImage

RED, BLUE, GREEN = (220, 30, 30), (30, 30, 220), (30, 200, 30)


def encoded(image: Image.Image, kind: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, kind, **options)
    return buffer.getvalue()


def two_halves(width: int = 40, height: int = 20) -> Image.Image:
    """A landscape picture, red on its left half and blue on its right, so a turn is easy to see."""
    picture = Image.new("RGB", (width, height), BLUE)
    picture.paste(RED, (0, 0, width // 2, height))
    return picture


def orientation_exif(orientation: int) -> bytes:
    """An EXIF block that holds only an orientation, as a camera writes it."""
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    return exif.tobytes()


def with_orientation(orientation: int, kind: str = "JPEG") -> bytes:
    return encoded(two_halves(), kind, exif=orientation_exif(orientation))


def close(pixel: tuple[int, ...], expected: tuple[int, ...], tolerance: int = 12) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(pixel, expected, strict=True))


def test_a_photo_stored_sideways_with_an_exif_orientation_comes_out_upright():
    stored = with_orientation(6)  # "rotate 90 degrees clockwise to view": a portrait photo held sideways

    picture = decode_image(stored)

    assert picture.size == (20, 40) and picture.mode == "RGB"
    assert close(picture.getpixel((10, 5)), RED) and close(picture.getpixel((10, 35)), BLUE)  # the left half is now on top
    assert image_size(stored) == (20, 40)


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("kind", ["JPEG", "PNG", "WEBP", "TIFF"])
def test_each_exif_orientation_turns_the_picture_as_pillows_exif_transpose_does(kind, orientation):
    stored = with_orientation(orientation, kind)
    with Image.open(io.BytesIO(stored)) as image:
        expected = ImageOps.exif_transpose(image).convert("RGB")

    picture = decode_image(stored)

    assert picture.tobytes() == expected.tobytes() and picture.size == expected.size
    assert image_size(stored) == picture.size
    assert ExifTags.Base.Orientation not in picture.getexif()  # saved again, it would not be turned twice


def test_a_damaged_exif_block_leaves_the_picture_as_stored():
    stored = encoded(two_halves(), "JPEG", exif=b"Exif\x00\x00not a TIFF header at all")

    assert decode_image(stored).size == image_size(stored) == (40, 20)


def test_sixteen_bit_greyscale_is_scaled_to_eight_bits_not_clipped_to_white():
    values = [0, 257 * 60, 30000, 65535]
    grey = Image.new("I;16", (len(values), 1))
    grey.putdata(values)
    stored = encoded(grey, "PNG")

    picture = decode_image(stored)

    assert [picture.getpixel((x, 0)) for x in range(len(values))] == [(0, 0, 0), (60, 60, 60), (117, 117, 117), (255, 255, 255)]


def test_sixteen_bit_greyscale_tiff_is_scaled_too():
    grey = Image.new("I;16", (2, 2), 257 * 100)

    assert decode_image(encoded(grey, "TIFF")).getpixel((0, 0)) == (100, 100, 100)


def test_transparency_is_laid_on_white():
    picture = Image.new("RGBA", (3, 1), (0, 0, 0, 0))
    picture.putpixel((1, 0), (255, 0, 0, 255))
    picture.putpixel((2, 0), (255, 0, 0, 128))

    decoded = decode_image(encoded(picture, "PNG"))

    assert BACKGROUND == (255, 255, 255)
    assert decoded.getpixel((0, 0)) == BACKGROUND and decoded.getpixel((1, 0)) == (255, 0, 0)
    assert close(decoded.getpixel((2, 0)), (255, 127, 127), tolerance=2)


def test_greyscale_with_alpha_is_laid_on_white_too():
    picture = Image.new("LA", (2, 1), (0, 0))
    picture.putpixel((1, 0), (0, 255))

    decoded = decode_image(encoded(picture, "PNG"))

    assert decoded.getpixel((0, 0)) == BACKGROUND and decoded.getpixel((1, 0)) == (0, 0, 0)


def test_a_cmyk_jpeg_is_converted_to_rgb():
    cyan_and_magenta_and_yellow = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # magenta + yellow ink: red

    picture = decode_image(encoded(cyan_and_magenta_and_yellow, "JPEG", quality=95))

    assert picture.mode == "RGB" and close(picture.getpixel((8, 8)), (255, 0, 0))


def test_a_palette_gif_with_a_transparent_colour_is_converted_with_that_colour_on_white():
    picture = Image.new("P", (2, 1))
    picture.putpalette([*RED, *GREEN] + [0] * 762)
    picture.putpixel((1, 0), 1)

    decoded = decode_image(encoded(picture, "GIF", transparency=1))

    assert decoded.getpixel((0, 0)) == RED and decoded.getpixel((1, 0)) == BACKGROUND


@pytest.mark.parametrize("kind", ["GIF", "WEBP", "PNG"])
def test_an_animation_gives_its_first_frame(kind):
    frames = [Image.new("RGB", (8, 8), color) for color in (RED, GREEN, BLUE)]
    stored = encoded(
        frames[0], kind, save_all=True, append_images=frames[1:], duration=100, loop=0, **({"lossless": True} if kind == "WEBP" else {})
    )
    with Image.open(io.BytesIO(stored)) as image:
        assert getattr(image, "n_frames", 1) == 3

    assert close(decode_image(stored).getpixel((4, 4)), RED)


@pytest.mark.parametrize("mode", ["1", "L", "P", "RGB", "YCbCr"])
def test_every_other_mode_comes_out_as_rgb(mode):
    picture = Image.new("RGB", (4, 4), GREEN).convert(mode)
    kind = "JPEG" if mode == "YCbCr" else "TIFF"

    assert decode_image(encoded(picture, kind)).mode == "RGB"


@pytest.mark.parametrize("kind", IMAGE_FORMATS)
def test_a_file_cut_short_is_refused_naming_the_role(kind):
    noise = Image.effect_noise((64, 64), 60).convert("RGB")
    whole = encoded(noise, kind)

    with pytest.raises(InvalidImage, match="the style image is damaged or incomplete") as refused:
        decode_image(whole[: len(whole) * 2 // 3], role="style")

    assert refused.value.code == "invalid_image"
    assert decode_image(whole).size == (64, 64)


def test_a_truncated_jpeg_that_pillows_verify_passes_is_refused():
    whole = encoded(Image.effect_noise((64, 64), 60).convert("RGB"), "JPEG")
    truncated = whole[: len(whole) // 2]
    with Image.open(io.BytesIO(truncated)) as image:
        image.verify()  # why a header check is not enough

    with pytest.raises(InvalidImage, match="the content image is damaged or incomplete"):
        decode_image(truncated, role="content")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"plain text, not a picture\n" * 4, "the content image is not a picture in one of the formats JPEG, PNG"),
        (encoded(Image.new("RGB", (4, 4)), "PPM"), "not a picture in one of the formats"),
        (encoded(Image.new("RGB", (4, 4)), "ICO"), "not a picture in one of the formats"),
    ],
    ids=["text", "ppm", "ico"],
)
def test_anything_but_the_accepted_formats_is_refused(data, message):
    with pytest.raises(InvalidImage, match=message):
        decode_image(data, role="content")


def test_a_picture_over_the_pixel_limit_is_refused_before_it_is_decoded():
    stored = encoded(Image.new("1", (2000, 1500)), "PNG")

    with pytest.raises(InvalidImage, match=r"the content image is 2000x1500, over the limit of 2 megapixels"):
        decode_image(stored, role="content", max_pixels=2_000_000)
    assert decode_image(stored, max_pixels=None).size == (2000, 1500)


def test_a_path_is_decoded_like_its_bytes_and_a_missing_one_is_not_an_image_error(tmp_path):
    path = tmp_path / "portrait.jpg"
    path.write_bytes(with_orientation(8))

    assert decode_image(path).tobytes() == decode_image(path.read_bytes()).tobytes()
    assert image_size(path) == (20, 40)
    with pytest.raises(FileNotFoundError):
        decode_image(tmp_path / "gone.jpg")


def test_reduce_to_lets_a_jpeg_decode_at_a_fraction_of_its_size_upright():
    stored = encoded(two_halves(800, 400), "JPEG", exif=orientation_exif(6))

    small = decode_image(stored, reduce_to=100)

    assert small.size == (100, 200) and close(small.getpixel((50, 20)), RED)
