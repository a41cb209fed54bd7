"""Decompression bombs in the formats ganaudit does not read by default: small files, huge pixel counts.

Each is a valid header (OpenCV would start allocating the full image from it) followed by a little data.
"""

from __future__ import annotations

import struct


def hdr_bomb(width: int = 16000, height: int = 8000) -> bytes:
    """Radiance HDR (RGBE), 16000x8000 by default: the file of the issue (there 8 MB, named .png)."""
    header = f"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y {height} +X {width}\n".encode()
    return header + b"\x02\x02" + struct.pack(">H", width) + b"\x80\x00" * 512


def jpeg2000_bomb(width: int = 12000, height: int = 12000) -> bytes:
    """JPEG 2000 codestream (SOC + SIZ), 12000x12000 by default: a few hundred bytes."""
    siz = struct.pack(">HHIIIIIIIIHBBB", 41, 0, width, height, 0, 0, width, height, 0, 0, 1, 7, 1, 1)
    cod = b"\xff\x52" + struct.pack(">HBBHBBBBBB", 12, 0, 0, 1, 0, 5, 4, 4, 0, 0)
    qcd = b"\xff\x5c" + struct.pack(">HB", 4, 0x40) + b"\x40"
    sot = b"\xff\x90" + struct.pack(">HHIBB", 10, 0, 0, 0, 1)
    return b"\xff\x4f\xff\x51" + siz + cod + qcd + sot + b"\xff\x93" + b"\x00" * 512 + b"\xff\xd9"


def pnm_bomb(width: int = 20000, height: int = 20000) -> bytes:
    """Binary PGM (P5), 20000x20000 = 400 MP."""
    return f"P5\n# comment\n{width} {height}\n255\n".encode() + b"\x00" * 1024


def pfm_bomb(width: int = 12000, height: int = 12000) -> bytes:
    """Portable float map (color), 12000x12000, 12 bytes per pixel once decoded."""
    return f"PF\n{width} {height}\n-1.0\n".encode() + b"\x00" * 1024


def pam_bomb(width: int = 20000, height: int = 20000) -> bytes:
    return f"P7\nWIDTH {width}\nHEIGHT {height}\nDEPTH 4\nMAXVAL 255\nTUPLTYPE RGB_ALPHA\nENDHDR\n".encode() + b"\x00" * 1024


def tiff_twice_width(width: int = 7999, height: int = 7999, decoy: int = 8) -> bytes:
    """A TIFF whose IFD lists ImageWidth twice, the real width first and a tiny ``decoy`` after it: a header
    reader that keeps the last copy saw 8 x 7999 and let OpenCV decode 64 MP of 16-bit RGBA (512 MB)."""
    entries = [(256, 4, width), (256, 4, decoy), (257, 4, height), (258, 3, 16), (259, 3, 8), (262, 3, 2),
               (273, 4, 8 + 2 + 12 * 12 + 4), (277, 3, 4), (278, 4, height), (279, 4, 64), (284, 3, 1), (338, 3, 2)]
    ifd = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHII", t, k, 1, v) for t, k, v in entries)
    return b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0) + b"\x78\x9c" + b"\x00" * 62


# name -> (bytes, the format named in the error)
BOMBS = {
    "hdr": (hdr_bomb(), "HDR"),
    "jpeg2000": (jpeg2000_bomb(), "JPEG2000"),
    "pgm": (pnm_bomb(), "PNM"),
    "pfm": (pfm_bomb(), "PFM"),
    "pam": (pam_bomb(), "PNM"),
    "exr": (b"\x76\x2f\x31\x01" + b"\x00" * 256, "OpenEXR"),
    "sunraster": (b"\x59\xa6\x6a\x95" + struct.pack(">IIII", 30000, 30000, 24, 0) + b"\x00" * 256, "Sun raster"),
}
