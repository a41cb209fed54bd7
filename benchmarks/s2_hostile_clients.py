"""S2: can two hostile clients starve the others? (issue 13, item 2)

Starts a real ``ganaudit serve`` subprocess (any ganaudit executable: pass ``--ganaudit`` to compare two
checkouts) on 127.0.0.1, waits for ``/v2/health/ready``, then for ``--duration`` seconds runs, at once:

- ``--hostile`` clients (default 2), each sending request after request of ``--hostile-files`` (default 3)
  16-bit RGBA PNGs of ``--hostile-size`` pixels square (default 8000: 64 MP, inside the scan default limit;
  a few hundred KB each);
- ``--normal`` clients (default 4), each sending request after request of one 28x28 MNIST-sized PNG.

It reports, for the normal clients, the count of each status (504 above all), p50/p99/max latency; for the
hostile clients their statuses; and the server's peak RSS (VmHWM from /proc, sampled RSS as a check) and its
RSS at the end. Liveness (``/v2/health/live``) is probed once a second and its worst latency reported.
Everything talks to 127.0.0.1 only and is bounded in time.

    python benchmarks/s2_hostile_clients.py --ganaudit /work/main/.venv/bin/ganaudit --out before.json
    python benchmarks/s2_hostile_clients.py --ganaudit .venv/bin/ganaudit --out after.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from p1c_service import build_request, free_port, read_response, stop_server, wait_ready  # noqa: E402


def hostile_png(side: int, cache: Path) -> bytes:
    """A 16-bit RGBA PNG, ``side`` x ``side``, flat (it compresses ~1000:1), half transparent; cached on disk."""
    path = cache / f"ganaudit-hostile-flat-{side}.png"
    if not path.exists():
        img = np.zeros((side, side, 4), np.uint16)
        img[..., 3] = 32768  # half transparent: compositing runs
        ok, buf = cv2.imencode(".png", img, [cv2.IMWRITE_PNG_COMPRESSION, 9])
        assert ok
        path.write_bytes(buf.tobytes())
    return path.read_bytes()


def small_png() -> bytes:
    rng = np.random.default_rng(0)
    return cv2.imencode(".png", (rng.random((28, 28)) * 255).astype(np.uint8))[1].tobytes()


class Rss:
    """Samples the server's RSS every 0.1 s; VmHWM gives the kernel's own peak."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak_sampled = pid, 0

    def read(self, key: str) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
        return 0

    async def run(self, stop: float) -> None:
        while time.perf_counter() < stop:
            try:
                self.peak_sampled = max(self.peak_sampled, self.read("VmRSS"))
            except OSError:
                return
            await asyncio.sleep(0.1)


async def client(port: int, request: bytes, stop: float, out: dict, timeout: float) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            writer.write(request)
            try:
                status, _ = await asyncio.wait_for(read_response(reader), timeout=timeout)
            except (asyncio.TimeoutError, asyncio.IncompleteReadError, ConnectionError) as e:
                out["statuses"][type(e).__name__] = out["statuses"].get(type(e).__name__, 0) + 1
                out["latencies"].append(time.perf_counter() - t0)
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                continue
            out["latencies"].append(time.perf_counter() - t0)
            out["statuses"][str(status)] = out["statuses"].get(str(status), 0) + 1
    finally:
        writer.close()


async def live_probe(port: int, stop: float, out: dict) -> None:
    request = f"GET /v2/health/live HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
    while time.perf_counter() < stop:
        t0 = time.perf_counter()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(request)
            await asyncio.wait_for(read_response(reader), timeout=30)
            writer.close()
        except (asyncio.TimeoutError, OSError, asyncio.IncompleteReadError):
            out["live_failures"] += 1
        out["live_worst_s"] = max(out["live_worst_s"], time.perf_counter() - t0)
        await asyncio.sleep(1.0)


def summary(out: dict) -> dict:
    lat = np.array(out["latencies"]) if out["latencies"] else np.zeros(1)
    return {
        "requests": len(out["latencies"]),
        "statuses": dict(sorted(out["statuses"].items())),
        "p50_s": round(float(np.percentile(lat, 50)), 3),
        "p99_s": round(float(np.percentile(lat, 99)), 3),
        "max_s": round(float(lat.max()), 3),
    }


async def run_load(args: argparse.Namespace, port: int, pid: int) -> dict:
    big = hostile_png(args.hostile_size, Path(args.cache))
    hostile_req = build_request(port, [big] * args.hostile_files)
    normal_req = build_request(port, [small_png()])
    normal: dict = {"latencies": [], "statuses": {}}
    hostile: dict = {"latencies": [], "statuses": {}}
    live = {"live_failures": 0, "live_worst_s": 0.0}
    rss = Rss(pid)
    stop = time.perf_counter() + args.duration
    await asyncio.gather(
        *(client(port, hostile_req, stop, hostile, 120) for _ in range(args.hostile)),
        *(client(port, normal_req, stop, normal, 120) for _ in range(args.normal)),
        live_probe(port, stop, live),
        rss.run(stop + 5),
    )
    return {
        "hostile_png_bytes": len(big),
        "normal": summary(normal),
        "hostile": summary(hostile),
        **live,
        "peak_rss_sampled_mb": round(rss.peak_sampled / 2**20),
        "peak_rss_vmhwm_mb": round(rss.read("VmHWM") / 2**20),
        "rss_after_mb": round(rss.read("VmRSS") / 2**20),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ganaudit", default="ganaudit", help="The ganaudit executable to serve with.")
    ap.add_argument("--model", default="digits", help="Model to serve (default: the shipped digits model).")
    ap.add_argument("--serve-args", default="", help="Extra `ganaudit serve` options, e.g. '--max-pixels 16000000'.")
    ap.add_argument("--hostile", type=int, default=2)
    ap.add_argument("--hostile-files", type=int, default=3)
    ap.add_argument("--hostile-size", type=int, default=8000)
    ap.add_argument("--normal", type=int, default=4)
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--cache", default="/tmp", help="Folder for the generated hostile PNG.")
    ap.add_argument("--out", type=Path, help="JSON results file.")
    args = ap.parse_args()

    port = free_port()
    cmd = [args.ganaudit, "serve", "--model", args.model, "--port", str(port), *args.serve_args.split()]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_ready(port, proc)
        result = asyncio.run(run_load(args, port, proc.pid))
    finally:
        stop_server(proc, timeout=60)
    result = {"command": " ".join(cmd), "duration_s": args.duration, "hostile_clients": args.hostile,
              "hostile_files": args.hostile_files, "hostile_size": args.hostile_size, "normal_clients": args.normal,
              "cpus": os.cpu_count(), **result}  # fmt: skip
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
