"""Where a detector's time goes: onnxruntime's own profiler over the exported graph, one thread.

    python benchmarks/profile_detector.py [--model digits] [--n 512] [--top 15] [--json profile.json] [--search]

Loads the model as `Detector.load` does (ORT_ENABLE_ALL, one intra-op thread, no spinning) with profiling
on, scores N real MNIST test digits (index >= 8000; their native crops too) through `Detector.prepare` and
`Detector.run` (so in calls of `rows_per_call` images, as scan and serve do), and sums the profiler's node
events: CPU time per image, by operator type and by the heaviest nodes, each as a share of all node time.

--search also times the patch-bank search alone, as a two-node graph (Gemm of 16 images x 256 positions
against the bank, then ArgMin as exported today, or ReduceMin), for banks of 4,096 and 2,048 entries of 32
features: the levers of issue 16's cheaper detector, measured in one process, one thread, median of 3.
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


def search_graph(reduction: str, bank_size: int, dim: int = 32) -> bytes:
    """Gemm(q, bank^T, |b|^2, alpha -2) then ArgMin or ReduceMin over the bank axis."""
    from onnx import TensorProto, helper, numpy_helper

    bank = np.random.default_rng(0).standard_normal((bank_size, dim)).astype(np.float32)
    inits = [numpy_helper.from_array(bank, "bank"), numpy_helper.from_array((bank**2).sum(1), "sq")]
    nodes = [helper.make_node("Gemm", ["q", "bank", "sq"], ["d"], alpha=-2.0, transB=1)]
    if reduction == "ArgMin":
        nodes.append(helper.make_node("ArgMin", ["d"], ["out"], axis=1, keepdims=0))
    else:
        inits.append(numpy_helper.from_array(np.array([1], np.int64), "axis"))
        nodes.append(helper.make_node("ReduceMin", ["d", "axis"], ["out"], keepdims=0))
    kind = TensorProto.INT64 if reduction == "ArgMin" else TensorProto.FLOAT
    graph = helper.make_graph(nodes, "search", [helper.make_tensor_value_info("q", TensorProto.FLOAT, [None, dim])],
                              [helper.make_tensor_value_info("out", kind, None)], inits)  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]).SerializeToString()


def search_table(images: int = 16, positions: int = 256, calls: int = 10) -> None:
    from ganaudit.threads import session_options

    q = np.random.default_rng(1).standard_normal((images * positions, 32)).astype(np.float32)
    times: dict[tuple[str, int], list[float]] = defaultdict(list)
    for _ in range(3):
        for reduction in ("ArgMin", "ReduceMin"):
            for bank in (4096, 2048):
                session = ort.InferenceSession(search_graph(reduction, bank), session_options(1))
                session.run(None, {"q": q})
                start = time.process_time()
                for _ in range(calls):
                    session.run(None, {"q": q})
                times[reduction, bank].append((time.process_time() - start) * 1000 / (calls * images))
    print("\n| patch-bank search alone (ms CPU per image) | bank 4,096 | bank 2,048 |\n| --- | --- | --- |")
    for reduction in ("ArgMin", "ReduceMin"):
        cells = " | ".join(f"{sorted(times[reduction, b])[1]:.2f}" for b in (4096, 2048))
        print(f"| Gemm + {reduction} | {cells} |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="an .onnx file or a shipped model's name (default: the default)")
    ap.add_argument("--n", type=int, default=512, help="images to score")
    ap.add_argument("--top", type=int, default=15, help="heaviest nodes to list")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--search", action="store_true", help="also time the patch-bank search levers alone")
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
    if args.search:
        search_table()
    if args.json:
        args.json.write_text(json.dumps({"cpu_ms_per_image": cpu_ms, "by_type_us": by_type, "by_node_us": by_node,
                                         "images": images}, indent=2))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
