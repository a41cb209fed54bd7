"""D1: `ganaudit scan --engine ray` against the local scan, at the same CPU count, on the same 5,000 files.

    python benchmarks/d1_ray_scan.py [--files 5000] [--cpus 2] [--rounds 1] [--model NAME|FILE] [--work runs/d1] [--json d1.json]

Makes FILES PNG/JPEG files from MNIST-t10k (../shared/data/mnist, a third of them JPEG) once, then scans them
twice in one run, same model, same batch size, CSV + JSONL:

- local: the thread pool with --workers CPUS (one onnxruntime thread each);
- ray: a local Ray cluster started with num_cpus=CPUS, CPUS actors of 1 CPU (one onnxruntime thread each).
  The cluster is started before the clock starts; the actors' start (each loads the model) is timed.

With --rounds R the pair alternates R times on one cluster: round 1's Ray scan is a fresh cluster's first
Ray Data job, later rounds that of a cluster that has run one (Ray Data's start-up, 1.2-2.3 s measured, is then
smaller). Both must write the same rows (checked). Prints images/s, the ratio ray/local (goal >= 0.8) and the per-core
figure docs/distributed.md projects 100M images from.
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import sys
import time
from pathlib import Path

import cv2

from _common import MNIST, resolve_model_or_exit
from ganaudit.training.datasets import read_idx
from ganaudit.runtime.detector import Detector
from ganaudit.runtime.scan import default_threads, scan

BATCH = 64


def make_files(folder: Path, n: int) -> Path:
    """N digit images (MNIST-t10k, cycling), 2 in 3 PNG and 1 in 3 JPEG, once."""
    done = folder / ".complete"
    if done.exists() and int(done.read_text()) == n:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    images = read_idx(MNIST)
    for i in range(n):
        sub = folder / f"{i // 1000:02d}"  # 1,000 files a folder
        sub.mkdir(exist_ok=True)
        cv2.imwrite(str(sub / f"{i:06d}{'.jpg' if i % 3 == 0 else '.png'}"), images[i % len(images)])
    done.write_text(str(n))
    return folder


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=5000)
    ap.add_argument("--cpus", type=int, default=2, help="CPUs for each engine (local workers = Ray actors)")
    ap.add_argument("--rounds", type=int, default=1, help="local/ray pairs, alternating, on one cluster")
    ap.add_argument("--model", help="detector (default: the shipped default model)")
    ap.add_argument("--work", type=Path, default=Path("runs/d1"))
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    import ray

    from ganaudit.runtime.distributed.ray_scan import connect, ray_engine

    model = resolve_model_or_exit(args.model)
    files = make_files(args.work / f"files-{args.files}", args.files)
    rounds = []
    for r in range(args.rounds):
        results = {}
        for name in ("local", "ray"):
            out = args.work / f"out-{name}"
            if name == "local":
                detector = Detector.load(model, threads=default_threads(args.cpus), batch_size=BATCH)
                start = time.perf_counter()
                res = scan(detector, files, out, formats="csv,jsonl", workers=args.cpus, model_path=model)
            else:
                connect(None, num_cpus=args.cpus)  # the cluster: started before the clock
                detector = Detector.load(model, threads=1, batch_size=BATCH)  # the driver's (report visuals only)
                engine = ray_engine(model, {"batch_size": BATCH}, actors=args.cpus, cpus_per_actor=1)
                start = time.perf_counter()
                res = scan(detector, files, out, formats="csv,jsonl", workers=args.cpus, model_path=model, engine=engine)
            seconds = time.perf_counter() - start
            n = res.counts["candidates"]
            results[name] = {"seconds": round(seconds, 2), "images": n, "images_per_second": round(n / seconds, 1)}
            print(f"round {r + 1}, {name}: {n} files in {seconds:.1f} s = {n / seconds:.0f} images/s ({args.cpus} CPUs)",
                  flush=True)  # fmt: skip
        same = filecmp.cmp(args.work / "out-local/results.jsonl", args.work / "out-ray/results.jsonl", shallow=False)
        ratio = results["ray"]["images_per_second"] / results["local"]["images_per_second"]
        kind = "a fresh cluster's first job" if r == 0 else "a cluster that has run a job"
        print(f"round {r + 1}: rows identical: {same}; ray / local = {ratio:.2f}x (goal >= 0.8; {kind})", flush=True)
        rounds.append({**results, "ratio": round(ratio, 3), "rows_identical": same})
    ray.shutdown()
    same = all(r["rows_identical"] for r in rounds)
    per_core = max(r["ray"]["images_per_second"] for r in rounds) / args.cpus
    print(f"ray per core (best round): {per_core:.0f} images/s")
    print(f"100M images at {per_core:.0f} images/s per core: {1e8 / per_core / 3600:.0f} core-hours "
          f"({1e8 / per_core / 3600 / 1000 * 60:.0f} min on 1,000 cores)")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"rounds": rounds, "per_core": per_core, "rows_identical": same,
                                         "cpus": args.cpus, "files": args.files, "model": str(model),
                                         "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}, indent=2))  # fmt: skip
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
