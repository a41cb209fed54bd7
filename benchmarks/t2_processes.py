"""T2: real `ganaudit train` and `ganaudit scan` processes sharing the cores, against each alone.

    python benchmarks/t2_processes.py [--steps 400] [--max-seconds 120] [--files 4000] [--work /tmp/t2] [--json t2.json]

Each scenario starts real CLI processes (`ganaudit train` with every default that shapes the GAN step: 32 px,
width 32, batch 64, hinge loss; only the step counts are cut, the head and the audit are off; `ganaudit scan`
of MNIST files with the shipped model and its default workers and threads) and measures:

- a training's GAN step rate while it runs: the parent polls RUN/metrics.jsonl (a line every 25 steps) and
  times the lines; the first line is left out (start-up);
- a scan's images/s from its summary.json.

Scenarios, for each thread policy: one training alone; two trainings started together; one scan alone; a
scan started once a training is in its loop (the training's rate is taken over the scan's time window).
Policies: `ganaudit` (the default since issue 16: the CLI sets GOMP_SPINCOUNT=2000 before torch loads;
onnxruntime threads never spin) and `libgomp default` (GOMP_SPINCOUNT=300000, libgomp's own default, which
the CLI leaves alone as a user's choice: what every training did before). OMP_NUM_THREADS, MKL_NUM_THREADS,
OMP_WAIT_POLICY and GOMP_SPINCOUNT of the calling shell are removed for the measured processes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import MNIST  # noqa: E402
from p1b_scan_throughput import build_files  # noqa: E402

GANAUDIT = [sys.executable, "-m", "ganaudit.cli"]
POLICIES = {"ganaudit": {}, "libgomp default": {"GOMP_SPINCOUNT": "300000"}}
CLEARED = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def environment(policy: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in CLEARED}
    return {**env, **policy}


class Training:
    """A `ganaudit train` subprocess whose metrics lines are timed as they appear."""

    def __init__(self, out: Path, steps: int, env: dict[str, str]) -> None:
        shutil.rmtree(out, ignore_errors=True)
        self.metrics = out / "metrics.jsonl"
        cmd = [*GANAUDIT, "train", str(MNIST), "--label", "8", "--index-range", "0:8000", "--out", str(out),
               "--steps", str(steps), "--encoder-steps", "0", "--no-generated-head", "--no-audit", "--no-progress",
               "--sample-every", "100000", "--checkpoint-every", "100000"]  # fmt: skip
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.times: list[tuple[float, int]] = []  # (monotonic time the line was seen, step)

    def poll(self) -> None:
        if not self.metrics.is_file():
            return
        lines = self.metrics.read_text().splitlines()
        for line in lines[len(self.times):]:
            try:
                self.times.append((time.monotonic(), int(json.loads(line)["step"])))
            except ValueError:  # a half-written line: read again next time
                break

    def running(self) -> bool:
        return self.proc.poll() is None

    def rate(self, start: float = 0.0, end: float = float("inf")) -> float:
        """GAN steps/s between the first and last timed lines inside [start, end] (after the first line)."""
        inside = [(t, s) for t, s in self.times[1:] if start <= t <= end]
        if len(inside) < 2:
            raise RuntimeError(f"too few metrics lines in the window ({len(inside)}); use more --steps")
        (t0, s0), (t1, s1) = inside[0], inside[-1]
        return (s1 - s0) / (t1 - t0)

    def stop(self) -> None:
        if self.running():
            self.proc.send_signal(signal.SIGINT)  # finishes the step, checkpoints, exits 130
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def wait_all(trainings: list[Training], max_seconds: float) -> None:
    """Wait for the trainings to finish, or stop them once each has run its loop for MAX_SECONDS."""
    while any(t.running() for t in trainings):
        for t in trainings:
            t.poll()
        if all(t.times and time.monotonic() - t.times[0][0] > max_seconds for t in trainings):
            for t in trainings:
                t.stop()
            return
        time.sleep(0.1)
    for t in trainings:
        t.poll()
        if t.proc.returncode != 0:
            sys.exit(f"training failed ({t.proc.returncode}): {t.proc.stderr.read() if t.proc.stderr else ''}")


def trainings(work: Path, n: int, steps: int, env: dict[str, str], max_seconds: float) -> list[float]:
    runs = [Training(work / f"run{i}", steps, env) for i in range(n)]
    try:
        wait_all(runs, max_seconds)
    finally:
        for r in runs:
            r.stop()
    both = (max(r.times[1][0] for r in runs), min(r.times[-1][0] for r in runs))  # every one in its loop
    return [r.rate(*both) for r in runs]


def scan(folder: Path, out: Path, env: dict[str, str]) -> tuple[float, float, float]:
    """(images/s, start, end) of one `ganaudit scan` with its defaults."""
    shutil.rmtree(out, ignore_errors=True)
    start = time.monotonic()
    subprocess.run([*GANAUDIT, "scan", str(folder), "--out", str(out), "--no-progress"], env=env, check=True,
                   stdout=subprocess.DEVNULL)  # fmt: skip
    end = time.monotonic()
    return json.loads((out / "summary.json").read_text())["images_per_second"], start, end


def scan_beside_training(folder: Path, work: Path, steps: int, env: dict[str, str]) -> tuple[float, float]:
    """(scan images/s, training steps/s during the scan) with the scan started once the training logs."""
    run = Training(work / "beside", steps, env)
    try:
        while len(run.times) < 2:
            if not run.running():
                sys.exit(f"training ended early: {run.proc.stderr.read() if run.proc.stderr else ''}")
            run.poll()
            time.sleep(0.1)
        box: dict[str, tuple[float, float, float]] = {}
        th = threading.Thread(target=lambda: box.setdefault("scan", scan(folder, work / "scan-beside", env)))
        th.start()
        while th.is_alive():
            run.poll()
            time.sleep(0.1)
        run.poll()
        rate, start, end = box["scan"]
        return rate, run.rate(start, end)
    finally:
        run.stop()  # never leave a training behind


def load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=400, help="GAN steps of each measured training")
    ap.add_argument("--max-seconds", type=float, default=120.0,
                    help="stop a training once its loop has run this long (a spinning pair may crawl)")
    ap.add_argument("--files", type=int, default=4000, help="MNIST files (half PNG, half JPEG) the scans read")
    ap.add_argument("--work", type=Path, default=Path("/tmp/t2"))
    ap.add_argument("--policies", default=",".join(POLICIES), help="comma list of: " + ", ".join(POLICIES))
    ap.add_argument("--json", type=Path, help="write the numbers here too")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    folder = args.work / "files"
    if not folder.is_dir() or len(list(folder.iterdir())) != args.files:
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
        build_files(folder, args.files)
    results: dict[str, dict] = {}
    print(f"{os.cpu_count()} cores; load average (1/5/15 min) at start {load()}", flush=True)
    for name in args.policies.split(","):
        env = environment(POLICIES[name])
        r: dict = {"load_before": load()}
        r["train_solo"] = trainings(args.work, 1, args.steps, env, args.max_seconds)[0]
        r["train_pair"] = trainings(args.work, 2, args.steps, env, args.max_seconds)
        r["scan_solo"] = scan(folder, args.work / "scan-solo", env)[0]
        r["scan_beside"], r["train_beside_scan"] = scan_beside_training(folder, args.work, 100 * args.steps, env)
        r["load_after"] = load()
        results[name] = r
        print(f"{name}: {json.dumps(r)}", flush=True)
    print("\n| policy | training alone (steps/s) | two trainings, each | each / alone | scan alone (img/s) "
          "| scan beside a training | scan ratio | training beside the scan | training ratio | load before/after |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, r in results.items():
        solo, pair = r["train_solo"], r["train_pair"]
        print(f"| {name} | {solo:.2f} | {pair[0]:.2f}, {pair[1]:.2f} | {min(pair) / solo:.2f}x | {r['scan_solo']:.0f} "
              f"| {r['scan_beside']:.0f} | {r['scan_beside'] / r['scan_solo']:.2f}x | {r['train_beside_scan']:.2f} "
              f"| {r['train_beside_scan'] / solo:.2f}x | {r['load_before']} / {r['load_after']} |")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
