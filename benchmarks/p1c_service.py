"""P1c: `ganaudit serve` under 16 concurrent loopback clients vs in-process `Detector` throughput.

One run does, on the same images (real MNIST test digits, PNG encoded) and the same detector file:

1. in-process: ``Detector.detect`` on encoded bytes (decode + preprocess + score), in batches of
   ``--max-batch-size`` and one image at a time, for ``--inproc-seconds`` each;
2. starts a real ``ganaudit serve`` (uvicorn) subprocess on 127.0.0.1 at a free port, waits for
   ``/v2/health/ready``;
3. for each ``--images-per-request`` value: ``--clients`` keep-alive connections post multipart requests to
   ``/v1/detect`` for ``--duration`` seconds (after ``--warmup`` seconds not counted); every response is
   checked (status, one ok result per image); records throughput, p50/p99 latency, counts by status;
4. scrapes ``/metrics`` (mean batch size, queue and compute time), stops the server (SIGINT, graceful);
5. repeats the in-process batched measurement (the machine is shared: the ratio uses the mean of both).

The load generator is a minimal asyncio HTTP/1.1 client (pre-built request bytes) so that on a small
machine it takes as little CPU from the server as possible; its CPU time and the server's are reported.
Everything is bounded in time and talks to 127.0.0.1 only.

    python benchmarks/p1c_service.py --model detector.onnx [--duration 20] [--out p1c_service.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ganaudit.runtime.detector import Detector  # noqa: E402

MNIST = ROOT.parent / "shared" / "data" / "mnist" / "t10k-images-idx3-ubyte.gz"
BOUNDARY = b"ganauditp1cboundary"


def load_images(n: int) -> list[bytes]:
    """PNG-encoded MNIST test digits (index >= 8000); random digits-like noise if MNIST is absent."""
    if MNIST.is_file():
        from ganaudit.training.datasets import read_idx

        images = read_idx(MNIST)[8000 : 8000 + n]
    else:
        rng = np.random.default_rng(0)
        images = (rng.random((n, 28, 28)) * 255).astype(np.uint8)
    return [cv2.imencode(".png", im)[1].tobytes() for im in images]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (Linux /proc), in seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


# --------------------------------------------------------------------------- in-process baseline


def inprocess(detector: Detector, images: list[bytes], batch: int, seconds: float) -> dict:
    data = [bytearray(b) for b in images]
    detector.detect(data[:batch])  # warm
    n = 0
    i = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        chunk = [data[(i + k) % len(data)] for k in range(batch)]
        verdicts = detector.detect(chunk) if batch > 1 else [detector.detect(chunk[0])]
        assert all(v.status == "ok" for v in verdicts)
        n += len(verdicts)
        i += batch
    elapsed = time.perf_counter() - t0
    return {"batch": batch, "images": n, "seconds": round(elapsed, 3), "images_per_s": round(n / elapsed, 1)}


# --------------------------------------------------------------------------- load generator


def build_request(port: int, blobs: list[bytes]) -> bytes:
    parts = []
    for i, b in enumerate(blobs):
        parts.append(
            b"--" + BOUNDARY + b"\r\n"
            + f'Content-Disposition: form-data; name="files"; filename="d{i}.png"\r\n'.encode()
            + b"Content-Type: image/png\r\n\r\n" + b + b"\r\n"
        )  # fmt: skip
    body = b"".join(parts) + b"--" + BOUNDARY + b"--\r\n"
    head = (
        f"POST /v1/detect HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY.decode()}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    return head + body


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    m = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
    body = await reader.readexactly(int(m.group(1))) if m else b""
    return status, body


async def client(port: int, requests: list[bytes], per_request: int, start: float, stop: float, offset: int, out: dict) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    i = offset
    try:
        while True:
            now = time.perf_counter()
            if now >= stop:
                break
            t0 = now
            writer.write(requests[i % len(requests)])
            i += 1
            try:
                status, body = await asyncio.wait_for(read_response(reader), timeout=30)
            except (asyncio.TimeoutError, asyncio.IncompleteReadError, ConnectionError) as e:
                out["transport_errors"].append(type(e).__name__)
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                continue
            t1 = time.perf_counter()
            if status == 200:
                results = json.loads(body)["results"]
                if len(results) != per_request or any(r["status"] != "ok" for r in results):
                    out["bad_bodies"] += 1
            if t0 >= start:  # count only requests sent after the warm-up
                out["latencies"].append(t1 - t0)
                out["statuses"][status] = out["statuses"].get(status, 0) + 1
                if status == 200:
                    out["images"] += per_request
    finally:
        writer.close()


async def load(port: int, images: list[bytes], per_request: int, clients: int, warmup: float, duration: float) -> dict:
    requests = [build_request(port, [images[(k * per_request + j) % len(images)] for j in range(per_request)]) for k in range(64)]
    out: dict = {"latencies": [], "statuses": {}, "images": 0, "bad_bodies": 0, "transport_errors": []}
    t = time.perf_counter()
    start, stop = t + warmup, t + warmup + duration
    await asyncio.wait_for(
        asyncio.gather(*(client(port, requests, per_request, start, stop, c * 7, out) for c in range(clients))),
        timeout=warmup + duration + 60,
    )
    lat = np.array(out["latencies"]) * 1000
    n = len(lat)
    return {
        "images_per_request": per_request,
        "clients": clients,
        "seconds": duration,
        "requests": n,
        "requests_per_s": round(n / duration, 1),
        "images_per_s": round(out["images"] / duration, 1),
        "p50_ms": round(float(np.percentile(lat, 50)), 2) if n else None,
        "p99_ms": round(float(np.percentile(lat, 99)), 2) if n else None,
        "status_counts": {str(k): v for k, v in sorted(out["statuses"].items())},
        "bad_bodies": out["bad_bodies"],
        "transport_errors": len(out["transport_errors"]),
    }


# --------------------------------------------------------------------------- metrics scrape


def scrape(port: int) -> dict:
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()

    def value(name: str, labels: str = "") -> float:
        m = re.search(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", text, re.M)
        return float(m.group(1)) if m else 0.0

    out = {"batches": value("ganaudit_batch_size_count"), "images_in_batches": value("ganaudit_batch_size_sum")}
    out["mean_batch_size"] = round(out["images_in_batches"] / out["batches"], 2) if out["batches"] else None
    for phase in ("decode", "queue", "compute"):
        s = value("ganaudit_inference_latency_seconds_sum", f'{{phase="{phase}"}}')
        c = value("ganaudit_inference_latency_seconds_count", f'{{phase="{phase}"}}')
        out[f"mean_{phase}_ms"] = round(1000 * s / c, 3) if c else None
    return out


def stop_server(proc: subprocess.Popen, timeout: float) -> None:
    """Stop `ganaudit serve` gracefully (SIGINT); kill it if it has not exited after ``timeout`` seconds."""
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def wait_ready(port: int, proc: subprocess.Popen, timeout: float = 90) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode} before it was ready")
        try:
            if urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2).status == 200:
                return
        except (urllib.error.URLError, ConnectionError, OSError):
            pass
        time.sleep(0.2)
    raise SystemExit("server not ready in time")


# --------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="Exported .onnx detector.")
    ap.add_argument("--clients", type=int, default=16, help="Concurrent keep-alive connections.")
    ap.add_argument("--duration", type=float, default=20.0, help="Measured seconds per scenario.")
    ap.add_argument("--warmup", type=float, default=2.0, help="Seconds of load before measuring.")
    ap.add_argument("--images-per-request", default="1,8", help="Comma-separated scenarios (files per request).")
    ap.add_argument("--inproc-seconds", type=float, default=5.0, help="Seconds per in-process measurement.")
    ap.add_argument("--max-batch-size", type=int, default=32, help="Server --max-batch-size and in-process batch.")
    ap.add_argument("--max-wait-ms", type=float, default=5.0, help="Server --max-wait-ms.")
    ap.add_argument(
        "--max-queue", type=int, default=0,
        help="Server --max-queue (0: enough for every client's request at once, at least the default 256).",
    )  # fmt: skip
    ap.add_argument("--n-images", type=int, default=512, help="Distinct images cycled through.")
    ap.add_argument("--out", type=Path, default=Path("p1c_service.json"), help="JSON results file.")
    args = ap.parse_args()
    scenarios = [int(x) for x in args.images_per_request.split(",") if x.strip()]
    # With a smaller queue the offered load itself overflows it and the run measures 503 backpressure instead.
    args.max_queue = args.max_queue or max(256, args.clients * max(scenarios))

    images = load_images(args.n_images)
    detector = Detector.load(args.model, batch_size=max(64, args.max_batch_size))
    print(f"model {detector.name} ({detector.spec.preprocess.size}px, {detector.spec.preprocess.channels}ch), "
          f"{len(images)} MNIST PNGs, {os.cpu_count()} CPUs", file=sys.stderr)  # fmt: skip
    before = inprocess(detector, images, args.max_batch_size, args.inproc_seconds)
    single = inprocess(detector, images, 1, args.inproc_seconds)
    print(f"in-process: {before['images_per_s']} img/s at batch {args.max_batch_size}, {single['images_per_s']} img/s at batch 1", file=sys.stderr)

    port = free_port()
    log_path = args.out.with_suffix(".server.log")
    cmd = [
        sys.executable, "-m", "ganaudit.cli", "serve", "--model", args.model, "--host", "127.0.0.1", "--port", str(port),
        "--max-batch-size", str(args.max_batch_size), "--max-wait-ms", str(args.max_wait_ms), "--max-queue", str(args.max_queue),
    ]  # fmt: skip
    runs = []
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        try:
            wait_ready(port, proc)
            for per_request in scenarios:
                cpu_srv0, cpu_cli0 = cpu_seconds(proc.pid), time.process_time()
                res = asyncio.run(load(port, images, per_request, args.clients, args.warmup, args.duration))
                res["server_cpu_s"] = round(cpu_seconds(proc.pid) - cpu_srv0, 2)
                res["client_cpu_s"] = round(time.process_time() - cpu_cli0, 2)
                runs.append(res)
                print(f"serve, {per_request} img/request: {res['images_per_s']} img/s, p50 {res['p50_ms']} ms, "
                      f"p99 {res['p99_ms']} ms, statuses {res['status_counts']}", file=sys.stderr)  # fmt: skip
            server_metrics = scrape(port)
        finally:
            stop_server(proc, timeout=30)
    after = inprocess(detector, images, args.max_batch_size, args.inproc_seconds)
    baseline = (before["images_per_s"] + after["images_per_s"]) / 2
    for r in runs:
        r["ratio_vs_inprocess_batched"] = round(r["images_per_s"] / baseline, 3)
        r["ratio_vs_inprocess_single"] = round(r["images_per_s"] / single["images_per_s"], 3)
        codes = {int(k) for k in r["status_counts"]}
        r["errors"] = sum(v for k, v in r["status_counts"].items() if k != "200") + r["bad_bodies"] + r["transport_errors"]
        r["unexpected_5xx"] = sum(v for k, v in r["status_counts"].items() if int(k) >= 500 and k != "503")
        r["meets_target"] = r["ratio_vs_inprocess_batched"] >= 0.6 and r["unexpected_5xx"] == 0 and codes <= {200, 503}
    result = {
        "benchmark": "P1c",
        "model": {"path": str(args.model), "name": detector.name, "size": detector.spec.preprocess.size,
                  "channels": detector.spec.preprocess.channels, "spec_hash": detector.spec_hash},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "server": {"cmd": " ".join(cmd[1:]), "max_batch_size": args.max_batch_size, "max_wait_ms": args.max_wait_ms,
                   "max_queue": args.max_queue},
        "inprocess": {"batched_before": before, "batched_after": after, "single": single, "batched_mean_images_per_s": round(baseline, 1)},
        "serve": runs,
        "server_metrics": server_metrics,
        "server_exit_code": proc.returncode,
    }  # fmt: skip
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nP1c  model {detector.name}  clients {args.clients}  in-process batched {baseline:.0f} img/s "
          f"(before {before['images_per_s']}, after {after['images_per_s']}), single {single['images_per_s']} img/s")  # fmt: skip
    print(f"{'img/req':>7} {'img/s':>9} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'ratio':>6} {'vs b1':>6} {'errors':>6}  statuses")
    for r in runs:
        print(f"{r['images_per_request']:>7} {r['images_per_s']:>9} {r['requests_per_s']:>8} {r['p50_ms']:>8} {r['p99_ms']:>8} "
              f"{r['ratio_vs_inprocess_batched']:>6} {r['ratio_vs_inprocess_single']:>6} {r['errors']:>6}  {r['status_counts']}")  # fmt: skip
    print(f"server: mean batch {server_metrics['mean_batch_size']}, mean queue {server_metrics['mean_queue_ms']} ms, "
          f"compute {server_metrics['mean_compute_ms']} ms, decode {server_metrics['mean_decode_ms']} ms; exit {proc.returncode}")  # fmt: skip
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
