"""Whatever a client sends, the answer is 2xx or a 4xx that says why, and a refusal stores nothing."""

import io
import os
import struct
import zlib

import pytest
from PIL import Image, ImageCms

from conftest import FakeAnswerer, FakeCaptioner, image_bytes, stored_files
from hf_client import HFClient
from test_app import upload


def chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def with_chunk(png: bytes, tag: bytes, data: bytes) -> bytes:
    """The PNG with one more chunk right after its header chunk."""
    return png[:33] + chunk(tag, data) + png[33:]


def png_bomb(side: int) -> bytes:
    """A real greyscale PNG of side x side black pixels: a few hundred KB that decode to side² bytes."""
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    compressor, row, parts = zlib.compressobj(9), b"\0" * (side + 1), []
    for _ in range(side):
        parts.append(compressor.compress(row))
    parts.append(compressor.flush())
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b"")


def srgb_profile() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def swapped_primaries_profile() -> bytes:
    """An RGB profile whose red and green primaries are sRGB's green and red: its red is sRGB's green."""
    data = bytearray(srgb_profile())
    (count,) = struct.unpack(">I", data[128:132])
    tags = {bytes(data[at : at + 4]): at for at in range(132, 132 + 12 * count, 12)}
    red, green = tags[b"rXYZ"], tags[b"gXYZ"]
    data[red + 4 : red + 12], data[green + 4 : green + 12] = data[green + 4 : green + 12], data[red + 4 : red + 12]
    return bytes(data)


def animated(fmt: str) -> bytes:
    frames = [Image.new("RGB", (16, 16), color) for color in ("red", "blue")]
    buffer = io.BytesIO()
    frames[0].save(buffer, fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buffer.getvalue()


BIG = 10 * 1024 * 1024


@pytest.mark.parametrize(
    "data, status, code",
    [
        (image_bytes("JPEG", "CMYK", color=(0, 255, 255, 0)), 201, None),
        (image_bytes("PNG", "I;16", color=40000), 201, None),
        (image_bytes("PNG", "P", color=3, transparency=3), 201, None),
        (image_bytes("JPEG", icc_profile=srgb_profile() + os.urandom(BIG)), 201, None),
        (with_chunk(image_bytes(), b"eXIf", b"MM\x00*\x00\x00\x00\x08" + os.urandom(BIG)), 201, None),
        (with_chunk(image_bytes(), b"iCCP", b"p\x00\x00" + zlib.compress(srgb_profile() + os.urandom(BIG))),
         201, None),  # a profile past any real one's size is dropped; the pixels are kept
        (png_bomb(15_000), 413, "image_too_large"),
        (image_bytes("JPEG", size=(300, 200))[:700], 400, "damaged_image"),
        (animated("GIF"), 400, "unsupported_image_format"),
        (animated("WEBP"), 400, "unsupported_image_format"),
    ],
    ids=["cmyk-jpeg", "16-bit-png", "palette-transparency", "10MB-icc-jpeg", "10MB-exif-png", "10MB-iccp-png",
         "png-bomb", "truncated-jpeg", "animated-gif", "animated-webp"],
)
@pytest.mark.filterwarnings("ignore:Tag data larger than file")  # Pillow, reading the random EXIF block
def test_odd_images_are_stored_or_refused_clearly(make_app, data_dir, data, status, code):
    captioner = FakeCaptioner()
    response = upload(make_app(captioner=captioner).test_client(), data, name="odd.png")
    assert response.status_code == status, response.get_json()
    if status == 201:
        assert captioner.calls == [("RGB", captioner.calls[0][1], None)]
        assert len(stored_files(data_dir)) == 2  # the image and the history
    else:
        assert response.get_json()["code"] == code and response.get_json()["error"]
        assert captioner.calls == [] and stored_files(data_dir) == []


def test_two_files_in_one_upload_are_refused(make_app, data_dir):
    client = make_app().test_client()
    files = [(io.BytesIO(image_bytes()), "a.png"), (io.BytesIO(image_bytes()), "b.png")]
    response = client.post("/upload", data={"image": files}, content_type="multipart/form-data")
    assert response.status_code == 400 and response.get_json()["code"] == "too_many_files"
    assert stored_files(data_dir) == []


def test_a_caption_prompt_longer_than_the_caption_is_refused_before_decoding(client, data_dir):
    response = upload(client, prompt=" ".join(["a"] * 29))
    assert response.status_code == 400 and response.get_json()["code"] == "prompt_too_long"
    assert stored_files(data_dir) == []
    assert upload(client, prompt=" ".join(["a"] * 5)).status_code == 201


@pytest.mark.parametrize(
    "question, status, code",
    [
        ("\ud800 what?", 400, "invalid_question"),
        ("what\x00 is it?", 400, "invalid_question"),
        ("x" * 2000, 400, "question_too_long"),
        (" \t\n ", 400, "missing_question"),
        ("ما هذا؟ 😀👍🏽 שלום", 200, None),
    ],
    ids=["lone-surrogate", "nul", "2000-chars", "whitespace", "rtl-and-emoji"],
)
def test_odd_questions(client, data_dir, question, status, code):
    image_id = upload(client).get_json()["image_id"]
    before = (data_dir / "history.json").read_bytes()
    response = client.post("/question", json={"question": question, "image_id": image_id})
    assert response.status_code == status
    if code:
        assert response.get_json()["code"] == code
        assert (data_dir / "history.json").read_bytes() == before
    else:
        assert response.get_json()["question"] == question and isinstance(response.get_json()["answer"], str)


def test_a_lone_surrogate_in_a_description_never_reaches_the_paid_api(make_app, data_dir, fake_api):
    app = make_app()
    app.extensions["hf_client"] = HFClient(["hf_hostileAAAAAAAA1111"], "some/model", provider="hf-inference",
                                           router_url=fake_api.url)
    response = app.test_client().post("/generate", json={"description": "a cat \udfff"})
    assert response.status_code == 400 and response.get_json()["code"] == "invalid_description"
    assert fake_api.requests == [] and stored_files(data_dir) == []


@pytest.mark.parametrize("body", ["[" * 100_000, "{\"a\":" * 100_000, "\"\\ud800\"", "NaN"])
def test_json_bodies_that_are_not_objects_of_fields(make_app, body):
    response = make_app().test_client().post("/question", data=body, content_type="application/json")
    assert response.status_code == 400 and response.get_json()["code"] == "invalid_json"


@pytest.mark.parametrize("query", ["limit=٣", "limit=1_0", "offset=１", "limit=%2B", "offset=0x10",
                                   "limit=" + "9" * 5000])
def test_paging_takes_only_ascii_digits(make_app, query):
    response = make_app().test_client().get(f"/history?{query}")
    assert response.status_code == 400 and response.get_json()["code"].startswith("invalid_")


@pytest.mark.parametrize("value", ["nan", "inf", "-Infinity", "7,5", "٧"])
def test_decimal_fields_take_only_ascii_numbers(make_app, value, fake_api):
    app = make_app()
    app.extensions["hf_client"] = HFClient(["hf_hostileAAAAAAAA1111"], "some/model", provider="hf-inference",
                                           router_url=fake_api.url)
    response = app.test_client().post("/generate", data={"description": "a cat", "guidance_scale": value})
    assert response.status_code == 400 and response.get_json()["code"] == "invalid_guidance_scale"
    assert fake_api.requests == []


def stored_image(data_dir, body) -> Image.Image:
    return Image.open(data_dir / "uploads" / os.path.basename(body["image_url"]))


def test_a_stored_jpeg_keeps_no_gps_comment_or_profile(make_app, data_dir):
    exif = Image.Exif()
    exif.get_ifd(0x8825)[2] = (52.0, 31.0, 12.0)  # GPSLatitude
    data = image_bytes("JPEG", color=(200, 30, 30), exif=exif, comment=b"at home, 12 Elm St",
                       icc_profile=srgb_profile())
    body = upload(make_app(captioner=FakeCaptioner(), answerer=FakeAnswerer()).test_client(), data,
                  name="p.jpg").get_json()
    with stored_image(data_dir, body) as stored:
        assert "exif" not in stored.info and "comment" not in stored.info and "icc_profile" not in stored.info
        assert not stored.getexif()
    raw = (data_dir / "uploads" / os.path.basename(body["image_url"])).read_bytes()
    assert b"Elm St" not in raw and b"Exif" not in raw


def test_a_stored_png_keeps_no_text_or_exif(make_app, data_dir):
    png = with_chunk(image_bytes(), b"tEXt", b"Location\x0012 Elm St")
    body = upload(make_app().test_client(), png).get_json()
    with stored_image(data_dir, body) as stored:
        assert stored.info == {} or set(stored.info) <= {"dpi"}
    assert b"Elm St" not in (data_dir / "uploads" / os.path.basename(body["image_url"])).read_bytes()


def test_colours_are_converted_to_srgb_through_the_images_profile(make_app, data_dir):
    data = image_bytes("PNG", color=(255, 0, 0), icc_profile=swapped_primaries_profile())
    body = upload(make_app().test_client(), data).get_json()
    with stored_image(data_dir, body) as stored:
        red, green, blue = stored.getpixel((0, 0))
        assert green > 200 and red < 60 and blue < 60
