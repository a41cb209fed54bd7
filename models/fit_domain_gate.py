"""Fit the domain gate of the shipped digits model in place, from what the model file holds (no run directory).

The gate (ganaudit/core/domain.py) is normally fitted by `ganaudit export` on the run's normal validation images and
held-out fakes of its own generator. The shipped ganaudit/models/digits.onnx predates the gate, and its run
directory is not shipped; but the file carries everything needed to redo that step exactly:

* the validation images: the run's seeded split (`split_validation(8000, 0.1, seed)`) of MNIST t10k index
  0-7999, re-read from MNIST; the script checks that the file's graph scores them to the anomaly quantiles
  stored in its spec (so they are the same 800 images);
* held-out fakes: the graph holds the EMA generator G and the encoder E as initialisers (`G.*`, `E.*`); they
  are loaded into ganaudit's own networks and the fake pool is drawn as export draws it (EMA samples and
  reconstructions G(E(x)) of the validation images, seed + 1,000,003). The generator snapshots saved during
  training are not in the file, so their third of the pool comes from the EMA generator instead.

Only the spec's `domain` entry changes; weights, thresholds and calibration stay bit for bit.

    python models/fit_domain_gate.py [--model ganaudit/models/digits.onnx] [--mnist PATH] [--dry-run]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from ganaudit.core.atomic import atomic_write
from ganaudit.training.datasets import read_idx, split_validation
from ganaudit.core.domain import DOMAIN_COVERAGE, fit_gate
from ganaudit.training.generated import PoolSources, crops_of, fake_pool
from ganaudit.core.imaging import preprocess
from ganaudit.runtime.detector import Detector
from ganaudit.core.spec import METADATA_KEY
from ganaudit.training.train import TrainConfig, build_networks

ROOT = Path(__file__).resolve().parents[1]


def networks_from_file(proto: onnx.ModelProto, cfg: TrainConfig) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The EMA generator and the encoder, loaded from the graph's initialisers."""
    nets = build_networks(cfg)
    weights = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    for prefix, net in (("G.", nets.G_ema), ("E.", nets.E)):
        net.load_state_dict({k[len(prefix) :]: torch.from_numpy(v.copy()) for k, v in weights.items() if k.startswith(prefix)})
        net.eval()
    return nets.G_ema, nets.E


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=ROOT / "ganaudit" / "models" / "digits.onnx")
    ap.add_argument("--mnist", type=Path, default=ROOT.parent / "shared" / "data" / "mnist" / "t10k-images-idx3-ubyte.gz")
    ap.add_argument("--coverage", type=float, default=DOMAIN_COVERAGE)
    ap.add_argument("--dry-run", action="store_true", help="Print the gate, write nothing.")
    args = ap.parse_args()
    torch.set_num_threads(1)
    proto = onnx.load(str(args.model))
    spec = json.loads(next(p.value for p in proto.metadata_props if p.key == METADATA_KEY))
    cfg = TrainConfig.from_dict(spec["provenance"]["config"])
    det = Detector.load(args.model, threads=1)

    mnist = read_idx(args.mnist)[:8000]
    _, val_idx = split_validation(len(mnist), cfg.val_fraction, cfg.seed)
    real_u8 = mnist[val_idx][..., None]
    pre = det.spec.preprocess
    real_in = np.stack([preprocess(im, pre) for im in real_u8])
    real = det.run(real_in, crops_of(real_u8, pre))
    stored = np.asarray(spec["quantiles"]["anomaly"])
    redo = np.quantile(real["anomaly_score"].astype(np.float64), np.linspace(0, 1, len(stored)))
    drift = float(np.max(np.abs(redo - stored)))
    print(f"validation images: {len(real_u8)}; anomaly quantiles vs the stored ones: max |diff| {drift:.2e}", file=sys.stderr)
    if drift > 1e-3:
        raise SystemExit("these are not the model's validation images (its quantiles differ): nothing written")

    G, E = networks_from_file(proto, cfg)
    fakes = fake_pool(PoolSources([], G, E, real_in), max(len(real_u8), 64), cfg.seed + 1_000_003, torch.device("cpu"))
    fake = det.run(np.stack([preprocess(f, pre) for f in fakes]), crops_of(fakes, pre))
    gate = fit_gate(real, fake, det.spec.scoring, coverage=args.coverage)
    print(json.dumps(gate, indent=2))
    for c in (0.995, 0.999):  # the trade-off, for docs/benchmarks.md (benchmarks/q2_domain_gate.py --extra-limit)
        other = fit_gate(real, fake, det.spec.scoring, coverage=c)
        print(f"coverage {c}: limit {other['limit']:.4f} (fakes inside {other['fake_inside']:.4f})", file=sys.stderr)
    if args.dry_run:
        return
    spec["domain"] = gate
    text = json.dumps(spec, sort_keys=True, separators=(",", ":"))
    for p in proto.metadata_props:
        if p.key == METADATA_KEY:
            p.value = text
    atomic_write(args.model, proto.SerializeToString())
    print(f"wrote {args.model} (spec hash {Detector.load(args.model).spec_hash})", file=sys.stderr)


if __name__ == "__main__":
    main()
