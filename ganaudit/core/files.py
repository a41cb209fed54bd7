"""Walk input paths for image files: used by training data loading and by the folder scanner.

Order is deterministic (entries sorted by name at every level, depth first), the walk streams (one
directory listing in memory per level of depth), and problems with an entry (broken symlink, symlink
loop, unreadable directory) become a :class:`Candidate` with an ``error`` instead of an exception, so
one bad entry never aborts a scan.

Core layer: imports only the standard library and other core modules.
"""

from __future__ import annotations

import csv
import errno
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from .errors import ConfigError
from .imaging import IMAGE_EXTENSIONS

__all__ = ["Candidate", "WalkStats", "display_path", "iter_files", "path_bytes"]


@dataclass(frozen=True)
class Candidate:
    """One input file, or one entry that could not be walked (``error`` says why).

    ``path`` is a str; undecodable bytes in file names are kept as surrogate escapes
    (``os.fsdecode``), so ``open(path)`` still works. Use :func:`display_path` to print it.
    """

    path: str
    error: str | None = None


@dataclass
class WalkStats:
    """Counts gathered while walking (pass one to :func:`iter_files` to fill it)."""

    skipped_non_image: int = 0
    errors: int = 0
    duplicates: int = 0  # files reached again (given twice, overlapping folders, links): one row each
    # (st_dev, st_ino) of the files yielded and the directories walked so far.
    seen_files: set[tuple[int, int]] = field(default_factory=set, repr=False)
    seen_dirs: set[tuple[int, int]] = field(default_factory=set, repr=False)


def display_path(path: str | bytes | os.PathLike) -> str:
    """A printable, reversible form of a path (see :func:`path_bytes`).

    A valid UTF-8 path without a backslash is shown as it is. Any other path (on POSIX) is escaped: each
    backslash doubled, each byte that is not valid UTF-8 written ``\\xNN``. A shown path holding a backslash
    is therefore always an escaped one, so no two file names are shown alike.
    """
    raw = os.fsencode(path)
    if os.sep == "\\":  # Windows: names are Unicode, backslash is the separator
        return raw.decode("utf-8", "backslashreplace")
    try:
        text = raw.decode("utf-8")
        if "\\" not in text:
            return text
    except UnicodeDecodeError:
        pass
    return raw.replace(b"\\", b"\\\\").decode("utf-8", "backslashreplace")


def path_bytes(shown: str) -> bytes:
    """The file name's bytes back from :func:`display_path`'s form (e.g. a ``path`` cell of results.csv):
    ``open(path_bytes(row["path"]), "rb")`` opens the file the row is about."""
    if os.sep == "\\" or "\\" not in shown:
        return os.fsencode(shown)
    out, i = bytearray(), 0
    while i < len(shown):
        if shown[i] != "\\":
            j = shown.find("\\", i)
            j = len(shown) if j < 0 else j
            out += shown[i:j].encode("utf-8")
            i = j
        elif shown[i + 1 : i + 2] == "\\":
            out += b"\\"
            i += 2
        elif shown[i + 1 : i + 2] == "x" and len(shown) >= i + 4:
            out.append(int(shown[i + 2 : i + 4], 16))
            i += 4
        else:
            raise ValueError(f"not a path shown by ganaudit: stray backslash at {i} in {shown!r}")
    return bytes(out)


def _normalise_extensions(extensions: Iterable[str]) -> frozenset[str]:
    return frozenset(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions)


def _list_dir(path: str) -> list[os.DirEntry[str]]:
    with os.scandir(path) as it:
        return sorted(it, key=lambda entry: entry.name)


def _os_reason(e: OSError) -> str:
    return e.strerror or str(e)


def _extension(name: str) -> str:
    """The lower-case extension after the last dot, dot included: ".png" for "a.png", "..png" and ".png"."""
    dot = name.rfind(".")
    return name[dot:].lower() if dot >= 0 else ""


def _first_time(key: tuple[int, int], stats: WalkStats) -> bool:
    """Record a file; False (and count a duplicate) when it was yielded before."""
    if key in stats.seen_files:
        stats.duplicates += 1
        return False
    stats.seen_files.add(key)
    return True


def _walk(
    root: str, root_key: tuple[int, int], recursive: bool, extensions: frozenset[str], stats: WalkStats
) -> Iterator[Candidate]:
    if root_key in stats.seen_dirs:  # an earlier root holds this folder: already walked
        return
    stats.seen_dirs.add(root_key)
    try:
        listing = _list_dir(root)
    except OSError as e:
        stats.errors += 1
        yield Candidate(root, error=f"cannot read directory: {_os_reason(e)}")
        return
    # Directories on the current path (key -> path), to detect symlink loops; the stack holds iterators.
    on_path: dict[tuple[int, int], str] = {root_key: root}
    stack: list[tuple[Iterator[os.DirEntry[str]], tuple[int, int]]] = [(iter(listing), root_key)]
    while stack:
        entries, key = stack[-1]
        entry = next(entries, None)
        if entry is None:
            stack.pop()
            del on_path[key]
            continue
        path = entry.path
        try:
            is_dir = entry.is_dir()  # follows symlinks; False for a broken one
            is_file = not is_dir and entry.is_file()
            if not (is_dir or is_file) and entry.is_symlink():
                os.stat(path)  # raises for a broken link or a link loop
        except OSError as e:
            stats.errors += 1
            yield Candidate(path, error=_link_error(path, e))
            continue
        if is_dir:
            problem = _enter(path, entry, on_path, stack, stats) if recursive else None
            if problem:
                stats.errors += 1
                yield Candidate(path, error=problem)
            continue
        if _extension(entry.name) not in extensions:
            stats.skipped_non_image += 1
            continue
        try:  # no system call for a plain file: its inode comes with the listing, its device is the folder's
            file_key = (os.stat(path).st_dev, entry.inode()) if entry.is_symlink() else (key[0], entry.inode())
        except OSError:
            file_key = (-1, id(entry))  # vanished: _load will say so
        if not _first_time(file_key, stats):  # also a pipe or device reached twice: one row each
            continue
        if is_file:
            yield Candidate(path)
        else:
            stats.errors += 1
            yield Candidate(path, error="not a regular file (device, pipe or socket)")


def _link_error(path: str, e: OSError) -> str:
    shown = display_path(path)
    if e.errno == errno.ELOOP:
        return f"symlink loop: {shown} cannot be resolved"
    if e.errno == errno.ENOENT and os.path.islink(path):
        return f"broken symlink: {shown} -> {display_path(os.readlink(path))}"
    return f"cannot stat {shown}: {_os_reason(e)}"


def _enter(
    path: str,
    entry: os.DirEntry[str],
    on_path: dict[tuple[int, int], str],
    stack: list[tuple[Iterator[os.DirEntry[str]], tuple[int, int]]],
    stats: WalkStats,
) -> str | None:
    """Push a subdirectory onto the walk; return why not (symlink loop, unreadable) instead."""
    try:
        st = entry.stat()
        key = (st.st_dev, st.st_ino)
        if key in on_path:
            return f"symlink loop: {display_path(path)} leads back to {display_path(on_path[key])}"
        if key in stats.seen_dirs:  # walked already (overlapping roots, or a link to a walked folder)
            return None
        listing = _list_dir(path)
    except OSError as e:
        return f"cannot read directory: {_os_reason(e)}"
    on_path[key] = path
    stats.seen_dirs.add(key)
    stack.append((iter(listing), key))
    return None


def iter_files(
    paths: Iterable[str | bytes | os.PathLike] | str | bytes | os.PathLike,
    *,
    recursive: bool = True,
    extensions: Iterable[str] = IMAGE_EXTENSIONS,
    stats: WalkStats | None = None,
) -> Iterator[Candidate]:
    """Yield the image files under ``paths``, in a deterministic order.

    Parameters
    ----------
    paths
        Files and directories (or one path on its own). A file is yielded as given, whatever its
        extension. A directory is walked (into subdirectories too when ``recursive``), entries sorted
        by name, and files whose extension (case-insensitive) is in ``extensions`` are yielded.
    recursive
        Descend into subdirectories (following directory symlinks, with loop detection).
    extensions
        Extensions counted as images, with or without the leading dot.
    stats
        Optional :class:`WalkStats` to fill: files skipped for their extension, and error candidates.

    Entries that cannot be walked (broken symlinks, symlink loops, unreadable directories) come out as a
    Candidate with ``error`` set. Raises ConfigError right away (at call time) when a path does not exist.
    """
    if isinstance(paths, (str, bytes, os.PathLike)):  # one path given on its own
        paths = [paths]
    roots = [os.fsdecode(os.fspath(p)) for p in paths]
    for root in roots:
        if not os.path.exists(root):
            broken = " (broken symbolic link)" if os.path.islink(root) else ""
            raise ConfigError(f"path not found: {display_path(root)}{broken}")
    exts = _normalise_extensions(extensions)
    return _iter(roots, recursive, exts, stats if stats is not None else WalkStats())


def _iter(roots: list[str], recursive: bool, exts: frozenset[str], stats: WalkStats) -> Iterator[Candidate]:
    for root in roots:
        try:
            st = os.stat(root)
        except OSError as e:  # vanished or became unreadable since the check
            stats.errors += 1
            yield Candidate(root, error=f"cannot stat: {_os_reason(e)}")
            continue
        if os.path.isdir(root):
            yield from _walk(root, (st.st_dev, st.st_ino), recursive, exts, stats)
        elif _first_time((st.st_dev, st.st_ino), stats):
            yield Candidate(root)


def read_csv_rows(path: str | os.PathLike, flag: str, reader: type = csv.reader) -> list:
    """Every row of a user's CSV file (a spreadsheet's byte-order mark dropped), read by ``reader`` (csv.reader
    or csv.DictReader); a file that is not UTF-8 or not CSV (a cell past csv's field limit) is a ConfigError
    naming ``flag`` and the file."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            return list(reader(fh))
    except UnicodeDecodeError:
        raise ConfigError(f"{flag}: {path} is not UTF-8 text; save it as CSV UTF-8") from None
    except csv.Error as e:
        raise ConfigError(f"{flag}: {path} is not a readable CSV file ({e})") from None
