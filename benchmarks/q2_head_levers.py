"""Q2 lever study: generated-head training length and augmentation strength, on a development split.

    python benchmarks/q2_head_levers.py --run runs/digits --variants 600,1800,3600,6000 [--augment-prob 0.5] [--head-lr 1e-4]

Each variant copies the finished run RUN (trained on MNIST-t10k index < 8000), retrains only its generated
head (`ganaudit train --retrain-head`: same G, D and E) with that many head steps, exports it and scores:

- real: the run's 800 held-out validation images (MNIST index < 8000, raw 28 x 28), never trained on;
- generated: 800 fresh samples of the run's own EMA generator (a latent seed training never used).

No test image (index >= 8000) and no Q2 test generator is used, so the choice made here can be checked on
Q2 afterwards. Reported: AUROC, accuracy at the shipped threshold vs the best threshold, and the AUROC drop
under the Q2 perturbations (JPEG 75, blur 1, resize x0.5 and x2), applied to both classes.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch

from _common import MNIST
from q2_generated import PERTURBATIONS, metrics, sample_u8, scores

import ganaudit.training.generated as generated
from ganaudit.training.datasets import load_dataset, read_idx
from ganaudit.training.export import export
from ganaudit.training.rundir import SAMPLES, RunDir
from ganaudit.runtime.detector import Detector
from ganaudit.training.train import load_config, train

N_DEV = 800


def retrain(run: Path, out: Path, head_steps: int, data, head_lr: float | None = None) -> Path:
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(run, out, ignore=shutil.ignore_patterns(SAMPLES))
    cfg = load_config(out)
    cfg.head_steps = head_steps
    if head_lr is not None:
        cfg.head_lr = head_lr
    train(cfg, data, out, retrain_head=True, progress=False)
    model = out.parent / f"{out.name}.onnx"  # not with_suffix: "r0.35" would lose ".35"
    export(out, model, fpr=0.01, name=out.name)
    return model


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, default=Path("runs/digits"), help="a finished run with the generated head")
    ap.add_argument("--index-range", default="0:8000", help="the run's --index-range on MNIST-t10k")
    ap.add_argument("--variants", default="600,1800,3600,6000", help="head steps to try, comma-separated")
    ap.add_argument("--augment-prob", type=float, default=generated.AUGMENT_PROB,
                    help="probability of each training degradation (resize, blur, JPEG)")  # fmt: skip
    ap.add_argument("--resize-min", type=float, default=generated.RESIZE_SCALE[0], help="smallest training resize factor")
    ap.add_argument("--resize-max", type=float, default=generated.RESIZE_SCALE[1], help="largest training resize factor")
    ap.add_argument("--head-lr", type=float, default=None, help="the head's learning rate (default: the run's)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/ganaudit-q2-levers"))
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(1)
    generated.AUGMENT_PROB = args.augment_prob
    generated.RESIZE_SCALE = (args.resize_min, args.resize_max)
    cfg = load_config(args.run)
    data = load_dataset(str(MNIST), size=cfg.size, index_range=args.index_range, native_crops=cfg.native_crops,
                        scale_view=cfg.scale_view, progress=False)  # fmt: skip
    ids = RunDir(args.run).read_info()["validation_ids"]
    source = read_idx(MNIST)
    reals = [source[int(i.rsplit("[", 1)[1].rstrip("]"))] for i in ids][:N_DEV]  # ids hold source indices
    fakes = sample_u8(args.run, N_DEV, seed=4242)
    rows = {}
    for steps in [int(s) for s in args.variants.split(",")]:
        name = f"head{steps}-p{args.augment_prob:g}-r{args.resize_min:g}-{args.resize_max:g}" + (f"-lr{args.head_lr:g}" if args.head_lr else "")
        model = retrain(args.run, args.work / name, steps, data, args.head_lr)
        det = Detector.load(model, threads=1, domain_gate=False)
        thr = det.thresholds.generated
        res = {k: metrics(scores(det, reals, k), scores(det, fakes, k), thr) for k in ["clean"] + PERTURBATIONS}
        rows[name] = res
        c = res["clean"]
        drops = " / ".join(f"{c['auroc'] - res[k]['auroc']:.3f}" for k in PERTURBATIONS)
        print(f"| {steps} | {args.head_lr or cfg.head_lr:g} | {args.augment_prob:g} | {args.resize_min:g}-{args.resize_max:g} | {c['auroc']:.3f} | {c['acc_shipped']:.3f} / {c['acc_best']:.3f} | {drops} |", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
