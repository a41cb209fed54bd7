"""Safe file writes: atomic ones (a temp file in the same folder, then ``os.replace``) and appendable files that
are never opened through a symbolic link."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import IO, Any


def atomic_write(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write ``data`` to ``path`` so that readers see either the old file or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, path.stat().st_mode & 0o777 if path.exists() else 0o644)  # mkstemp's 0600 is too strict
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def open_plain(path: str | os.PathLike, *, append: bool = False, text: bool = False) -> IO[Any]:
    """Open ``path`` for writing (truncated, or appended to), refusing a symbolic link: a link planted in an
    output folder would otherwise make ganaudit overwrite the file it points to (OSError ELOOP)."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC)
    fd = os.open(path, flags | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0), 0o666)
    if text:
        return os.fdopen(fd, "a" if append else "w", encoding="utf-8", newline="")
    return os.fdopen(fd, "ab" if append else "wb")
