"""D2: data-parallel training (torchrun, gloo on CPU) against one process, on Q1 MNIST label 0.

    python benchmarks/d2_ddp_q1.py [--nproc 2] [--label 0] [--out runs/d2] [--json d2.json] [-- TRAIN_ARGS]

Trains the same configuration twice, side by side in one run: once as one process
(`python -m ganaudit train`), once as N processes (`torchrun --nproc-per-node N -m ganaudit train`), with the
same total batch (--batch-size is the total: each of the N processes draws batch/N images). Every process
runs with OMP_NUM_THREADS=1. Both runs are exported and score Q1's 2,000 test images (index >= 8000, label
!= LABEL is anomalous); the script prints AUROC and training wall time of each.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from _common import MNIST
from ganaudit.training.datasets import read_idx
from ganaudit.runtime.detector import Detector

SPLIT = 8000
DEFAULT_ARGS = ["--steps", "600", "--encoder-steps", "300", "--no-generated-head", "--batch-size", "64"]


def train(nproc: int, label: int, run: Path, extra: list[str]) -> float:
    """Train (when RUN has no checkpoint yet); returns the wall seconds of the training command."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    launcher = [sys.executable, "-m", "ganaudit"] if nproc == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", "-m", "ganaudit"
    ]  # fmt: skip
    args = ["train", str(MNIST), "--label", str(label), "--index-range", f"0:{SPLIT}", "--out", str(run),
            "--no-progress", "--no-audit", *extra]  # fmt: skip
    start = time.perf_counter()
    subprocess.run([*launcher, *args], check=True, env=env)
    return time.perf_counter() - start


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--label", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("runs/d2"))
    ap.add_argument("--json", type=Path)
    ap.add_argument("train_args", nargs="*", help=f"`ganaudit train` options (default: {' '.join(DEFAULT_ARGS)})")
    args = ap.parse_args()
    extra = args.train_args or DEFAULT_ARGS
    images, labels = read_idx(MNIST), read_idx(MNIST.with_name("t10k-labels-idx1-ubyte.gz"))
    test_x, truth = images[SPLIT:], labels[SPLIT:] != args.label
    rows = []
    for nproc in (1, args.nproc):
        run, model = args.out / f"label{args.label}-{nproc}proc", args.out / f"label{args.label}-{nproc}proc.onnx"
        seconds = train(nproc, args.label, run, extra)
        subprocess.run([sys.executable, "-m", "ganaudit", "export", str(run), "-o", str(model)], check=True)
        scores = np.array([v.anomaly_score for v in Detector.load(model).detect(list(test_x))])
        steps = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["step"]
        rows.append({"processes": nproc, "auroc": float(roc_auc_score(truth, scores)),
                     "train_seconds": round(seconds, 1), "steps": steps})  # fmt: skip
        print(f"{nproc} process(es): AUROC {rows[-1]['auroc']:.4f}, training {seconds:.0f} s", flush=True)
    print("\n| processes (OMP_NUM_THREADS=1 each) | AUROC | training wall time |\n|---|---|---|")
    for r in rows:
        print(f"| {r['processes']} | {r['auroc']:.4f} | {r['train_seconds']:.0f} s |")
    print(f"AUROC difference: {abs(rows[1]['auroc'] - rows[0]['auroc']):.4f} (goal <= 0.01); "
          f"speed-up {rows[0]['train_seconds'] / rows[1]['train_seconds']:.2f}x; train args: {' '.join(extra)}")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "train_args": extra}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
