"""Decode and preprocess: every source kind, every supported format, every failure mode."""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import textwrap
import time
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image

from ganaudit.core.errors import ImageDecodeError
from ganaudit.core.imaging import (
    EXTRA_FORMATS_ENV,
    DEFAULT_MAX_PIXELS,
    IMAGE_EXTENSIONS,
    decode,
    image_size,
    load,
    preprocess,
    preprocess_batch,
)
from ganaudit.core.spec import PreprocessSpec

from ._bombs import BOMBS, tiff_twice_width

RED, BLUE, GREEN = (255, 0, 0), (0, 0, 255), (0, 255, 0)


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def red_blue(width: int = 40, height: int = 20, mode: str = "RGB") -> Image.Image:
    """Left half red, right half blue."""
    im = Image.new("RGB", (width, height), RED)
    im.paste(BLUE, (width // 2, 0, width, height))
    return im.convert(mode)


def exif_with_orientation(value: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = value
    return exif.tobytes()


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_header_only(width: int, height: int) -> bytes:
    """PNG signature + a valid IHDR chunk (8-bit RGB) and nothing else."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr)


def tiff_header(width: int, height: int, endian: str, long_dims: bool) -> bytes:
    """A minimal TIFF: header + first IFD holding ImageWidth and ImageLength only."""
    mark = b"II" if endian == "<" else b"MM"
    typ = 4 if long_dims else 3
    entries = b""
    for tag, value in ((256, width), (257, height)):
        val = struct.pack(endian + "I", value) if long_dims else struct.pack(endian + "HH", value, 0)
        entries += struct.pack(endian + "HHI", tag, typ, 1) + val
    return mark + struct.pack(endian + "HI", 42, 8) + struct.pack(endian + "H", 2) + entries + b"\0\0\0\0"


# ----------------------------------------------------------------------------- formats and color


def test_rgb_png_decodes_in_rgb_order():
    img = decode(encode(red_blue(), "PNG"))
    assert img.shape == (20, 40, 3) and img.dtype == np.uint8
    assert tuple(img[0, 0]) == RED and tuple(img[0, -1]) == BLUE


def test_grayscale_png_and_jpeg_stay_one_channel():
    gray = np.tile(np.arange(0, 250, 10, dtype=np.uint8), (6, 1))
    out = decode(encode(Image.fromarray(gray, "L"), "PNG"))
    assert out.shape == (6, 25, 1)
    np.testing.assert_array_equal(out[..., 0], gray)
    jpeg = decode(encode(Image.new("L", (16, 8), 100), "JPEG", quality=95))
    assert jpeg.shape == (8, 16, 1) and abs(int(jpeg[0, 0, 0]) - 100) <= 2


def test_rgba_is_composited_over_black():
    rgba = np.zeros((4, 6, 4), np.uint8)
    rgba[..., :3] = (200, 100, 50)
    rgba[:2, :, 3] = 128  # half transparent
    rgba[2:, :, 3] = 0  # fully transparent
    out = decode(encode(Image.fromarray(rgba, "RGBA"), "PNG"))
    assert out.shape == (4, 6, 3)
    np.testing.assert_allclose(out[0, 0], (100, 50, 25), atol=1)
    assert (out[2:] == 0).all()


def test_gray_alpha_png_stays_one_channel():
    out = decode(encode(Image.new("LA", (5, 3), (200, 128)), "PNG"))
    assert out.shape == (3, 5, 1)
    assert abs(int(out[0, 0, 0]) - 100) <= 1


def test_16bit_png_is_scaled_to_8bit():
    gray16 = np.array([[0, 257 * 100, 40000, 65535]], np.uint16)
    ok, buf = cv2.imencode(".png", gray16)
    out = decode(buf.tobytes())
    assert out.dtype == np.uint8 and out.shape == (1, 4, 1)
    assert out[0, :, 0].tolist() == [0, 100, 156, 255]
    rgb16 = np.zeros((2, 2, 3), np.uint16)
    rgb16[..., 0] = 65535  # red, in RGB order
    ok, buf = cv2.imencode(".png", rgb16[..., ::-1])  # OpenCV writes BGR
    out = decode(buf.tobytes())
    assert out.shape == (2, 2, 3) and tuple(out[0, 0]) == RED


def test_palette_png_with_and_without_transparency():
    pal = Image.new("P", (6, 4), 1)
    pal.putpalette([*RED, *GREEN] + [0] * 762)
    out = decode(encode(pal, "PNG"))
    assert out.shape == (4, 6, 3) and tuple(out[0, 0]) == GREEN
    out = decode(encode(pal, "PNG", transparency=1))  # index 1 (green) fully transparent
    assert tuple(out[0, 0]) == (0, 0, 0)


def test_cmyk_jpeg_comes_out_rgb():
    cmyk = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # pure red in CMYK
    out = decode(encode(cmyk, "JPEG", quality=95))
    assert out.shape == (8, 8, 3)
    np.testing.assert_allclose(out[4, 4], RED, atol=4)


def test_animated_gif_gives_first_frame():
    frames = []
    for color in (RED, GREEN, BLUE):
        f = Image.new("P", (10, 8), 0)
        f.putpalette([*color] + [0] * 765)
        frames.append(f)
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50)
    out = decode(data)
    assert out.shape == (8, 10, 3)
    assert (out.reshape(-1, 3) == RED).all()


@pytest.mark.parametrize(
    "fmt,kw", [("BMP", {}), ("TIFF", {}), ("WEBP", {"lossless": True}), ("PNG", {}), ("GIF", {})]
)
def test_lossless_formats_round_trip_exactly(fmt, kw):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (9, 13, 3), dtype=np.uint8)
    src = Image.fromarray(rgb)
    if fmt == "GIF":  # GIF is paletted: compare with the palette-quantised source
        src = src.quantize(256)
        rgb = np.asarray(src.convert("RGB"))
    np.testing.assert_array_equal(decode(encode(src, fmt, **kw)), rgb)


def test_jpeg_with_exif_orientation_6_comes_out_upright():
    data = encode(red_blue(40, 20), "JPEG", exif=exif_with_orientation(6), quality=95)
    # Stored 40 wide x 20 tall; orientation 6 = rotate 90 degrees clockwise to display.
    out = decode(data)
    assert out.shape == (40, 20, 3)
    np.testing.assert_allclose(out[2, 10], RED, atol=6)  # the left (red) half is now on top
    np.testing.assert_allclose(out[-3, 10], BLUE, atol=6)


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("fmt,mode", [("JPEG", "RGB"), ("PNG", "RGBA"), ("WEBP", "RGB")])
def test_every_exif_orientation_matches_opencv(orientation, fmt, mode):
    im = red_blue(40, 20, mode)
    im.paste((0, 255, 0, 255)[: len(mode)], (0, 0, 6, 4))  # green marker in the top-left corner
    kw = {"quality": 95} if fmt == "JPEG" else {"lossless": True} if fmt == "WEBP" else {}
    data = encode(im, fmt, exif=exif_with_orientation(orientation), **kw)
    ref = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR_RGB)  # OpenCV orients this mode
    out = decode(data)
    assert out.shape == ref.shape
    assert np.abs(out.astype(int) - ref).max() <= 2


def test_exif_orientation_without_imdecode_with_metadata(monkeypatch):
    """Older OpenCV builds: the JPEG EXIF block is parsed by hand."""
    import ganaudit.core.imaging

    monkeypatch.delattr(cv2, "imdecodeWithMetadata", raising=False)
    monkeypatch.setattr(ganaudit.core.imaging, "_METADATA_DECODE", False)  # 4.12's other signature goes this way too
    out = decode(encode(red_blue(40, 20), "JPEG", exif=exif_with_orientation(8), quality=95))
    assert out.shape == (40, 20, 3)
    np.testing.assert_allclose(out[-3, 10], RED, atol=6)  # orientation 8 = 90 degrees counter-clockwise


# ----------------------------------------------------------------------------- sources


def test_bytes_bytearray_memoryview_and_path_agree(tmp_path):
    data = encode(red_blue(), "PNG")
    path = tmp_path / "a.png"
    path.write_bytes(data)
    ref = decode(data)
    for source in (bytearray(data), memoryview(data), path, str(path)):
        np.testing.assert_array_equal(decode(source), ref)


def test_bytes_are_always_image_data_never_a_path(tmp_path):
    """Uploads arrive as bytes: bytes that name a file on this machine must not read it (they used to, which
    let an upload of the text of a server path read that file, or pass as the harmless image it named)."""
    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0:the secret\n")
    image = tmp_path / "a.png"
    image.write_bytes(encode(red_blue(), "PNG"))
    for named in (secret, image):
        with pytest.raises(ImageDecodeError, match="not a recognised image.*always read as image data") as e:
            decode(os.fsencode(named))
        assert "root:" not in str(e.value)
    for source in (bytearray(os.fsencode(secret)), memoryview(os.fsencode(image))):
        with pytest.raises(ImageDecodeError, match="not a recognised image"):
            decode(source)


@pytest.mark.skipif(sys.platform in ("win32", "darwin"), reason="needs a file system that allows non-UTF-8 names")
def test_non_utf8_file_name(tmp_path):
    raw = os.path.join(os.fsencode(tmp_path), b"photo-\xff\xfe.png")
    with open(raw, "wb") as f:
        f.write(encode(red_blue(), "PNG"))
    out = decode(os.fsdecode(raw))  # the str form of a bytes path (surrogate escapes) reads the file
    assert tuple(out[0, 0]) == RED


def test_arrays_of_every_supported_dtype():
    rgb = np.zeros((2, 3, 3), np.uint8)
    rgb[..., 0] = 255
    assert tuple(decode(rgb)[0, 0]) == RED  # RGB assumed and kept
    assert decode(np.full((2, 3), 7, np.uint8)).shape == (2, 3, 1)
    assert decode(np.full((2, 3, 1), 7, np.uint8)).shape == (2, 3, 1)
    assert decode(np.full((2, 2), 65535, np.uint16))[0, 0, 0] == 255
    assert decode(np.array([[True, False]]))[0, :, 0].tolist() == [255, 0]
    assert decode(np.array([[0.0, 0.5, 1.0]], np.float32))[0, :, 0].tolist() == [0, 128, 255]
    rgba = np.zeros((1, 1, 4), np.uint8)
    rgba[0, 0] = (200, 100, 50, 255)
    assert tuple(decode(rgba)[0, 0]) == (200, 100, 50)
    gray_alpha = np.array([[[200, 255], [200, 0]]], np.uint8)
    assert decode(gray_alpha)[0, :, 0].tolist() == [200, 0]  # alpha composited over black
    big_endian = np.array([[0, 257 * 100, 65535]], ">u2")
    assert decode(big_endian)[0, :, 0].tolist() == [0, 100, 255]
    assert decode(np.array([[0.0, 1.0]], ">f4"))[0, :, 0].tolist() == [0, 255]


def test_decode_does_not_modify_its_input():
    rgba = np.full((3, 3, 4), 128, np.uint8)
    before = rgba.copy()
    decode(rgba)
    np.testing.assert_array_equal(rgba, before)


@pytest.mark.parametrize(
    "array,message",
    [
        (np.full((2, 2), 2.0, np.float32), "must be in [0, 1]"),
        (np.full((2, 2), np.nan, np.float32), "NaN"),
        (np.zeros((2, 2, 5), np.uint8), "unsupported image array shape"),
        (np.zeros((2,), np.uint8), "unsupported image array shape"),
        (np.zeros((0, 4, 3), np.uint8), "no pixels"),
        (np.zeros((2, 2), np.int32), "unsupported pixel type int32"),
    ],
)
def test_bad_arrays_raise_image_decode_error(array, message):
    with pytest.raises(ImageDecodeError, match=message.replace("[", r"\[").replace("]", r"\]")):
        decode(array)


def test_unsupported_source_type_is_a_type_error():
    with pytest.raises(TypeError, match="np.asarray"):
        decode(12345)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- failures


def test_missing_file(tmp_path):
    with pytest.raises(ImageDecodeError, match="file not found"):
        decode(tmp_path / "nope.png")


def test_bytes_that_look_like_a_path_get_a_hint(tmp_path):
    with pytest.raises(ImageDecodeError, match="not a recognised image.*pass its path as a str or pathlib.Path"):
        decode(os.fsencode(tmp_path / "nope.png"))


def test_invalid_file_name():
    with pytest.raises(ImageDecodeError, match="invalid file name"):
        decode("bad\0name.png")


def test_directory(tmp_path):
    with pytest.raises(ImageDecodeError, match="is a directory"):
        decode(tmp_path)


def test_zero_byte_file(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(ImageDecodeError, match=r"empty \(0 bytes\)"):
        decode(tmp_path / "empty.jpg")
    with pytest.raises(ImageDecodeError, match=r"empty \(0 bytes\)"):
        decode(b"")


def test_permission_denied(tmp_path):
    path = tmp_path / "secret.png"
    path.write_bytes(encode(red_blue(), "PNG"))
    path.chmod(0)
    try:
        if os.access(path, os.R_OK):
            pytest.skip("running as a user (e.g. root) that ignores file permissions")
        with pytest.raises(ImageDecodeError, match="permission denied"):
            decode(path)
    finally:
        path.chmod(0o600)


def test_text_file_named_jpg(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_bytes(b"hello, this is not an image\n")
    with pytest.raises(ImageDecodeError, match=r"file is not a recognised image \(starts with b'hello"):
        decode(path)


@pytest.mark.parametrize("cut", [1, 2, 50, 0.5])
def test_truncated_jpeg(cut):
    rng = np.random.default_rng(1)
    data = encode(Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)), "JPEG")
    n = int(len(data) * cut) if isinstance(cut, float) else len(data) - cut
    with pytest.raises(ImageDecodeError, match="truncated JPEG"):
        decode(data[:n])


@pytest.mark.parametrize("cut", [1, 12, 100, 0.5])
def test_truncated_png(cut):
    rng = np.random.default_rng(2)
    data = encode(Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)), "PNG")
    n = int(len(data) * cut) if isinstance(cut, float) else len(data) - cut
    with pytest.raises(ImageDecodeError, match="truncated PNG"):
        decode(data[:n])


def test_trailing_bytes_after_the_end_are_not_truncation():
    """Data after EOI / IEND (e.g. motion-photo trailers) must not be mistaken for damage."""
    im = red_blue()
    thumb = Image.Exif()
    thumb[0x0112] = 1
    for data in (encode(im, "JPEG", quality=95, exif=thumb.tobytes()), encode(im, "PNG")):
        out = decode(data + b"\x00\x01trailer" * 50)
        np.testing.assert_allclose(out[0, 0], RED, atol=6)


def test_corrupt_data_with_a_valid_signature():
    with pytest.raises(ImageDecodeError, match="could not decode JPEG data"):
        decode(b"\xff\xd8\xff\xe0\x00\x04ab" + b"\x12\x34" * 40 + b"\xff\xd9")


def test_huge_png_header_fails_fast_without_allocating():
    data = png_header_only(100_000, 100_000)
    assert image_size(data) == (100_000, 100_000)
    start = time.perf_counter()
    with pytest.raises(ImageDecodeError) as err:
        decode(data)
    assert time.perf_counter() - start < 0.5
    assert str(err.value) == (
        "image is 100000x100000 = 10000 MP, above the 64 MP limit; raise --max-pixels (max_pixels in Python) to allow it"
    )


def test_huge_file_is_refused_after_reading_only_its_header(tmp_path):
    path = tmp_path / "huge.png"
    with open(path, "wb") as f:
        f.write(png_header_only(100_000, 100_000))
        f.truncate(1 << 34)  # sparse 16 GiB file: reading it all would exhaust memory
    with pytest.raises(ImageDecodeError, match="100000x100000"):
        decode(path)
    other = tmp_path / "huge.bin"
    with open(other, "wb") as f:
        f.write(b"no header here")
        f.truncate(1 << 34)
    with pytest.raises(ImageDecodeError, match="too large for an image within the 64 MP limit"):
        decode(other)


def test_max_pixels_is_adjustable(tmp_path):
    data = encode(red_blue(40, 20), "PNG")
    with pytest.raises(ImageDecodeError, match=r"40x20 = 0\.0008 MP, above the 0\.0005 MP limit"):
        decode(data, max_pixels=500)
    assert decode(data, max_pixels=800).shape == (20, 40, 3)
    with pytest.raises(ImageDecodeError, match="above"):
        decode(np.zeros((30, 30), np.uint8), max_pixels=100)


def test_limit_off_still_reports_the_real_problem():
    with pytest.raises(ImageDecodeError, match="truncated PNG"):
        decode(png_header_only(100_000, 100_000), max_pixels=None)


@pytest.fixture
def no_opencv_decode(monkeypatch):
    """Make any OpenCV decode fail the test: refusals must come before decoding."""

    def boom(*args, **kwargs):
        raise AssertionError("OpenCV was asked to decode")

    monkeypatch.setattr(cv2, "imdecode", boom)
    monkeypatch.setattr(cv2, "imdecodeWithMetadata", boom, raising=False)


@pytest.mark.parametrize("name", sorted(BOMBS))
def test_formats_without_a_read_header_are_refused_before_decoding(name, no_opencv_decode, tmp_path):
    data, fmt = BOMBS[name]
    with pytest.raises(ImageDecodeError, match=f"^{fmt} images are not accepted"):
        decode(data)
    (tmp_path / "bomb.png").write_bytes(data)  # a misleading extension changes nothing
    with pytest.raises(ImageDecodeError, match=f"^{fmt} images are not accepted"):
        decode(tmp_path / "bomb.png", max_pixels=None)


def test_a_tiff_that_lists_its_width_twice_is_sized_by_the_larger_claim(no_opencv_decode):
    data = tiff_twice_width()
    assert image_size(data) == (7999, 7999)
    with pytest.raises(ImageDecodeError, match="7999x7999 .* MP limit"):
        decode(data, max_pixels=16_000_000)  # refused from the header: OpenCV never runs


@pytest.mark.parametrize("name", ["hdr", "jpeg2000", "pgm", "pfm", "pam"])
def test_opt_in_formats_keep_the_header_pixel_check(name, monkeypatch, no_opencv_decode):
    monkeypatch.setenv(EXTRA_FORMATS_ENV, "all")
    data, _ = BOMBS[name]
    with pytest.raises(ImageDecodeError, match="MP limit"):
        decode(data)


def test_opt_in_format_decodes_and_names_only_its_own_format(monkeypatch):
    ok, buf = cv2.imencode(".ppm", np.zeros((30, 40, 3), np.uint8))
    assert image_size(buf.tobytes()) == (40, 30)
    with pytest.raises(ImageDecodeError, match="PNM images are not accepted.*GANAUDIT_EXTRA_FORMATS=PNM"):
        decode(buf.tobytes())
    monkeypatch.setenv(EXTRA_FORMATS_ENV, "hdr, pnm")
    assert decode(buf.tobytes()).shape == (30, 40, 3)
    with pytest.raises(ImageDecodeError, match="40x30"):
        decode(buf.tobytes(), max_pixels=1000)
    monkeypatch.setenv(EXTRA_FORMATS_ENV, "HDR")
    with pytest.raises(ImageDecodeError, match="PNM images are not accepted"):
        decode(buf.tobytes())


def test_opencv_pixel_ceiling_is_a_second_wall(tmp_path):
    """ganaudit sets OPENCV_IO_MAX_IMAGE_PIXELS before cv2 loads; an image past it fails with a clear line."""
    code = textwrap.dedent(
        """
        import os, numpy as np
        import ganaudit.core.imaging as im
        print(os.environ["OPENCV_IO_MAX_IMAGE_PIXELS"])
        os.environ.pop("OPENCV_IO_MAX_IMAGE_PIXELS")
        import cv2
        data = cv2.imencode(".png", np.zeros((40, 40), np.uint8))[1].tobytes()
        try:
            im.decode(data, max_pixels=None)
        except im.ImageDecodeError as e:
            print(e)
        """
    )
    env = {**os.environ, "OPENCV_IO_MAX_IMAGE_PIXELS": "1000"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "1000"  # the user's value wins
    assert "OpenCV's own ceiling OPENCV_IO_MAX_IMAGE_PIXELS" in lines[1]
    env.pop("OPENCV_IO_MAX_IMAGE_PIXELS")
    out = subprocess.run([sys.executable, "-c", "import ganaudit, os; print(os.environ['OPENCV_IO_MAX_IMAGE_PIXELS'])"],
                         env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.stdout.strip() == "64000000"


def test_bad_files_do_not_spam_stderr(capfd):
    rng = np.random.default_rng(3)
    im = Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    bad = [b"not an image at all", encode(im, "PNG")[:-40], encode(im, "JPEG")[:-40], b"GIF89a" + b"\x01" * 20]
    for data in bad:
        with pytest.raises(ImageDecodeError):
            decode(data)
    assert capfd.readouterr().err == ""


# ----------------------------------------------------------------------------- image_size


def test_image_size_reads_every_header():
    im = red_blue(37, 23)
    assert image_size(encode(im, "PNG")) == (37, 23)
    assert image_size(encode(im, "JPEG", exif=exif_with_orientation(6))) == (37, 23)  # APP1 before SOF
    assert image_size(encode(im, "JPEG", progressive=True)) == (37, 23)
    assert image_size(encode(im, "GIF")) == (37, 23)
    assert image_size(encode(im, "BMP")) == (37, 23)
    assert image_size(encode(im, "WEBP", quality=80)) == (37, 23)  # VP8
    assert image_size(encode(im, "WEBP", lossless=True)) == (37, 23)  # VP8L
    assert image_size(encode(im, "WEBP", exif=exif_with_orientation(1))) == (37, 23)  # VP8X
    assert image_size(encode(im, "TIFF")) == (37, 23)
    assert image_size(bytearray(encode(im, "PNG"))) == (37, 23)


@pytest.mark.parametrize("endian", ["<", ">"])
@pytest.mark.parametrize("long_dims", [False, True])
def test_image_size_tiff_both_byte_orders(endian, long_dims):
    assert image_size(tiff_header(70000 if long_dims else 300, 200, endian, long_dims)) == (
        70000 if long_dims else 300,
        200,
    )


def test_image_size_unknown_or_cut_short():
    assert image_size(b"hello world") is None
    assert image_size(b"") is None
    assert image_size(png_header_only(10, 10)[:20]) is None
    assert image_size(b"\xff\xd8\xff\xe0\x00\x10JFIF") is None


def test_constants():
    assert DEFAULT_MAX_PIXELS == 64_000_000
    assert {".png", ".jpg", ".jpeg", ".gif", ".webp", ".tif", ".tiff", ".bmp"} == IMAGE_EXTENSIONS


# ----------------------------------------------------------------------------- preprocess


def thirds(height: int = 30, width: int = 90) -> np.ndarray:
    """Red | green | blue vertical thirds, RGB uint8."""
    img = np.zeros((height, width, 3), np.uint8)
    img[:, : width // 3] = RED
    img[:, width // 3 : 2 * width // 3] = GREEN
    img[:, 2 * width // 3 :] = BLUE
    return img


@pytest.mark.parametrize("fit", ["stretch", "center_crop"])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("shape", [(30, 90, 3), (90, 30, 1), (7, 5, 3), (300, 200, 1)])
def test_preprocess_shape_dtype_range(fit, channels, shape):
    rng = np.random.default_rng(4)
    img = rng.integers(0, 256, shape, dtype=np.uint8)
    out = preprocess(img, PreprocessSpec(size=32, channels=channels, fit=fit))
    assert out.shape == (channels, 32, 32) and out.dtype == np.float32
    assert out.flags["C_CONTIGUOUS"]
    assert out.min() >= -1.0 and out.max() <= 1.0


def test_preprocess_value_mapping():
    spec = PreprocessSpec(size=16, channels=3)
    white = preprocess(np.full((16, 16, 3), 255, np.uint8), spec)
    black = preprocess(np.zeros((16, 16, 3), np.uint8), spec)
    mid = preprocess(np.full((16, 16, 3), 51, np.uint8), spec)
    assert (white == 1.0).all() and (black == -1.0).all()
    np.testing.assert_allclose(mid, 51 / 127.5 - 1, atol=1e-6)


def test_center_crop_keeps_the_middle_and_stretch_keeps_everything():
    img = thirds()
    crop = preprocess(img, PreprocessSpec(size=16, channels=3, fit="center_crop"))
    np.testing.assert_allclose(crop[:, 8, 8], (-1, 1, -1))  # all green
    np.testing.assert_allclose(crop[:, :, 0], -1 * np.ones((3, 16)) + np.array([[0], [2], [0]]))
    stretch = preprocess(img, PreprocessSpec(size=16, channels=3, fit="stretch"))
    np.testing.assert_allclose(stretch[:, 8, 0], (1, -1, -1))  # left edge red
    np.testing.assert_allclose(stretch[:, 8, 15], (-1, -1, 1))  # right edge blue


def test_rgb_to_gray_uses_luma_and_gray_to_rgb_replicates():
    gray = preprocess(np.tile(np.array(RED, np.uint8), (16, 16, 1)), PreprocessSpec(size=16, channels=1))
    np.testing.assert_allclose(gray, 0.299 * 255 / 127.5 - 1, atol=1e-5)
    rgb = preprocess(np.full((16, 16), 200, np.uint8), PreprocessSpec(size=16, channels=3))
    assert rgb.shape == (3, 16, 16)
    np.testing.assert_array_equal(rgb[0], rgb[1])
    np.testing.assert_array_equal(rgb[1], rgb[2])


def test_shrinking_averages_enlarging_interpolates():
    checker = (np.indices((64, 64)).sum(axis=0) % 2 * 255).astype(np.uint8)  # 1-pixel checkerboard
    small = preprocess(checker, PreprocessSpec(size=16, channels=1))
    np.testing.assert_allclose(small, 127.5 / 127.5 - 1, atol=0.01)  # area averaging: flat mid-gray
    ramp = np.array([[0, 255]], np.uint8).repeat(2, axis=0)
    big = preprocess(ramp, PreprocessSpec(size=16, channels=1))
    row = big[0, 0]
    assert np.all(np.diff(row) >= 0) and row[0] == -1 and row[-1] == 1 and len(np.unique(row)) > 4


def test_preprocess_accepts_any_decodable_array():
    spec = PreprocessSpec(size=16, channels=3)
    as_uint8 = preprocess(np.full((8, 8, 3), 255, np.uint8), spec)
    np.testing.assert_array_equal(preprocess(np.full((8, 8, 3), 65535, np.uint16), spec), as_uint8)
    np.testing.assert_array_equal(preprocess(np.ones((8, 8, 3), np.float32), spec), as_uint8)
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., :3] = 255
    np.testing.assert_array_equal(preprocess(rgba, spec), np.full((3, 16, 16), -1, np.float32))  # transparent


def test_preprocess_batch_and_load(tmp_path):
    spec = PreprocessSpec(size=32, channels=3, fit="center_crop")
    path = tmp_path / "x.png"
    path.write_bytes(encode(Image.fromarray(thirds()), "PNG"))
    images = [thirds(), decode(path), np.zeros((5, 9), np.uint8)]
    batch = preprocess_batch(images, spec)
    assert batch.shape == (3, 3, 32, 32) and batch.dtype == np.float32
    np.testing.assert_array_equal(batch[0], load(path, spec))
    np.testing.assert_array_equal(batch[1], preprocess(thirds(), spec))
    empty = preprocess_batch([], PreprocessSpec(size=16, channels=1))
    assert empty.shape == (0, 1, 16, 16) and empty.dtype == np.float32


def test_load_passes_max_pixels(tmp_path):
    with pytest.raises(ImageDecodeError, match="limit"):
        load(png_header_only(9000, 9000), PreprocessSpec(size=16, channels=1))
