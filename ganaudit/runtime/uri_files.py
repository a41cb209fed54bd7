"""Files named by URI (``s3://``, ``gs://``, ``hdfs://``, ``file://``...), read through pyarrow's file systems.

Used by the scan for the entries of a listing file (``--files-from``) and for the listing itself. pyarrow comes
with the ``[distributed]`` extra; without it a URI is refused with that advice. A file system is made once per
scheme and authority (bucket, host) and reused, so a listing of millions of objects does not pay for one each.

Runtime layer: the standard library, core modules and (optional) pyarrow. No torch.
"""

from __future__ import annotations

import io
import threading
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, BinaryIO
from urllib.parse import urlsplit

from ..core.errors import ConfigError, ImageDecodeError
from ..core.imaging import check_file_size, max_file_bytes

__all__ = ["RemoteFile", "open_listing_uri", "read_uri", "stat_uri"]

PYARROW_ADVICE = "reading URIs needs pyarrow: pip install 'ganaudit[distributed]'"
STORE_RETRY_SECONDS = 30.0  # how long a store's client retries one object before the row says it failed


@dataclass(frozen=True)
class RemoteFile:
    size: int
    mtime: float | None


_lock = threading.Lock()
_systems: dict[str, tuple[Any, bool]] = {}  # "scheme://authority" -> (file system, path keeps the authority)


def _pyarrow_fs() -> Any:
    try:
        import pyarrow.fs as pafs
    except ImportError:
        raise ConfigError(PYARROW_ADVICE) from None
    return pafs


def _arrow_error() -> type[Exception]:
    """pyarrow's own base error (some of its errors, e.g. from an Azure URI, are neither OSError nor ValueError)."""
    import pyarrow

    return pyarrow.ArrowException


def _first_line(e: Exception) -> str:
    """A store's error, cut to its first line (a missing HDFS library gave 20 kB of dlopen messages)."""
    text = str(e).strip()
    line = text.splitlines()[0] if text else type(e).__name__
    return line if len(line) <= 300 else line[:300] + "..."


def _bounded_retries(pafs: Any, fs: Any) -> Any:
    """``fs`` with a bounded retry time where pyarrow's default has none: Google Cloud Storage retried one
    unreachable object for 15 minutes or more, stalling the scan (found by trying). S3 gives up by itself."""
    if isinstance(fs, getattr(pafs, "GcsFileSystem", ())):
        options = fs.__reduce__()[1][0]  # the options from_uri parsed (endpoint, scheme, ...)
        if options.get("retry_time_limit") is None:
            fs = pafs.GcsFileSystem(**{**options, "retry_time_limit": timedelta(seconds=STORE_RETRY_SECONDS)})
    return fs


def _resolve(uri: str) -> tuple[Any, str]:
    """(pyarrow file system, path on it) for ``uri``; the file system is cached per scheme and authority.

    pyarrow's own ``from_uri`` gives the first path of each authority; whether its paths keep the authority
    (``bucket/key`` on S3) or not (``/path`` on HDFS and local files) is learnt from that answer."""
    parts = urlsplit(uri)
    root = f"{parts.scheme}://{parts.netloc}"
    with _lock:
        cached = _systems.get(root)
    plain = "%" not in uri and not parts.query  # from_uri decodes escapes and reads options (?region=...) itself
    if cached is not None and plain:
        fs, keeps = cached
        return fs, (parts.netloc + parts.path) if keeps else parts.path
    pafs = _pyarrow_fs()
    try:
        fs, path = pafs.FileSystem.from_uri(uri)
    except (ValueError, OSError, TypeError, _arrow_error()) as e:  # unknown scheme, bad authority, no credentials...
        raise ImageDecodeError(f"cannot open {uri}: {_first_line(e)}") from None
    fs = _bounded_retries(pafs, fs)
    if plain and path in (parts.netloc + parts.path, parts.path):  # the rule is known: reuse the file system
        with _lock:
            _systems[root] = (fs, path == parts.netloc + parts.path and path != parts.path)
    return fs, path


def stat_uri(uri: str) -> RemoteFile:
    """Size and modification time (seconds since the epoch, None where the store has none) of a file.

    Raises ImageDecodeError for a missing object or a directory, ConfigError without pyarrow."""
    return _stat(uri, *_resolve(uri))


def _stat(uri: str, fs: Any, path: str) -> RemoteFile:
    pafs = _pyarrow_fs()
    try:
        info = fs.get_file_info(path)
    except (OSError, _arrow_error()) as e:
        raise ImageDecodeError(f"could not read {uri}: {_first_line(e)}") from None
    if info.type == pafs.FileType.NotFound:
        raise ImageDecodeError("file not found")
    if info.type == pafs.FileType.Directory:
        raise ImageDecodeError("is a directory, not an image file")
    if info.type != pafs.FileType.File or info.size is None:  # file:///dev/zero, a pipe: never read
        raise ImageDecodeError("not a regular file (device, pipe or socket)")
    mtime = info.mtime.timestamp() if info.mtime is not None else None
    return RemoteFile(size=int(info.size), mtime=mtime)


def read_uri(uri: str, max_pixels: int) -> tuple[RemoteFile, bytes]:
    """The file's size and mtime, and its bytes. A file too big for an image within ``max_pixels`` is refused
    unread, and at most that bound plus one byte is ever read (a store that lies about the size gains nothing)."""
    fs, path = _resolve(uri)  # once: for a URI with options or escapes it builds a new file system
    meta = _stat(uri, fs, path)
    check_file_size(meta.size, max_pixels)
    bound = max_file_bytes(max_pixels)
    try:
        with fs.open_input_stream(path) as f:
            data = f.read(bound + 1)
    except (OSError, _arrow_error()) as e:
        raise ImageDecodeError(f"could not read {uri}: {_first_line(e)}") from None
    check_file_size(len(data), max_pixels)
    return meta, bytes(data)


def open_listing_uri(uri: str) -> BinaryIO:
    """A binary stream of a listing file stored at ``uri`` (ConfigError when it cannot be opened)."""
    try:
        fs, path = _resolve(uri)
        return io.BufferedReader(_RawStream(fs.open_input_stream(path)), 1 << 16)
    except (ImageDecodeError, OSError) as e:
        raise ConfigError(f"--files-from {uri}: cannot open the listing ({e})") from None


class _RawStream(io.RawIOBase):
    """A pyarrow input stream as a raw Python stream, so that io.BufferedReader gives it ``readline``."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._stream.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self._stream.close()
        super().close()
