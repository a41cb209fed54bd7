"""P1b: `ganaudit scan` throughput vs a decode-only pass over the same files (target: scan >= 0.8x).

Builds 5,000 PNG/JPEG files from real MNIST digits in a temp folder, then alternates, in this one
process, a decode-only pass (read + OpenCV decode + resize to the model's input size, same number of
worker threads) and a full scan (walk, read, sha256, decode, preprocess, onnxruntime, CSV + JSONL +
HTML report). Speeds are quoted as a ratio measured side by side (the machines are shared and noisy):
the median over rounds of each round's scan/decode ratio. The CPU time each pass used (all threads,
`time.process_time`) is reported too: its ratio is much less sensitive to other load on the machine.

    python benchmarks/p1b_scan_throughput.py --model detector.onnx [--n 5000] [--workers N] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _common import MNIST, resolve_model_or_exit  # noqa: E402


def build_files(folder: Path, n: int, side: int = 28) -> list[str]:
    """n files from MNIST digits (cycling if n > 10,000), alternating PNG and JPEG (quality 95).

    ``side`` > 28 enlarges each digit (bicubic) to side x side pixels, to measure with decode costs
    closer to those of real photos.
    """
    from ganaudit.training.datasets import read_idx

    if not MNIST.is_file():
        sys.exit(f"error: MNIST not found at {MNIST}")
    digits = read_idx(MNIST)
    paths = []
    for i in range(n):
        ext = ".png" if i % 2 == 0 else ".jpg"
        path = folder / f"{i:06d}{ext}"
        params = [cv2.IMWRITE_JPEG_QUALITY, 95] if ext == ".jpg" else []
        digit = digits[i % len(digits)]
        if side != digit.shape[0]:
            digit = cv2.resize(digit, (side, side), interpolation=cv2.INTER_CUBIC)
        ok, buf = cv2.imencode(ext, digit, params)
        assert ok
        path.write_bytes(buf.tobytes())
        paths.append(str(path))
    return paths


def decode_only(paths: list[str], workers: int, size: int) -> tuple[float, float]:
    """(images/s, CPU seconds per image) for read + cv2.imdecode + cv2.resize, on `workers` threads."""

    def one(path: str) -> int:
        with open(path, "rb") as f:
            data = f.read()
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        return cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA).size

    t, c = time.perf_counter(), time.process_time()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        done = sum(1 for _ in pool.map(one, paths, chunksize=16))
    assert done == len(paths)
    return len(paths) / (time.perf_counter() - t), (time.process_time() - c) / len(paths)


def decode_and_score(detector, paths: list[str], workers: int, batch: int) -> tuple[float, float]:
    """(images/s, CPU s/image) for the least work that yields scores: Detector.prepare + score_prepared on
    chunks of `batch` paths, `workers` threads, nothing written. Not part of the protocol: it separates
    the model's cost from the scan pipeline's own overhead."""

    def one(chunk: list[str]) -> int:
        return len(detector.score_prepared([detector.prepare(p) for p in chunk]))

    chunks = [paths[i : i + batch] for i in range(0, len(paths), batch)]
    t, c = time.perf_counter(), time.process_time()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        done = sum(pool.map(one, chunks))
    assert done == len(paths)
    return len(paths) / (time.perf_counter() - t), (time.process_time() - c) / len(paths)


def scan_rate(detector, folder: Path, out: Path, workers: int, batch: int, formats: str) -> tuple[float, float, dict]:
    """(images/s, CPU seconds per image, counts) for a full scan of `folder`."""
    from ganaudit.runtime.scan import scan

    t, c = time.perf_counter(), time.process_time()
    result = scan(detector, [folder], out, workers=workers, batch_size=batch, formats=formats)
    elapsed, cpu = time.perf_counter() - t, time.process_time() - c
    n = result.counts["candidates"]
    return n / elapsed, cpu / n, result.counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="exported .onnx detector (default: the shipped default model)")
    ap.add_argument("--n", type=int, default=5000, help="number of image files")
    ap.add_argument("--image-size", type=int, default=28, help="side of the image files (28 = MNIST as is)")
    ap.add_argument("--workers", type=int, default=None, help="threads for both passes (default: min(4, CPUs))")
    ap.add_argument("--threads", type=int, default=None, help="onnxruntime threads (default: as `ganaudit scan`)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5, help="alternating decode/scan rounds; medians are reported")
    ap.add_argument("--formats", default="csv,jsonl,html", help="scan outputs (as --format)")
    ap.add_argument("--output", default="p1b_scan_throughput.json", help="JSON results file")
    args = ap.parse_args()

    model = resolve_model_or_exit(args.model)
    from ganaudit.runtime.detector import Detector
    from ganaudit.runtime.scan import default_threads, default_workers

    workers = args.workers or default_workers()
    threads = args.threads or default_threads(workers)
    det = Detector.load(model, threads=threads, batch_size=args.batch_size)
    size = det.spec.preprocess.size
    with tempfile.TemporaryDirectory(prefix="ganaudit-p1b-") as tmp:
        folder = Path(tmp) / "images"
        folder.mkdir()
        paths = build_files(folder, args.n, args.image_size)
        decode_only(paths[:500], workers, size)  # warm-up (page cache, thread pool, OpenCV)
        decode_rates, scan_rates, decode_cpu, scan_cpu, counts = [], [], [], [], {}
        infer_rates = []
        for r in range(args.rounds):
            rate, cpu = decode_only(paths, workers, size)
            decode_rates.append(rate)
            decode_cpu.append(cpu)
            infer_rates.append(decode_and_score(det, paths, workers, args.batch_size)[0])
            rate, cpu, counts = scan_rate(det, folder, Path(tmp) / f"out{r}", workers, args.batch_size, args.formats)
            scan_rates.append(rate)
            scan_cpu.append(cpu)
            print(f"round {r + 1}: decode-only {decode_rates[-1]:.0f}/s ({decode_cpu[-1] * 1e6:.0f} us CPU/image), "
                  f"decode+score {infer_rates[-1]:.0f}/s, scan {scan_rates[-1]:.0f}/s ({scan_cpu[-1] * 1e6:.0f} us CPU/image), "
                  f"ratio {scan_rates[-1] / decode_rates[-1]:.2f}", flush=True)  # fmt: skip
    ratios = [b / a for a, b in zip(decode_rates, scan_rates)]
    ratio = statistics.median(ratios)
    d, s = statistics.median(decode_rates), statistics.median(scan_rates)
    cpu_ratio = statistics.median(decode_cpu) / statistics.median(scan_cpu)
    vs_infer = statistics.median(b / a for a, b in zip(infer_rates, scan_rates))
    result = {
        "benchmark": "P1b scan throughput vs decode-only",
        "n_files": args.n,
        "image_size": args.image_size,
        "workers": workers,
        "onnx_threads": threads,
        "batch_size": args.batch_size,
        "formats": args.formats,
        "model": {"path": str(model), "name": det.name, "input": f"{det.spec.preprocess.channels}x{size}x{size}"},
        "decode_only_images_per_s": [round(x, 1) for x in decode_rates],
        "scan_images_per_s": [round(x, 1) for x in scan_rates],
        "round_ratios": [round(x, 3) for x in ratios],
        "median_decode_only": round(d, 1),
        "median_scan": round(s, 1),
        "ratio": round(ratio, 3),
        "target": ">= 0.8",
        "meets_target": ratio >= 0.8,
        "decode_only_cpu_us_per_image": [round(x * 1e6, 1) for x in decode_cpu],
        "scan_cpu_us_per_image": [round(x * 1e6, 1) for x in scan_cpu],
        "cpu_ratio": round(cpu_ratio, 3),
        "decode_and_score_images_per_s": [round(x, 1) for x in infer_rates],
        "ratio_scan_vs_decode_and_score": round(vs_infer, 3),
        "scan_counts": counts,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    print(f"decode-only {d:.0f} images/s, scan {s:.0f} images/s (medians of {args.rounds} rounds); "
          f"throughput ratio {ratio:.2f}x (median of rounds; target >= 0.8x); "
          f"CPU-per-image ratio {cpu_ratio:.2f}x; scan vs decode+score (no I/O, no report) {vs_infer:.2f}x "
          f"-> {args.output}")  # fmt: skip


if __name__ == "__main__":
    main()
