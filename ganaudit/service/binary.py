"""The KServe v2 / Triton binary tensor data extension (``binary_tensor_data``).

A request may put tensor data after its JSON header instead of inside it: the header
``Inference-Header-Content-Length: N`` says the first N bytes of the body are the JSON inference request, and
each input whose ``parameters.binary_data_size`` is set takes that many of the bytes that follow, in input
order. A BYTES tensor in binary form is its elements one after another, each a 4-byte little-endian length
then the bytes. Outputs come back the same way when the request asks (``parameters.binary_data`` on an output,
or ``parameters.binary_data_output`` on the request): the JSON part carries ``binary_data_size`` instead of
``data``, and the response has the same header. ``tritonclient.http`` uses this by default.

https://github.com/triton-inference-server/server/blob/main/docs/protocol/extension_binary_data.md
"""

from __future__ import annotations

import json
import struct
from typing import Any, Sequence

import numpy as np

EXTENSION = "binary_tensor_data"
HEADER = "Inference-Header-Content-Length"
_NUMPY = {"FP32": "<f4", "BOOL": "?"}


class BinaryFormatError(ValueError):
    """The binary part of a request does not match its JSON header (the message says how)."""


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """(JSON header, binary rest) of a request body; all JSON when there is no header."""
    if header_length is None:
        return body, b""
    try:
        n = int(header_length)
    except ValueError:
        raise BinaryFormatError(f"{HEADER} must be an integer, got {header_length!r}") from None
    if not 0 <= n <= len(body):
        raise BinaryFormatError(f"{HEADER} is {n} but the request body holds {len(body)} bytes")
    return body[:n], body[n:]


def take_inputs(sizes: Sequence[int | None], rest: bytes) -> list[bytes | None]:
    """Cut ``rest`` into each input's binary data (None for an input whose data is in the JSON)."""
    out: list[bytes | None] = []
    pos = 0
    for size in sizes:
        if size is None:
            out.append(None)
            continue
        if size < 0 or pos + size > len(rest):
            raise BinaryFormatError(f"binary_data_size {size} runs past the {len(rest) - pos} bytes left in the body")
        out.append(rest[pos : pos + size])
        pos += size
    if pos != len(rest):
        raise BinaryFormatError(f"{len(rest) - pos} bytes after the inputs' binary data are not claimed by any input")
    return out


class TooManyElements(BinaryFormatError):
    """A BYTES tensor with more elements than the caller takes (read no further)."""


def decode_bytes_elements(raw: bytes, max_items: int | None = None) -> list[bytes]:
    """A BYTES tensor in binary form -> its elements (each a 4-byte little-endian length, then the bytes).
    Past ``max_items`` elements it stops with TooManyElements: 20 MB of empty elements are 5 million."""
    items, pos = [], 0
    while pos < len(raw):
        if max_items is not None and len(items) >= max_items:
            raise TooManyElements(f"the BYTES tensor holds more than {max_items} elements")
        if pos + 4 > len(raw):
            raise BinaryFormatError(f"BYTES element {len(items)}: the 4-byte length is cut off")
        (n,) = struct.unpack_from("<I", raw, pos)
        pos += 4
        if pos + n > len(raw):
            raise BinaryFormatError(f"BYTES element {len(items)}: says {n} bytes but {len(raw) - pos} are left")
        items.append(raw[pos : pos + n])
        pos += n
    return items


def encode(datatype: str, values: Sequence[Any]) -> bytes:
    """An output tensor in binary form: FP32 (None -> NaN), BOOL (one byte each) or BYTES (str or bytes)."""
    if datatype == "BYTES":
        parts = []
        for v in values:
            b = v.encode() if isinstance(v, str) else bytes(v)
            parts.append(struct.pack("<I", len(b)) + b)
        return b"".join(parts)
    if datatype == "FP32":
        return np.array([np.nan if v is None else v for v in values], dtype=_NUMPY[datatype]).tobytes()
    return np.array(values, dtype=_NUMPY[datatype]).tobytes()


def response_body(header: dict[str, Any], binaries: Sequence[bytes]) -> tuple[bytes, int]:
    """(body, JSON header length) of a response with binary outputs."""
    text = json.dumps(header, allow_nan=False).encode()
    return text + b"".join(binaries), len(text)
