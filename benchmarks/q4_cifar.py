"""Q4: one-class anomaly detection on CIFAR-10 photographs (protocol in shared/BENCHMARKS.md).

    python benchmarks/q4_cifar.py [--classes 0,1,...] [--out runs/q4] [--json q4.json] [--dev] [-- TRAIN_ARGS]

For each class c: the 5,000 training JPEGs of class c are written, as they are, to OUT/data/<class>, then
`ganaudit train OUT/data/<class> --size 32` (defaults otherwise, exactly as a user runs it; 10 % held out for
thresholds and fusion) and `ganaudit export`; all 10,000 test images are scored, from their JPEG bytes,
through the ONNX `Detector`. A test image is anomalous iff its class != c. PCA, kNN and IsolationForest on
raw pixels are fitted on the same 5,000 training images in the same run. No test image is used for training,
thresholds, fusion or selection.

``--dev`` adds the lever study that chose the defaults: the exported graph's score components, as robust
z-scores against the run's held-out class-c validation images, on a *development* split of training images
only (those validation images against DEV_OTHERS training images of the other classes), singly and in the
candidate weightings of CANDIDATES, and the exported model's own ``anomaly_score`` on the same split ("dev
shipped fusion": the graph's weights and combine rule, run by onnxruntime). Test AUROCs are never used to choose.
"""

from __future__ import annotations

import argparse
import json
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

from _common import ROOT, train_and_export
from q1_mnist import baselines
from ganaudit.core.imaging import decode
from ganaudit.runtime.detector import Detector

ARCHIVE = ROOT.parent / "shared" / "data" / "cifar10" / "cifar10-jpg.tar.gz"
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
TRAIN_ARGS = ["--size", "32", "--no-generated-head"]  # the anomaly score does not depend on the generated head
DEV_OTHERS = 2000
# Candidate fusion weights for the dev study, in scoring.COMPONENTS order:
# pixel residual, feature residual, -D logit, kNN distance, patch distance, rotation score.
CANDIDATES = {
    "aligned before rotation (0,1,.5,4,0,0)": (0, 1, 0.5, 4, 0, 0),
    "rotation only": (0, 0, 0, 0, 0, 1),
    "rotation + kNN (1:1)": (0, 0, 0, 1, 0, 1),
    "rotation + kNN (2:1)": (0, 0, 0, 1, 0, 2),
    "rotation 4 + feature 1 + logit .5 + kNN 4": (0, 1, 0.5, 4, 0, 4),
    "rotation 8 + feature 1 + logit .5 + kNN 4": (0, 1, 0.5, 4, 0, 8),
    "rotation 4 + kNN 4": (0, 0, 0, 4, 0, 4),
    "rotation 2 + kNN 1 + patch 1": (0, 0, 0, 1, 1, 2),
}


def read_archive(split: str) -> tuple[list[bytes], np.ndarray, list[str]]:
    """(JPEG bytes, class indices, member names) of one split, straight from the archive."""
    data, labels, names = [], [], []
    with tarfile.open(ARCHIVE) as tar:
        for m in tar:
            parts = m.name.split("/")
            if m.isfile() and len(parts) >= 3 and parts[-3] == split:
                data.append(tar.extractfile(m).read())
                labels.append(CLASSES.index(parts[-2]))
                names.append(parts[-1])
    return data, np.array(labels), names


def write_class_folder(folder: Path, data: list[bytes], names: list[str]) -> None:
    if folder.is_dir() and len(list(folder.glob("*.jpg"))) == len(data):
        return
    folder.mkdir(parents=True, exist_ok=True)
    for blob, name in zip(data, names):
        (folder / name).write_bytes(blob)


def pixels(data: list[bytes]) -> np.ndarray:
    return np.stack([decode(b) for b in data]).reshape(len(data), -1).astype(np.float64) / 255.0


def dev_study(run: Path, det: Detector, others: list[bytes]) -> dict[str, float]:
    """Dev-split AUROC of each component, of each CANDIDATES weighting and of the exported model's anomaly
    score (see the module docstring)."""
    from score_levers import z_scorer

    from ganaudit.core.imaging import preprocess_batch
    from ganaudit.training.scoring import COMPONENTS

    cfg, val, z_of = z_scorer(run)
    inputs = np.concatenate([val, preprocess_batch([decode(b) for b in others], cfg.preprocess)])
    dev = z_of(inputs)
    truth = np.r_[np.zeros(len(val)), np.ones(len(others))]
    shipped = det.run(inputs)["anomaly_score"]
    names = [c.name for c in COMPONENTS][: dev.shape[1]]
    out = {f"dev {n}": float(roc_auc_score(truth, dev[:, i])) for i, n in enumerate(names)}
    for label, w in CANDIDATES.items():
        out[f"dev {label}"] = float(roc_auc_score(truth, dev @ np.array(w[: dev.shape[1]], dtype=np.float64)))
    out["dev shipped fusion"] = float(roc_auc_score(truth, shipped))
    return out


def run_class(c: int, args: argparse.Namespace, train: tuple, test: tuple, rng: np.random.Generator) -> dict:
    (tr_data, tr_y, tr_names), (te_data, te_y, _) = train, test
    mine = np.flatnonzero(tr_y == c)
    folder = args.out / "data" / CLASSES[c]
    write_class_folder(folder, [tr_data[i] for i in mine], [tr_names[i] for i in mine])
    model, seconds = train_and_export(
        [str(folder), *TRAIN_ARGS, *args.train_args], args.out / CLASSES[c], args.out / f"{CLASSES[c]}.onnx",
        f"cifar10-{CLASSES[c]}",
    )  # fmt: skip
    det = Detector.load(model)
    start = time.perf_counter()
    verdicts = det.detect(te_data)
    score_seconds = time.perf_counter() - start
    scores = {"ganaudit": np.array([v.anomaly_score for v in verdicts])}
    flags = np.array([v.anomaly_flag for v in verdicts])
    scores.update(baselines(pixels([tr_data[i] for i in mine]), pixels(te_data)))
    truth = te_y != c
    row = {"class": CLASSES[c], "train_and_export_seconds": round(seconds, 1), "score_seconds": round(score_seconds, 1),
           "layout": det.spec.scoring.get("layout"), "alignment": det.spec.scoring.get("alignment")}  # fmt: skip
    for name, s in scores.items():
        row[f"{name}_auroc"] = float(roc_auc_score(truth, s))
        row[f"{name}_ap"] = float(average_precision_score(truth, s))
    for name in det.output_names:
        if name not in ("anomaly_score", "anomaly_map", "generated_logit"):
            comp = np.array([v.components[name] for v in verdicts])
            row[f"test {name}"] = float(roc_auc_score(truth, -comp if name == "disc_logit" else comp))
    row["ganaudit_fpr_at_threshold"] = float(flags[~truth].mean())
    row["ganaudit_tpr_at_threshold"] = float(flags[truth].mean())
    if args.dev:
        others = rng.choice(np.flatnonzero(tr_y != c), DEV_OTHERS, replace=False)
        row.update(dev_study(args.out / CLASSES[c], det, [tr_data[i] for i in others]))
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--classes", default=",".join(map(str, range(10))), help="comma-separated class indices 0-9")
    ap.add_argument("--out", type=Path, default=Path("runs/q4"), help="where data, runs and models go (reused)")
    ap.add_argument("--json", type=Path, help="write per-class results here")
    ap.add_argument("--dev", action="store_true", help="add the dev-split lever study (no test image used)")
    ap.add_argument("train_args", nargs="*", help="extra `ganaudit train` options, after --")
    args = ap.parse_args()
    if not ARCHIVE.is_file():
        sys.exit(f"error: CIFAR-10 archive not found at {ARCHIVE}")
    train, test = read_archive("train"), read_archive("test")
    rng = np.random.default_rng(0)
    rows = []
    for c in [int(s) for s in args.classes.split(",")]:
        row = run_class(c, args, train, test, rng)
        rows.append(row)
        print(json.dumps(row), flush=True)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps({"rows": rows, "train_args": TRAIN_ARGS + args.train_args}, indent=2))
    print("\n| class | ganaudit AUROC | AP | PCA | kNN | IsolationForest | train+export s |\n|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['class']} | {r['ganaudit_auroc']:.3f} | {r['ganaudit_ap']:.3f} | {r['pca_auroc']:.3f} | "
              f"{r['knn_auroc']:.3f} | {r['iforest_auroc']:.3f} | {r['train_and_export_seconds']:.0f} |")  # fmt: skip
    mean = {k: float(np.mean([r[k] for r in rows])) for k in ("ganaudit_auroc", "ganaudit_ap", "pca_auroc", "knn_auroc", "iforest_auroc")}
    print(f"| mean | {mean['ganaudit_auroc']:.3f} | {mean['ganaudit_ap']:.3f} | {mean['pca_auroc']:.3f} | "
          f"{mean['knn_auroc']:.3f} | {mean['iforest_auroc']:.3f} | |")  # fmt: skip
    if args.dev:
        shipped = ", ".join(f"{r['class']} {r['dev shipped fusion']:.3f}" for r in rows)
        print(f"\ndev split, the exported model's anomaly score: {shipped}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
