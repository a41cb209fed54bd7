"""Decode and preprocess images: the ONE implementation shared by training and the runtime.

``decode`` turns a path, encoded bytes or an array into a uint8 HxWxC array (C is 1 or 3, RGB order),
upright (EXIF orientation applied), with alpha composited over black, refusing images above a pixel
limit before anything big is allocated. ``preprocess`` turns that into the float32 CHW network input
described by a :class:`~ganaudit.core.spec.PreprocessSpec`. Every failure raises
:class:`~ganaudit.core.errors.ImageDecodeError` with a human reason.

Core layer: imports only numpy, OpenCV, the standard library and ``ganaudit.core.errors`` / ``ganaudit.core.spec``.
"""

from __future__ import annotations

import math
import os
import re
import stat
import struct
from collections.abc import Iterable
from typing import Union

import cv2
import numpy as np

from .errors import ImageDecodeError
from .spec import PreprocessSpec

__all__ = [
    "DECODED_FORMATS",
    "check_header",
    "DEFAULT_MAX_PIXELS",
    "EXTRA_FORMATS_ENV",
    "OPT_IN_FORMATS",
    "IMAGE_EXTENSIONS",
    "Source",
    "decode",
    "image_size",
    "load",
    "native_crops",
    "native_regions",
    "preprocess",
    "preprocess_batch",
    "regions_to_input",
]

DEFAULT_MAX_PIXELS = 64_000_000
# native_regions enlarges an image smaller than the model size; past this many pixels it enlarges crop by crop.
MAX_ENLARGED_PIXELS = 4_000_000
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".gif"})
# Formats decoded by default: ganaudit reads their pixel size from the header, so the pixel limit holds before
# OpenCV allocates anything. Every other format is refused with an error naming it, except the opt-in ones
# (their header is read too) listed in the environment variable EXTRA_FORMATS_ENV, e.g. "PNM,HDR" or "all".
DECODED_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF")
OPT_IN_FORMATS = ("PNM", "PFM", "HDR", "JPEG2000")
EXTRA_FORMATS_ENV = "GANAUDIT_EXTRA_FORMATS"

Source = Union[str, os.PathLike, bytes, bytearray, memoryview, np.ndarray]

# ITU-R BT.601 luma, the weights OpenCV's RGB2GRAY uses.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# 0xFF followed by a byte that is a real marker: not stuffing (00), fill (FF) or a restart marker (D0-D7).
_JPEG_MARKER = re.compile(rb"\xff[^\x00\xff\xd0-\xd7]")
_JPEG_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
_MAX_BYTES_PATH = 4096
# Reading a file: the header is checked first; files bigger than any image within the pixel limit could be
# (16-bit RGBA, uncompressed, plus room for metadata) are refused unread.
_HEAD_BYTES = 1 << 16
_MAX_BYTES_PER_PIXEL = 8
_SLACK_BYTES = 64 << 20


def _quiet_opencv() -> None:
    """Stop OpenCV logging a warning to stderr for every bad file (we raise a clear error instead).

    Left alone when the user set ``OPENCV_LOG_LEVEL`` themselves.
    """
    if "OPENCV_LOG_LEVEL" in os.environ:
        return
    try:
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    except AttributeError:  # very old OpenCV builds
        pass


_quiet_opencv()


# --------------------------------------------------------------------------- header parsing


def _u16(d: bytes, off: int, endian: str) -> int:
    return struct.unpack_from(endian + "H", d, off)[0]


def _u32(d: bytes, off: int, endian: str) -> int:
    return struct.unpack_from(endian + "I", d, off)[0]


def _sniff(d: bytes) -> str | None:
    """The format name from the magic bytes, or None."""
    if d.startswith(_PNG_SIGNATURE):
        return "PNG"
    if d.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if d[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if d.startswith(b"BM"):
        return "BMP"
    if d[:4] == b"RIFF" and d[8:12] == b"WEBP":
        return "WEBP"
    if d[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "TIFF"
    if d[4:8] == b"ftyp":
        return "HEIF/AVIF"
    if d.startswith(b"\x00\x00\x00\x0cjP  ") or d.startswith(b"\xff\x4f\xff\x51"):
        return "JPEG2000"
    if len(d) > 2 and d[:1] == b"P" and d[2:3].isspace():
        if d[1:2] in (b"F", b"f"):
            return "PFM"
        if d[1:2] in b"1234567":
            return "PNM"
    if d.startswith((b"#?RADIANCE", b"#?RGBE")):
        return "HDR"
    if d.startswith(b"\x76\x2f\x31\x01"):
        return "OpenEXR"
    if d.startswith(b"\x59\xa6\x6a\x95"):
        return "Sun raster"
    return None


def _pnm_tokens(d: bytes, n: int) -> list[bytes]:
    """The first ``n`` whitespace-separated header tokens after a PNM/PFM magic, skipping # comments."""
    out: list[bytes] = []
    for line in d[2 : 2 + 4096].splitlines():
        out += line.split(b"#", 1)[0].split()
        if len(out) >= n:
            break
    return out[:n]


def _pnm_size(d: bytes) -> tuple[int, int] | None:
    if d[1:2] == b"7":  # PAM: "WIDTH w" and "HEIGHT h" lines
        keys = dict(line.split(None, 1) for line in d[3:4096].splitlines() if len(line.split(None, 1)) == 2)
        w, h = keys.get(b"WIDTH", b""), keys.get(b"HEIGHT", b"")
    else:
        tokens = _pnm_tokens(d, 2)
        if len(tokens) < 2:
            return None
        w, h = tokens
    return (int(w), int(h)) if w.strip().isdigit() and h.strip().isdigit() else None


def _hdr_size(d: bytes) -> tuple[int, int] | None:
    """Radiance HDR: header lines up to an empty line, then e.g. "-Y 8000 +X 16000" (height first)."""
    lines = d[:4096].split(b"\n")
    for i, line in enumerate(lines):
        if not line.strip() and i + 1 < len(lines):
            parts = lines[i + 1].split()
            if len(parts) != 4 or not parts[1].isdigit() or not parts[3].isdigit():
                return None
            dims = {parts[0][-1:]: int(parts[1]), parts[2][-1:]: int(parts[3])}
            return (dims[b"X"], dims[b"Y"]) if set(dims) == {b"X", b"Y"} else None
    return None


def _jpeg2000_size(d: bytes) -> tuple[int, int] | None:
    if d.startswith(b"\xff\x4f\xff\x51"):  # raw codestream: SIZ marker segment
        xsiz, ysiz, xo, yo = struct.unpack_from(">IIII", d, 8)
        return xsiz - xo, ysiz - yo
    at = d.find(b"ihdr", 0, _HEAD_BYTES)  # JP2 container: the image header box
    if at < 0:
        return None
    height, width = struct.unpack_from(">II", d, at + 4)
    return width, height


def _png_size(d: bytes) -> tuple[int, int] | None:
    if len(d) < 24 or d[12:16] != b"IHDR":
        return None
    return _u32(d, 16, ">"), _u32(d, 20, ">")


def _jpeg_size(d: bytes) -> tuple[int, int] | None:
    pos, n = 2, len(d)
    while pos + 4 <= n:
        if d[pos] != 0xFF:
            return None
        marker = d[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # standalone markers
            pos += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image / start of scan before any frame header
            return None
        if marker in _JPEG_SOF:
            if pos + 9 > n:
                return None
            height, width = _u16(d, pos + 5, ">"), _u16(d, pos + 7, ">")
            return (width, height) if height else None  # height 0 = defined later by DNL
        pos += 2 + _u16(d, pos + 2, ">")
    return None


def _gif_size(d: bytes) -> tuple[int, int] | None:
    return (_u16(d, 6, "<"), _u16(d, 8, "<")) if len(d) >= 10 else None


def _bmp_size(d: bytes) -> tuple[int, int] | None:
    if len(d) < 26:
        return None
    if _u32(d, 14, "<") == 12:  # OS/2 BITMAPCOREHEADER
        return _u16(d, 18, "<"), _u16(d, 20, "<")
    width, height = struct.unpack_from("<ii", d, 18)
    return abs(width), abs(height)  # negative height = top-down rows


def _webp_size(d: bytes) -> tuple[int, int] | None:
    if len(d) < 30:
        return None
    chunk = d[12:16]
    if chunk == b"VP8 " and d[23:26] == b"\x9d\x01\x2a":
        return _u16(d, 26, "<") & 0x3FFF, _u16(d, 28, "<") & 0x3FFF
    if chunk == b"VP8L" and d[20] == 0x2F:
        bits = _u32(d, 21, "<")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":
        return 1 + int.from_bytes(d[24:27], "little"), 1 + int.from_bytes(d[27:30], "little")
    return None


def _tiff_size(d: bytes) -> tuple[int, int] | None:
    e = "<" if d[:2] == b"II" else ">"
    big = _u16(d, 2, e) == 43
    try:
        if big:  # BigTIFF: 8-byte offsets and counts, 20-byte entries
            ifd = struct.unpack_from(e + "Q", d, 8)[0]
            count, first, step, value_at = struct.unpack_from(e + "Q", d, ifd)[0], ifd + 8, 20, 12
        else:
            ifd = _u32(d, 4, e)
            count, first, step, value_at = _u16(d, ifd, e), ifd + 2, 12, 8
        # A tag listed twice is malformed, and decoders differ in which copy they use: take the largest claim,
        # so a small second width cannot hide the large one a decoder reads.
        dims: dict[int, int] = {}
        for i in range(min(count, 4096)):
            off = first + i * step
            tag, typ = struct.unpack_from(e + "HH", d, off)
            if tag in (256, 257):
                fmt = {3: "H", 4: "I", 16: "Q"}.get(typ)
                if fmt is None:
                    return None
                dims[tag] = max(dims.get(tag, 0), struct.unpack_from(e + fmt, d, off + value_at)[0])
    except struct.error:  # header cut short
        return None
    return (dims[256], dims[257]) if len(dims) == 2 else None


_SIZE_READERS = {
    "PNG": _png_size,
    "JPEG": _jpeg_size,
    "GIF": _gif_size,
    "BMP": _bmp_size,
    "WEBP": _webp_size,
    "TIFF": _tiff_size,
    "PNM": _pnm_size,
    "PFM": lambda d: _pnm_size(d[:1] + b"1" + d[2:]),  # same two numbers after the magic
    "HDR": _hdr_size,
    "JPEG2000": _jpeg2000_size,
}


def allowed_formats() -> frozenset[str]:
    """The formats decode() decodes: DECODED_FORMATS plus the opt-in ones named in $GANAUDIT_EXTRA_FORMATS."""
    extra = {x.strip().upper() for x in os.environ.get(EXTRA_FORMATS_ENV, "").split(",") if x.strip()}
    if "ALL" in extra:
        extra = set(OPT_IN_FORMATS)
    return frozenset(DECODED_FORMATS) | (extra & set(OPT_IN_FORMATS))


def _check_format(fmt: str | None) -> None:
    if fmt is not None and fmt not in allowed_formats():
        hint = (
            f"or allow it with {EXTRA_FORMATS_ENV}={fmt} (its size is read from the header too)"
            if fmt in OPT_IN_FORMATS
            else "ganaudit does not decode it"
        )
        raise ImageDecodeError(
            f"{fmt} images are not accepted: ganaudit decodes {', '.join(DECODED_FORMATS)}, whose pixel size it "
            f"checks before decoding; convert the image to PNG, {hint}"
        )


def image_size(data: bytes | bytearray | memoryview) -> tuple[int, int] | None:
    """Read ``(width, height)`` from an encoded image's header, without decoding any pixels.

    Understands PNG, JPEG, GIF, BMP, WEBP (VP8, VP8L, VP8X) and TIFF (both byte orders, BigTIFF, first IFD),
    and the opt-in formats PNM (PBM/PGM/PPM/PAM), PFM, Radiance HDR and JPEG 2000 (codestream or JP2).
    Returns None for any other format, or when the header is cut short or unreadable.
    """
    d = data if isinstance(data, bytes) else bytes(data)
    reader = _SIZE_READERS.get(_sniff(d) or "")
    if reader is None:
        return None
    try:
        size = reader(d)
    except (struct.error, ValueError, KeyError):
        return None
    if size is None or size[0] <= 0 or size[1] <= 0:
        return None
    return size


# --------------------------------------------------------------------------- truncation checks


def _png_truncation(d: bytes) -> str | None:
    pos, n = 8, len(d)
    while pos + 8 <= n:
        length = _u32(d, pos, ">")
        if d[pos + 4 : pos + 8] == b"IEND" and pos + 12 + length <= n:
            return None
        pos += 12 + length
    return "truncated PNG: the data ends before the IEND chunk (the file was cut off)"


def _jpeg_truncation(d: bytes) -> str | None:
    """Walk the marker segments (skipping their payloads) and the entropy-coded data up to EOI."""
    pos, n = 2, len(d)
    while True:
        m = _JPEG_MARKER.search(d, pos)
        if m is None:
            break
        marker = d[m.start() + 1]
        if marker == 0xD9:
            return None
        if marker in (0x01, 0xD8):  # standalone
            pos = m.end()
            continue
        if m.end() + 2 > n:
            break
        pos = m.end() + _u16(d, m.end(), ">")
        if pos > n:
            break
    return "truncated JPEG: the data ends before the end-of-image marker (the file was cut off)"


def _webp_truncation(d: bytes) -> str | None:
    if len(d) < 12:
        return "truncated WEBP: the data ends inside the RIFF header"
    need = 8 + _u32(d, 4, "<")
    if len(d) < need:
        return f"truncated WEBP: the RIFF header promises {need} bytes but only {len(d)} are present"
    return None


_TRUNCATION_CHECKS = {"PNG": _png_truncation, "JPEG": _jpeg_truncation, "WEBP": _webp_truncation}


# --------------------------------------------------------------------------- EXIF orientation


def _exif_orientation(exif: bytes) -> int:
    """The EXIF Orientation tag (1-8) from a TIFF-structured EXIF block; 1 when absent or unreadable."""
    if exif.startswith(b"Exif\x00\x00"):
        exif = exif[6:]
    if exif[:2] == b"II":
        e = "<"
    elif exif[:2] == b"MM":
        e = ">"
    else:
        return 1
    try:
        ifd = _u32(exif, 4, e)
        for i in range(_u16(exif, ifd, e)):
            off = ifd + 2 + 12 * i
            tag, typ = struct.unpack_from(e + "HH", exif, off)
            if tag == 0x0112:
                value = _u16(exif, off + 8, e) if typ == 3 else _u32(exif, off + 8, e) if typ == 4 else 1
                return value if 1 <= value <= 8 else 1
    except struct.error:
        return 1
    return 1


def _jpeg_exif(d: bytes) -> bytes | None:
    """The APP1 EXIF payload of a JPEG (fallback for OpenCV builds without imdecodeWithMetadata)."""
    pos, n = 2, len(d)
    while pos + 4 <= n and d[pos] == 0xFF:
        marker = d[pos + 1]
        if marker in (0xD9, 0xDA):
            return None
        length = _u16(d, pos + 2, ">")
        if marker == 0xE1 and d[pos + 4 : pos + 10] == b"Exif\x00\x00":
            return d[pos + 10 : pos + 2 + length]
        pos += 2 + length
    return None


def _apply_orientation(img: np.ndarray, orientation: int) -> np.ndarray:
    """Turn stored pixels upright following EXIF orientation 1-8 (the same transform OpenCV applies)."""
    if orientation == 2:
        return cv2.flip(img, 1)
    if orientation == 3:
        return cv2.rotate(img, cv2.ROTATE_180)
    if orientation == 4:
        return cv2.flip(img, 0)
    if orientation == 5:
        return cv2.transpose(img)
    if orientation == 6:
        return cv2.rotate(img, cv2.ROTATE_90_CLOCKWISE)
    if orientation == 7:
        return cv2.rotate(cv2.transpose(img), cv2.ROTATE_180)
    if orientation == 8:
        return cv2.rotate(img, cv2.ROTATE_90_COUNTERCLOCKWISE)
    return img


# --------------------------------------------------------------------------- pixel normalisation


def _megapixels(n: int) -> str:
    mp = n / 1e6
    return (f"{mp:.2f}" if mp >= 1 else f"{mp:.6f}").rstrip("0").rstrip(".")


def _check_pixels(width: int, height: int, max_pixels: int | None) -> None:
    if max_pixels is not None and width * height > max_pixels:
        raise ImageDecodeError(
            f"image is {width}x{height} = {_megapixels(width * height)} MP, above the "
            f"{_megapixels(max_pixels)} MP limit; raise --max-pixels (max_pixels in Python) to allow it"
        )


def check_header(data: bytes | bytearray | memoryview, max_pixels: int | None) -> int:
    """The pixel count an encoded image's header declares (0 when unreadable: decode() will say why), after
    the checks decode() makes first: raises ImageDecodeError for a refused format or a count above ``max_pixels``."""
    d = data if isinstance(data, bytes) else bytes(data)
    _check_format(_sniff(d))
    size = image_size(d)
    if size is None:
        return 0
    _check_pixels(size[0], size[1], max_pixels)
    return size[0] * size[1]


def _to_uint8(arr: np.ndarray, strict_float: bool) -> np.ndarray:
    if not arr.dtype.isnative:  # big-endian data (e.g. from a FITS or TIFF reader)
        arr = arr.astype(arr.dtype.newbyteorder("="))
    dt = arr.dtype
    if dt == np.uint8:
        return arr
    if dt == np.bool_:
        return arr.astype(np.uint8) * np.uint8(255)
    if dt == np.uint16:
        # round(x / 257), exactly (no x / 257 falls on .5), without the 16 bytes per value of a uint32 copy.
        return cv2.convertScaleAbs(arr, alpha=1 / 257).reshape(arr.shape)
    if dt.kind == "f":
        if strict_float:
            if not np.isfinite(arr).all():
                raise ImageDecodeError("float image contains NaN or infinity")
            lo, hi = float(arr.min()), float(arr.max())
            if lo < -1e-4 or hi > 1 + 1e-4:
                raise ImageDecodeError(
                    f"float image values must be in [0, 1], got [{lo:.4g}, {hi:.4g}]; "
                    "scale it first (e.g. divide uint8-range data by 255)"
                )
        else:
            arr = np.nan_to_num(arr, nan=0.0, posinf=1.0, neginf=0.0)
        return np.rint(np.clip(arr, 0.0, 1.0) * 255.0).astype(np.uint8)
    raise ImageDecodeError(f"unsupported pixel type {dt}: use uint8, uint16, bool, or float in [0, 1]")


def _composite_over_black(arr: np.ndarray) -> np.ndarray:
    """Drop the last (alpha) channel of a uint8 image, blending the color over black."""
    color, alpha = arr[..., :-1], arr[..., -1:]
    if alpha.min() == 255:
        return color
    return ((color.astype(np.uint16) * alpha + 127) // 255).astype(np.uint8)


def _normalise(arr: np.ndarray, *, max_pixels: int | None = None, strict_float: bool = True) -> np.ndarray:
    """Any supported RGB(A)/gray array -> contiguous uint8 HxWxC, C in {1, 3}. Never modifies ``arr``."""
    if not isinstance(arr, np.ndarray):
        raise TypeError(
            f"expected a numpy array, got {type(arr).__name__}; use decode() or load() for paths and encoded bytes"
        )
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 2, 3, 4):
        raise ImageDecodeError(
            f"unsupported image array shape {arr.shape}: expected HxW, HxWx1, HxWx2 (gray + alpha), HxWx3 (RGB) "
            "or HxWx4 (RGBA)"
        )
    height, width = arr.shape[:2]
    if height == 0 or width == 0:
        raise ImageDecodeError(f"image has no pixels (shape {arr.shape})")
    _check_pixels(width, height, max_pixels)
    arr = _to_uint8(arr, strict_float)
    if arr.shape[2] in (2, 4):
        arr = _composite_over_black(arr)
    return np.ascontiguousarray(arr)


# --------------------------------------------------------------------------- decoding


MAX_SHOWN_CHARS = 200  # a path echoed in an error message is cut after this many characters


def shown(path: str | bytes) -> str:
    """A printable form of a path for messages: undecodable bytes as \\xNN escapes, cut when very long."""
    try:
        text = os.fsencode(path).decode("utf-8", "backslashreplace")
    except UnicodeError:  # a str holding lone surrogates that are not escaped bytes
        text = str(path).encode("utf-8", "backslashreplace").decode("utf-8")
    return text if len(text) <= MAX_SHOWN_CHARS else f"{text[:MAX_SHOWN_CHARS]}... ({len(text)} characters)"


_shown = shown


def max_file_bytes(max_pixels: int) -> int:
    """The largest file an image within ``max_pixels`` can be (a generous bound)."""
    return _MAX_BYTES_PER_PIXEL * max_pixels + _SLACK_BYTES


def check_file_size(n_bytes: int, max_pixels: int) -> None:
    """Refuse, unread, a file bigger than any image within the pixel limit could be (ImageDecodeError)."""
    if n_bytes > max_file_bytes(max_pixels):
        raise ImageDecodeError(
            f"file is {n_bytes / 1e6:.0f} MB, too large for an image within the "
            f"{_megapixels(max_pixels)} MP limit; raise --max-pixels (max_pixels in Python) to allow it"
        )


def _read_file(path: str | bytes, max_pixels: int | None) -> bytes:
    """The file's bytes; checks the header's pixel count (and the file size) before reading it all."""
    shown = _shown(path)
    try:
        st = os.stat(path)
        if stat.S_ISDIR(st.st_mode):
            raise ImageDecodeError(f"is a directory, not an image file: {shown}")
        if not stat.S_ISREG(st.st_mode):
            raise ImageDecodeError(f"not a regular file (device, pipe or socket): {shown}")
        with open(path, "rb") as f:
            data = f.read(_HEAD_BYTES)
            size = image_size(data)
            if size is not None:
                _check_pixels(size[0], size[1], max_pixels)
            if max_pixels is not None:
                check_file_size(st.st_size, max_pixels)
            data += f.read()
    except FileNotFoundError:
        broken = " (broken symbolic link)" if os.path.islink(path) else ""
        raise ImageDecodeError(f"file not found: {shown}{broken}") from None
    except PermissionError:
        raise ImageDecodeError(f"permission denied: {shown} (check the file's read permission)") from None
    except IsADirectoryError:
        raise ImageDecodeError(f"is a directory, not an image file: {shown}") from None
    except OSError as e:
        raise ImageDecodeError(f"could not read {shown}: {e.strerror or e}") from None
    except ValueError:  # NUL byte, or a str that cannot be encoded as a file name
        raise ImageDecodeError(f"invalid file name: {shown!r}") from None
    if not data:
        raise ImageDecodeError(f"file is empty (0 bytes): {shown}")
    return data


def _metadata_decode_works() -> bool:
    """Whether this OpenCV has imdecodeWithMetadata with the (buffer, flags) form (4.12 has another one)."""
    if not hasattr(cv2, "imdecodeWithMetadata"):
        return False
    try:
        probe = cv2.imencode(".png", np.zeros((1, 1), np.uint8))[1]
        return cv2.imdecodeWithMetadata(probe, cv2.IMREAD_UNCHANGED)[0] is not None
    except (cv2.error, TypeError, ValueError):
        return False


_METADATA_DECODE = _metadata_decode_works()


def _cv_decode(d: bytes, fmt: str | None) -> tuple[np.ndarray | None, int]:
    """OpenCV decode keeping depth, gray and alpha; returns (image or None, EXIF orientation)."""
    buf = np.frombuffer(d, dtype=np.uint8)
    exif: bytes | None = None
    try:
        if _METADATA_DECODE:
            img, types, blocks = cv2.imdecodeWithMetadata(buf, cv2.IMREAD_UNCHANGED)
            for kind, block in zip(types, blocks):
                if kind == cv2.IMAGE_METADATA_EXIF:
                    exif = np.asarray(block).tobytes()
        else:
            img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
            exif = _jpeg_exif(d) if fmt == "JPEG" else None
    except cv2.error as e:
        text = (getattr(e, "err", None) or str(e)).strip()
        reason = text.splitlines()[0] if text else "unknown OpenCV error"
        if "CV_IO_MAX_IMAGE" in text:
            reason = (
                "the image is above OpenCV's own ceiling OPENCV_IO_MAX_IMAGE_PIXELS="
                f"{os.environ.get('OPENCV_IO_MAX_IMAGE_PIXELS', '?')}; export a bigger value before starting to allow it"
            )
        raise ImageDecodeError(f"could not decode {fmt or 'image'} data: {reason}") from None
    if img is None or img.size == 0:
        return None, 1
    # IMREAD_UNCHANGED skips EXIF orientation; TIFF is the exception, its decoder orients by itself.
    orientation = _exif_orientation(exif) if exif and fmt != "TIFF" else 1
    return img, orientation


def _undecodable(d: bytes, fmt: str | None, what: str, hint: str) -> ImageDecodeError:
    if fmt is None:
        return ImageDecodeError(f"{what} is not a recognised image (starts with {d[:16]!r}){hint}")
    if fmt == "HEIF/AVIF":
        return ImageDecodeError(
            "could not decode HEIF/AVIF data: OpenCV reads AVIF at best, never HEIC; convert it to JPEG or PNG"
        )
    return ImageDecodeError(f"could not decode {fmt} data: the file is corrupt or uses a variant OpenCV cannot read")


def _decode_bytes(d: bytes, max_pixels: int | None, what: str, hint: str = "") -> np.ndarray:
    if not d:
        raise ImageDecodeError(f"{what} is empty (0 bytes)")
    fmt = _sniff(d)
    if fmt is None:
        raise _undecodable(d, fmt, what, hint)
    _check_format(fmt)
    size = image_size(d)
    check = _TRUNCATION_CHECKS.get(fmt)
    problem = check(d) if check else None
    if size is None:  # nothing is decoded without a known pixel count
        raise ImageDecodeError(problem or f"could not decode {fmt} data: its header holds no readable pixel size")
    _check_pixels(size[0], size[1], max_pixels)
    if problem:
        raise ImageDecodeError(problem)
    img, orientation = _cv_decode(d, fmt)
    if img is None:
        raise _undecodable(d, fmt, what, hint)
    _check_pixels(img.shape[1], img.shape[0], max_pixels)
    img = _apply_orientation(img, orientation)
    if img.ndim == 3 and img.shape[2] == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    elif img.ndim == 3 and img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2RGBA)
    out = _normalise(img, strict_float=False)
    if fmt == "PNG" and len(d) > 25 and d[25] == 4 and out.shape[2] == 3:
        out = np.ascontiguousarray(out[..., :1])  # gray+alpha PNG: OpenCV expands it to BGRA
    return out


def _path_hint(b: bytes) -> str:
    """For bytes that are not an image but look like a file name: how to pass a path. The file system is never
    consulted: bytes come from uploads, and whether a file exists is not the uploader's to learn."""
    looks_like_path = len(b) <= _MAX_BYTES_PATH and b"\x00" not in b and (
        b"/" in b or os.sep.encode() in b or os.path.splitext(b)[1].lower().decode("latin-1") in IMAGE_EXTENSIONS
    )
    return (
        "; bytes are always read as image data: to read a file, pass its path as a str or pathlib.Path "
        "(os.fsdecode turns a bytes path into one)"
        if looks_like_path else ""
    )  # fmt: skip


def decode(source: Source, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode an image to a uint8 HxWxC array, C in {1, 3}, RGB order.

    Parameters
    ----------
    source
        A path (str or os.PathLike), encoded image data (bytes, bytearray, memoryview: always data, never
        read as a path, so an upload cannot name a server file), or an array: HxW or HxWx1 (gray), HxWx2 (gray +
        alpha), HxWx3 (RGB), HxWx4 (RGBA); uint8, uint16, bool, or float in [0, 1], in either byte order.
    max_pixels
        Refuse images with more pixels than this (checked from the header, before decoding).
        None disables the limit.

    Returns an upright image (EXIF orientation applied) with alpha composited over black, 16-bit data
    scaled to 8 bits; grayscale sources keep one channel. Raises ImageDecodeError on any failure.
    """
    if isinstance(source, np.ndarray):
        return _normalise(source, max_pixels=max_pixels)
    if isinstance(source, bytes):
        return _decode_bytes(source, max_pixels, "data", _path_hint(source))
    if isinstance(source, (bytearray, memoryview)):
        return _decode_bytes(bytes(source), max_pixels, "data")
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        return _decode_bytes(_read_file(path, max_pixels), max_pixels, "file")
    raise TypeError(
        f"cannot decode a {type(source).__name__}: pass a path, encoded bytes, or a numpy array "
        "(for a PIL image use np.asarray(img))"
    )


# --------------------------------------------------------------------------- preprocessing


def _interpolation(height: int, width: int, size: int) -> int:
    return cv2.INTER_AREA if size < height or size < width else cv2.INTER_LINEAR


def preprocess(image: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Turn a decoded image into the network input: float32 CHW in [-1, 1], contiguous.

    Accepts decode()'s output or any array decode() accepts. Converts to ``spec.channels`` (RGB -> gray
    with BT.601 luma, gray -> RGB by replication), then resizes to ``spec.size`` square: ``stretch``
    resizes the whole image, ``center_crop`` first crops the centred largest square. Shrinking uses
    INTER_AREA (when either side shrinks), enlarging INTER_LINEAR. Values map as x / 127.5 - 1.
    """
    img = _normalise(image, max_pixels=None)
    height, width = img.shape[:2]
    if spec.fit == "center_crop" and height != width:
        side = min(height, width)
        top, left = (height - side) // 2, (width - side) // 2
        img = img[top : top + side, left : left + side]
        height = width = side
    s = spec.size
    if (height, width) != (s, s):
        img = cv2.resize(img, (s, s), interpolation=_interpolation(height, width, s))
        if img.ndim == 2:
            img = img[:, :, None]
    return _to_input(img, spec.channels)


def _to_input(img: np.ndarray, channels: int) -> np.ndarray:
    """uint8 HxWxC (C in {1, 3}) -> float32 CHW in [-1, 1] with ``channels`` channels."""
    x = img.astype(np.float32)
    if channels == 1 and x.shape[2] == 3:
        x = (x @ _LUMA)[:, :, None]
    elif channels == 3 and x.shape[2] == 1:
        x = np.repeat(x, 3, axis=2)
    out = x.transpose(2, 0, 1) / np.float32(127.5) - np.float32(1.0)
    np.clip(out, -1.0, 1.0, out=out)
    return np.ascontiguousarray(out, dtype=np.float32)


# --------------------------------------------------------------------------- native-resolution crops


def _crop_grid(height: int, width: int, size: int, n: int) -> list[tuple[int, int]]:
    """``n`` crop origins (top, left): an evenly spaced g x g grid (g = ceil(sqrt(n))) over the image,
    taken in order of distance to the centre (ties: top-left first). n=1 is the centre crop, n=4 the corners."""
    g = int(np.ceil(np.sqrt(n)))
    tops = np.linspace(0, height - size, g).round().astype(int) if g > 1 else [(height - size) // 2]
    lefts = np.linspace(0, width - size, g).round().astype(int) if g > 1 else [(width - size) // 2]
    cells = [(int(t), int(l)) for t in tops for l in lefts]
    cy, cx = (height - size) / 2, (width - size) / 2
    cells.sort(key=lambda tl: ((tl[0] - cy) ** 2 + (tl[1] - cx) ** 2, tl))
    return cells[:n]


def native_regions(
    image: np.ndarray, spec: PreprocessSpec, *, n: int | None = None, rng: np.random.Generator | None = None
) -> np.ndarray:
    """The crop policy of the generated-image head: ``n`` (default ``spec.native_crops``) uint8
    ``size x size`` crops of the image at its native scale, as an array [n, size, size, C].

    Large images are never downscaled (downscaling erases the up-sampling traces of generators). An image
    smaller than ``size`` on a side is enlarged (INTER_LINEAR, keeping its aspect ratio) until its short side
    is ``size``; a square image then gives exactly what :func:`preprocess` gives. Crops sit on a fixed grid
    (see ``_crop_grid``); with ``rng`` their origins are drawn uniformly instead (training).
    """
    img = _normalise(image, max_pixels=None)
    n = spec.native_crops if n is None else n
    if n < 1:
        raise ValueError("native_regions needs n >= 1 (the model spec has native_crops = 0: no generated head)")
    src_h, src_w = img.shape[:2]
    s = spec.size
    height, width = src_h, src_w
    if height < s or width < s:
        scale = s / min(height, width)
        width, height = max(s, int(round(width * scale))), max(s, int(round(height * scale)))
    if rng is not None:
        origins = [(int(rng.integers(0, height - s + 1)), int(rng.integers(0, width - s + 1))) for _ in range(n)]
    else:
        origins = _crop_grid(height, width, s, n)
    if (height, width) == (src_h, src_w):
        return np.stack([img[t : t + s, l : l + s] for t, l in origins])
    if height * width <= MAX_ENLARGED_PIXELS:
        big = cv2.resize(img, (width, height), interpolation=cv2.INTER_LINEAR).reshape(height, width, -1)
        return np.stack([big[t : t + s, l : l + s] for t, l in origins])
    # A thin image (e.g. 1 x 100000) would be enormous once enlarged: map each crop from the source instead.
    return np.stack([_enlarged_window(img, t, l, s, height / src_h, width / src_w) for t, l in origins])


def _enlarged_window(img: np.ndarray, top: int, left: int, s: int, sy: float, sx: float) -> np.ndarray:
    """The s x s window at (top, left) of ``img`` enlarged by (sy, sx), computed without enlarging all of it."""
    m = np.array([[1 / sx, 0, (left + 0.5) / sx - 0.5], [0, 1 / sy, (top + 0.5) / sy - 0.5]], np.float64)
    out = cv2.warpAffine(img, m, (s, s), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE)
    return out.reshape(s, s, -1)


def regions_to_input(regions: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """uint8 crops [n, size, size, C] -> float32 [n, spec.channels, size, size] in [-1, 1] (as preprocess)."""
    return np.stack([_to_input(r, spec.channels) for r in regions])


# An image this many times the model's size (short side) or more is also seen downscaled to the model's size.
SCALE_VIEW_MIN_RATIO = math.sqrt(2)


def head_regions(image: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Every uint8 crop [k, size, size, C] the generated-image head scores for one image (its logit is their mean).

    The ``spec.native_crops`` crops of :func:`native_regions`; with ``spec.scale_view``, an image whose short side
    is at least ``SCALE_VIEW_MIN_RATIO`` times the model's size adds as many crops of itself downscaled
    (INTER_AREA, aspect kept) to a short side of ``size``: a generated image that was enlarged after it was made
    is then also seen at the scale it was generated at.
    """
    img = _normalise(image, max_pixels=None)
    native = native_regions(img, spec)
    height, width = img.shape[:2]
    if not spec.scale_view or min(height, width) < SCALE_VIEW_MIN_RATIO * spec.size:
        return native
    f = spec.size / min(height, width)
    size = (max(spec.size, round(width * f)), max(spec.size, round(height * f)))
    small = cv2.resize(img, size, interpolation=cv2.INTER_AREA).reshape(size[1], size[0], -1)
    return np.concatenate([native, native_regions(small, spec)])


def stack_head_regions(regions: list[np.ndarray]) -> np.ndarray:
    """Stack several images' :func:`head_regions` [k, S, S, c] into one uint8 array [N, k, S, S, c]. Gray crops
    are replicated to RGB (exact) if any image is colour; an image without the scale view repeats its crops
    when others have it, which leaves the head's mean unchanged."""
    c = max(r.shape[-1] for r in regions)
    k = max(len(r) for r in regions)
    return np.stack([np.tile(r, (k // len(r), 1, 1, 1 if r.shape[-1] == c else c)) for r in regions])


def native_crops(image: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """The generated-image head's input for one image: float32 [k, C, size, size], the crops of
    :func:`head_regions`: the ONE crop policy, shared by head training and the runtime."""
    return regions_to_input(head_regions(image, spec), spec)


def preprocess_batch(images: Iterable[np.ndarray], spec: PreprocessSpec) -> np.ndarray:
    """Preprocess several images and stack them to float32 NCHW (N may be 0)."""
    rows = [preprocess(image, spec) for image in images]
    if not rows:
        return np.empty((0, spec.channels, spec.size, spec.size), dtype=np.float32)
    return np.stack(rows)


def load(source: Source, spec: PreprocessSpec, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """``preprocess(decode(source), spec)``: one image, ready for the network (float32 CHW)."""
    return preprocess(decode(source, max_pixels=max_pixels), spec)
