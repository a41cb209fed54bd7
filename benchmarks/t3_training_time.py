"""Default training time (issue 16, item 3): `ganaudit train` with its defaults and with the DCGAN-speed options.

    python benchmarks/t3_training_time.py [--scale 1] [--rounds 1] [--label 0] [--threads N] [--work DIR]

One Q1 class (MNIST-t10k, index < 8000, one label) trained with every default, head included, as a user runs
it; "options" adds `--d-head linear --reuse-fakes` (D's last layer one linear map, one generated batch per GAN
step; docs/benchmarks.md T1). The two alternate, ROUNDS times, so drifting machine load hits both alike.
Each phase's wall time comes from metrics.jsonl (each line's `img_per_s` is the run's rate since it started, so
a line's step, the run's batch size and the rate give the seconds elapsed); then `ganaudit export`.
`--scale 0.1` trains a tenth of every phase (300 GAN, 200 encoder, 1,200 head steps) for a quicker ratio.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import MNIST
from ganaudit.training.rundir import RunDir
from ganaudit.training.train import TrainConfig

VARIANTS = {"default": [], "options": ["--d-head", "linear", "--reuse-fakes"]}


def default_steps() -> dict[str, int]:
    """Each phase's steps under `ganaudit train`'s defaults, keyed by option name."""
    cfg = TrainConfig()
    return {"steps": cfg.steps, "encoder-steps": cfg.encoder_steps, "head-steps": cfg.head_steps}


def phase_seconds(run: Path) -> dict[str, float]:
    """Wall seconds of each phase of a finished run, from the last metrics line of each."""
    rundir = RunDir(run)
    batch = rundir.read_config()["batch_size"]
    last: dict[str, float] = {}
    for line in rundir.metrics.read_text().splitlines():
        rec = json.loads(line)
        last[rec["phase"]] = rec["step"] * batch / rec["img_per_s"]
    out, start = {}, 0.0
    for phase in ("gan", "encoder", "head"):
        if phase in last:
            out[phase], start = last[phase] - start, last[phase]
    return out


def one_run(run: Path, variant: str, steps: dict[str, int], args: argparse.Namespace) -> dict[str, float]:
    model = run.with_suffix(".onnx")
    cmd = ["ganaudit", "train", str(MNIST), "--label", str(args.label), "--index-range", "0:8000", "--out", str(run),
           "--no-progress", "--no-audit", *[f"--{k}={v}" for k, v in steps.items()], *VARIANTS[variant],
           *(["--threads", str(args.threads)] if args.threads else [])]  # fmt: skip
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    t1 = time.perf_counter()
    subprocess.run(["ganaudit", "export", str(run), "-o", str(model)], check=True, stdout=subprocess.DEVNULL)
    return {**phase_seconds(run), "train": t1 - t0, "export": time.perf_counter() - t1}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of every phase's default steps")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--label", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="ganaudit train --threads (default: its own)")
    ap.add_argument("--work", type=Path, default=None, help="where the runs go (default: a temporary folder)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    steps = {k: max(1, round(v * args.scale)) for k, v in default_steps().items()}
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        results: dict[str, list[dict[str, float]]] = {name: [] for name in VARIANTS}
        for r in range(args.rounds):
            for name in VARIANTS:
                res = one_run(work / f"{name}-{r}", name, steps, args)
                results[name].append(res)
                print(f"round {r + 1} {name}: " + ", ".join(f"{k} {v:.0f} s" for k, v in res.items()), flush=True)
    cols = ["gan", "encoder", "head", "train", "export"]
    med = {name: {c: statistics.median(r[c] for r in rows) for c in cols} for name, rows in results.items()}
    print(f"\nsteps {steps}, {args.rounds} round(s), medians in seconds")
    print("| recipe | GAN | encoder | head | training (wall) | export |\n| --- | --- | --- | --- | --- | --- |")
    for name, m in med.items():
        print(f"| {name} | " + " | ".join(f"{m[c]:.0f}" for c in cols) + " |")
    print("| options / default | " + " | ".join(f"{med['options'][c] / med['default'][c]:.2f}x" for c in cols) + " |")
    if args.json:
        args.json.write_text(json.dumps({"steps": steps, "runs": results, "medians": med}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
