"""P1a: onnxruntime vs torch eager throughput for the same detector, same images, same threads.

    python benchmarks/p1a_ort_vs_torch.py [--run RUN_DIR] [--threads 2] [--seconds 5] [--json out.json]

Without --run it trains a throw-away run with the default architecture (speed does not depend on
training quality). Both engines score the same real MNIST images in the same process, alternating,
and the ratio is what to quote: absolute images/s on a shared 2-core machine mean little.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ganaudit.training.datasets import load_dataset, read_idx
from ganaudit.training.export import export
from ganaudit.training.export_graph import scoring_model
from ganaudit.runtime.detector import Detector
from ganaudit.training.train import TrainConfig, load_networks, train

MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist" / "t10k-images-idx3-ubyte.gz"


def throughput(fn, x: np.ndarray, crops: np.ndarray | None, seconds: float) -> float:
    """Images per second of ``fn`` on batch ``x`` (and its native crops), after one warm-up call."""
    fn(x, crops)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn(x, crops)
        n += len(x)
    return n / (time.perf_counter() - start)


def quick_run(tmp: Path) -> Path:
    """A throw-away run with the default architecture and both heads, as `ganaudit train` builds."""
    cfg = TrainConfig(steps=20, encoder_steps=10, generated_head=True, head_steps=10)
    data = load_dataset("sklearn:digits", size=cfg.size, native_crops=cfg.native_crops)
    return train(cfg, data, tmp / "run", progress=False)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, help="training run directory (default: a quick throw-away run)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=5.0, help="measuring time per engine and batch size")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        run = args.run or quick_run(Path(tmp))
        model_path = Path(tmp) / "detector.onnx"
        export(run, model_path)
        det = Detector.load(model_path, threads=args.threads, batch_size=64)
        cfg, nets, _ = load_networks(run)
        head = nets.H if det.has_generated_head else None
        model = scoring_model(Path(run), cfg, nets, head).use_scoring(det.spec.scoring)
        prepared = [det.prepare(im) for im in read_idx(MNIST)[8000:8064]]
        images = np.stack([p.tensor for p in prepared])
        crops = np.stack([p.crops for p in prepared]) if head is not None else None

        def torch_fn(x: np.ndarray, c: np.ndarray | None) -> None:
            with torch.inference_mode():
                model(torch.from_numpy(x), None if c is None else torch.from_numpy(c))

        heads = det.spec.heads
        results = {"threads": args.threads, "model": {"size": cfg.size, "width": cfg.width, "z_dim": cfg.z_dim, "heads": heads}}
        for batch in (1, 64):
            x = np.ascontiguousarray(images[:batch])
            c = None if crops is None else np.ascontiguousarray(crops[:batch])
            rates = {"torch": [], "ort": []}
            for _ in range(3):  # alternate engines so drift in machine load hits both alike
                rates["torch"].append(throughput(torch_fn, x, c, args.seconds / 3))
                rates["ort"].append(throughput(det.run, x, c, args.seconds / 3))
            t, o = float(np.median(rates["torch"])), float(np.median(rates["ort"]))
            results[f"batch_{batch}"] = {"torch_img_s": round(t, 1), "ort_img_s": round(o, 1), "ratio": round(o / t, 2)}
            print(f"batch {batch:>2}: torch {t:8.1f} img/s   onnxruntime {o:8.1f} img/s   ratio {o / t:.2f}x")
    ok = results["batch_64"]["ratio"] >= 1.5
    print(f"target ORT >= 1.5x torch at batch 64: {'met' if ok else 'NOT met'}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
