"""Image validation: what an upload must be before anything else sees it, and its re-encoding."""

import functools
import io
import logging
import os
import re
import struct
from dataclasses import dataclass

from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

import salvage
from errors import ImageTooLarge, InvalidImage

log = logging.getLogger(__name__)

FORMATS = {"PNG": ("image/png", ".png"), "JPEG": ("image/jpeg", ".jpg")}
MIME_TYPES = {extension: mime_type for mime_type, extension in FORMATS.values()}
# What people keep pictures as: a file named so is taken as an image by a batch job and the caption command, and
# one of a format other than PNG or JPEG fails with its reason, as an upload would, rather than being passed over.
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".webp", ".gif", ".bmp", ".tif", ".tiff",
                    ".heic", ".heif", ".avif"}
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


# Formats people send that are not PNG or JPEG, by the signature their files start with.
SIGNATURES = [
    (0, b"GIF87a", "GIF"), (0, b"GIF89a", "GIF"), (0, b"II*\x00", "TIFF"),
    (0, b"MM\x00*", "TIFF"), (0, b"%PDF-", "PDF"), (0, b"\xff\x0a", "JPEG XL"),
    (4, b"JXL \r\n\x87\n", "JPEG XL"), (4, b"jP  \r\n\x87\n", "JPEG 2000"), (0, b"\xffO\xffQ", "JPEG 2000"),
    (0, b"\x00\x00\x01\x00", "ICO"), (0, b"8BPS", "Photoshop (PSD)"), (0, b"II+\x00", "TIFF"),
    (0, b"MM\x00+", "TIFF"), (0, b"\x00\x00\x02\x00", "cursor (CUR)"),
]
# An SVG document, as the page tells one too: an optional BOM, XML declaration, comments and DOCTYPE, then <svg.
SVG_START = re.compile(rb"^(?:\xef\xbb\xbf)?\s*(?:<\?xml[^>]*>\s*)?(?:<!--.*?-->\s*|<!DOCTYPE[^>]*>\s*)*<svg[\s>]",
                       re.IGNORECASE | re.DOTALL)
# ISO media files (an ftyp box at 4): the brands that name a picture format.
ISO_BRANDS = {b"avif": "AVIF", b"avis": "AVIF", **dict.fromkeys(
    [b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"hevm", b"hevs", b"mif1", b"msf1"], "HEIC/HEIF")}
BMP_HEADER_SIZES = {struct.pack("<I", size) for size in (12, 16, 40, 52, 56, 64, 108, 124)}
HEAD_BYTES = 1024
# What Pillow raises on a file it cannot parse or decode (struct.error: a field cut short).
UNREADABLE = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error)
# What Pillow's EXIF reader raises on a block that is not EXIF (a Python bytes literal, no TIFF header ...).
UNREADABLE_EXIF = (*UNREADABLE, KeyError, TypeError, RecursionError)


def sniff(head: bytes) -> str | None:
    """The format a file's first bytes announce: "PNG", "JPEG", another format's name, or None."""
    if head.startswith(salvage.PNG_SIGNATURE):
        return "PNG"
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head[4:8] == b"ftyp":
        # The major brand, then (after the minor version) the compatible ones.
        (box_size,) = struct.unpack(">I", head[:4])
        brands = [head[8:12]] + [head[at : at + 4] for at in range(16, min(box_size, len(head)) - 3, 4)]
        named = [ISO_BRANDS[brand] for brand in brands if brand in ISO_BRANDS]
        return "AVIF" if "AVIF" in named else named[0] if named else "ISO media (MP4, MOV ...)"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "WebP"
    # "BM", reserved fields of zero, and one of the header sizes BMP's versions use: not any text that starts "BM".
    if head.startswith(b"BM") and head[6:10] == bytes(4) and head[14:18] in BMP_HEADER_SIZES:
        return "BMP"
    found = next((name for offset, magic, name in SIGNATURES if head[offset : offset + len(magic)] == magic), None)
    if found is None and SVG_START.match(head):
        return "SVG"
    if found is None and b"%PDF-" in head:  # a PDF may start with other bytes (PDF 32000-1, 7.5.2 and its notes)
        return "PDF"
    return found


def read_image(stream, *, max_pixels: int, max_bytes: int | None = None) -> Picture:
    """Decode a PNG or JPEG judged by its content: first frame, upright, sRGB, re-encoded with its pixels only.

    Metadata that cannot be read (a wrong CRC in an ancillary chunk, EXIF that is not EXIF, an unusable
    profile) is dropped with one warning in the log; the file is refused only when its pixels cannot be
    decoded. Raises InvalidImage (empty_file, unsupported_image_format, not_an_image, damaged_image) or
    ImageTooLarge (file_too_large, image_too_large).
    """
    size = stream.seek(0, os.SEEK_END)
    if size == 0:
        raise InvalidImage("the file is empty: choose the image again and upload it", code="empty_file")
    if max_bytes is not None and size > max_bytes:
        raise too_many_bytes(max_bytes)
    stream.seek(0)
    data, notes = stream.read(), []
    image_format = sniff(data[:HEAD_BYTES])
    if image_format not in FORMATS:
        raise unsupported(image_format)
    # Pillow only warns between its own limit and twice that; below the lower of the two
    # limits is the only size accepted, so its warning always ends in a refusal.
    limit = min(max_pixels, Image.MAX_IMAGE_PIXELS or max_pixels)
    try:
        try:
            pixels = decode(data, image_format, limit, notes)
        except UNREADABLE as strict:
            notes.clear()
            salvaged = (salvage.png if image_format == "PNG" else salvage.jpeg)(data)
            pixels = decode(salvaged.data, image_format, limit, notes, salvaged.info)
            why = "" if isinstance(strict, UnidentifiedImageError) else f" ({strict})"
            broken = said(list(dict.fromkeys(salvaged.dropped)))
            notes.insert(0, f"a strict read refused it{why}; its pixels were read without its metadata{broken}")
            data = salvaged.data
        check_complete(image_format, data)
    except salvage.Damaged as damage:
        raise damaged(image_format, str(damage)) from damage
    except UNREADABLE as error:  # the pixels-only copy did not decode either
        raise damaged(image_format, "its pixel data is cut short or broken") from error
    if notes:
        log.warning("accepted an uploaded %s without what could not be read: %s", image_format,
                    "; ".join(notes))
    return encode(pixels, image_format)


def said(problems: list[str], most: int = 10) -> str:
    """What a log line says of the problems: the first few, and how many more (one line, however many)."""
    if not problems:
        return ""
    more = f" and {len(problems) - most} more" if len(problems) > most else ""
    return ": " + ", ".join(problems[:most]) + more


def check_complete(image_format: str, data: bytes) -> None:
    """Raise salvage.Damaged when the image data ends before its last rows, which Pillow fills in without a word."""
    if image_format == "PNG":
        salvage.check_png_complete(data)
    else:
        salvage.check_scan_complete(data)


def decode(data: bytes, image_format: str, limit: int, notes: list[str], info: dict | None = None) -> Image.Image:
    """The first frame's pixels, upright and in sRGB, without metadata; notes says what could not be read.

    info: metadata read apart from the file (a salvaged file's profile and EXIF), as Pillow keeps it.
    """
    try:
        # A multi-picture JPEG (MPO) from a phone is still a JPEG: Pillow's JPEG plugin opens both.
        with Image.open(io.BytesIO(data), formats=[image_format]) as image:
            width, height = image.size
            if width * height > limit:
                raise too_many_pixels(limit, f"{width}x{height} pixels")
            image.seek(0)
            image.load()
            image.info.update(info or {})
            orient(image, notes)
            pixels = to_srgb(image, notes)
            # Pixels only: no EXIF (GPS), comment, text or profile of the upload reaches the stored file.
            pixels.info = {}
            return pixels
    except Image.DecompressionBombError:
        raise too_many_pixels(limit) from None


def orient(image: Image.Image, notes: list[str]) -> None:
    """Turn the image upright by its EXIF orientation, in place; an orientation that cannot be read is absent."""
    try:
        # In place: a second full-size copy of a large upload is what memory cannot afford.
        ImageOps.exif_transpose(image, in_place=True)
    except UNREADABLE_EXIF as error:
        notes.append(f"its EXIF could not be read ({type(error).__name__}: {error}), so no orientation was applied")


def unsupported(image_format: str | None) -> InvalidImage:
    """The refusal of a file that is not PNG or JPEG, naming what it is when its signature tells."""
    if image_format is None:
        return InvalidImage("the file is not a PNG or JPEG image, nor another image format this server recognises: "
                            "upload a PNG or JPEG file", code="not_an_image")
    noun = "document" if image_format == "PDF" else "file" if image_format.startswith("ISO") else "image"
    article = "an" if image_format.startswith(("A", "I", "SVG")) else "a"  # as the names are read out loud
    return InvalidImage(f"the file is {article} {image_format} {noun}, and only PNG and JPEG images can be read here: "
                        "convert it to PNG or JPEG (any image viewer's Save As or Export does) and upload that",
                        code="unsupported_image_format")


def damaged(image_format: str, why: str) -> InvalidImage:
    """The refusal of a PNG or JPEG whose pixel data is missing or broken."""
    return InvalidImage(f"the file is a {image_format} image, but {why}, so its pixels cannot be decoded: "
                        "it may be damaged or only partly downloaded; save or export it again and upload that",
                        code="damaged_image")


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


def to_srgb(image: Image.Image, notes: list[str]) -> Image.Image:
    """8-bit sRGB: colours converted through the image's own ICC profile, when it has a usable one.

    Without one the pixels are taken to be sRGB already; notes says when a profile could not be used.
    """
    if not image.info.get("icc_profile"):
        return to_rgb(image)
    try:
        profile = ImageCms.ImageCmsProfile(io.BytesIO(image.info["icc_profile"]))
        space = profile.profile.xcolor_space.strip()
        if space == "CMYK" and image.mode == "CMYK":
            return ImageCms.profileToProfile(image, profile, srgb(), outputMode="RGB")
        if space == "RGB":
            return ImageCms.profileToProfile(to_rgb(image), profile, srgb(), outputMode="RGB")
    except (TypeError, OSError, ImageCms.PyCMSError) as error:
        notes.append(f"its ICC profile could not be used ({error}), so its colours were taken as sRGB")
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
