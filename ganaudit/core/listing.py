"""Listing files: the files to scan given as one path or URI per line (``ganaudit scan --files-from``).

A line is a local path (relative ones are taken from the current directory) or a URI with a scheme
(``s3://bucket/key.jpg``, ``gs://...``, ``hdfs://...``, ``file:///abs/path``) that pyarrow's file systems open.
Blank lines and lines that start with ``#`` are skipped (write ``./#name`` for a file whose name starts with
``#``); only the line ending (LF or CRLF) is stripped, so names keep their spaces. The listing is read as a
stream, so its size does not matter, and a bad line (too long, a NUL byte, a URI that is not UTF-8) becomes a
:class:`~ganaudit.core.files.Candidate` with an ``error`` naming the listing's line, never an exception.

Core layer: the standard library and other core modules only.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator
from typing import BinaryIO
from urllib.parse import unquote, urlsplit

from .files import Candidate, WalkStats

__all__ = ["MAX_LINE_BYTES", "is_uri", "iter_listing"]

MAX_LINE_BYTES = 8192  # longer than any path a file system takes (PATH_MAX is 4096) and most URIs
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


def is_uri(path: str) -> bool:
    """Whether ``path`` is a URI (``scheme://...``) rather than a local path."""
    return _URI.match(path) is not None


def _uri_key(uri: str) -> tuple[int, int]:
    """A WalkStats key for a URI (local files use (st_dev, st_ino)); -2 keeps it apart from those."""
    return (-2, int.from_bytes(hashlib.blake2b(uri.encode("utf-8", "surrogateescape"), digest_size=8).digest(), "big"))


def _file_key(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None  # missing or unreadable: reading it says why
    return (st.st_dev, st.st_ino)


def _local_uri_key(uri: str) -> tuple[int, int] | None:
    """The file key of a ``file://`` URI on this machine, so that its spellings (``/a/../b``, ``%62``, ``//``)
    and its plain path count as one file; None for any other URI."""
    parts = urlsplit(uri)
    if parts.scheme.lower() != "file" or parts.netloc not in ("", "localhost") or parts.query:
        return None
    return _file_key(unquote(parts.path))


def _lines(stream: BinaryIO) -> Iterator[tuple[int, bytes | None]]:
    """(line number, line without its ending), or None for a line over MAX_LINE_BYTES (the rest is skipped)."""
    number = 0
    while True:
        line = stream.readline(MAX_LINE_BYTES + 2)
        if not line:
            return
        number += 1
        cut = len(line) == MAX_LINE_BYTES + 2 and not line.endswith(b"\n")
        content = line.removesuffix(b"\n").removesuffix(b"\r")
        if cut or len(content) > MAX_LINE_BYTES:
            while cut and line and not line.endswith(b"\n"):  # skip the rest of the line, a block at a time
                line = stream.readline(1 << 16)
            yield number, None
            continue
        yield number, content


def iter_listing(stream: BinaryIO, name: str, stats: WalkStats | None = None) -> Iterator[Candidate]:
    """The candidates named by a listing read from the binary ``stream`` (``name`` is how errors cite it).

    Each file is yielded once (the same file listed twice, or reached by two paths, counts a duplicate in
    ``stats``); a listed file is taken whatever its extension; whether it exists is found when it is read."""
    stats = stats if stats is not None else WalkStats()
    for number, raw in _lines(stream):
        where = f"{name}:{number}"
        if raw is None:
            stats.errors += 1
            yield Candidate(where, error=f"listing line {number} is longer than {MAX_LINE_BYTES} bytes")
            continue
        if not raw.strip() or raw.startswith(b"#"):
            continue
        if b"\0" in raw:
            stats.errors += 1
            yield Candidate(where, error=f"listing line {number} holds a NUL byte, which no file name can")
            continue
        path = os.fsdecode(raw)  # undecodable bytes kept as surrogate escapes, as in a folder walk
        if is_uri(path):
            try:
                path = raw.decode("utf-8")
            except UnicodeDecodeError:
                stats.errors += 1
                yield Candidate(where, error=f"listing line {number}: a URI must be UTF-8 (percent-encode the rest)")
                continue
            key = _local_uri_key(path) or _uri_key(path)
        else:
            key = _file_key(path) or _uri_key(os.path.abspath(path))
        if key in stats.seen_files:
            stats.duplicates += 1
            continue
        stats.seen_files.add(key)
        yield Candidate(path)
