"""Image validation: what an upload must be before anything else sees it, and its re-encoding."""

import functools
import io
import os
from dataclasses import dataclass

from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

from errors import ImageTooLarge, InvalidImage

ALLOWED_EXTENSIONS = {".png", ".jpg", ".jpeg"}
FORMATS = {"PNG": ("image/png", ".png"), "JPEG": ("image/jpeg", ".jpg")}
MIME_TYPES = {extension: mime_type for mime_type, extension in FORMATS.values()}
JPEG_QUALITY = 95


@dataclass(frozen=True)
class Encoded:
    """An image file's bytes, checked to be a PNG or JPEG, with its type."""

    data: bytes
    mime_type: str
    extension: str


@dataclass(frozen=True)
class Picture:
    """A decoded RGB image and its re-encoded file, ready to store."""

    pixels: Image.Image
    file: Encoded


def check_filename(filename: str) -> None:
    """Refuse a file whose name says it is neither PNG nor JPEG."""
    extension = os.path.splitext(filename)[1].lower()
    if extension and extension not in ALLOWED_EXTENSIONS:
        raise InvalidImage(
            f"'{extension}' files are not accepted: upload a PNG or JPEG image (.png, .jpg, .jpeg)",
            code="unsupported_file_type",
        )


def read_image(stream, *, max_pixels: int, max_bytes: int | None = None) -> Picture:
    """Decode a PNG or JPEG judged by its content: first frame, upright, sRGB, re-encoded with its pixels only."""
    size = stream.seek(0, os.SEEK_END)
    if size == 0:
        raise InvalidImage("the file is empty: choose the image again and upload it", code="empty_file")
    if max_bytes is not None and size > max_bytes:
        raise too_many_bytes(max_bytes)
    stream.seek(0)
    # Pillow only warns between its own limit and twice that; below the lower of the two
    # limits is the only size accepted, so its warning always ends in a refusal.
    limit = min(max_pixels, Image.MAX_IMAGE_PIXELS or max_pixels)
    try:
        with Image.open(stream, formats=["PNG", "JPEG"]) as image:
            width, height = image.size
            if width * height > limit:
                raise too_many_pixels(limit, f"{width}x{height} pixels")
            # A multi-picture JPEG (MPO) from a phone is still a JPEG.
            image_format = "PNG" if image.format == "PNG" else "JPEG"
            image.seek(0)
            image.load()
            # In place: a second full-size copy of a large upload is what memory cannot afford.
            ImageOps.exif_transpose(image, in_place=True)
            pixels = to_srgb(image)
            # Pixels only: no EXIF (GPS), comment, text or profile of the upload reaches the stored file.
            pixels.info = {}
    except Image.DecompressionBombError:
        raise too_many_pixels(limit) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise InvalidImage(
            "the file is not a readable PNG or JPEG image (it may be another format, damaged, truncated "
            "or carry oversized metadata): upload a PNG or JPEG file",
            code="not_an_image",
        ) from error
    return encode(pixels, image_format)


def identify(data: bytes) -> tuple[str, str]:
    """The MIME type and file extension of bytes that decode fully as a PNG or JPEG; InvalidImage if not."""
    try:
        with Image.open(io.BytesIO(data), formats=["PNG", "JPEG"]) as image:
            image.load()
            return FORMATS["PNG" if image.format == "PNG" else "JPEG"]
    except Image.DecompressionBombError:
        raise too_many_pixels(Image.MAX_IMAGE_PIXELS) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise InvalidImage("the data is not a readable PNG or JPEG image", code="not_an_image") from error


def too_many_bytes(limit: int) -> ImageTooLarge:
    """The refusal of a file over the byte limit."""
    return ImageTooLarge(f"the file is larger than {limit // 2**20} MB: upload a smaller image",
                         code="file_too_large")


def too_many_pixels(limit: int, size: str = "too many pixels") -> ImageTooLarge:
    """The refusal of an image over the pixel cap, checked before decoding."""
    return ImageTooLarge(
        f"the image has {size}, more than the limit of {limit:,} pixels: upload a smaller image",
        code="image_too_large",
    )


@functools.cache
def srgb() -> ImageCms.ImageCmsProfile:
    """The sRGB profile stored images are in."""
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


def to_srgb(image: Image.Image) -> Image.Image:
    """8-bit sRGB: colours converted through the image's own ICC profile, when it has a usable one."""
    try:
        profile = ImageCms.ImageCmsProfile(io.BytesIO(image.info["icc_profile"]))
        space = profile.profile.xcolor_space.strip()
        if space == "CMYK" and image.mode == "CMYK":
            return ImageCms.profileToProfile(image, profile, srgb(), outputMode="RGB")
        if space == "RGB":
            return ImageCms.profileToProfile(to_rgb(image), profile, srgb(), outputMode="RGB")
    except (KeyError, TypeError, OSError, ImageCms.PyCMSError):
        pass  # no profile, or one that cannot be used: the pixels are taken to be sRGB already
    return to_rgb(image)


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PNG/JPEG mode to 8-bit RGB (an RGB image as it is); transparency becomes a white background."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        # 16-bit grey: scale to 8 bits instead of letting values above 255 clip to white.
        image = image.convert("I").point(lambda value: value / 256).convert("L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        background = Image.new("RGB", image.size, "white")
        background.paste(image.convert("RGBA"), mask=image.convert("RGBA").getchannel("A"))
        return background
    return image.convert("RGB")


def encode(pixels: Image.Image, image_format: str) -> Picture:
    """Re-encode in the upload's own format, without its metadata."""
    mime_type, extension = FORMATS[image_format]
    buffer = io.BytesIO()
    if image_format == "PNG":
        pixels.save(buffer, "PNG", optimize=False, compress_level=6)
    else:
        pixels.save(buffer, "JPEG", quality=JPEG_QUALITY)
    return Picture(pixels, Encoded(buffer.getvalue(), mime_type, extension))
