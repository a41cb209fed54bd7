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
import json
import logging
import math
import os
import random
import stat
import time
from array import array
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .errors import ConfigError, ImageDecodeError
from .files import WalkStats, display_path, iter_files
from .evidence import evidence_map, for_display
from .imaging import decode
from .report import (
    ROW_FIELDS,
    CsvWriter,
    FlaggedImage,
    JsonlWriter,
    ReportData,
    csv_from_jsonl,
    heat_overlay,
    make_thumbnail,
    png_data_uri,
    render_html,
    write_output,
    write_summary,
)
from .runtime import ANOMALY, GENERATED, Detector, Prepared, Thresholds

__all__ = [
    "DEFAULT_OUT",
    "FILE_NAMES",
    "FORMATS",
    "ScanResult",
    "default_threads",
    "default_workers",
    "parse_formats",
    "scan",
]

log = logging.getLogger(__name__)

FORMATS = ("csv", "jsonl", "html")
DEFAULT_OUT = "ganaudit-report"
FILE_NAMES = {"csv": "results.csv", "jsonl": "results.jsonl", "html": "report.html"}
SUMMARY_NAME = "summary.json"
DEFAULT_TOP_K = 200
PASSED_SAMPLE = 12  # passed images shown in the HTML report (a seeded reservoir sample)
MAX_REPORTED_ERRORS = 200
# Same rule as imaging: a file bigger than any image within the pixel limit could be is refused unread.
_MAX_BYTES_PER_PIXEL = 8
_SLACK_BYTES = 64 << 20

ProgressCallback = Callable[[int, dict[str, int]], None]


def default_workers() -> int:
    """Decode threads when none is given: min(4, CPU count)."""
    return max(1, min(4, os.cpu_count() or 1))


def default_threads(workers: int) -> int:
    """onnxruntime intra-op threads per scoring call when none is given: the CPUs shared by the workers."""
    return max(1, (os.cpu_count() or 1) // max(1, workers))


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
        limit = _MAX_BYTES_PER_PIXEL * detector.max_pixels + _SLACK_BYTES
        if st.st_size > limit:
            raise ImageDecodeError(
                f"file is {st.st_size / 1e6:.0f} MB, too large for an image within the "
                f"{detector.max_pixels / 1e6:g} MP limit"
            )
        with open(path, "rb") as f:
            data = f.read()
    except ImageDecodeError as e:
        return _Loaded(None, str(e), size, mtime, None)
    except FileNotFoundError:
        return _Loaded(None, "file not found (deleted or moved during the scan?)", size, mtime, None)
    except PermissionError:
        return _Loaded(None, "permission denied (check the file's read permission)", size, mtime, None)
    except OSError as e:
        return _Loaded(None, f"could not read the file: {e.strerror or e}", size, mtime, None)
    except ValueError:  # NUL byte or an unencodable name
        return _Loaded(None, "invalid file name", size, mtime, None)
    digest = hashlib.sha256(data).hexdigest()
    try:
        if not data:
            raise ImageDecodeError("file is empty (0 bytes)")
        prepared = detector.prepare(memoryview(data))  # memoryview: always decoded as data, never as a path
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


def _finite(x: float | None) -> float | None:
    return x if x is None or math.isfinite(x) else None


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
                v = next(verdicts)
                row = {
                    "path": shown, "status": "ok", "error": None, "width": v.width, "height": v.height,
                    "anomaly_score": _finite(v.anomaly_score), "anomaly_percentile": v.anomaly_percentile,
                    "anomaly_flag": v.anomaly_flag, "generated_score": _finite(v.generated_score),
                    "generated_flag": v.generated_flag, "flagged": v.flagged, "sha256": x.sha256,
                    "size": x.size, "mtime": x.mtime, "in_domain": v.in_domain,
                    "domain_score": _finite(v.domain_score), "reasons": v.reasons,
                }  # fmt: skip
        rows.append(row)
    return rows


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


class _Previous:
    """The rows of an earlier scan's results.jsonl, indexed by path (ok rows only: errors are retried)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.index: dict[str, tuple[int | None, float | None, int]] = {}
        self.n_lines = 0
        self.bad_lines = 0
        self.end = 0
        with open(path, "rb") as f:
            pos = 0
            for line in f:
                start, pos = pos, pos + len(line)
                if not line.endswith(b"\n"):
                    break  # a last line cut short by a killed scan
                self.end = pos
                self.n_lines += 1
                try:
                    row = json.loads(line)
                    key = row["path"]
                except (ValueError, TypeError, KeyError):
                    self.bad_lines += 1
                    continue
                if row.get("status") == "ok" and row.get("size") is not None and row.get("mtime") is not None:
                    self.index[key] = (row["size"], row["mtime"], start)
                else:
                    self.index.pop(key, None)
        if path.stat().st_size > self.end:
            log.warning("dropping an incomplete last line in %s (the previous scan was cut off)", path)
            with open(path, "r+b") as f:
                f.truncate(self.end)
        self._reader = open(path, "rb")

    def match(self, shown: str, real_path: str) -> tuple[dict[str, Any], int] | None:
        """The earlier row for this file and its offset, when size and mtime are unchanged."""
        hit = self.index.get(shown)
        if hit is None:
            return None
        try:
            st = os.stat(real_path)
        except OSError:
            return None
        if (st.st_size, st.st_mtime) != (hit[0], hit[1]):
            return None
        self._reader.seek(hit[2])
        return json.loads(self._reader.readline()), hit[2]

    def close(self) -> None:
        self._reader.close()


def _rewrite_jsonl(path: Path, offsets: Sequence[int]) -> None:
    """Rewrite results.jsonl holding exactly the lines at ``offsets``, in that order (atomically)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(path, "rb") as src, open(tmp, "wb") as dst:
        for off in offsets:
            src.seek(off)
            dst.write(src.readline())
    os.replace(tmp, path)


def _check_previous_summary(out: Path, summary: dict[str, Any]) -> None:
    """--resume must continue a scan made with the same model and thresholds."""
    try:
        old = json.loads((out / SUMMARY_NAME).read_text(encoding="utf-8"))
        old_model, old_thr = old["model"], old["thresholds"]
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


def _threshold_info(
    detector: Detector, thr: Thresholds, fpr: float | None, anomaly_threshold: float | None,
    generated_threshold: float | None,
) -> dict[str, Any]:  # fmt: skip
    spec = detector.spec

    def how(head: str, value: float | None, explicit: float | None) -> str:
        if value is None or not math.isfinite(value):
            return "n/a" if head == GENERATED and not detector.has_generated_head else "none: nothing is flagged"
        if explicit is not None:
            return f"set with --{head}-threshold"
        if fpr is not None and head in spec.quantiles:
            return f"at FPR {fpr:g} on the model's normal-validation scores (--fpr)"
        t = spec.thresholds.get(head)
        if t is not None and t.value == value:
            fitted = f"FPR {t.fpr:g} on {t.n_val} normal validation images" if t.fpr is not None else t.method
            return f"model default: {fitted}"
        return "set when the detector was loaded"

    return {
        ANOMALY: _finite(thr.anomaly),
        GENERATED: _finite(thr.generated),
        "fpr": fpr,
        "how": {
            ANOMALY: how(ANOMALY, thr.anomaly, anomaly_threshold),
            GENERATED: how(GENERATED, thr.generated, generated_threshold),
        },
    }


def _model_info(detector: Detector, model_path: str | os.PathLike | None) -> dict[str, Any]:
    p = detector.spec.preprocess
    return {
        "name": detector.name,
        "spec_hash": detector.spec_hash,
        "path": display_path(model_path) if model_path is not None else None,
        "heads": list(detector.spec.heads),
        "input": f"{p.channels} x {p.size} x {p.size} ({p.fit})",
        "provenance": detector.spec.provenance,
    }


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# --------------------------------------------------------------------------- visuals for the report


def _visual_input(detector: Detector, path: str) -> tuple[np.ndarray | None, Prepared | None, str | None]:
    """Decode a flagged file again: (thumbnail, model input, why not shown). Runs in the pool."""
    try:
        image = decode(path, max_pixels=detector.max_pixels)
    except ImageDecodeError as e:
        return None, None, f"not shown: {e}"
    try:
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
    inputs = list(pool.map(lambda item: _visual_input(detector, item[0]), top))
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
) -> ScanResult:
    """Score every image file under ``paths`` and write the results to the folder ``out``.

    Parameters
    ----------
    detector
        A loaded :class:`~ganaudit.runtime.Detector`.
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

    Returns a :class:`ScanResult`. Raises ConfigError for invalid options or missing paths; files that
    cannot be read never raise, they become rows with ``status="error"``.
    """
    fmts = parse_formats(formats)
    batch = detector.batch_size if batch_size is None else int(batch_size)
    n_workers = default_workers() if workers is None else int(workers)
    if batch < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {batch}")
    if n_workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {n_workers}")
    if top_k < 0:
        raise ConfigError(f"--top-k must be 0 or more, got {top_k}")
    if fpr is not None and (anomaly_threshold is not None or generated_threshold is not None):
        raise ConfigError(
            "--fpr and --anomaly-threshold/--generated-threshold are mutually exclusive: give one or the other"
        )
    if generated_threshold is not None and not detector.has_generated_head:
        raise ConfigError(f"--generated-threshold: model {detector.name!r} has no generated-image head")
    if resume and "jsonl" not in fmts:
        raise ConfigError("--resume reads results.jsonl: keep jsonl in --format")
    thr = detector.resolve_thresholds(
        fpr=fpr, anomaly_threshold=anomaly_threshold, generated_threshold=generated_threshold, base=detector.thresholds
    )
    path_list = [paths] if isinstance(paths, (str, bytes, os.PathLike)) else list(paths)
    if not path_list:
        raise ConfigError("no paths to scan: give at least one file or folder")
    walk_stats = WalkStats()
    candidates = iter_files(path_list, recursive=recursive, stats=walk_stats)  # raises now for a missing path

    out_dir = Path(out)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out {display_path(out_dir)} exists and is not a folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {f: FILE_NAMES[f] for f in fmts}
    summary: dict[str, Any] = {
        "ganaudit_version": __version__,
        "complete": False,
        "started": _now(),
        "finished": None,
        "seconds": 0.0,
        "images_per_second": 0.0,
        "paths": [display_path(p) for p in path_list],
        "out": display_path(out_dir),
        "files": {**files, "summary": SUMMARY_NAME},
        "model": _model_info(detector, model_path),
        "thresholds": _threshold_info(detector, thr, fpr, anomaly_threshold, generated_threshold),
        "counts": {},
        "workers": n_workers,
        "threads": detector.threads,
        "batch_size": batch,
        "recursive": recursive,
        "resume": resume,
    }
    jsonl_path, csv_path = out_dir / FILE_NAMES["jsonl"], out_dir / FILE_NAMES["csv"]
    previous: _Previous | None = None
    if resume:
        _check_previous_summary(out_dir, summary)
        if jsonl_path.exists():
            previous = _Previous(jsonl_path)
        else:
            log.warning("--resume: no results.jsonl in %s yet; scanning everything", display_path(out_dir))
    if "html" in fmts:
        (out_dir / FILE_NAMES["html"]).unlink(missing_ok=True)  # never leave a stale report beside new rows
    tally = _Tally(top_k)

    def update_summary(complete: bool) -> dict[str, Any]:
        seconds = time.perf_counter() - t0
        summary["counts"] = {**tally.counts, "skipped": walk_stats.skipped_non_image, "duplicates": walk_stats.duplicates}
        summary["complete"] = complete
        summary["finished"] = _now() if complete else None
        summary["seconds"] = round(seconds, 3)
        summary["images_per_second"] = round(tally.counts["processed"] / seconds, 2) if seconds > 0 else 0.0
        return summary

    t0 = time.perf_counter()
    write_summary(out_dir / SUMMARY_NAME, update_summary(False))
    if previous is not None and "csv" in fmts:
        csv_from_jsonl(jsonl_path, csv_path)  # consistent with the (possibly truncated) JSONL
    append = previous is not None
    jsonl = JsonlWriter(jsonl_path, append=append) if "jsonl" in fmts else None
    csvw = CsvWriter(csv_path, append=append) if "csv" in fmts else None
    order = array("q")  # resume only: the JSONL line offset of each row, in walk order
    in_order = True
    lines_now = previous.n_lines if previous else 0  # complete lines in results.jsonl

    def consume(task: Future, entries: list[_Entry]) -> None:
        """Write one finished chunk's rows (in walk order) and add them to the tally."""
        nonlocal in_order, lines_now
        rows: list[dict[str, Any]] = task.result()
        new_rows = [row for (_, _, _, old), row in zip(entries, rows) if old is None]
        offsets = iter(jsonl.write(new_rows)) if jsonl is not None else iter(())
        if csvw is not None:
            csvw.write(new_rows)
        for (real, _, _, old), row in zip(entries, rows):
            if previous is not None:
                off = old if old is not None else next(offsets)
                if order and off <= order[-1]:
                    in_order = False
                order.append(off)
            tally.add(row, real, resumed=old is not None)
        lines_now += len(new_rows)
        if on_progress is not None:
            on_progress(len(rows), dict(tally.counts))

    # Chunks of up to `batch` files to decode (plus ready rows: walk errors, resumed rows) go to the pool;
    # each task reads, decodes and scores its chunk; at most `window` chunks are in flight.
    window = max(2, 2 * n_workers)
    pending: deque[tuple[Future, list[_Entry]]] = deque()
    chunk: list[_Entry] = []
    n_to_load = 0
    pool = ThreadPoolExecutor(max_workers=n_workers, thread_name_prefix="ganaudit-scan")

    def submit() -> None:
        nonlocal chunk, n_to_load
        if chunk:
            pending.append((pool.submit(_process_chunk, detector, thr, chunk), chunk))
            chunk, n_to_load = [], 0
        while len(pending) >= window:
            consume(*pending.popleft())

    with pool:  # on the way out: wait for running tasks, cancel the queued ones
        complete = False
        try:
            for cand in candidates:
                shown = display_path(cand.path)
                if cand.error is not None:
                    chunk.append((cand.path, shown, _error_row(shown, cand.error), None))
                else:
                    hit = previous.match(shown, cand.path) if previous is not None else None
                    if hit is not None:
                        chunk.append((cand.path, shown, hit[0], hit[1]))
                    else:
                        chunk.append((cand.path, shown, None, None))
                        n_to_load += 1
                if n_to_load >= batch or len(chunk) >= 4 * batch:
                    submit()
            submit()
            while pending:
                consume(*pending.popleft())
            complete = True
        finally:
            if not complete:
                pool.shutdown(wait=True, cancel_futures=True)
            for w in (jsonl, csvw):
                if w is not None:
                    w.close()
            if previous is not None:
                previous.close()
            if not complete:  # interrupted or failed: say so, keep the partial rows
                write_summary(out_dir / SUMMARY_NAME, update_summary(False))

        if previous is not None and (not in_order or len(order) != lines_now):
            # Changed files, retried errors or files gone since the first run: restore walk order, one row each.
            _rewrite_jsonl(jsonl_path, order)
            if "csv" in fmts:
                csv_from_jsonl(jsonl_path, csv_path)
        del order
        if "html" in fmts:
            top = tally.top()
            shown, span = _flagged_visuals(detector, top + tally.passed, batch, pool)
            flagged, passed = shown[: len(top)], shown[len(top) :]
            data = ReportData(
                summary=dict(update_summary(True)),
                anomaly_scores=np.frombuffer(tally.anomaly, np.float64) if len(tally.anomaly) else np.empty(0),
                generated_scores=np.frombuffer(tally.generated, np.float64) if len(tally.generated) else np.empty(0),
                flagged=flagged,
                errors=tally.errors,
                has_generated_head=detector.has_generated_head,
                map_range=span,
                passed=passed,
            )
            write_output(out_dir / FILE_NAMES["html"], render_html(data))
    write_summary(out_dir / SUMMARY_NAME, update_summary(True))
    return ScanResult(out_dir, summary)
