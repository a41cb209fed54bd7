"""Score lever study: which fusion weights, on trained Q1 (MNIST), Q3 (texture) and Q4 (CIFAR-10) runs.

    python benchmarks/score_levers.py --q1-runs runs/q1 --labels 0,2,3,4,8 \
                                      --q3-runs runs/q3 --textures brick,grass,gravel \
                                      --q4-runs runs/q4 --classes airplane,cat [--json levers.json]

Reuses the runs `q1_mnist.py`, `q3_textures.py` and `q4_cifar.py` trained (Q1_RUNS/label<c>,
Q3_RUNS/<texture>, Q4_RUNS/<class>), so it trains nothing. For each run it computes the fused score's
components with the export's own scoring graph (scoring.COMPONENTS: log pixel residual, log D-feature
residual, minus D's logit, log kNN distance, log patch distance, log rotation score; see docs/concepts.md)
and their robust z-scores against the run's held-out normal validation images, then grid-searches the
fusion weights. A run whose D has no rotation task scores 0 on that component.

Selection uses *development* splits only, never a test image:
- Q1: the held-out normal validation images of label c against 1,500 images with index < 8000 of the other
  labels (the test split is index >= 8000);
- Q3: the held-out normal validation patches (from the training region) against the same patches with one
  pasted defect each (the test patches come from the untouched bottom quarter);
- Q4: the held-out class-c validation images against DEV_OTHERS training images of the other classes (the
  test split is CIFAR-10's test set).
Test AUROCs are reported beside, never used to choose. Weights are ranked by each domain's mean dev AUROC:
Q1 and Q4 together chose the weights export uses for *aligned* training images, Q3 those for *stationary*
ones (scoring.COMPONENTS).
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
from q3_textures import DEFECTS, make_test_set, paste_defect, split_regions, texture
from ganaudit.training.datasets import read_idx
from ganaudit.training.export_fit import FUSION_WEIGHTS, fit_fusion, fusion_table
from ganaudit.training.export_graph import scoring_model
from ganaudit.core.imaging import preprocess_batch
from ganaudit.training.rundir import RunDir
from ganaudit.training.train import load_networks

SPLIT = 8000
N_DEV_ANOMALIES = 1500
COMPONENTS = ["log pixel", "log feature", "-logit", "log knn", "log patch", "log rotation"]
GRID = {
    "log pixel": (0, 0.5, 1), "log feature": (0, 0.5, 1), "-logit": (0, 0.25, 0.5), "log knn": (0, 1, 2, 4),
    "log patch": (0, 1, 2, 4), "log rotation": (0, 1, 2, 4, 8),
}  # fmt: skip
Q3_TEST_SEED = 1  # q3_textures.py's test set (its --seed 0, plus one)


def z_scorer(run: Path):
    """(run config, its held-out validation images, images -> robust z-scores of the components)."""
    cfg, nets, _ = load_networks(run)
    val = RunDir(run).load_validation()
    model = scoring_model(run, cfg, nets, head=None, val=val)  # with the run's banks, as export builds it
    fusion = fit_fusion(model, val, layout="aligned")  # export's centres and scales (its weights unused here)

    def z(x: np.ndarray) -> np.ndarray:
        t = (fusion_table(model, x) - fusion["center"]) / fusion["scale"]
        return np.pad(t, ((0, 0), (0, len(COMPONENTS) - t.shape[1])))  # no rotation task: that column is 0

    return cfg, val, z


def label_data(run: Path, label: int, images: np.ndarray, labels: np.ndarray, rng: np.random.Generator):
    """(dev z-scores, dev truth, test z-scores, test truth) for one trained Q1 run."""
    cfg, val, z = z_scorer(run)
    prep = lambda imgs: preprocess_batch(imgs, cfg.preprocess)  # noqa: E731
    other = rng.choice(np.where(labels[:SPLIT] != label)[0], N_DEV_ANOMALIES, replace=False)
    dev_truth = np.r_[np.zeros(len(val)), np.ones(len(other))]
    return z(np.concatenate([val, prep(images[other])])), dev_truth, z(prep(images[SPLIT:])), (labels[SPLIT:] != label).astype(int)


def texture_data(run: Path, name: str, rng: np.random.Generator):
    """(dev z-scores, dev truth, test z-scores, test truth) for one trained Q3 run."""
    cfg, val, z = z_scorer(run)
    normal = np.clip(np.round((val[:, 0] + 1) * 127.5), 0, 255).astype(np.uint8)
    defective = [paste_defect(p, DEFECTS[i % len(DEFECTS)], rng)[0] for i, p in enumerate(normal)]
    prep = lambda imgs: preprocess_batch(imgs, cfg.preprocess)  # noqa: E731
    patches, truth, _ = make_test_set(split_regions(texture(name))[1], Q3_TEST_SEED)
    dev_truth = np.r_[np.zeros(len(val)), np.ones(len(val))]
    return z(np.concatenate([val, prep(defective)])), dev_truth, z(prep(patches)), truth


def cifar_data(run: Path, c: int, train: tuple, test: tuple, rng: np.random.Generator):
    """(dev z-scores, dev truth, test z-scores, test truth) for one trained Q4 run."""
    from q4_cifar import DEV_OTHERS
    from ganaudit.core.imaging import decode

    (tr_data, tr_y, _), (te_data, te_y, _) = train, test
    cfg, val, z = z_scorer(run)
    prep = lambda blobs: preprocess_batch([decode(b) for b in blobs], cfg.preprocess)  # noqa: E731
    others = rng.choice(np.flatnonzero(tr_y != c), DEV_OTHERS, replace=False)
    dev_truth = np.r_[np.zeros(len(val)), np.ones(len(others))]
    dev = z(np.concatenate([val, prep([tr_data[i] for i in others])]))
    return dev, dev_truth, z(prep(te_data)), (te_y != c).astype(int)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--q1-runs", type=Path, help="q1_mnist.py's --out folder")
    ap.add_argument("--labels", default="0,2,3,4,8")
    ap.add_argument("--q3-runs", type=Path, help="q3_textures.py's --out folder")
    ap.add_argument("--textures", default="brick,grass,gravel")
    ap.add_argument("--q4-runs", type=Path, help="q4_cifar.py's --out folder")
    ap.add_argument("--classes", default="automobile,cat", help="Q4 classes (names)")
    ap.add_argument("--top", type=int, default=10, help="how many weight settings to print")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if args.q1_runs is None and args.q3_runs is None and args.q4_runs is None:
        ap.error("give at least one of --q1-runs, --q3-runs and --q4-runs")
    torch.set_num_threads(1)
    domains: dict[str, list] = {}
    names: list[str] = []
    if args.q1_runs is not None:
        images, labels = read_idx(MNIST), read_idx(MNIST.with_name("t10k-labels-idx1-ubyte.gz"))
        rng = np.random.default_rng(0)
        chosen = [int(s) for s in args.labels.split(",")]
        domains["q1"] = [label_data(args.q1_runs / f"label{c}", c, images, labels, rng) for c in chosen]
        names += [f"label{c}" for c in chosen]
    if args.q3_runs is not None:
        rng = np.random.default_rng(0)
        chosen_t = args.textures.split(",")
        domains["q3"] = [texture_data(args.q3_runs / t, t, rng) for t in chosen_t]
        names += chosen_t
    if args.q4_runs is not None:
        from q4_cifar import CLASSES, read_archive

        rng = np.random.default_rng(0)
        train, test = read_archive("train"), read_archive("test")
        chosen_c = args.classes.split(",")
        domains["q4"] = [cifar_data(args.q4_runs / n, CLASSES.index(n), train, test, rng) for n in chosen_c]
        names += chosen_c
    data = [item for items in domains.values() for item in items]

    def evaluate(w: np.ndarray) -> dict:
        dev = [roc_auc_score(y, d @ w) for d, y, _, _ in data]
        test = [roc_auc_score(ty, t @ w) for _, _, t, ty in data]
        sizes = np.cumsum([0] + [len(v) for v in domains.values()])
        dev_means = [float(np.mean(dev[a:b])) for a, b in zip(sizes[:-1], sizes[1:])]
        test_means = [float(np.mean(test[a:b])) for a, b in zip(sizes[:-1], sizes[1:])]
        return {"weights": w.tolist(), "dev": dev, "test": test, "dev_mean": float(np.mean(dev_means)),
                "test_mean": float(np.mean(test_means)), "dev_domain_means": dev_means, "test_domain_means": test_means}  # fmt: skip

    singles = [evaluate(np.eye(len(COMPONENTS))[k]) for k in range(len(COMPONENTS))]
    grid = [evaluate(np.array(w, float)) for w in itertools.product(*GRID.values()) if any(w)]
    fmt = lambda xs: " ".join(f"{x:.3f}" for x in xs)  # noqa: E731
    print(f"runs {names}; AUROC per run, dev | test; domain means {list(domains)}")
    for name, r in zip(COMPONENTS, singles):
        print(f"  {name:12s} alone        dev {fmt(r['dev'])} (means {fmt(r['dev_domain_means'])}) | test {fmt(r['test'])} (means {fmt(r['test_domain_means'])})")
    for k, domain in enumerate(domains):
        print(f"best weights (pixel, feature, logit, knn, patch, rotation) by mean {domain} dev AUROC:")
        for r in sorted(grid, key=lambda r: -r["dev_domain_means"][k])[: args.top]:
            print(f"  {str(tuple(r['weights'])):30s} dev {fmt(r['dev'])} (means {fmt(r['dev_domain_means'])}) | test {fmt(r['test'])} (means {fmt(r['test_domain_means'])})")
    print("best weights by the mean over domains of their mean dev AUROC:")
    for r in sorted(grid, key=lambda r: -r["dev_mean"])[: args.top]:
        print(f"  {str(tuple(r['weights'])):30s} dev {fmt(r['dev'])} (means {fmt(r['dev_domain_means'])}) | test {fmt(r['test'])} (means {fmt(r['test_domain_means'])})")
    previous = (("izi_f residuals + logit", (1, 1, 0.5, 0, 0, 0)), ("Q1 kNN default", (0, 1, 0.5, 4, 0, 0)))
    shipped = tuple((f"shipped, {layout} layout", w) for layout, w in FUSION_WEIGHTS.items())
    for name, w in (*previous, *shipped):
        r = evaluate(np.array(w, float))
        print(f"  {name}: {tuple(w)} dev {fmt(r['dev'])} (means {fmt(r['dev_domain_means'])}) | test {fmt(r['test'])} (means {fmt(r['test_domain_means'])})")
    if args.json:
        args.json.write_text(json.dumps({"runs": names, "components": COMPONENTS, "singles": singles, "grid": grid}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
