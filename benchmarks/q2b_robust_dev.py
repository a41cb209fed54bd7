"""Q2b development split with Q2's perturbations: how a generated head holds up, chosen on before any test score.

    python benchmarks/q2b_robust_dev.py --run RUN --data DATA --aux-pool OTHER_RUN/aux_pool --model A.onnx [--model B.onnx]

Real: the run's held-out validation images (never trained on). Generated: ganaudit's own auxiliary families
(`ganaudit train --head-aux`, cached in a run's aux_pool/ folder, e.g. a short run trained on the same images),
none of which the default head saw; no test image and no Q2b generator. Each model (an export of RUN) is
scored on both classes, clean and under JPEG 75, blur sigma 1, resize x0.5 and x2 (benchmarks/q2_generated.py's
perturbations). Reported per family: AUROC, recall and real FPR at the model's shipped threshold, and the
AUROC drop under each perturbation.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from q2_generated import PERTURBATIONS, metrics, scores
from q2b_folds import N_DEV, validation_images

from ganaudit.runtime.detector import Detector


def aux_fakes(pool: Path, n: int) -> dict[str, list[np.ndarray]]:
    """n cached samples of each auxiliary family in ``pool`` (a seeded draw over their whole training)."""
    out = {}
    for path in sorted(pool.glob("*_steps*_n*_seed*.npy")):
        images = np.load(path, allow_pickle=False)
        out[path.name.split("_")[0]] = list(images[np.random.default_rng(0).permutation(len(images))[:n]])
    if not out:
        sys.exit(f"no cached auxiliary samples in {pool}: train a run with --head-aux all first")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, required=True, help="The run whose validation images are the reals.")
    ap.add_argument("--data", required=True, help="The run's DATA (the same as given to `ganaudit train`).")
    ap.add_argument("--aux-pool", type=Path, required=True, help="A run's aux_pool/ folder of auxiliary samples.")
    ap.add_argument("--model", type=Path, action="append", required=True, help="An export of the run (repeatable).")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    reals = validation_images(args.run, args.data)[:N_DEV]
    fakes = aux_fakes(args.aux_pool, N_DEV)
    kinds = ["clean"] + PERTURBATIONS
    report = {}
    for model in args.model:
        det = Detector.load(model, threads=1, domain_gate=False)  # the head itself
        real = {k: scores(det, reals, k) for k in kinds}
        res = {f: {k: metrics(real[k], scores(det, imgs, k), det.thresholds.generated) for k in kinds} for f, imgs in fakes.items()}
        report[str(model)] = res
        print(f"\n{model}\n\n| family | AUROC | recall @ shipped thr | real FPR | drop " + " | ".join(PERTURBATIONS) + " |")
        print("| --- " * (4 + len(PERTURBATIONS)) + "|")
        for family, r in res.items():
            c = r["clean"]
            drops = " | ".join(f"{c['auroc'] - r[k]['auroc']:.3f}" for k in PERTURBATIONS)
            print(f"| {family} | {c['auroc']:.3f} | {c['tpr_shipped']:.3f} | {c['fpr_shipped']:.3f} | {drops} |", flush=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
