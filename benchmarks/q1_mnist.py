"""Q1: one-class anomaly detection on MNIST-t10k (protocol in shared/BENCHMARKS.md).

    python benchmarks/q1_mnist.py [--labels 0,1,...] [--quick] [--out runs/q1] [--json results.json]

For each label c: `ganaudit train` on images with index < 8000 and label c (defaults, exactly as a user
runs it; 10 % of them are held out for thresholds), `ganaudit export`, then score all 2,000 images with
index >= 8000 through the ONNX `Detector`. A test image is anomalous iff its label != c. PCA, kNN and
IsolationForest baselines are fitted on the same training images in the same run. No test image is used
for training, thresholds or model selection.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from sklearn.decomposition import PCA
from sklearn.ensemble import IsolationForest
from sklearn.metrics import average_precision_score, roc_auc_score
from sklearn.neighbors import NearestNeighbors

from _common import MNIST, train_and_export
from ganaudit.training.datasets import read_idx
from ganaudit.runtime.detector import Detector

IMAGES, LABELS = MNIST, MNIST.with_name("t10k-labels-idx1-ubyte.gz")
SPLIT = 8000
QUICK_ARGS = ["--steps", "600", "--encoder-steps", "300"]


def baselines(train: np.ndarray, test: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
    """Anomaly scores (higher = more anomalous) of the BENCHMARKS.md baselines; pixels in [0, 1], flattened."""
    pca = PCA(n_components=20, random_state=seed).fit(train)
    rec = pca.inverse_transform(pca.transform(test))
    knn = NearestNeighbors(n_neighbors=5).fit(train)
    iforest = IsolationForest(random_state=seed).fit(train)
    return {
        "pca": ((test - rec) ** 2).sum(1),
        "knn": knn.kneighbors(test)[0].mean(1),
        "iforest": -iforest.score_samples(test),
    }


def train_and_export_label(label: int, out: Path, extra: list[str]) -> tuple[Path, float]:
    args = [str(IMAGES), "--label", str(label), "--index-range", f"0:{SPLIT}", *extra]
    return train_and_export(args, out / f"label{label}", out / f"label{label}.onnx", f"mnist-{label}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--labels", default="0,1,2,3,4,5,6,7,8,9", help="comma-separated labels to run")
    ap.add_argument("--quick", action="store_true", help=f"shorter training ({' '.join(QUICK_ARGS)}) for a smoke run")
    ap.add_argument("--out", type=Path, default=Path("runs/q1"), help="where runs and models go (reused if present)")
    ap.add_argument("--json", type=Path, help="write per-class results here")
    ap.add_argument("train_args", nargs="*", help="extra `ganaudit train` options, after --")
    args = ap.parse_args()

    images, labels = read_idx(IMAGES), read_idx(LABELS)
    test_x, test_y = images[SPLIT:], labels[SPLIT:]
    flat = lambda a: a.reshape(len(a), -1).astype(np.float64) / 255.0  # noqa: E731
    extra = (QUICK_ARGS if args.quick else []) + args.train_args
    rows = []
    for label in [int(s) for s in args.labels.split(",")]:
        model, seconds = train_and_export_label(label, args.out, extra)
        det = Detector.load(model)
        verdicts = det.detect(list(test_x))
        scores = {"ganaudit": np.array([v.anomaly_score for v in verdicts])}
        flags = np.array([v.anomaly_flag for v in verdicts])
        train_x = images[:SPLIT][labels[:SPLIT] == label]
        scores.update(baselines(flat(train_x), flat(test_x)))
        truth = test_y != label
        row = {"label": label, "train_seconds": round(seconds, 1), "n_train_images": int(len(train_x))}
        for name, s in scores.items():
            row[f"{name}_auroc"] = float(roc_auc_score(truth, s))
            row[f"{name}_ap"] = float(average_precision_score(truth, s))
        row["ganaudit_fpr_at_threshold"] = float(flags[~truth].mean())
        row["ganaudit_tpr_at_threshold"] = float(flags[truth].mean())
        rows.append(row)
        print(
            f"label {label}: ganaudit AUROC {row['ganaudit_auroc']:.3f} AP {row['ganaudit_ap']:.3f} | "
            f"PCA {row['pca_auroc']:.3f} kNN {row['knn_auroc']:.3f} IF {row['iforest_auroc']:.3f} | "
            f"FPR@thr {row['ganaudit_fpr_at_threshold']:.3f} TPR@thr {row['ganaudit_tpr_at_threshold']:.3f} | "
            f"{seconds:.0f} s",
            flush=True,
        )
    print("\n| label | ganaudit AUROC | AP | PCA | kNN | IsolationForest |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['label']} | {r['ganaudit_auroc']:.3f} | {r['ganaudit_ap']:.3f} | {r['pca_auroc']:.3f} | "
              f"{r['knn_auroc']:.3f} | {r['iforest_auroc']:.3f} |")  # fmt: skip
    mean = {k: float(np.mean([r[k] for r in rows])) for k in rows[0] if k.endswith(("_auroc", "_ap"))}
    print(f"| mean | {mean['ganaudit_auroc']:.3f} | {mean['ganaudit_ap']:.3f} | {mean['pca_auroc']:.3f} | "
          f"{mean['knn_auroc']:.3f} | {mean['iforest_auroc']:.3f} |")  # fmt: skip
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"rows": rows, "mean": mean, "train_args": extra}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
