"""Pixels-only copies of PNG and JPEG files whose metadata a strict parser refuses.

Browsers show a PNG whose pixel-density chunk has a wrong CRC, or a JPEG whose EXIF is not EXIF,
because the formats let a decoder drop what it cannot use: the PNG specification (W3C PNG, 3rd
edition, 13.1 "Error handling") has a decoder ignore an ancillary chunk with a CRC error and refuse
a critical one, and JPEG's APPn and COM segments (ITU T.81, B.2.4.5 and B.2.4.6) are for
applications, never needed to decode. These functions copy what decodes the pixels and nothing
else; the colour profile and the EXIF block are handed back beside the copy when they can be read,
so that colours and orientation survive. Damage to the pixels' own parts raises Damaged.

The other way round, Pillow fills the rows after image data that ends early with black or grey without
a word; check_png_complete and check_scan_complete tell such a file from a whole one.
"""

import struct
import zlib
from dataclasses import dataclass, field

import simplejpeg

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# The chunks that make the pixels: the header, palette and data, and tRNS (transparency is pixels too).
PNG_PIXEL_CHUNKS = {b"IHDR", b"PLTE", b"IDAT", b"IEND", b"tRNS"}
PNG_END = struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))
PNG_XMP_KEYWORD = b"XML:com.adobe.xmp\x00"
MAX_PROFILE_BYTES = 4 * 2**20  # far above any real ICC profile; a larger one is a zlib bomb, not colours

# JPEG segments kept: what decodes the pixels, with JFIF and Adobe's APP14 (its colour transform
# tells libjpeg how to read three- and four-channel data).
JPEG_START, JPEG_END, JPEG_SCAN, JPEG_COMMENT = 0xD8, 0xD9, 0xDA, 0xFE
JPEG_APP0, JPEG_APP1, JPEG_APP2, JPEG_APP14 = 0xE0, 0xE1, 0xE2, 0xEE
JPEG_STANDALONE = {0x01, *range(0xD0, 0xD8)}  # TEM and RST0-7 carry no length
JPEG_END_MARKER = b"\xff\xd9"
# Frame headers (SOF0-3, 5-7, 9-11, 13-15): every one but DHT (C4), JPG (C8) and DAC (CC).
JPEG_FRAMES = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}

EXIF_HEADER = b"Exif\x00\x00"
XMP_HEADER = b"http://ns.adobe.com/xap/1.0/\x00"
ICC_HEADER = b"ICC_PROFILE\x00"


class Damaged(Exception):
    """The parts of the file that make its pixels are missing or broken; the message says which."""


@dataclass
class Salvaged:
    """A pixels-only file, what of its metadata could be read (for Pillow's image.info), and what was broken."""

    data: bytes
    info: dict = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)


def png(data: bytes) -> Salvaged:
    """A PNG with only its pixel chunks; its iCCP profile, eXIf block and XMP in info when they can be read.

    Raises Damaged when IHDR or PLTE has a wrong CRC, a critical chunk is one no decoder knows (Apple's
    CgBI, say), a chunk runs past the end of the file before any image data, or there is no IDAT. IDAT's
    CRC is left to its zlib stream's own checksum, and IEND only ends the file.
    """
    kept, salvaged, position = [PNG_SIGNATURE], Salvaged(b""), len(PNG_SIGNATURE)
    seen_data = False
    while position + 12 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, position)
        body = data[position + 8 : position + 8 + length]
        end = position + 12 + length
        name = printable(kind)
        if end > len(data):
            if kind == b"IDAT":
                raise Damaged("its image data is cut short")
            if not seen_data:
                raise Damaged(f"its {name} chunk claims more bytes than the file holds, before any image data")
            salvaged.dropped.append(f"{name} (cut short)")
            break
        intact = struct.unpack_from(">I", data, end - 4)[0] == zlib.crc32(kind + body)
        critical = not kind[0] & 0x20
        if critical and kind not in PNG_PIXEL_CHUNKS:
            raise Damaged(f"it has a critical chunk no decoder reads ({name})")
        if kind in (b"IHDR", b"PLTE") and not intact:
            raise Damaged(f"its {name} chunk is damaged (wrong CRC)")
        if kind == b"IEND":
            break
        if kind == b"IDAT":
            seen_data = True
            kept.append(data[position:end])
        elif not intact:
            salvaged.dropped.append(f"{name} (wrong CRC)")
        elif kind == b"tRNS" and not transparency_fits(body, kept):
            salvaged.dropped.append("tRNS (the wrong length for its colour type)")
        elif kind in PNG_PIXEL_CHUNKS:
            kept.append(data[position:end])
        elif kind == b"iCCP":
            read_png_profile(body, salvaged)
        elif kind == b"eXIf":
            salvaged.info["exif"] = EXIF_HEADER + body
        elif kind == b"iTXt" and body.startswith(PNG_XMP_KEYWORD):
            read_png_xmp(body, salvaged)
        position = end
    if not seen_data:
        raise Damaged("it has no image data (no IDAT chunk)")
    salvaged.data = b"".join(kept) + PNG_END  # the pixels may all be there: the decoder says whether they are
    return salvaged


def transparency_fits(body: bytes, kept: list[bytes]) -> bool:
    """Whether a tRNS chunk is as long as the image's colour type has it (PNG 11.3.2.1); browsers ignore another."""
    header = next((chunk[8:-4] for chunk in kept if chunk[4:8] == b"IHDR"), b"")
    palette = next((len(chunk) - 12 for chunk in kept if chunk[4:8] == b"PLTE"), 0)
    if len(header) < 10:
        return False
    colour = header[9]
    return {0: len(body) == 2, 2: len(body) == 6, 3: 0 < len(body) <= palette // 3}.get(colour, False)


def printable(kind: bytes) -> str:
    """A chunk's type as a log line may show it: ASCII letters as they are, any other byte escaped."""
    return "".join(chr(byte) if 0x21 <= byte <= 0x7E else f"\\x{byte:02x}" for byte in kind)


def read_png_profile(body: bytes, salvaged: Salvaged) -> None:
    """An iCCP chunk's profile into salvaged.info, or a note of why it was dropped."""
    name_end = body.find(b"\x00")
    if name_end < 0 or body[name_end + 1 : name_end + 2] != b"\x00":  # 0 is the only compression method
        salvaged.dropped.append("iCCP (not a zlib-compressed profile)")
        return
    inflater = zlib.decompressobj()
    try:
        profile = inflater.decompress(body[name_end + 2 :], MAX_PROFILE_BYTES)
    except zlib.error:
        salvaged.dropped.append("iCCP (damaged compressed data)")
        return
    if inflater.unconsumed_tail:
        salvaged.dropped.append(f"iCCP (over {MAX_PROFILE_BYTES // 2**20} MB)")
        return
    salvaged.info["icc_profile"] = profile


def read_png_xmp(body: bytes, salvaged: Salvaged) -> None:
    """An uncompressed iTXt chunk's XMP into salvaged.info, as Pillow keeps it (its orientation counts)."""
    keyword_end = len(PNG_XMP_KEYWORD)
    compressed = body[keyword_end : keyword_end + 1] == b"\x01"
    language_end = body.find(b"\x00", keyword_end + 2)
    text_at = body.find(b"\x00", language_end + 1) + 1 if language_end >= 0 else 0
    if compressed or text_at <= 0:
        return  # compressed XMP is rare; without it only its orientation, which browsers ignore, is lost
    salvaged.info["XML:com.adobe.xmp"] = body[text_at:].decode("utf-8", "replace")


def jpeg(data: bytes) -> Salvaged:
    """A JPEG without its APPn and COM segments (JFIF's and Adobe's kept); ICC profile and EXIF in info.

    Raises Damaged when a segment before the scan is cut short or the file ends before its scan.
    """
    kept, salvaged, position = [data[:2]], Salvaged(b""), 2
    profile_parts: dict[int, bytes] = {}
    while position < len(data):
        if data[position] != 0xFF:
            position += 1  # stray bytes between segments: libjpeg skips them too, with a warning
            continue
        marker = data[position + 1] if position + 1 < len(data) else None
        if marker is None or marker == 0xFF:
            position += 1  # fill bytes before a marker
            continue
        if marker in (0x00, JPEG_START):
            position += 2  # not a segment here: skipped, as libjpeg skips it
            continue
        if marker == JPEG_END:
            raise Damaged("it ends before its image data")
        if marker == JPEG_SCAN:
            kept.append(data[position:])  # the entropy-coded data and every later segment, as they are
            break
        if marker in JPEG_STANDALONE:
            kept.append(data[position : position + 2])
            position += 2
            continue
        if position + 4 > len(data):
            raise Damaged("it ends before its image data")
        (length,) = struct.unpack_from(">H", data, position + 2)
        end = position + 2 + length
        if length < 2 or end > len(data):
            raise Damaged("it is cut short before its image data")
        body = data[position + 4 : end]
        if keeps_segment(marker, body):
            kept.append(data[position:end])
        elif marker == JPEG_APP1 and body.startswith(EXIF_HEADER) and "exif" not in salvaged.info:
            salvaged.info["exif"] = body
        elif marker == JPEG_APP1 and body.startswith(XMP_HEADER):
            salvaged.info["xmp"] = body[len(XMP_HEADER) :]
        elif marker == JPEG_APP2 and body.startswith(ICC_HEADER) and len(body) > len(ICC_HEADER) + 2:
            sequence = body[len(ICC_HEADER)]
            profile_parts[sequence] = body[len(ICC_HEADER) + 2 :]
        elif marker in (JPEG_APP0, JPEG_APP14) and body.startswith((b"JFIF\x00", b"Adobe")):
            salvaged.dropped.append(f"its {body[:5].rstrip(bytes(1)).decode()} header (cut short)")
        elif not (JPEG_APP0 <= marker <= 0xEF or marker == JPEG_COMMENT):
            kept.append(data[position:end])  # tables, frame header, restart interval: the decoder's own
        position = end
    else:
        raise Damaged("it ends before its image data")
    if not data.endswith(JPEG_END_MARKER):
        kept.append(JPEG_END_MARKER)  # whether the scan before it is whole, check_scan_complete says
        salvaged.dropped.append("no end marker (one added)")
    if profile_parts:
        if sorted(profile_parts) == list(range(1, len(profile_parts) + 1)):
            salvaged.info["icc_profile"] = b"".join(profile_parts[n] for n in sorted(profile_parts))
        else:
            salvaged.dropped.append("ICC profile (parts missing)")
    salvaged.data = b"".join(kept)
    return salvaged


# Adam7's passes: (first column, first row, column step, row step).
ADAM7 = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]
PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
INFLATE_STEP = 2**20  # inflated bytes counted a megabyte at a time, never held whole


def check_png_complete(data: bytes) -> None:
    """Raise Damaged when a PNG's image data inflates to fewer bytes than its rows need.

    Pillow leaves the rows after a zlib stream that ends early black, without a word; counting what
    the IDAT chunks inflate to (a megabyte at a time) tells. Call it on a PNG that Pillow decoded.
    """
    width, height, depth, colour, _, _, interlaced = struct.unpack_from(">IIBBBBB", data, 16)
    bits = depth * PNG_CHANNELS.get(colour, 4)
    passes = ADAM7 if interlaced else [(0, 0, 1, 1)]
    needed = sum(rows * (1 + (columns * bits + 7) // 8)
                 for columns, rows in ((-(-(width - x) // dx), -(-(height - y) // dy)) for x, y, dx, dy in passes)
                 if columns > 0 and rows > 0)
    inflater, inflated, position = zlib.decompressobj(), 0, len(PNG_SIGNATURE)
    while position + 8 <= len(data) and inflated < needed:
        length, kind = struct.unpack_from(">I4s", data, position)
        if kind == b"IDAT":
            pending = data[position + 8 : position + 8 + length]
            while pending and inflated < needed and not inflater.eof:
                try:
                    inflated += len(inflater.decompress(pending, INFLATE_STEP))
                except zlib.error:
                    raise Damaged("its image data is not a whole zlib stream") from None
                pending = inflater.unconsumed_tail
        position += 12 + length
    if inflated < needed:
        raise Damaged("its image data ends before its last rows")


def check_scan_complete(data: bytes) -> None:
    """Raise Damaged when a JPEG's image data ends early, though the file may look whole.

    Pillow's libjpeg fills what it has no data for without a word: grey rows after a scan that was
    cut and given an end marker, blurred blocks when a progressive file ends between its scans. So
    the scans' headers must cover every component's 64 coefficients to the last bit, and libjpeg-turbo
    through simplejpeg, in its strict mode, must read the scans to the end without a premature end
    ("Premature end of JPEG file", "premature end of data segment"), at an eighth of the size. A
    missing end marker alone is no damage: one is added before reading. Call it only on a JPEG whose
    pixel count was checked.
    """
    if not data.endswith(JPEG_END_MARKER):
        data += JPEG_END_MARKER
    if not scans_cover_every_coefficient(data):
        raise Damaged("its image data ends before its last scan")
    try:
        _, _, colour, _ = simplejpeg.decode_jpeg_header(data)
        space = "CMYK" if colour in ("CMYK", "YCCK") else "GRAY" if colour == "Gray" else "RGB"
        simplejpeg.decode_jpeg(data, colorspace=space, min_factor=8, strict=True)
    except ValueError as warning:
        if "premature end" in str(warning).lower():
            raise Damaged("its image data is cut short") from None
        # Any other warning (stray bytes between segments, say): Pillow decoded it, and that stands. A JPEG
        # carries no checksum, so a changed byte inside a scan shows as wrong pixels, as in a browser.


def scans_cover_every_coefficient(data: bytes) -> bool:
    """Whether the scans before the first end marker bring each component's 64 coefficients to full precision.

    A sequential scan brings its components' coefficients 0 to 63 at once; a progressive one a band of
    them (Ss to Se) to bit Al (ITU T.81, G.1.1), and the last of a band's scans reaches bit 0.
    """
    components: list[int] = []
    reached: dict[tuple[int, int], int] = {}  # (component, coefficient) -> the lowest bit a scan reached
    position = 2
    while (found := next_marker(data, position)) is not None:
        marker, at = found
        if marker == JPEG_END or at + 2 > len(data):
            break
        if marker in JPEG_STANDALONE:
            position = at
            continue
        (length,) = struct.unpack_from(">H", data, at)
        body = data[at + 2 : at + length]
        if marker in JPEG_FRAMES and len(body) >= 6:
            components = [body[6 + 3 * index] for index in range(body[5]) if 6 + 3 * index < len(body)]
        elif marker == JPEG_SCAN and body:
            count = body[0]
            if len(body) < 4 + 2 * count:
                break
            start, end, bits = body[1 + 2 * count], body[2 + 2 * count], body[3 + 2 * count] & 0x0F
            for component in body[1 : 1 + 2 * count : 2]:
                for coefficient in range(start, min(end, 63) + 1):
                    reached[component, coefficient] = min(reached.get((component, coefficient), 99), bits)
        position = at + length  # after a scan's header, its entropy-coded data: the search steps over it
    return bool(components) and all(reached.get((component, coefficient)) == 0
                                    for component in components for coefficient in range(64))


def next_marker(data: bytes, position: int) -> tuple[int, int] | None:
    """The next marker's code at or after position, and where its segment starts; None at the end.

    0xFF then 0 is a byte of entropy-coded data, and 0xFF then 0xFF a fill byte before a marker.
    """
    while (at := data.find(b"\xff", position)) >= 0 and at + 1 < len(data):
        if data[at + 1] not in (0x00, 0xFF):
            return data[at + 1], at + 2
        position = at + 1
    return None


def keeps_segment(marker: int, body: bytes) -> bool:
    """Whether an application segment stays: a whole JFIF header or Adobe's colour transform."""
    if marker == JPEG_APP0:
        return body.startswith(b"JFIF\x00") and len(body) >= 14
    if marker == JPEG_APP14:
        return body.startswith(b"Adobe") and len(body) >= 12
    return False
