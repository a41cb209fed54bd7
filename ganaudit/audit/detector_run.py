"""``audit detector`` end to end: read the truth CSV, score the images with the detector, audit every head."""

from __future__ import annotations

import csv
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import ConfigError
from ..core.files import iter_files, read_csv_rows
from .detector import audit_head

HEADS = {  # head -> (Verdict field of the raw score, of the calibrated probability, of the flag)
    "anomaly": ("anomaly_score", "anomaly_probability", "anomaly_flag"),
    "generated": ("generated_score", "generated_score", "generated_flag"),
}
POSITIVE = {"1", "true", "yes", "anomalous", "anomaly", "generated", "fake", "positive"}
NEGATIVE = {"0", "false", "no", "normal", "real", "negative"}


def read_truth(path: str | os.PathLike) -> list[dict[str, str]]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--truth: file not found: {path}")
    rows = read_csv_rows(path, "--truth", csv.DictReader)
    if not rows or "path" not in rows[0]:
        raise ConfigError(f"--truth: {path} needs a header with a 'path' column and one truth column per head")
    seen: dict[str, dict[str, str]] = {}
    for line, row in enumerate(rows, start=2):
        if None in row or None in row.values():
            raise ConfigError(f"--truth: {path} line {line} has {'more' if None in row else 'fewer'} cells than the header")
        if row["path"] in seen and seen[row["path"]] != row:
            raise ConfigError(f"--truth: {path} line {line}: {row['path']!r} has an earlier row that disagrees with it")
        seen[row["path"]] = row
    return rows


def _binary(value: str, column: str) -> int:
    v = value.strip().lower()
    if v in POSITIVE:
        return 1
    if v in NEGATIVE:
        return 0
    raise ConfigError(f"--truth: column {column!r} holds {value!r}; use 1/0 (positive/normal)")


def _match(rows: list[dict[str, str]], files: list[str], truth_dir: Path) -> list[tuple[str, dict[str, str]]]:
    """(file, truth row) pairs: a row's path matches a file in full, relative to the CSV's folder, or by name."""
    by_key: dict[str, dict[str, str]] = {}
    for r in rows:
        by_key.setdefault(r["path"], r)
    pairs = []
    for f in files:
        p = Path(f)
        for key in (f, str(p.resolve()), os.path.relpath(p, truth_dir), p.name):
            if key in by_key:
                pairs.append((f, by_key[key]))
                break
    return pairs


def run_detector_audit(
    model: str, data: list[Path], truth: str, *, group: str | None = None, seed: int = 0, progress: bool = False,
    batch: int = 64,
) -> dict[str, Any]:  # fmt: skip
    """Score the images of ``data`` that have a truth row and audit every head that has a truth column
    (``anomaly``, ``generated``, or ``label`` for every head)."""
    from ..core.shipped import resolve_model
    from ..runtime.detector import Detector

    t0 = time.perf_counter()
    rows = read_truth(truth)
    if group is not None and group not in rows[0]:
        raise ConfigError(f"--group: no column {group!r} in {truth} (columns: {', '.join(rows[0])})")
    files = [c.path for c in iter_files([str(d) for d in data]) if not c.error]
    pairs = _match(rows, files, Path(truth).parent)
    if not pairs:
        raise ConfigError(f"no image under {', '.join(map(str, data))} has a row in {truth}")
    model_path = resolve_model(model)
    det = Detector.load(model_path)
    heads = [h for h in det.spec.heads if h in HEADS and (h in rows[0] or "label" in rows[0])]
    if not heads:
        raise ConfigError(f"--truth: no column for the detector's heads ({', '.join(det.spec.heads)}) nor 'label'")
    starts = range(0, len(pairs), batch)
    if progress:
        import sys

        from tqdm import tqdm

        starts = tqdm(starts, desc="scoring", unit="batch", leave=False, file=sys.stderr)
    verdicts = [v for s in starts for v in det.detect([f for f, _ in pairs[s : s + batch]])]
    ok = [i for i, v in enumerate(verdicts) if v.status == "ok"]
    groups = np.array([pairs[i][1][group] if group else "all" for i in ok])
    if group and "all" in groups:
        raise ConfigError(f"--group {group}: rename the group called 'all'; the audit uses that name for every image")
    result: dict[str, Any] = {
        "model": str(model_path), "model_name": det.name, "truth": str(truth), "group_column": group,
        "counts": {"images": len(files), "with_truth": len(pairs), "scored": len(ok), "unreadable": len(pairs) - len(ok)},
        "heads": {},
    }  # fmt: skip
    for h in heads:
        col = h if h in rows[0] else "label"
        score_f, prob_f, flag_f = HEADS[h]
        y = np.array([_binary(pairs[i][1][col], col) for i in ok])
        score = np.array([getattr(verdicts[i], score_f) for i in ok], dtype=np.float64)
        flag = np.array([bool(getattr(verdicts[i], flag_f)) for i in ok])
        probs = [getattr(verdicts[i], prob_f) for i in ok]
        prob = None if any(p is None for p in probs) else np.array(probs, dtype=np.float64)
        target = det.spec.thresholds[h].fpr if h in det.spec.thresholds else None
        result["heads"][h] = {"truth_column": col, **audit_head(y, flag, score, prob, groups, target, seed=seed)}
    result["seconds"] = round(time.perf_counter() - t0, 2)
    return result


def summary_line(result: dict[str, Any]) -> str:
    parts = [f"{result['counts']['scored']} images scored"]
    for h, r in result["heads"].items():
        a = r["groups"]["all"]
        fpr = r["fpr_at_threshold"]
        auc = a["auroc"]["value"]
        bits = [f"AUROC {auc:.3f}" if auc is not None else "AUROC n/a",
                f"FPR {fpr['realised']:.3f} (target {fpr['target']})" if fpr["realised"] is not None else "FPR n/a"]  # fmt: skip
        if r["calibration"]:
            bits.append(f"ECE {r['calibration']['ece']:.3f}")
        d = r["between_groups"]["tpr"]["difference"]
        if d is not None:
            bits.append(f"TPR gap {d:.3f}")
        parts.append(f"{h}: " + ", ".join(bits))
    return "; ".join(parts)
