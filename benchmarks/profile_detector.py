"""Where a detector's time goes: onnxruntime's own profiler over the exported graph, one thread.

    python benchmarks/profile_detector.py [--model digits] [--n 512] [--top 15] [--json profile.json]

Loads the model as `Detector.load` does (ORT_ENABLE_ALL, one intra-op thread, no spinning) with profiling
on, scores N real MNIST test digits (index >= 8000; their native crops too) through `Detector.prepare` and
`Detector.run` (so in calls of `rows_per_call` images, as scan and serve do), and sums the profiler's node
events: CPU time per image, by operator type and by the heaviest nodes, each as a share of all node time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402

from _common import MNIST, resolve_model_or_exit  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="an .onnx file or a shipped model's name (default: the default)")
    ap.add_argument("--n", type=int, default=512, help="images to score")
    ap.add_argument("--top", type=int, default=15, help="heaviest nodes to list")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    from ganaudit.datasets import read_idx
    from ganaudit.runtime import Detector, read_spec
    from ganaudit.threads import session_options

    model = resolve_model_or_exit(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        opts = session_options(1)
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.enable_profiling = True
        opts.profile_file_prefix = os.path.join(tmp, "ort")
        session = ort.InferenceSession(model.read_bytes(), opts, providers=["CPUExecutionProvider"])
        det = Detector(session, read_spec(session, str(model)))
        digits = read_idx(MNIST)[8000 : 8000 + args.n]
        items = [det.prepare(cv2.imencode(".png", d)[1].tobytes()) for d in digits]
        batch = np.stack([it.tensor for it in items])
        have = det.uses_crops and all(it.crops is not None for it in items)  # None: run() repeats the tensor
        crops = np.stack([it.crops for it in items]) if have else None
        det.run(batch[: det.rows_per_call], None if crops is None else crops[: det.rows_per_call])  # warm-up
        start = time.process_time()
        det.run(batch, crops)
        cpu_ms = (time.process_time() - start) * 1000 / len(batch)
        events = json.loads(Path(session.end_profiling()).read_text())
    by_type: dict[str, float] = defaultdict(float)
    by_node: dict[str, float] = defaultdict(float)
    runs = [e for e in events if e.get("name") == "model_run"]
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            by_type[e["args"]["op_name"]] += e["dur"]
            by_node[e["name"][: -len("_kernel_time")]] += e["dur"]
    measured = runs[1:]  # the first run is the warm-up
    total = sum(by_type.values())
    images = len(batch) + det.rows_per_call  # the profile holds the warm-up call too
    print(f"model {model.name}: {len(batch)} images in {len(measured)} calls of <= {det.rows_per_call}, 1 thread;"
          f" {cpu_ms:.2f} ms of process CPU per image; node time {total / images / 1000:.2f} ms per image\n")  # fmt: skip
    print("| operator type | ms per image | share |\n| --- | --- | --- |")
    for name, us in sorted(by_type.items(), key=lambda kv: -kv[1]):
        if us / total >= 0.005:
            print(f"| {name} | {us / images / 1000:.3f} | {100 * us / total:.1f} % |")
    print("\n| node | ms per image | share |\n| --- | --- | --- |")
    for name, us in sorted(by_node.items(), key=lambda kv: -kv[1])[: args.top]:
        print(f"| {name} | {us / images / 1000:.3f} | {100 * us / total:.1f} % |")
    if args.json:
        args.json.write_text(json.dumps({"cpu_ms_per_image": cpu_ms, "by_type_us": by_type, "by_node_us": by_node,
                                         "images": images}, indent=2))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
