"""Scan image folders with a Detector and write per-image results: the engine behind ``ganaudit scan``.

The pipeline streams, in walk order::

    iter_files (walk) -> batcher (chunks of up to batch_size files)
      -> thread pool, at most 2 x workers chunks in flight; each task reads every file once
         (sha256 of those bytes), decodes and preprocesses it, then runs Detector.score_prepared
         on the chunk (onnxruntime releases the GIL, so decoding and inference overlap)
      -> CSV / JSONL writers, chunk by chunk in walk order (one write + flush per chunk)

Memory stays flat: the only per-image state is one float per score (for the histograms); the flagged
table keeps the top-K rows by score, and their thumbnails and heat maps are made at the end by
decoding just those files again. With ``resume=True`` an index of the previous ``results.jsonl``
(path -> size, mtime, line offset) is held too.

Runtime layer: numpy, OpenCV, onnxruntime and the standard library only (never torch).
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import json
import logging
import math
import os
import random
import stat
import sys
import time
from array import array
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..core.errors import ConfigError, ImageDecodeError
from ..core.files import WalkStats, display_path, iter_files
from ..core.atomic import open_plain
from ..core.listing import is_uri, iter_listing
from ..core.threads import available_cores, check_threads
from .uri_files import open_listing_uri, read_uri, stat_uri
from .evidence import evidence_map, for_display
from ..core.imaging import check_file_size, decode
from .report import (
    ROW_FIELDS,
    FlaggedImage,
    ReportData,
    heat_overlay,
    jsonl_lines,
    make_thumbnail,
    png_data_uri,
    write_summary,
)
from .detector import (
    ANOMALY, GENERATED, RECORD_FIELDS, Detector, Prepared, Thresholds, finite_or_none, verdict_record,
)  # fmt: skip
from ..core.spec import describe_spec, input_text
from .scan_writers import FILE_NAMES, FORMATS, WRITERS, FinishedScan, ScanWriter

__all__ = [
    "DEFAULT_OUT",
    "FILE_NAMES",
    "FORMATS",
    "ScanResult",
    "check_options",
    "default_threads",
    "default_workers",
    "parse_formats",
    "scan",
]

log = logging.getLogger(__name__)

DEFAULT_OUT = "ganaudit-report"
SUMMARY_NAME = "summary.json"
DEFAULT_TOP_K = 200
PASSED_SAMPLE = 12  # passed images shown in the HTML report (a seeded reservoir sample)
MAX_REPORTED_ERRORS = 200

ProgressCallback = Callable[[int, dict[str, int]], None]


def default_workers() -> int:
    """Decode threads when none is given: min(4, the CPUs this process may use)."""
    return min(4, available_cores())


def default_threads(workers: int) -> int:
    """onnxruntime intra-op threads per scoring call when none is given: the CPUs shared by the workers."""
    return max(1, available_cores() // max(1, workers))


def parse_formats(formats: str | Iterable[str]) -> list[str]:
    """``"csv,jsonl,html"`` (or a list) -> the formats in canonical order; ConfigError on an unknown one."""
    items = formats.split(",") if isinstance(formats, str) else list(formats)
    wanted = {f.strip().lower() for f in items if f.strip()}
    unknown = sorted(wanted - set(FORMATS))
    if unknown:
        raise ConfigError(f"unknown --format {', '.join(unknown)}: choose from {', '.join(FORMATS)} (comma-separated)")
    if not wanted:
        raise ConfigError(f"--format is empty: choose from {', '.join(FORMATS)} (comma-separated)")
    return [f for f in FORMATS if f in wanted]


def check_options(
    formats: Sequence[str], *, batch_size: int | None = None, workers: int | None = None,
    threads: int | None = None, max_pixels: int | None = None, top_k: int = 0, fpr: float | None = None,
    anomaly_threshold: float | None = None, generated_threshold: float | None = None, resume: bool = False,
    local: bool = True,
) -> None:  # fmt: skip
    """The one check of scan options (the CLI's and :func:`scan`'s): ConfigError naming the option.
    ``local``: workers and threads run in this process, so they are bounded by its cores too (with Ray they
    are actors and CPUs of the cluster)."""
    if fpr is not None and (anomaly_threshold is not None or generated_threshold is not None):
        raise ConfigError(
            "--fpr and --anomaly-threshold/--generated-threshold are mutually exclusive: give one or the other"
        )
    for flag, value, least in (
        ("--batch-size", batch_size, 1), ("--workers", workers, 1), ("--threads", threads, 1),
        ("--max-pixels", max_pixels, 1), ("--top-k", top_k, 0),
    ):  # fmt: skip
        if value is not None and value < least:
            raise ConfigError(f"{flag} must be {'at least 1' if least else '0 or more'}, got {value}")
    if local:
        check_threads(workers, "--workers")
        check_threads(threads, "--threads")
    if resume and "jsonl" not in formats:
        raise ConfigError("--resume reads results.jsonl: keep jsonl in --format")


@dataclass
class ScanResult:
    """What :func:`scan` returns: the output folder and the summary written to ``summary.json``."""

    out: Path
    summary: dict[str, Any]

    @property
    def counts(self) -> dict[str, int]:
        return self.summary["counts"]


# --------------------------------------------------------------------------- per-file work (thread pool)


@dataclass
class _Loaded:
    prepared: Prepared | None
    error: str | None
    size: int | None
    mtime: float | None
    sha256: str | None


def _decode_reason(message: str) -> str:
    # decode() of in-memory bytes calls the input "data"; here it is always a file.
    return "file " + message[5:] if message.startswith("data ") else message


def _load(detector: Detector, path: str) -> _Loaded:
    """Read a file once, hash those bytes, decode and preprocess them. Never raises for a bad file."""
    data, error, size, mtime = _read(path, detector.max_pixels)
    if data is None:
        return _Loaded(None, error, size, mtime, None)
    return _prepare(detector, data, size, mtime)


def _read(path: str, max_pixels: int) -> tuple[bytes | None, str | None, int | None, float | None]:
    """A file's bytes (a local path, or a URI read through pyarrow), or None and why not, with its size and
    mtime where known. A file too big for an image within ``max_pixels`` is refused unread. Never raises."""
    if is_uri(path):
        try:
            meta, data = read_uri(path, max_pixels)
        except ImageDecodeError as e:
            return None, str(e), None, None
        except (OSError, ValueError) as e:  # pyarrow's errors for a store that fails mid-read
            return None, f"could not read the file: {e}", None, None
        return data, None, meta.size, meta.mtime
    size: int | None = None
    mtime: float | None = None
    try:
        st = os.stat(path)
        size, mtime = st.st_size, st.st_mtime
        if stat.S_ISDIR(st.st_mode):
            raise ImageDecodeError("is a directory, not an image file")
        if not stat.S_ISREG(st.st_mode):
            raise ImageDecodeError("not a regular file (device, pipe or socket)")
        if st.st_size == 0:
            raise ImageDecodeError("file is empty (0 bytes)")
        check_file_size(st.st_size, max_pixels)  # refused unread
        with open(path, "rb") as f:
            return f.read(), None, size, mtime
    except ImageDecodeError as e:
        return None, str(e), size, mtime
    except FileNotFoundError:
        return None, "file not found (no such path, or deleted or moved since it was listed)", size, mtime
    except PermissionError:
        return None, "permission denied (check the file's read permission)", size, mtime
    except OSError as e:
        return None, f"could not read the file: {e.strerror or e}", size, mtime
    except ValueError:  # NUL byte or an unencodable name
        return None, "invalid file name", size, mtime


def _prepare(detector: Detector, data: bytes, size: int | None, mtime: float | None) -> _Loaded:
    """Hash, decode and preprocess a file's bytes."""
    digest = hashlib.sha256(data).hexdigest()
    try:
        if not data:
            raise ImageDecodeError("file is empty (0 bytes)")
        prepared = detector.prepare(memoryview(data))  # memoryview: no hint about passing paths (meant for API bytes)
    except ImageDecodeError as e:
        return _Loaded(None, _decode_reason(str(e)), size, mtime, digest)
    except Exception as e:  # noqa: BLE001 - one odd file must never abort the scan
        return _Loaded(None, f"unexpected {type(e).__name__} while decoding: {e}", size, mtime, digest)
    return _Loaded(prepared, None, size, mtime, digest)


def _error_row(shown: str, error: str, loaded: _Loaded | None = None) -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(ROW_FIELDS)
    row.update(path=shown, status="error", error=error, flagged=False, reasons=[f"Not scored: {error}"])
    if loaded is not None:
        row.update(sha256=loaded.sha256, size=loaded.size, mtime=loaded.mtime)
    return row


# The row fields a scored verdict fills (the others: the file's path, hash, size and mtime).
_VERDICT_FIELDS = tuple(f for f in ROW_FIELDS if f in RECORD_FIELDS)

# (real path, shown path, ready row or None when the file is to be read, JSONL offset of a resumed row)
_Entry = tuple[str, str, "dict[str, Any] | None", "int | None"]


def _process_chunk(detector: Detector, thr: Thresholds, entries: list[_Entry]) -> list[dict[str, Any]]:
    """Read, decode and score one chunk of files (a pool task); rows come back in the chunk's order."""
    loaded = [_load(detector, real) if row is None else None for real, _, row, _ in entries]
    items = [x.prepared for x in loaded if x is not None and x.prepared is not None]
    verdicts = iter(detector.score_prepared(items, thresholds=thr) if items else ())
    rows = []
    for (_, shown, row, _), x in zip(entries, loaded):
        if row is None:
            assert x is not None
            if x.prepared is None:
                row = _error_row(shown, x.error or "could not be read", x)
            else:
                row = {
                    "path": shown, **verdict_record(next(verdicts), _VERDICT_FIELDS),
                    "sha256": x.sha256, "size": x.size, "mtime": x.mtime,
                }  # fmt: skip
        rows.append(row)
    return rows


# Maps the walk's chunks to their rows, chunk by chunk in walk order: the thread pool here, or another engine
# (ganaudit.runtime.distributed.ray_scan) that scores the chunks' files elsewhere with _process_chunk.
ChunkRows = tuple[list[_Entry], list[dict[str, Any]]]
ChunkEngine = Callable[[Detector, Thresholds, Iterator[list[_Entry]]], Iterator[ChunkRows]]


def _pool_engine(pool: ThreadPoolExecutor, window: int) -> ChunkEngine:
    """Each pool task reads, decodes and scores one chunk; at most ``window`` chunks are in flight."""

    def run(detector: Detector, thr: Thresholds, chunks: Iterator[list[_Entry]]) -> Iterator[ChunkRows]:
        pending: deque[tuple[list[_Entry], Future]] = deque()
        for chunk in chunks:
            pending.append((chunk, pool.submit(_process_chunk, detector, thr, chunk)))
            while len(pending) >= window:
                entries, task = pending.popleft()
                yield entries, task.result()
        while pending:
            entries, task = pending.popleft()
            yield entries, task.result()

    return run


# --------------------------------------------------------------------------- aggregation


class _Tally:
    """Counts, one float per score for the histograms, the top-K flagged rows and the first errors.

    The flagged rows are kept per head (the top-K anomaly-flagged rows by anomaly score, the top-K
    generated-flagged rows by generated score), so that neither head's flags crowd out the other's.
    """

    def __init__(self, top_k: int, max_errors: int = MAX_REPORTED_ERRORS) -> None:
        self.counts = dict.fromkeys(
            ("candidates", "ok", "error", "flagged", "anomaly_flagged", "generated_flagged", "out_of_domain", "resumed",
             "processed"),
            0,
        )
        self.anomaly = array("d")
        self.generated = array("d")
        self.top_k = top_k
        self.max_errors = max_errors
        self._heaps: dict[str, list[tuple[float, int, str, dict[str, Any]]]] = {ANOMALY: [], GENERATED: []}
        self.errors: list[dict[str, Any]] = []
        self._seq = 0
        self.passed: list[tuple[str, dict[str, Any]]] = []  # reservoir sample of PASSED_SAMPLE passed rows
        self._n_passed = 0
        self._rng = random.Random(0)

    def add(self, row: dict[str, Any], real_path: str, resumed: bool) -> None:
        c = self.counts
        c["candidates"] += 1
        c["resumed" if resumed else "processed"] += 1
        self._seq += 1
        if row.get("status") != "ok":
            c["error"] += 1
            if len(self.errors) < self.max_errors:
                self.errors.append({"path": row.get("path"), "error": row.get("error")})
            return
        c["ok"] += 1
        a, g = row.get("anomaly_score"), row.get("generated_score")
        if a is not None:
            self.anomaly.append(a)
        if g is not None:
            self.generated.append(g)
        c["anomaly_flagged"] += bool(row.get("anomaly_flag"))
        c["generated_flagged"] += bool(row.get("generated_flag"))
        c["out_of_domain"] += row.get("in_domain") is False
        if not row.get("flagged"):
            self._n_passed += 1
            if len(self.passed) < PASSED_SAMPLE:
                self.passed.append((real_path, row))
            elif (j := self._rng.randrange(self._n_passed)) < PASSED_SAMPLE:
                self.passed[j] = (real_path, row)
        if row.get("flagged"):
            c["flagged"] += 1
            if self.top_k > 0:
                for head, score in ((ANOMALY, a), (GENERATED, g)):
                    if row.get(f"{head}_flag") and score is not None:
                        key = (score, -self._seq, real_path, row)  # ties keep the earlier file
                        heap = self._heaps[head]
                        if len(heap) < self.top_k:
                            heapq.heappush(heap, key)
                        else:
                            heapq.heappushpop(heap, key)

    def top(self) -> list[tuple[str, dict[str, Any]]]:
        """Up to top_k kept flagged rows as (real path, row): the highest anomaly score and the highest
        generated score alternate (rank 1 of each head, then rank 2, ...), each file once."""
        ranked = [sorted(self._heaps[h], reverse=True) for h in (ANOMALY, GENERATED)]
        out: list[tuple[str, dict[str, Any]]] = []
        seen: set[int] = set()
        for rank in range(max(map(len, ranked))):
            for keys in ranked:
                if rank < len(keys) and len(out) < self.top_k:
                    _, neg_seq, real_path, row = keys[rank]
                    if neg_seq not in seen:
                        seen.add(neg_seq)
                        out.append((real_path, row))
        return out


# --------------------------------------------------------------------------- resume


class _Resume:
    """--resume: the rows of an earlier scan's results.jsonl, indexed by path (ok rows only: errors are retried),
    and the line offset of each row of this scan, so that the file ends with one row per file in walk order."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.index: dict[str, tuple[int | None, float | None, int]] = {}
        self.n_lines = 0
        self.bad_lines = 0
        self.end = 0
        with open(path, "rb") as f:
            for start, self.end, row in jsonl_lines(f):
                self.n_lines += 1
                if row is None:
                    self.bad_lines += 1
                elif row.get("status") == "ok" and row.get("size") is not None and row.get("mtime") is not None:
                    self.index[row["path"]] = (row["size"], row["mtime"], start)
                else:
                    self.index.pop(row["path"], None)
        if path.stat().st_size > self.end:
            log.warning("dropping an incomplete last line in %s (the previous scan was cut off)", path)
            with open(path, "r+b") as f:
                f.truncate(self.end)
        self._reader = open(path, "rb")
        self.order = array("q")  # the JSONL line offset of each row of this scan, in walk order
        self.in_order = True
        self.lines_now = self.n_lines  # complete lines in results.jsonl

    def match(self, shown: str, real_path: str) -> tuple[dict[str, Any], int] | None:
        """The earlier row for this file and its offset, when size and mtime are unchanged."""
        hit = self.index.get(shown)
        if hit is None:
            return None
        try:
            now = _size_and_mtime(real_path)
        except (OSError, ImageDecodeError):
            return None
        if now != (hit[0], hit[1]):
            return None
        self._reader.seek(hit[2])
        return json.loads(self._reader.readline()), hit[2]

    def record(self, entries: list[_Entry], new_offsets: Sequence[int]) -> None:
        """Note where each row of a chunk is: kept rows where they were, new rows where the JSONL wrote them."""
        offsets = iter(new_offsets)
        for _, _, _, old in entries:
            off = old if old is not None else next(offsets)
            if self.order and off <= self.order[-1]:
                self.in_order = False
            self.order.append(off)
        self.lines_now += len(new_offsets)

    def close(self) -> None:
        self._reader.close()

    def finish(self) -> bool:
        """Rewrite results.jsonl in walk order, one row per file, when it is not so already; True if rewritten."""
        if self.in_order and len(self.order) == self.lines_now:
            return False
        # Changed files, retried errors or files gone since the first run.
        _rewrite_jsonl(self.path, self.order)
        return True


def _size_and_mtime(path: str) -> tuple[int, float | None]:
    if is_uri(path):
        meta = stat_uri(path)
        return meta.size, meta.mtime
    st = os.stat(path)
    return st.st_size, st.st_mtime


def listed_files(listing: str | os.PathLike, stats: WalkStats) -> Iterator[Any]:
    """The candidates of a listing file (``-``: standard input; a URI: read through pyarrow). Opens it now, so
    that a missing listing is a ConfigError at call time; closes it when the candidates run out."""
    name = os.fspath(listing)
    if name == "-":
        stream = sys.stdin.buffer
    elif is_uri(str(name)):
        stream = open_listing_uri(str(name))
    else:
        try:
            stream = open(name, "rb")
        except IsADirectoryError:
            raise ConfigError(f"--files-from {display_path(name)} is a folder: give it as a path to scan instead") from None
        except OSError as e:
            raise ConfigError(f"--files-from {display_path(name)}: {e.strerror or e}") from None
        mode = os.fstat(stream.fileno()).st_mode
        if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):  # /dev/zero was read for ever, without a row or an end
            stream.close()
            raise ConfigError(
                f"--files-from {display_path(name)} is a device, not a listing (give a file, a pipe or - for stdin)"
            )
    return _closing(iter_listing(stream, display_path(name), stats), stream if name != "-" else None)


def _closing(items: Iterator[Any], stream: Any) -> Iterator[Any]:
    try:
        yield from items
    finally:
        if stream is not None:
            stream.close()


def _rewrite_jsonl(path: Path, offsets: Sequence[int]) -> None:
    """Rewrite results.jsonl holding exactly the lines at ``offsets``, in that order (atomically)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(path, "rb") as src, open_plain(tmp) as dst:
        for off in offsets:
            src.seek(off)
            dst.write(src.readline())
    os.replace(tmp, path)


def _check_previous_summary(out: Path, summary: dict[str, Any]) -> None:
    """--resume must continue a scan made with the same model and thresholds."""
    try:
        old = json.loads((out / SUMMARY_NAME).read_text(encoding="utf-8"))
        old_model, old_thr = old["model"], old["thresholds"]
        if not isinstance(old_model, dict) or not isinstance(old_thr, dict):
            raise TypeError("model and thresholds must be objects")
    except FileNotFoundError:
        log.warning("--resume: no %s in %s; cannot check the earlier rows came from this model", SUMMARY_NAME, out)
        return
    except (ValueError, KeyError, TypeError, OSError):
        log.warning("--resume: %s in %s is unreadable; cannot check the earlier model", SUMMARY_NAME, out)
        return
    model = summary["model"]
    if old_model.get("spec_hash") != model["spec_hash"]:
        raise ConfigError(
            f"--resume: the results in {display_path(out)} were made with model {old_model.get('name')!r} "
            f"(spec {old_model.get('spec_hash')}), not {model['name']!r} (spec {model['spec_hash']}); "
            "use another --out, or drop --resume to start over"
        )
    for head in (ANOMALY, GENERATED):
        if old_thr.get(head) != summary["thresholds"][head]:
            raise ConfigError(
                f"--resume: the results in {display_path(out)} used {head} threshold {old_thr.get(head)}, "
                f"this scan uses {summary['thresholds'][head]}; use the same thresholds, another --out, "
                "or drop --resume to start over"
            )


# --------------------------------------------------------------------------- summary pieces


def _threshold_info(detector: Detector, thr: Thresholds, fpr: float | None) -> dict[str, Any]:
    def how(head: str, value: float | None) -> str:
        if value is None or not math.isfinite(value):
            return "n/a" if head == GENERATED and not detector.has_generated_head else "none: nothing is flagged"
        return thr.origin(head)

    return {
        ANOMALY: finite_or_none(thr.anomaly),
        GENERATED: finite_or_none(thr.generated),
        "fpr": fpr,
        "how": {
            ANOMALY: how(ANOMALY, thr.anomaly),
            GENERATED: how(GENERATED, thr.generated),
        },
    }


def _new_summary(
    detector: Detector, thr: Thresholds, fpr: float | None, fmts: list[str], path_list: list[Any], out_dir: Path,
    model_path: str | os.PathLike | None, **options: Any,
) -> dict[str, Any]:  # fmt: skip
    """summary.json as a scan starts (counts and times are filled in as it runs)."""
    return {
        "ganaudit_version": __version__,
        "complete": False,
        "started": _now(),
        "finished": None,
        "seconds": 0.0,
        "images_per_second": 0.0,
        "paths": [display_path(p) for p in path_list],
        "out": display_path(out_dir),
        "files": {**{f: FILE_NAMES[f] for f in fmts}, "summary": SUMMARY_NAME},
        "model": _model_info(detector, model_path),
        "thresholds": _threshold_info(detector, thr, fpr),
        "counts": {},
        **options,  # workers, threads, batch_size, recursive, resume (, engine): in this order
    }


def _model_info(detector: Detector, model_path: str | os.PathLike | None) -> dict[str, Any]:
    d = describe_spec(detector.spec)
    return {
        "name": detector.name,
        "spec_hash": detector.spec_hash,
        "path": display_path(model_path) if model_path is not None else None,
        "heads": d["heads"],
        "input": f"{input_text(d['input'])} ({d['input']['fit']})",
        "provenance": d["provenance"],
    }


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# --------------------------------------------------------------------------- visuals for the report


def _visual_input(
    detector: Detector, path: str, sha256: str | None
) -> tuple[np.ndarray | None, Prepared | None, str | None]:
    """Decode a flagged file again: (thumbnail, model input, why not shown). Runs in the pool. A file whose
    bytes are no longer those scored (``sha256``) is not shown: the report must never show another picture."""
    data, error, _, _ = _read(path, detector.max_pixels)
    if data is None:
        return None, None, f"not shown: {error}"
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        return None, None, "not shown: the file changed after it was scored"
    try:
        image = decode(memoryview(data), max_pixels=detector.max_pixels)
        # Through Detector.prepare, so the model input is exactly what the scan scored (whatever it holds).
        prepared = detector.prepare(image)
    except ImageDecodeError as e:
        return None, None, f"not shown: {e}"
    return make_thumbnail(image), prepared, None


def _flagged_visuals(
    detector: Detector, top: list[tuple[str, dict[str, Any]]], batch: int, pool: ThreadPoolExecutor
) -> tuple[list[FlaggedImage], tuple[float, float] | None]:
    """Thumbnails and heat-map overlays (as PNG data URIs) for the kept flagged rows.

    Just these files are decoded again, on the pool; their anomaly maps come from one more model run.
    """
    inputs = list(pool.map(lambda item: _visual_input(detector, item[0], item[1].get("sha256")), top))
    maps: list[np.ndarray | None] = [None] * len(inputs)
    evidence: list[np.ndarray | None] = [None] * len(inputs)
    where = [i for i, (_, prepared, _) in enumerate(inputs) if prepared is not None]
    for start in range(0, len(where), batch):
        part = where[start : start + batch]
        verdicts = detector.score_prepared([inputs[i][1] for i in part], include_map=True)  # type: ignore[misc]
        for i, v in zip(part, verdicts):
            maps[i] = None if v.anomaly_map is None else np.asarray(v.anomaly_map, np.float32)
            if top[i][1].get("generated_flag"):  # as the scan's thresholds decided, not the model's own
                evidence[i] = v.generated_map if v.generated_map is not None else evidence_map(detector, inputs[i][1])
    present = [m for m in maps if m is not None]
    span: tuple[float, float] | None = None
    if present:  # one color scale for the whole report: the 1st to 99.5th percentile of all these maps
        lo, hi = (float(v) for v in np.percentile(np.concatenate([m.ravel() for m in present]), [1.0, 99.5]))
        span = (lo, hi if hi > lo else lo + 1e-6)
    fit = detector.spec.preprocess.fit

    def encode(k: int) -> tuple[str | None, str | None, str | None]:
        thumb, m, e = inputs[k][0], maps[k], evidence[k]
        if thumb is None:
            return None, None, None
        overlay = heat_overlay(thumb, m, fit=fit, vmin=span[0], vmax=span[1]) if m is not None and span else None
        # The evidence lies over the image when the head's crops cover all of it (no larger than the model size).
        if e is not None and max(thumb.shape[:2]) > detector.spec.preprocess.size:
            e_img = heat_overlay(np.zeros_like(thumb), for_display(e), fit="stretch")
        elif e is not None:
            e_img = heat_overlay(thumb, for_display(e), fit=fit)
        else:
            e_img = None
        return png_data_uri(thumb), *(None if x is None else png_data_uri(x) for x in (overlay, e_img))

    uris = list(pool.map(encode, range(len(inputs))))
    items = [
        FlaggedImage(row=row, thumbnail=thumb, overlay=overlay, note=inputs[k][2], evidence=ev)
        for k, ((_, row), (thumb, overlay, ev)) in enumerate(zip(top, uris))
    ]
    return items, span


# --------------------------------------------------------------------------- the scan


def scan(
    detector: Detector,
    paths: Sequence[str | os.PathLike] | str | os.PathLike,
    out: str | os.PathLike = DEFAULT_OUT,
    *,
    formats: str | Iterable[str] = FORMATS,
    fpr: float | None = None,
    anomaly_threshold: float | None = None,
    generated_threshold: float | None = None,
    batch_size: int | None = None,
    workers: int | None = None,
    recursive: bool = True,
    resume: bool = False,
    top_k: int = DEFAULT_TOP_K,
    model_path: str | os.PathLike | None = None,
    on_progress: ProgressCallback | None = None,
    engine: ChunkEngine | None = None,
    engine_info: dict[str, Any] | None = None,
    files_from: str | os.PathLike | None = None,
) -> ScanResult:
    """Score every image file under ``paths`` and write the results to the folder ``out``.

    Parameters
    ----------
    detector
        A loaded :class:`~ganaudit.runtime.detector.Detector`.
    paths
        Files and folders to scan (folders are walked in sorted order).
    out
        Output folder: ``results.csv``, ``results.jsonl``, ``report.html`` (as chosen by ``formats``)
        and always ``summary.json``.
    formats
        Any of ``csv``, ``jsonl``, ``html`` (a list or a comma-separated string).
    fpr
        Flag at this false-positive rate on the model's normal-validation scores. Excludes the two
        explicit thresholds.
    anomaly_threshold, generated_threshold
        Fixed thresholds (raw anomaly score; generated probability).
    batch_size
        Images per onnxruntime call (default: the detector's).
    workers
        Threads that read, decode and score chunks of files (default: min(4, CPU count)). Load the
        detector with ``threads=default_threads(workers)`` to share the CPUs without oversubscribing.
    recursive
        Walk into subfolders.
    resume
        Keep the rows of ``out/results.jsonl`` whose file still has the same size and mtime, and
        score only the other files (rows with ``status=error`` are retried).
    top_k
        Flagged images shown with thumbnails in the HTML report: the highest anomaly scores among
        anomaly-flagged images and the highest generated scores among generated-flagged ones, alternating.
    model_path
        Recorded in the summary.
    on_progress
        Called after each batch with the number of rows just written and the running counts.
    files_from
        A listing file: one path or URI per line (see :mod:`ganaudit.core.listing`), scanned after ``paths``;
        ``-`` reads it from standard input, and a URI names a listing in an object store.
    engine, engine_info
        Scores the chunks of files elsewhere (e.g. :func:`ganaudit.runtime.distributed.ray_scan.ray_engine`) instead
        of the thread pool; ``engine_info`` is recorded in the summary as ``engine``.

    Returns a :class:`ScanResult`. Raises ConfigError for invalid options or missing paths; files that
    cannot be read never raise, they become rows with ``status="error"``.
    """
    # Half of this is the docstring; the scan itself runs in _ScanRun.
    fmts = parse_formats(formats)
    batch = detector.batch_size if batch_size is None else int(batch_size)
    n_workers = default_workers() if workers is None else int(workers)
    check_options(
        fmts, batch_size=batch, workers=n_workers, top_k=top_k, fpr=fpr, anomaly_threshold=anomaly_threshold,
        generated_threshold=generated_threshold, resume=resume,
    )  # fmt: skip
    if generated_threshold is not None and not detector.has_generated_head:
        raise ConfigError(f"--generated-threshold: model {detector.name!r} has no generated-image head")
    thr = detector.resolve_thresholds(
        fpr=fpr, anomaly_threshold=anomaly_threshold, generated_threshold=generated_threshold, base=detector.thresholds
    )
    path_list = [paths] if isinstance(paths, (str, bytes, os.PathLike)) else list(paths)
    if not path_list and files_from is None:
        raise ConfigError("no paths to scan: give at least one file or folder, or a listing (--files-from)")
    walk_stats = WalkStats()
    candidates = iter_files(path_list, recursive=recursive, stats=walk_stats)  # raises now for a missing path
    if files_from is not None:
        candidates = itertools.chain(candidates, listed_files(files_from, walk_stats))

    out_dir = Path(out)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out {display_path(out_dir)} exists and is not a folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    _check_output_files(out_dir)
    summary = _new_summary(
        detector, thr, fpr, fmts, path_list, out_dir, model_path, workers=n_workers, threads=detector.threads,
        batch_size=batch, recursive=recursive, resume=resume,
        **({"files_from": display_path(files_from)} if files_from is not None else {}),
        **({"engine": engine_info} if engine_info is not None else {}),
    )  # fmt: skip
    jsonl_path = out_dir / FILE_NAMES["jsonl"]
    previous: _Resume | None = None
    if resume:
        _check_previous_summary(out_dir, summary)
        if jsonl_path.exists():
            previous = _Resume(jsonl_path)
        else:
            log.warning("--resume: no results.jsonl in %s yet; scanning everything", display_path(out_dir))
    writers = [WRITERS[f](out_dir) for f in fmts]
    run = _ScanRun(detector, thr, out_dir, writers, previous, batch, n_workers, summary, walk_stats, on_progress, top_k)
    run.write_summary(complete=False)
    run.run(candidates, engine)
    return ScanResult(out_dir, summary)


def _check_output_files(out_dir: Path) -> None:
    """Refuse an output folder whose result files are links or not plain files: a link planted there (an upload
    or shared folder) would make the scan overwrite, or on --resume cut, the file it points to."""
    for name in (*FILE_NAMES.values(), SUMMARY_NAME):
        path = out_dir / name
        if path.is_symlink() or (path.exists() and not path.is_file()):
            raise ConfigError(
                f"--out {display_path(out_dir)}: {name} is a link or not a plain file; ganaudit writes its results "
                "only to plain files (remove it, or choose another --out)"
            )


class _ScanRun:
    """One scan in progress: the pool and the chunks in flight, the writers, the tally, the resume index and the
    summary. The walk is cut into chunks of up to ``batch`` files to decode (plus ready rows: walk errors,
    resumed rows); an engine (the thread pool, or e.g. Ray) scores them and gives their rows back in walk order,
    and they reach the writers in that order."""

    def __init__(
        self, detector: Detector, thr: Thresholds, out_dir: Path, writers: list[ScanWriter], previous: _Resume | None,
        batch: int, n_workers: int, summary: dict[str, Any], walk_stats: WalkStats, on_progress: ProgressCallback | None,
        top_k: int,
    ) -> None:  # fmt: skip
        self.detector, self.thr, self.writers, self.previous = detector, thr, writers, previous
        self.batch, self.n_workers, self.window = batch, n_workers, max(2, 2 * n_workers)
        self.summary, self.walk_stats, self.on_progress = summary, walk_stats, on_progress
        self.tally = _Tally(top_k)
        self.t0 = time.perf_counter()
        self.out_dir = out_dir
        self.jsonl = next((w for w in writers if w.format == "jsonl"), None)

    def update_summary(self, complete: bool) -> dict[str, Any]:
        """Bring the summary's counts, times and state up to date."""
        seconds = time.perf_counter() - self.t0
        counts, ws = self.tally.counts, self.walk_stats
        self.summary["counts"] = {**counts, "skipped": ws.skipped_non_image, "duplicates": ws.duplicates}
        self.summary["complete"] = complete
        self.summary["finished"] = _now() if complete else None
        self.summary["seconds"] = round(seconds, 3)
        self.summary["images_per_second"] = round(counts["processed"] / seconds, 2) if seconds > 0 else 0.0
        return self.summary

    def write_summary(self, complete: bool) -> None:
        write_summary(self.out_dir / SUMMARY_NAME, self.update_summary(complete))

    def run(self, candidates: Iterable[Any], engine: ChunkEngine | None = None) -> None:
        """Score every candidate (on the thread pool, or with ``engine``), write the rows, then finish the writers
        and the summary. The pool also makes the report's thumbnails."""
        for w in self.writers:
            w.open(resume=self.previous is not None)
        self.pool = ThreadPoolExecutor(max_workers=self.n_workers, thread_name_prefix="ganaudit-scan")
        with self.pool:  # on the way out: wait for running tasks, cancel the queued ones
            complete = False
            try:
                scored = (engine or _pool_engine(self.pool, self.window))(self.detector, self.thr, self.chunks(candidates))
                for entries, rows in scored:
                    self.consume(entries, rows)
                complete = True
            finally:
                if not complete:
                    self.pool.shutdown(wait=True, cancel_futures=True)
                for w in self.writers:
                    w.close()
                if self.previous is not None:
                    self.previous.close()
                if not complete:  # interrupted or failed: say so, keep the partial rows
                    self.write_summary(complete=False)
            rewritten = self.previous is not None and self.previous.finish()
            self.previous = None  # its offsets are no longer needed
            done = FinishedScan(jsonl_rewritten=rewritten, report=self.report_data)
            for w in self.writers:
                w.finish(done)
        self.write_summary(complete=True)

    def chunks(self, candidates: Iterable[Any]) -> Iterator[list[_Entry]]:
        """The walk in chunks of up to ``batch`` files to decode (plus ready rows: walk errors, resumed rows)."""
        chunk: list[_Entry] = []
        n_to_load = 0
        for cand in candidates:
            shown = display_path(cand.path)
            if cand.error is not None:
                chunk.append((cand.path, shown, _error_row(shown, cand.error), None))
            else:
                hit = self.previous.match(shown, cand.path) if self.previous is not None else None
                if hit is not None:
                    chunk.append((cand.path, shown, hit[0], hit[1]))
                else:
                    chunk.append((cand.path, shown, None, None))
                    n_to_load += 1
            if n_to_load >= self.batch or len(chunk) >= 4 * self.batch:
                yield chunk
                chunk, n_to_load = [], 0
        if chunk:
            yield chunk

    def consume(self, entries: list[_Entry], rows: list[dict[str, Any]]) -> None:
        """Write one scored chunk's rows (in walk order) and add them to the tally."""
        new_rows = [row for (_, _, _, old), row in zip(entries, rows) if old is None]
        offsets: Sequence[int] = ()
        for w in self.writers:
            written = w.write(new_rows)
            if w is self.jsonl:
                offsets = written
        if self.previous is not None:
            self.previous.record(entries, offsets)
        for (real, _, _, old), row in zip(entries, rows):
            self.tally.add(row, real, resumed=old is not None)
        if self.on_progress is not None:
            self.on_progress(len(rows), dict(self.tally.counts))

    def report_data(self) -> ReportData:
        """The HTML report's inputs: the summary, the score arrays, and the kept flagged and passed images."""
        tally = self.tally
        top = tally.top()
        shown, span = _flagged_visuals(self.detector, top + tally.passed, self.batch, self.pool)
        flagged, passed = shown[: len(top)], shown[len(top) :]
        return ReportData(
            summary=dict(self.update_summary(complete=True)),
            anomaly_scores=np.frombuffer(tally.anomaly, np.float64) if len(tally.anomaly) else np.empty(0),
            generated_scores=np.frombuffer(tally.generated, np.float64) if len(tally.generated) else np.empty(0),
            flagged=flagged,
            errors=tally.errors,
            has_generated_head=self.detector.has_generated_head,
            map_range=span,
            passed=passed,
        )
