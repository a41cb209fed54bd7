"""Q1 lever study: which score components, and which fusion weights, on trained Q1 runs.

    python benchmarks/q1_score_levers.py --runs runs/q1 --labels 0,2,3,4,8 [--json levers.json]

Reuses the runs `q1_mnist.py` trained (RUNS/label<c>), so it trains nothing. For each label it computes the
fused score's components (log pixel residual, log D-feature residual, minus D's logit, log kNN distance to
the training images in D's unit-length feature space; see docs/concepts.md) and their robust z-scores
against the run's held-out normal validation images, then grid-searches the fusion weights.

Selection uses a *development* split only: the held-out normal validation images of label c against 1,500
images with index < 8000 of the other labels. The test split (index >= 8000) is reported beside it, never
used to choose. Weights are ranked by their mean dev AUROC over the labels given.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from _common import MNIST
from ganaudit.datasets import read_idx
from ganaudit.export import FUSION_WEIGHTS, fit_fusion, load_validation, scoring_model
from ganaudit.imaging import preprocess
from ganaudit.scoring import fusion_inputs
from ganaudit.train import load_networks

SPLIT = 8000
N_DEV_ANOMALIES = 1500
COMPONENTS = ["log pixel", "log feature", "-logit", "log knn"]
GRID = {"log pixel": (0, 0.5, 1), "log feature": (0, 0.5, 1), "-logit": (0, 0.25, 0.5), "log knn": (0, 1, 2, 4)}


@torch.no_grad()
def components(model, x: np.ndarray, batch: int = 500) -> np.ndarray:
    """[N, 4] transformed components, computed by the export's own scoring graph."""
    rows = []
    for i in range(0, len(x), batch):
        _, _, logit, pixel, feature, _, knn = model.anomaly(torch.from_numpy(x[i : i + batch]))
        rows.append(fusion_inputs(pixel, feature, logit, knn).numpy())
    return np.concatenate(rows)


def label_data(run: Path, label: int, images: np.ndarray, labels: np.ndarray, rng: np.random.Generator):
    """(dev z-scores, dev truth, test z-scores, test truth) for one trained Q1 run."""
    cfg, nets, _ = load_networks(run)
    model = scoring_model(run, cfg, nets, head=None)  # with the run's memory bank, as export builds it
    val = load_validation(run)
    fusion = fit_fusion(model, val)  # the export's centres and scales, fitted on the held-out normal images
    prep = lambda imgs: np.stack([preprocess(im, cfg.preprocess) for im in imgs])  # noqa: E731
    other = rng.choice(np.where(labels[:SPLIT] != label)[0], N_DEV_ANOMALIES, replace=False)
    z = lambda x: (components(model, x) - fusion["center"]) / fusion["scale"]  # noqa: E731
    dev_truth = np.r_[np.zeros(len(val)), np.ones(len(other))]
    return z(np.concatenate([val, prep(images[other])])), dev_truth, z(prep(images[SPLIT:])), (labels[SPLIT:] != label).astype(int)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=Path, default=Path("runs/q1"), help="q1_mnist.py's --out folder")
    ap.add_argument("--labels", default="0,2,3,4,8")
    ap.add_argument("--top", type=int, default=10, help="how many weight settings to print")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(1)
    images, labels = read_idx(MNIST), read_idx(MNIST.with_name("t10k-labels-idx1-ubyte.gz"))
    rng = np.random.default_rng(0)
    chosen = [int(s) for s in args.labels.split(",")]
    data = [label_data(args.runs / f"label{c}", c, images, labels, rng) for c in chosen]

    def evaluate(w: np.ndarray) -> dict:
        dev = [roc_auc_score(y, d @ w) for d, y, _, _ in data]
        test = [roc_auc_score(ty, t @ w) for _, _, t, ty in data]
        return {"weights": w.tolist(), "dev": dev, "test": test, "dev_mean": float(np.mean(dev)), "test_mean": float(np.mean(test))}

    singles = [evaluate(np.eye(len(COMPONENTS))[k]) for k in range(len(COMPONENTS))]
    grid = [evaluate(np.array(w, float)) for w in itertools.product(*GRID.values()) if any(w)]
    grid.sort(key=lambda r: -r["dev_mean"])
    fmt = lambda xs: " ".join(f"{x:.3f}" for x in xs)  # noqa: E731
    print(f"labels {chosen}; AUROC per label, dev | test")
    for name, r in zip(COMPONENTS, singles):
        print(f"  {name:12s} alone        dev {fmt(r['dev'])} (mean {r['dev_mean']:.4f}) | test {fmt(r['test'])} (mean {r['test_mean']:.4f})")
    print("best weights (pixel, feature, logit, knn) by mean dev AUROC:")
    for r in grid[: args.top]:
        print(f"  {str(tuple(r['weights'])):24s} dev {fmt(r['dev'])} (mean {r['dev_mean']:.4f}) | test {fmt(r['test'])} (mean {r['test_mean']:.4f})")
    for name, w in (("previous default (izi_f residuals + logit)", (1, 1, 0.5, 0)), ("shipped default", FUSION_WEIGHTS)):
        r = evaluate(np.array(w, float))
        print(f"  {name}: {tuple(w)} dev mean {r['dev_mean']:.4f} | test {fmt(r['test'])} (mean {r['test_mean']:.4f})")
    if args.json:
        args.json.write_text(json.dumps({"labels": chosen, "components": COMPONENTS, "singles": singles, "grid": grid}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
