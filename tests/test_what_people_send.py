"""What people really send: images with damaged metadata, any file name in any script, other formats named,
and a history file the app may not read. Every file is built here; uploads go over real HTTP on 127.0.0.1."""

import io
import logging
import os
import struct
import zlib

import pytest
import requests
from PIL import Image, ImageCms

import images
from conftest import FakeAnswerer, FakeCaptioner, image_bytes, stored_files
from errors import InvalidImage, SettingError
from servers import PYTHON, GUNICORN, Serving, free_port, start, stop, wait_until_up

LIMIT = 40_000_000


def chunk(kind: bytes, data: bytes, crc: int | None = None) -> bytes:
    """A PNG chunk, with its right CRC unless another is given."""
    crc = zlib.crc32(kind + data) if crc is None else crc
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def png_chunks(data: bytes) -> list[bytes]:
    """A PNG's chunks, each whole (length, type, data, CRC)."""
    chunks, position = [], 8
    while position < len(data):
        (length,) = struct.unpack_from(">I", data, position)
        chunks.append(data[position : position + 12 + length])
        position += 12 + length
    return chunks


def clean_png(size=(24, 16)) -> bytes:
    image = Image.new("RGB", size)
    image.putdata([(x * 10 % 256, y * 15 % 256, (x + y) * 7 % 256) for y in range(size[1]) for x in range(size[0])])
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def png_with(*extra: bytes, after_data: bool = False) -> bytes:
    """The clean PNG with chunks added after its header (or after its image data)."""
    header, *rest = png_chunks(clean_png())
    if after_data:
        return b"\x89PNG\r\n\x1a\n" + header + b"".join(rest[:-1]) + b"".join(extra) + rest[-1]
    return b"\x89PNG\r\n\x1a\n" + header + b"".join(extra) + b"".join(rest)


def exif_block(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()  # "Exif\0\0" and a TIFF header


def segment(marker: int, body: bytes) -> bytes:
    """A JPEG segment with its length."""
    return bytes([0xFF, marker]) + struct.pack(">H", len(body) + 2) + body


def clean_jpeg(**save) -> bytes:
    image = Image.open(io.BytesIO(clean_png())).convert(save.pop("mode", "RGB"))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90, **save)
    return buffer.getvalue()


def jpeg_with(*segments: bytes, replacing_jfif: bool = False) -> bytes:
    """The clean JPEG with segments added right after its start (or in place of its JFIF header)."""
    data = clean_jpeg()
    rest = data[2:]
    if replacing_jfif:
        (length,) = struct.unpack(">H", rest[2:4])
        rest = rest[2 + length :]
    return data[:2] + b"".join(segments) + rest


def pixels(data: bytes) -> bytes:
    return images.read_image(io.BytesIO(data), max_pixels=LIMIT).pixels.tobytes()


# 1. Damage confined to metadata: accepted, pixels as the clean file's, one warning.

PNG_METADATA_DAMAGE = {
    "pHYs-wrong-crc": png_with(chunk(b"pHYs", struct.pack(">IIB", 2835, 2835, 1), crc=0)),
    "iCCP-wrong-crc": png_with(chunk(b"iCCP", b"icc\0\0" + zlib.compress(b"not a profile"), crc=1)),
    "tEXt-wrong-crc": png_with(chunk(b"tEXt", b"Comment\0written by hand", crc=2)),
    "private-chunk-wrong-crc": png_with(chunk(b"prVt", b"an application's own data", crc=3)),
    "eXIf-python-bytes-literal": png_with(chunk(b"eXIf", repr(exif_block(6)).encode())),
    "eXIf-without-tiff-header": png_with(chunk(b"eXIf", b"\x00\x01\x02\x03 not a TIFF header at all")),
    "eXIf-wrong-crc": png_with(chunk(b"eXIf", exif_block(1)[6:], crc=4)),
    "iCCP-unknown-compression": png_with(chunk(b"iCCP", b"icc\0\x07" + zlib.compress(b"profile"))),
    "iCCP-damaged-zlib": png_with(chunk(b"iCCP", b"icc\0\0" + b"\x78\x9c not zlib")),
    "iCCP-not-a-profile": png_with(chunk(b"iCCP", b"icc\0\0" + zlib.compress(b"not a profile"))),
    "iCCP-20MB-bomb": png_with(chunk(b"iCCP", b"icc\0\0" + zlib.compress(bytes(20 * 2**20)))),
    "zTXt-20MB-bomb": png_with(chunk(b"zTXt", b"Comment\0\0" + zlib.compress(b"a" * 20 * 2**20))),
    "70-MB-of-text": png_with(*[chunk(b"tEXt", b"k\0" + b"a" * 2**20)] * 70),
    "pHYs-cut-short": png_with(chunk(b"pHYs", b"\x00\x01")),
    "gAMA-cut-short": png_with(chunk(b"gAMA", b"\x00")),
    "text-after-the-data-wrong-crc": png_with(chunk(b"tEXt", b"k\0v", crc=5), after_data=True),
    "no-IEND": clean_png()[:-12],
    "bytes-after-IEND": clean_png() + b"trailing bytes",
}

JPEG_METADATA_DAMAGE = {
    "exif-python-bytes-literal": jpeg_with(segment(0xE1, b"Exif\0\0" + repr(exif_block(6)).encode())),
    "exif-without-tiff-header": jpeg_with(segment(0xE1, b"Exif\0\0\x00\x01 not a TIFF header")),
    "exif-ifd-pointing-past-the-end": jpeg_with(segment(0xE1, b"Exif\0\0MM\x00*\xff\xff\xff\xf0")),
    "jfif-header-cut-short": jpeg_with(segment(0xE0, b"JFIF\0\x01"), replacing_jfif=True),
    "adobe-header-cut-short": jpeg_with(segment(0xEE, b"Adobe\0")),
    "icc-not-a-profile": jpeg_with(segment(0xE2, b"ICC_PROFILE\0\x01\x01not a profile")),
    "icc-parts-missing": jpeg_with(segment(0xE2, b"ICC_PROFILE\0\x02\x03part two of three")),
    "mpf-damaged": jpeg_with(segment(0xE2, b"MPF\0 not a multi-picture index")),
    "photoshop-damaged": jpeg_with(segment(0xED, b"Photoshop 3.0\x008BIM\x04")),
    "comment-binary": jpeg_with(segment(0xFE, bytes(range(256)))),
    "bytes-after-EOI": clean_jpeg() + b"trailing bytes",
}


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow's own word on the damaged MPF index
@pytest.mark.parametrize("name", list(PNG_METADATA_DAMAGE) + list(JPEG_METADATA_DAMAGE))
def test_damaged_metadata_keeps_the_pixels_and_is_logged_once(name, caplog):
    data = PNG_METADATA_DAMAGE.get(name) or JPEG_METADATA_DAMAGE[name]
    clean = clean_png() if name in PNG_METADATA_DAMAGE else clean_jpeg()
    with caplog.at_level(logging.WARNING, logger="images"):
        picture = images.read_image(io.BytesIO(data), max_pixels=LIMIT)
    assert picture.pixels.tobytes() == pixels(clean)  # no orientation read from EXIF that could not be read
    stored = Image.open(io.BytesIO(picture.file.data))
    assert stored.format == ("PNG" if name in PNG_METADATA_DAMAGE else "JPEG")
    assert not stored.info.get("exif") and not stored.info.get("icc_profile") and not getattr(stored, "text", {})
    # One line at most; what Pillow itself reads past without a word (the stored file drops it anyway) needs none.
    assert len([record for record in caplog.records if record.name == "images"]) <= 1


@pytest.mark.parametrize("name, said", [
    ("pHYs-wrong-crc", "pHYs (wrong CRC)"), ("private-chunk-wrong-crc", "prVt (wrong CRC)"),
    ("eXIf-python-bytes-literal", "its EXIF could not be read"), ("eXIf-without-tiff-header", "no orientation"),
    ("iCCP-20MB-bomb", "iCCP (over 4 MB)"), ("iCCP-not-a-profile", "its ICC profile could not be used"),
    ("70-MB-of-text", "Too much memory used in text chunks"),
])
def test_one_warning_says_what_was_dropped(name, said, caplog):
    with caplog.at_level(logging.WARNING, logger="images"):
        images.read_image(io.BytesIO(PNG_METADATA_DAMAGE[name]), max_pixels=LIMIT)
    [warning] = [record.getMessage() for record in caplog.records if record.name == "images"]
    assert warning.startswith("accepted an uploaded PNG without what could not be read") and said in warning


def test_readable_metadata_still_counts_after_a_damaged_chunk():
    # A wrong CRC elsewhere: the orientation and the profile that can be read are still applied.
    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    data = png_with(chunk(b"pHYs", b"\0" * 9, crc=0), chunk(b"iCCP", b"sRGB\0\0" + zlib.compress(profile)),
                    chunk(b"eXIf", exif_block(6)[6:]))
    picture = images.read_image(io.BytesIO(data), max_pixels=LIMIT)
    assert picture.pixels.size == (16, 24)  # turned by the EXIF orientation 6


def test_a_jpeg_with_a_damaged_header_keeps_its_orientation_and_colours():
    data = jpeg_with(segment(0xE0, b"JFIF\0\x01"), segment(0xE1, exif_block(6)), replacing_jfif=True)
    assert images.read_image(io.BytesIO(data), max_pixels=LIMIT).pixels.size == (16, 24)
    cmyk = clean_jpeg(mode="CMYK")
    assert pixels(cmyk[:2] + segment(0xE0, b"JFIF\0") + cmyk[2:]) == pixels(cmyk)  # Adobe's transform kept


def with_bad_crc(png: bytes, kind: bytes) -> bytes:
    """The PNG with a wrong CRC on its first chunk of that kind."""
    at = png.index(kind) - 4
    (length,) = struct.unpack_from(">I", png, at)
    return png[: at + 8 + length] + b"\0\0\0\0" + png[at + 12 + length :]


@pytest.mark.parametrize("mode, transparency", [("RGB", b"\0\0"), ("L", b"\0"), ("RGBA", b"\0\0")])
def test_a_transparency_chunk_of_the_wrong_length_is_dropped(mode, transparency):
    # Pillow refuses a tRNS chunk shorter than its colour type needs; browsers ignore it and show the pixels.
    image = Image.open(io.BytesIO(clean_png())).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    header, *rest = png_chunks(buffer.getvalue())
    data = b"\x89PNG\r\n\x1a\n" + header + chunk(b"tRNS", transparency) + b"".join(rest)
    assert pixels(data) == pixels(buffer.getvalue())


@pytest.mark.parametrize("kind", [b"IDAT", b"IEND"])
def test_a_wrong_crc_on_the_data_or_the_end_does_not_refuse_a_salvaged_png(kind):
    # IDAT's zlib stream has its own checksum and IEND only ends the file: neither refuses a file whose other chunk
    # sent it down the salvage path.
    data = with_bad_crc(png_with(chunk(b"pHYs", b"\0" * 9, crc=0)), kind)
    assert pixels(data) == pixels(clean_png())


def test_a_jpeg_without_its_end_marker_keeps_every_pixel():
    # Sizes and qualities at which libjpeg reads ahead past the end of the file, and at which it does not.
    for size, quality in [((24, 16), 90), ((86, 222), 27), ((640, 480), 75), ((1000, 700), 90)]:
        for progressive in (False, True):
            picture = Image.effect_noise(size, 50).convert("RGB")
            buffer = io.BytesIO()
            picture.save(buffer, "JPEG", quality=quality, progressive=progressive)
            whole = buffer.getvalue()
            assert pixels(whole[:-2]) == pixels(whole), (size, quality, progressive)


def progressive_cut_between_scans() -> list[bytes]:
    """A progressive JPEG cut right before each of its later scans, with and without an end marker."""
    buffer = io.BytesIO()
    Image.effect_noise((64, 48), 50).convert("RGB").save(buffer, "JPEG", progressive=True, quality=90)
    whole = buffer.getvalue()
    scans = [at for at in range(len(whole) - 1) if whole[at : at + 2] == b"\xff\xda"]
    return [cut for at in scans[1:] for cut in (whole[:at], whole[:at] + b"\xff\xd9")]


def test_a_progressive_jpeg_cut_between_its_scans_is_refused():
    # libjpeg says nothing of such a file and Pillow shows it blurred: its scans' headers tell.
    cuts = progressive_cut_between_scans()
    assert len(cuts) >= 10
    for data in cuts:
        with pytest.raises(InvalidImage) as refused:
            images.read_image(io.BytesIO(data), max_pixels=LIMIT)
        assert refused.value.code == "damaged_image"


def test_xmp_orientation_counts_on_both_paths():
    # Pillow turns an image by XMP's tiff:Orientation too; a damaged chunk elsewhere must not change that.
    xmp = chunk(b"iTXt", b"XML:com.adobe.xmp\0\0\0\0\0" + b'<x:xmpmeta><rdf:Description tiff:Orientation="6"/>'
                b"</x:xmpmeta>")
    strict = images.read_image(io.BytesIO(png_with(xmp)), max_pixels=LIMIT).pixels.size
    salvaged = images.read_image(io.BytesIO(png_with(xmp, chunk(b"pHYs", b"\0" * 9, crc=0))), max_pixels=LIMIT)
    assert strict == salvaged.pixels.size == (16, 24)
    jpeg_xmp = segment(0xE1, b"http://ns.adobe.com/xap/1.0/\0" + b'<x:xmpmeta tiff:Orientation="6"/>')
    assert pixels(jpeg_with(jpeg_xmp)) == pixels(jpeg_with(jpeg_xmp, segment(0xEE, b"Adobe\0")))


def test_a_warning_is_one_bounded_line_whatever_the_chunks_are_called(caplog):
    names = [bytes([0x61 + i // 26, 0x61 + i % 26]) + b"\r\n" for i in range(300)]
    data = png_with(*[chunk(name, b"", crc=0) for name in names])
    with caplog.at_level(logging.WARNING, logger="images"):
        assert pixels(data) == pixels(clean_png())
    [warning] = [record.getMessage() for record in caplog.records if record.name == "images"]
    assert "\r" not in warning and "\n" not in warning and "aa\\x0d\\x0a (wrong CRC)" in warning
    assert "and 290 more" in warning and len(warning) < 1000


# 1. Damage to the pixels themselves: refused, saying so.

def damaged_pixels() -> dict[str, bytes]:
    png = clean_png()
    header, *rest = png_chunks(png)
    data_at = png.index(b"IDAT") - 4
    jpeg = clean_jpeg()
    scan_at = jpeg.index(b"\xff\xda")
    raw_deflate = zlib.compressobj(wbits=-15)
    return {
        "png-data-cut-short": png[: data_at + 30],
        "png-data-not-zlib": png[:data_at] + chunk(b"IDAT", b"these are not pixels") + chunk(b"IEND", b""),
        "png-header-wrong-crc": b"\x89PNG\r\n\x1a\n" + header[:-4] + b"\0\0\0\0" + b"".join(rest),
        "png-no-data": b"\x89PNG\r\n\x1a\n" + header + chunk(b"IEND", b""),
        # Apple's iPhone-optimised PNG: raw deflate behind a critical chunk of its own, which browsers refuse too.
        "png-apple-cgbi": b"\x89PNG\r\n\x1a\n" + chunk(b"CgBI", b"\x50\x00\x20\x06") + header + chunk(
            b"IDAT", raw_deflate.compress(bytes(24 * 16 * 4 + 16)) + raw_deflate.flush()) + chunk(b"IEND", b""),
        "png-data-ends-early": b"\x89PNG\r\n\x1a\n" + header + chunk(b"IDAT", zlib.compress(bytes(8 * (1 + 24 * 3))))
        + chunk(b"IEND", b""),  # a whole zlib stream of half the rows, which Pillow would fill with black
        "png-chunk-past-the-end": png_with(chunk(b"tEXt", b"k\0v")[:4].replace(b"\0\0\0\x03", b"\xff\xff\xff\xff")
                                           + b"tEXtk\0v\0\0\0\0"),
        "jpeg-cut-in-its-data": jpeg[: scan_at + (len(jpeg) - scan_at) // 2],
        "jpeg-cut-then-ended": jpeg[: scan_at + (len(jpeg) - scan_at) // 2] + b"\xff\xd9",  # Pillow: grey rows
        "jpeg-cut-in-its-tables": jpeg[: scan_at // 2],
        "jpeg-headers-only": jpeg[:scan_at],
    }


@pytest.mark.parametrize("name", list(damaged_pixels()))
def test_damaged_pixels_are_refused_saying_so(name):
    with pytest.raises(InvalidImage) as refused:
        images.read_image(io.BytesIO(damaged_pixels()[name]), max_pixels=LIMIT)
    assert refused.value.code == "damaged_image", refused.value.message
    assert "no IDAT" not in refused.value.message or name == "png-no-data"
    assert ("PNG" if name.startswith("png") else "JPEG") in refused.value.message
    assert "damaged" in refused.value.message


# 2. The content decides, not the name.

OTHER_FORMATS = {
    "HEIC/HEIF": b"\0\0\0\x18ftypheic\0\0\0\0mif1heic" + bytes(64),
    "AVIF": b"\0\0\0\x1cftypavif\0\0\0\0avifmif1miaf" + bytes(64),
    "AVIF ": b"\0\0\0\x1cftypmif1\0\0\0\0mif1avifmiaf" + bytes(64),
    "WebP": image_bytes("WEBP"),
    "GIF": image_bytes("GIF", "P"),
    "TIFF": image_bytes("TIFF"),
    "BMP": image_bytes("BMP"),
    "PDF": b"%PDF-1.7\n1 0 obj\n<< /Type /Catalog >>\nendobj\n",
    "JPEG XL": b"\xff\x0a" + bytes(64),
    "JPEG 2000": b"\0\0\0\x0cjP  \r\n\x87\n" + bytes(64),
    "ICO": image_bytes("ICO", size=(16, 16)),
    "Photoshop (PSD)": b"8BPS\0\x01" + bytes(64),
    "ISO media (MP4, MOV ...)": b"\0\0\0\x18ftypisomheicisommp41" + bytes(64),  # "heic" is the minor version here
    "TIFF  ": b"II+\0\x08\0\0\0" + bytes(64),  # BigTIFF
    "PDF ": b"\r\n  %PDF-1.4\n",
    "SVG ": b"<!-- drawn by hand -->\n<svg viewBox='0 0 1 1'></svg>",
    "SVG": b'\xef\xbb\xbf<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg"/>',
}


@pytest.mark.parametrize("expected", list(OTHER_FORMATS))
def test_another_format_is_named_and_refused(expected):
    with pytest.raises(InvalidImage) as refused:
        images.read_image(io.BytesIO(OTHER_FORMATS[expected]), max_pixels=LIMIT)
    assert refused.value.code == "unsupported_image_format"
    article = "an" if expected.startswith(("A", "I", "SVG")) else "a"
    assert f"is {article} {expected.strip()} " in refused.value.message
    assert "convert it to PNG or JPEG" in refused.value.message


@pytest.mark.parametrize("data", [b"just some text", b"RIFF\0\0\0\0WAVEfmt ", bytes(100), b"BMW owners' notes",
                                  b"<!DOCTYPE html><html><body><svg></svg></body></html>"],
                         ids=["text", "wav", "zeros", "text-starting-BM", "html-with-an-svg"])
def test_what_no_signature_names_is_not_an_image(data):
    with pytest.raises(InvalidImage) as refused:
        images.read_image(io.BytesIO(data), max_pixels=LIMIT)
    assert refused.value.code == "not_an_image"


@pytest.fixture
def served(make_app):
    captioner = FakeCaptioner()
    with Serving(make_app(captioner=captioner, answerer=FakeAnswerer())) as serving:
        serving.captioner = captioner
        yield serving


def post_file(url: str, data: bytes, disposition: bytes, content_type: bytes = b"application/octet-stream"):
    """POST /upload with a multipart body written byte by byte, the part's Content-Disposition as given."""
    body = (b"--BOUNDARY\r\nContent-Disposition: form-data; name=\"image\"" + disposition + b"\r\nContent-Type: "
            + content_type + b"\r\n\r\n" + data + b"\r\n--BOUNDARY--\r\n")
    return requests.post(url + "/upload?include_image=0", data=body, timeout=30,
                         headers={"Content-Type": "multipart/form-data; boundary=BOUNDARY"})


@pytest.mark.parametrize("data, name, mime_type, extension", [
    (clean_jpeg(), "photo.jfif", "image/jpeg", ".jpg"),
    (clean_jpeg(), "IMG_0001.HEIC", "image/jpeg", ".jpg"),
    (clean_jpeg(), "scan", "image/jpeg", ".jpg"),
    (clean_png(), "picture.jpg", "image/png", ".png"),
    (clean_png(), "notes.txt", "image/png", ".png"),
    (PNG_METADATA_DAMAGE["pHYs-wrong-crc"], "density.png", "image/png", ".png"),
    (PNG_METADATA_DAMAGE["eXIf-python-bytes-literal"], "00001-1234.png", "image/png", ".png"),
], ids=["jfif", "heic-name", "no-extension", "png-as-jpg", "png-as-txt", "damaged-phys", "bytes-literal-exif"])
def test_a_png_or_jpeg_is_accepted_whatever_its_name(served, data_dir, data, name, mime_type, extension):
    response = post_file(served.url, data, f'; filename="{name}"'.encode())
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["mime_type"] == mime_type and body["original_name"] == name
    assert body["image_url"] == f"/uploads/{body['image_id']}{extension}"
    assert stored_files(data_dir) == ["history.json", f"uploads/{body['image_id']}{extension}"]
    served_file = requests.get(served.url + body["image_url"], timeout=10)
    assert served_file.headers["Content-Type"] == mime_type and Image.open(io.BytesIO(served_file.content)).format


@pytest.mark.parametrize("expected, name", [("HEIC/HEIF", "photo.jpg"), ("GIF", "picture.png"), ("WebP", "x.jpeg"),
                                            ("PDF", "scan.png"), ("AVIF", "photo")])
def test_another_format_is_named_whatever_its_name(served, data_dir, expected, name):
    response = post_file(served.url, OTHER_FORMATS[expected], f'; filename="{name}"'.encode(), b"image/jpeg")
    assert response.status_code == 400
    assert response.json()["code"] == "unsupported_image_format" and expected in response.json()["error"]
    assert served.captioner.calls == [] and stored_files(data_dir) == []


def test_damaged_pixels_are_refused_over_http(served, data_dir):
    response = post_file(served.url, damaged_pixels()["jpeg-cut-in-its-data"], b'; filename="cut.jpg"')
    assert response.status_code == 400 and response.json()["code"] == "damaged_image"
    assert served.captioner.calls == [] and stored_files(data_dir) == []


# 3. Names in every script.

@pytest.mark.parametrize("disposition, kept", [
    ('; filename="фото.jpg"'.encode(), "фото.jpg"),  # UTF-8, as browsers send it
    (b"; filename*=UTF-8''%D1%84%D0%BE%D1%82%D0%BE.jpg", "фото.jpg"),  # RFC 2231
    (b"; filename*=UTF-8''%E5%86%99%E7%9C%9F.jpg; filename=\"photo.jpg\"", "写真.jpg"),  # filename* wins
    (b"; filename=\"photo.jpg\"; filename*=UTF-8''%E5%86%99%E7%9C%9F.jpg", "写真.jpg"),
    (b"; filename*=iso-8859-1'fr'%E9t%E9.jpg", "été.jpg"),
    ("; filename=\"e\u0301te\u0301 \u0635\u0648\u0631\u0629.jpg\"".encode(),
     "\u00e9t\u00e9 \u0635\u0648\u0631\u0629.jpg"),
    (b'; filename="../../etc/passwd.jpg"', "passwd.jpg"),
    (b'; filename="C:\\\\Users\\\\me\\\\Pictures\\\\cat.jpg"', "cat.jpg"),
    ('; filename="invoice\u202egpj.exe"'.encode(), "invoicegpj.exe"),  # a right-to-left override removed
    ('; filename="a\u2066b\u2069c\u200f.jpg"'.encode(), "abc.jpg"),
    (b'; filename="tab\there.jpg"', "tabhere.jpg"),
    (("; filename=\"" + "\u540d" * 150 + ".jpeg\"").encode(), "\u540d" * 95 + ".jpeg"),
    (b"; filename=\"a.png\"; filename*=idna''%C3%A9.png", "a.png"),  # a charset that cannot decode it
    (b"; filename=\"a.png\"; filename*=punycode''%FF.png", "a.png"),
    (b"; filename=\"plain.png\"; filename*=bogus''abc.png", "plain.png"),  # a charset Python does not know
    (b"; filename=\"a; filename*=UTF-8''evil.png\"", "a; filename*=UTF-8''evil.png"),  # inside quotes: the name
    (b"; filename*=''", None),
    ("; filename=\"\u200b\ufeff\u2060\xad\U000e0041\"".encode(), None),  # nothing visible
    ("; filename=\"\u2800 \u115f\u3164\"".encode(), None),  # blanks that look like nothing
    ("; filename=\"photo\u200b\u2060.png\"".encode(), "photo.png"),  # invisible inside a name
    (("; filename=\"x" + "\U0001f1ef\U0001f1f5" * 60 + ".png\"").encode(), "x" + "\U0001f1ef\U0001f1f5" * 47 + ".png"),
    (("; filename=\"" + "\u0915\u094d\u0937" * 40 + ".png\"").encode(), "\u0915\u094d\u0937" * 32 + ".png"),
    (("; filename=\"" + "\U0001f468\u200d\U0001f469\u200d\U0001f467" * 40 + ".png\"").encode(),
     "\U0001f468\u200d\U0001f469\u200d\U0001f467" * 19 + ".png"),  # a family is not cut in two
    (b'; filename=".."', None),
    ('; filename="\u202e\u2066"'.encode(), None),
    (b'; filename=""', None),
])
def test_the_name_a_person_gave_is_kept_in_any_script(served, data_dir, disposition, kept):
    response = post_file(served.url, clean_jpeg(), disposition)
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["original_name"] == kept
    assert requests.get(f"{served.url}/images/{body['image_id']}", timeout=10).json()["original_name"] == kept
    assert stored_files(data_dir) == ["history.json", f"uploads/{body['image_id']}.jpg"]


# 6. A history the app may not read: one line, the setting, the path and the fix; a non-zero exit.

def without_file_permissions() -> list[str]:
    """A command prefix under which file permissions hold: root's override of them dropped, as a service user has."""
    if os.geteuid() != 0:
        return []
    return ["setpriv", "--inh-caps=-all", "--bounding-set=-dac_override,-dac_read_search"]


def app_settings(data, **extra) -> dict:
    return {"UPLOAD_FOLDER": str(data / "uploads"), "GENERATED_FOLDER": str(data / "uploads" / "generated"),
            "HISTORY_FILE": str(data / "history.json"), "SECRET_KEY": "test-secret", "CAPTION_MODEL": "./no-model",
            "VQA_MODEL": "./no-model", "PORT": str(free_port()), **extra}


def failed_start(command: list[str], env: dict, log_path) -> tuple[int, str]:
    process = start(without_file_permissions() + command, env, str(log_path))
    try:
        code = process.wait(120)
    finally:
        if process.poll() is None:
            stop(process)
    return code, log_path.read_text()


@pytest.mark.parametrize("server", ["python app.py", "gunicorn"])
@pytest.mark.parametrize("store", ["json", "sqlite"])
def test_a_history_the_app_may_not_read_stops_the_start_in_one_line(tmp_path, server, store):
    history = tmp_path / ("history.json" if store == "json" else "history.db")
    history.write_bytes(b'{"images": {}, "generations": {}}' if store == "json" else b"")
    history.chmod(0)
    env = app_settings(tmp_path, **({"DATABASE_URL": f"sqlite:///{history}"} if store == "sqlite" else {}))
    command = [PYTHON, "app.py"] if server == "python app.py" else [GUNICORN, "--bind", f"127.0.0.1:{env['PORT']}",
                                                                     "app:app"]
    code, log = failed_start(command, env, tmp_path / "start.log")
    assert code != 0, log
    assert "Traceback" not in log, log
    errors = [line for line in log.splitlines() if " ERROR app" in line or " ERROR __main__" in line]
    assert len(errors) == 1, log
    setting = "HISTORY_FILE" if store == "json" else "DATABASE_URL"
    assert setting in errors[0] and str(history) in errors[0] and "Permission denied" in errors[0]
    assert "chmod" in errors[0]


@pytest.mark.parametrize("kind", ["folder", "fifo"])
def test_a_history_that_is_no_file_stops_the_start_at_once(make_app, tmp_path, kind):
    path = tmp_path / "history.json"
    path.mkdir() if kind == "folder" else os.mkfifo(path)  # opening a FIFO to read would wait for a writer
    with pytest.raises(SettingError, match="HISTORY_FILE .* is not a file"):
        make_app(HISTORY_FILE=str(path))


def test_a_history_replaced_by_one_the_app_may_not_read_is_a_503(tmp_path):
    # Restored from a backup by another user, say: the running app serves 503, never a 500, until it can read it.
    env = app_settings(tmp_path)
    history = tmp_path / "history.json"
    history.write_text('{"images": {}, "generations": {}}')
    process = start(without_file_permissions() + [PYTHON, "app.py"], env, str(tmp_path / "app.log"))
    try:
        base = f"http://127.0.0.1:{env['PORT']}"
        wait_until_up(base + "/healthz", process)
        assert requests.get(base + "/history", timeout=10).status_code == 200
        restored = tmp_path / "restored.json"
        restored.write_text('{"images": {},  "generations": {}}')
        restored.chmod(0)
        os.replace(restored, history)
        refused = requests.get(base + "/history", timeout=10)
        assert refused.status_code == 503 and refused.json()["code"] == "storage_unreadable"
        assert str(tmp_path) not in refused.json()["error"]
        history.chmod(0o600)
        assert requests.get(base + "/history", timeout=10).status_code == 200
    finally:
        stop(process)
    assert "Traceback" not in (tmp_path / "app.log").read_text()
