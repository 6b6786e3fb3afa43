import io
import struct
import zlib

import pytest
from PIL import Image

import images
from errors import ImageTooLarge, InvalidImage
from conftest import image_bytes

LIMIT = 40_000_000


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height, with one tiny data chunk."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")


@pytest.mark.parametrize(
    "fmt, mode, color",
    [
        ("PNG", "RGB", (10, 20, 30)),
        ("PNG", "RGBA", (10, 20, 30, 0)),
        ("PNG", "L", 77),
        ("PNG", "LA", (77, 128)),
        ("PNG", "P", 3),
        ("PNG", "1", 1),
        ("PNG", "I;16", 65535),
        ("JPEG", "RGB", (200, 100, 50)),
        ("JPEG", "L", 128),
        ("JPEG", "CMYK", (0, 255, 255, 0)),
    ],
)
def test_every_mode_becomes_rgb(fmt, mode, color):
    picture = images.read_image(io.BytesIO(image_bytes(fmt, mode, (30, 20), color)), max_pixels=LIMIT)
    assert picture.pixels.mode == "RGB" and picture.pixels.size == (30, 20)
    stored = Image.open(io.BytesIO(picture.file.data))
    assert stored.format == fmt and stored.mode in ("RGB",) and stored.size == (30, 20)
    assert picture.file.mime_type == ("image/png" if fmt == "PNG" else "image/jpeg")


def test_transparency_becomes_white():
    picture = images.read_image(io.BytesIO(image_bytes("PNG", "RGBA", (4, 4), (0, 0, 0, 0))), max_pixels=LIMIT)
    assert picture.pixels.getpixel((0, 0)) == (255, 255, 255)


def test_palette_with_transparency_becomes_white():
    image = Image.new("P", (4, 4), 0)
    image.putpalette([0, 0, 0, 255, 0, 0])
    buffer = io.BytesIO()
    image.save(buffer, "PNG", transparency=0)
    picture = images.read_image(io.BytesIO(buffer.getvalue()), max_pixels=LIMIT)
    assert picture.pixels.getpixel((0, 0)) == (255, 255, 255)


def test_sixteen_bit_grey_is_scaled_not_clipped():
    picture = images.read_image(io.BytesIO(image_bytes("PNG", "I;16", (4, 4), 32768)), max_pixels=LIMIT)
    assert picture.pixels.getpixel((0, 0)) == (128, 128, 128)


def test_exif_orientation_is_applied():
    wide = Image.new("RGB", (60, 20), "red")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    buffer = io.BytesIO()
    wide.save(buffer, "JPEG", exif=exif)
    picture = images.read_image(io.BytesIO(buffer.getvalue()), max_pixels=LIMIT)
    assert picture.pixels.size == (20, 60)
    stored = Image.open(io.BytesIO(picture.file.data))
    assert stored.size == (20, 60)
    assert stored.getexif().get(0x0112) is None


def test_first_frame_of_an_animated_png():
    frames = [Image.new("RGB", (10, 10), color) for color in ("red", "blue")]
    buffer = io.BytesIO()
    frames[0].save(buffer, "PNG", save_all=True, append_images=frames[1:])
    picture = images.read_image(io.BytesIO(buffer.getvalue()), max_pixels=LIMIT)
    assert picture.pixels.getpixel((0, 0)) == (255, 0, 0)


@pytest.mark.parametrize(
    "data, code",
    [
        (b"just some text, not an image", "not_an_image"),
        (image_bytes("GIF", "P"), "unsupported_image_format"),
        (image_bytes("BMP", "RGB"), "unsupported_image_format"),
        (image_bytes("PNG", "RGB", (64, 64))[:-40], "damaged_image"),
    ],
    ids=["text", "gif", "bmp", "truncated-png"],
)
def test_not_a_png_or_jpeg_is_refused(data, code):
    with pytest.raises(InvalidImage) as refused:
        images.read_image(io.BytesIO(data), max_pixels=LIMIT)
    assert refused.value.code == code


@pytest.mark.parametrize("width, height", [(20000, 20000), (8000, 6000)])
def test_too_many_pixels_is_refused_before_decoding(width, height):
    with pytest.raises(ImageTooLarge) as refused:
        images.read_image(io.BytesIO(png_header_only(width, height)), max_pixels=LIMIT)
    assert refused.value.code == "image_too_large"


def test_a_file_over_the_byte_limit_is_refused():
    data = image_bytes("PNG", size=(200, 200))
    with pytest.raises(ImageTooLarge) as refused:
        images.read_image(io.BytesIO(data), max_pixels=LIMIT, max_bytes=len(data) - 1)
    assert refused.value.code == "file_too_large"
    assert images.read_image(io.BytesIO(data), max_pixels=LIMIT, max_bytes=len(data)).pixels.size == (200, 200)
