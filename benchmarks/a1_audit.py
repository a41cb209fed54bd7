"""A1: does `ganaudit audit gan` flag each broken generator for what it is, and leave healthy ones alone?

On MNIST (shuffled t10k, see a1_data.py) and CIFAR-10 (1,000 images per class), with generators built here:
  healthy-gan  samples of a short ganaudit training run, audited as `ganaudit audit gan RUN --reference SOURCE` does:
               the reference is the run's training images (--reference of them, by seed), the held-out images are
               the run's validation images
  ideal        held-out real images of the same distribution (the perfect generator)
  collapsed    8 held-out real images, each repeated with light noise (few modes)
  memorising   training (reference) images returned with light noise (sigma 0.04 on [-1, 1]) and +-10 % contrast
  imbalanced   held-out real images resampled: 3 classes missing, 2 at a fifth of their share
  underfit     held-out real images blurred (Gaussian sigma 1.5 px at 32 px) plus noise: a blurry generator
The other kinds are audited against one reference / held-out / label split of the data (a1_data.py), all with the
default rules (k=5, 20 bins) in the feature space --features; the table lists every figure and the flags. Expected: healthy-gan and ideal: none;
collapsed: collapse; memorising: memorisation; imbalanced: imbalance; underfit: underfit.

    python benchmarks/a1_data.py --out A1DIR          # then the two printed `ganaudit train` commands
    OMP_NUM_THREADS=1 python benchmarks/a1_audit.py --data A1DIR [--features patches] [--json A1DIR/a1.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from a1_data import MNIST_IMAGES, MNIST_TRAIN
from ganaudit.audit.detail import detail_figures
from ganaudit.audit.features import embed, extractor
from ganaudit.audit.gan import Features, audit_features
from ganaudit.audit.pipeline import class_indices
from ganaudit.audit.sources import ImageSet, drop_shared, load_images, run_file, sample_run
from ganaudit.training.rundir import VALIDATION, RunDir

EXPECTED = {"healthy-gan": set(), "ideal": set(), "collapsed": {"collapse"}, "memorising": {"memorisation"},
            "imbalanced": {"imbalance"}, "underfit": {"underfit"}}  # fmt: skip


def subset(s: ImageSet, idx: np.ndarray, description: str) -> ImageSet:
    labels = None if s.labels is None else [s.labels[i] for i in idx]
    return ImageSet(s.images[idx], [s.ids[i] for i in idx], labels, description)


def noisy(x: np.ndarray, rng: np.random.Generator, sigma: float = 0.04) -> np.ndarray:
    contrast = rng.uniform(0.9, 1.1, (len(x), 1, 1, 1)).astype(np.float32)
    return np.clip(x * contrast + rng.normal(0, sigma, x.shape).astype(np.float32), -1, 1)


def blurred(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    out = np.stack([np.stack([cv2.GaussianBlur(c, (0, 0), 1.5) for c in img]) for img in x])
    return noisy(out, rng, 0.02)


def make_kinds(ref: ImageSet, pool: ImageSet, n: int, seed: int) -> dict[str, ImageSet]:
    """The generated sets of every kind; ``pool`` is held-out real images (never trained on, not the holdout)."""
    rng = np.random.default_rng(seed)
    # a random subset: the pool is in folder (class) order for CIFAR-10, so its first n images are a few classes only
    ideal = subset(pool, np.sort(rng.permutation(len(pool.images))[:n]), "held-out real images")
    m = len(ideal.images)
    modes = ideal.images[rng.choice(m, 8, replace=False)]
    collapsed = noisy(modes[rng.integers(0, 8, m)], rng)
    copies = noisy(ref.images[rng.choice(len(ref.images), m, replace=len(ref.images) < m)], rng)
    classes = sorted(set(pool.labels))
    weight = {c: 1.0 for c in classes}
    for c in classes[:3]:
        weight[c] = 0.0
    for c in classes[3:5]:
        weight[c] = 0.2
    w = np.array([weight[c] for c in pool.labels])
    imbalanced = rng.choice(len(pool.images), m, p=w / w.sum())
    kinds = {
        "ideal": ideal,
        "collapsed": ImageSet(collapsed, [f"c{i}" for i in range(m)], None, "8 modes + noise"),
        "memorising": ImageSet(copies, [f"m{i}" for i in range(m)], None, "training images + noise"),
        "imbalanced": subset(pool, imbalanced, f"held-out real, classes {classes[:3]} missing, {classes[3:5]} at 1/5"),
        "underfit": ImageSet(blurred(ideal.images, rng), ideal.ids, None, "held-out real, blurred"),
    }
    return kinds


def embedder(kind: str, ref: ImageSet):
    """The feature space ``kind`` (fitted on ``ref`` where it is fitted), as `ganaudit audit gan --features` builds
    it; the returned function embeds one set (the audits below share the reference and held-out features)."""
    fn, _ = extractor(kind, None, ref.images)
    return lambda s: embed(fn, s.images)


def audit(gen: np.ndarray, ref: np.ndarray, hold: np.ndarray, labels: list[str], detail: dict) -> dict:
    """``audit_features`` with the default rules, as `ganaudit audit gan` runs it after embedding (``detail``: the
    images' fine-detail figures, read in pixels)."""
    t0 = time.perf_counter()
    y, classes = class_indices(labels)
    result = audit_features(Features(ref, gen, hold, y, classes, detail)).result
    return {**result, "seconds": time.perf_counter() - t0}


def run_sets(run: Path, n: int, n_ref: int, seed: int = 0, source: str | None = None) -> tuple[ImageSet, ImageSet, ImageSet]:
    """The run's samples, its training source (labelled; its validation images left out; ``n_ref`` of them drawn
    by seed) and its validation images: the sets `ganaudit audit gan RUN --reference SOURCE` uses. ``source``
    replaces the run's recorded source (the same images, e.g. in class folders where the run read a flat folder)."""
    data = RunDir(run).read_info()["data"]
    source = source or data["source"] + (f"?range={data['index_range']}" if data.get("index_range") else "")
    hold = run_file(run, VALIDATION)
    ref, _ = drop_shared(load_images(source, 32), hold)
    ref = subset(ref, np.sort(np.random.default_rng(seed).permutation(len(ref.images))[:n_ref]), source)
    return sample_run(run, n, seed), ref, hold


def mnist_sets(data: Path, n_ref: int) -> tuple[Path, ImageSet, ImageSet, ImageSet]:
    src = str(data / MNIST_IMAGES)
    ref = load_images(f"{src}?range=0:{min(n_ref, MNIST_TRAIN)}", 32)
    pool = load_images(f"{src}?range={MNIST_TRAIN}:8000", 32)
    hold = load_images(f"{src}?range=8000:10000", 32)
    return data / "run-mnist", ref, pool, hold


def cifar_sets(data: Path, n_ref: int) -> tuple[Path, ImageSet, ImageSet, ImageSet]:
    ref = load_images(str(data / "cifar-train"), 32)
    ref = subset(ref, np.sort(np.random.default_rng(0).permutation(len(ref.images))[:n_ref]), "train")
    test = load_images(str(data / "cifar-test"), 32)
    order = np.random.default_rng(0).permutation(len(test.images))
    half = len(order) // 2
    return data / "run-cifar", ref, subset(test, np.sort(order[:half]), "test"), subset(test, np.sort(order[half:]), "test")


def row(dataset: str, kind: str, r: dict) -> dict:
    f, n, m, b = r["fidelity"], r["ndb"], r.get("memorisation") or {}, r.get("balance") or {}
    flags = sorted(name for name, v in r["verdicts"].items() if v["tripped"])
    return {
        "dataset": dataset, "kind": kind, "n_generated": r["counts"]["generated"],
        **{k: f[k] for k in ("precision", "recall", "density", "coverage")},
        "ndb_over_k": n["ndb_over_k"], "jsd": n["jsd"], "missing_mass": n["missing_mass"],
        "c_t": m["c_t"]["c_t"], "copy_share": m["copy_share"]["share"],
        "l2_reference": b["fairness_discrepancy_reference"], "l2_uniform": b["fairness_discrepancy_uniform"],
        "classifier_accuracy": b["classifier_accuracy"], "detail_ratio": r["detail"]["ratio"], "flags": flags, "expected": sorted(EXPECTED[kind]),
        "ok": set(flags) == EXPECTED[kind], "seconds": r["seconds"],
    }  # fmt: skip


COLUMNS = ["features", "dataset", "kind", "precision", "recall", "density", "coverage", "ndb_over_k", "jsd", "missing_mass",
           "c_t", "copy_share", "l2_reference", "l2_uniform", "classifier_accuracy", "detail_ratio", "flags", "expected", "ok"]  # fmt: skip


def cell(v) -> str:
    if isinstance(v, float):
        return f"{v:.3f}"
    if isinstance(v, list):
        return ", ".join(v) or "none"
    return str(v)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="The folder a1_data.py wrote (with run-mnist, run-cifar).")
    ap.add_argument("--n", type=int, default=5000, help="Generated images per kind (capped by the held-out pool).")
    ap.add_argument("--datasets", default="mnist,cifar10")
    ap.add_argument("--reference", type=int, default=5000, help="Reference (training) images per data set.")
    ap.add_argument("--json", type=Path, help="Also write the rows as JSON here.")
    ap.add_argument("--features", default="auto", help="Feature space, as `ganaudit audit gan --features` (auto, patches, random).")
    ap.add_argument("--run", action="append", default=[], metavar="DATASET=RUN",
                    help="The healthy-gan run of a data set (default: DATA/run-mnist, DATA/run-cifar).")
    ap.add_argument("--run-source", action="append", default=[], metavar="DATASET=FOLDER",
                    help="Labelled folder holding the same training images as that run's source (class subfolders).")
    args = ap.parse_args()
    rows = []
    for name in args.datasets.split(","):
        t0 = time.perf_counter()
        run, ref, pool, hold = (mnist_sets if name == "mnist" else cifar_sets)(args.data, args.reference)
        print(f"{name}: reference {len(ref.images)}, pool {len(pool.images)}, held-out {len(hold.images)} "
              f"({time.perf_counter() - t0:.0f}s to load)", file=sys.stderr)  # fmt: skip
        n = min(args.n, len(pool.images))
        runs, sources = dict(r.split("=", 1) for r in args.run), dict(r.split("=", 1) for r in args.run_source)
        g_gen, g_ref, g_hold = run_sets(Path(runs.get(name, run)), n, args.reference, source=sources.get(name))
        t0 = time.perf_counter()
        features = embedder(args.features, g_ref)
        results = {"healthy-gan": audit(features(g_gen), features(g_ref), features(g_hold), g_ref.labels,
                                        detail_figures(g_gen.images, g_ref.images))}  # fmt: skip
        features = embedder(args.features, ref)
        f_ref, f_hold = features(ref), features(hold)
        for kind, gen in make_kinds(ref, pool, n, seed=0).items():
            results[kind] = audit(features(gen), f_ref, f_hold, ref.labels, detail_figures(gen.images, ref.images))
        for kind, result in results.items():
            rows.append(row(name, kind, result) | {"features": args.features})
            print(f"  {kind}: flags {rows[-1]['flags']} ({result['seconds']:.0f}s)", file=sys.stderr)
        print(f"  {name}: {time.perf_counter() - t0:.0f}s for the features and audits", file=sys.stderr)
    print("| " + " | ".join(COLUMNS) + " |")
    print("|" + " --- |" * len(COLUMNS))
    for r in rows:
        print("| " + " | ".join(cell(r[c]) for c in COLUMNS) + " |")
    print(f"\n{sum(r['ok'] for r in rows)}/{len(rows)} kinds flagged as expected")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
