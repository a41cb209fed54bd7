"""P2: peak RSS of `ganaudit scan` over 1,000 vs 10,000 files (target: 10k < 1.2x the 1k figure).

Writes 10,000 PNG/JPEG files from real MNIST digits into a temp folder (the first 1,000 also into a
folder of their own), then runs `ganaudit scan` as a subprocess on each folder, with every output
format, and reads each child's peak RSS from os.wait4 (ru_maxrss of that process alone). Each size
runs --repeats times, alternating, and the medians are compared.

    python benchmarks/p2_scan_memory.py --model detector.onnx [--small 1000] [--large 10000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _common import MNIST, resolve_model_or_exit  # noqa: E402


def build(small: Path, large: Path, n_small: int, n_large: int) -> None:
    from ganaudit.training.datasets import read_idx

    if not MNIST.is_file():
        sys.exit(f"error: MNIST not found at {MNIST}")
    digits = read_idx(MNIST)
    for i in range(n_large):
        ext = ".png" if i % 2 == 0 else ".jpg"
        ok, buf = cv2.imencode(ext, digits[i % len(digits)])
        assert ok
        data = buf.tobytes()
        (large / f"{i:06d}{ext}").write_bytes(data)
        if i < n_small:
            (small / f"{i:06d}{ext}").write_bytes(data)


def peak_rss_mb(folder: Path, out: Path, model: Path, extra: list[str]) -> tuple[float, float, dict]:
    """(peak RSS in MB, seconds, summary counts) of one `ganaudit scan` child process."""
    cmd = [sys.executable, "-m", "ganaudit.cli", "scan", str(folder), "--model", str(model), "--out", str(out),
           "--no-progress", "--json", *extra]  # fmt: skip
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    stdout, stderr = proc.stdout.read(), proc.stderr.read()  # type: ignore[union-attr]
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.exit(f"error: scan failed ({proc.returncode}): {stderr.decode(errors='replace')[-2000:]}")
    kb = usage.ru_maxrss  # kilobytes on Linux
    return kb / 1024, time.perf_counter() - t, json.loads(stdout)["counts"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="exported .onnx detector (default: the shipped default model)")
    ap.add_argument("--small", type=int, default=1000, help="files in the small scan")
    ap.add_argument("--large", type=int, default=10000, help="files in the large scan")
    ap.add_argument("--repeats", type=int, default=2, help="runs per size (alternating); medians are compared")
    ap.add_argument("--workers", type=int, default=None, help="as `ganaudit scan --workers`")
    ap.add_argument("--output", default="p2_scan_memory.json", help="JSON results file")
    args = ap.parse_args()
    if sys.platform != "linux":
        sys.exit("error: this benchmark reads ru_maxrss from os.wait4, in kilobytes as on Linux")

    model = resolve_model_or_exit(args.model)
    extra = ["--workers", str(args.workers)] if args.workers else []
    runs: dict[str, list[dict]] = {"small": [], "large": []}
    with tempfile.TemporaryDirectory(prefix="ganaudit-p2-") as tmp:
        small, large = Path(tmp) / "small", Path(tmp) / "large"
        small.mkdir()
        large.mkdir()
        build(small, large, args.small, args.large)
        for r in range(args.repeats):
            for name, folder in (("small", small), ("large", large)):
                mb, secs, counts = peak_rss_mb(folder, Path(tmp) / f"out-{name}-{r}", model, extra)
                runs[name].append({"peak_rss_mb": round(mb, 1), "seconds": round(secs, 2), "files": counts["candidates"],
                                   "flagged": counts["flagged"]})  # fmt: skip
                print(f"{name}: {counts['candidates']} files, peak RSS {mb:.1f} MB, {secs:.1f} s", flush=True)
    med = {k: statistics.median(x["peak_rss_mb"] for x in v) for k, v in runs.items()}
    ratio = med["large"] / med["small"]
    result = {
        "benchmark": "P2 scan peak RSS, small vs large folder",
        "model": str(model),
        "small_files": args.small,
        "large_files": args.large,
        "runs": runs,
        "median_peak_rss_mb": {k: round(v, 1) for k, v in med.items()},
        "ratio": round(ratio, 3),
        "target": "< 1.2",
        "meets_target": ratio < 1.2,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    print(f"peak RSS {med['small']:.1f} MB over {args.small} files, {med['large']:.1f} MB over {args.large} files: "
          f"ratio {ratio:.3f} (target < 1.2) -> {args.output}")  # fmt: skip


if __name__ == "__main__":
    main()
