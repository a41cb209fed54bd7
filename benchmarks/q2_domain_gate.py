"""Q2 + the domain gate: what abstaining out of domain costs on in-domain fakes, and what it saves elsewhere.

In domain: Q2's real images (MNIST t10k index >= 8000) and the samples of Q2's test GANs (trained by
benchmarks/q2_generated.py into WORK/full/generators; the ones present are used), plus fresh samples of the
model's own EMA generator (rebuilt from the model file as models/fit_domain_gate.py does; Q2's "own generator
(seen)" row: a different seed from the gate's fit, but the same generator). Out of domain: the demo's
anomalies (examples/images/anomalies), CIFAR-10 test photos and synthetic noise. Everything is scored once with
the gate off; the gate is then applied to the same outputs (domain.domain_scores and the model's stored limit,
plus any --extra-limit), and checked against the gated Detector on a sample.

* AUROC of the generated verdict before / after the gate, per generator: an abstention is "not generated"
  (score 0), so a fake pushed out of domain counts fully against the gate.
* Out of domain: the share called generated before / after.

    OMP_NUM_THREADS=1 python benchmarks/q2_domain_gate.py [--model M] [--work /tmp/ganaudit-q2] [--n-test 1000]
        [--n-cifar 1000] [--n-noise 300] [--extra-limit NAME=VALUE] [--out q2_gate.json]
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tarfile
import time
from pathlib import Path

import cv2
import numpy as np
from sklearn.metrics import roc_auc_score

from ganaudit.training.rundir import RunDir

from _common import MNIST, ROOT, resolve_model_or_exit
from q2_generated import GENERATORS, sample_u8

CIFAR = ROOT.parent / "shared" / "data" / "cifar10" / "cifar10-jpg.tar.gz"


def cifar_test(n: int) -> list[np.ndarray]:
    """The first n // 10 test photos of each CIFAR-10 class (decoded JPEG, 32 x 32 RGB as BGR arrays)."""
    per_class: dict[str, list[np.ndarray]] = {}
    with tarfile.open(CIFAR) as tar:
        for m in tar:
            parts = m.name.split("/")
            if len(parts) != 3 or parts[0] != "test" or not m.isfile():
                continue
            got = per_class.setdefault(parts[1], [])
            if len(got) < n // 10:
                buf = np.frombuffer(tar.extractfile(m).read(), np.uint8)  # type: ignore[union-attr]
                got.append(cv2.imdecode(buf, cv2.IMREAD_COLOR))
    return [im for ims in per_class.values() for im in ims]


def noise(n: int, seed: int = 0) -> list[np.ndarray]:
    """Gaussian grey, uniform RGB and salt-and-pepper noise at 28, 32 and 64 px, in turn."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        s = (28, 32, 64)[i % 3]
        kind = (i // 3) % 3
        if kind == 0:
            im = np.clip(rng.normal(128, 60, (s, s)), 0, 255).astype(np.uint8)
        elif kind == 1:
            im = rng.integers(0, 256, (s, s, 3), dtype=np.uint8)
        else:
            im = np.where(rng.random((s, s)) < 0.2, 255, 0).astype(np.uint8)
        out.append(im)
    return out


def score_all(det, images: list, batch: int = 256) -> dict[str, np.ndarray]:
    """Ungated generated probability, anomaly score and domain score of every image (Detector.detect)."""
    from ganaudit.core.domain import domain_scores

    g, a, comps = [], [], []
    for i in range(0, len(images), batch):
        for v in det.detect(images[i : i + batch]):
            g.append(v.generated_score)
            a.append(v.anomaly_score)
            comps.append(v.components)
    anomaly = np.asarray(a, np.float64)
    components = {k: np.asarray([c[k] for c in comps]) for k in comps[0]}
    dom = domain_scores(anomaly, components, det.spec.scoring, det.spec.domain)
    return {"generated": np.asarray(g, np.float64), "anomaly": anomaly, "domain": dom}


def own_samples(model: Path, n: int, seed: int) -> list[np.ndarray]:
    """n samples (uint8 HWC) of the EMA generator stored in the model file."""
    import onnx
    import torch

    sys.path.insert(0, str(ROOT / "models"))
    from fit_domain_gate import networks_from_file

    from ganaudit.training.generated import to_uint8
    from ganaudit.core.spec import METADATA_KEY
    from ganaudit.training.train import TrainConfig

    proto = onnx.load(str(model))
    spec = json.loads(next(p.value for p in proto.metadata_props if p.key == METADATA_KEY))
    cfg = TrainConfig.from_dict(spec["provenance"]["config"])
    G, _ = networks_from_file(proto, cfg)
    with torch.no_grad():
        z = torch.randn(n, cfg.z_dim, generator=torch.Generator().manual_seed(seed))
        return list(to_uint8(G(z).numpy()))


def gated(s: dict[str, np.ndarray], limit: float) -> np.ndarray:
    return np.where(s["domain"] <= limit, s["generated"], 0.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--work", type=Path, default=Path("/tmp/ganaudit-q2"))
    ap.add_argument("--n-test", type=int, default=1000, help="Real images, and fakes per generator.")
    ap.add_argument("--n-cifar", type=int, default=1000)
    ap.add_argument("--n-noise", type=int, default=300)
    ap.add_argument("--extra-limit", action="append", default=[], metavar="NAME=VALUE",
                    help="Also evaluate the gate at this domain-score limit (repeatable).")
    ap.add_argument("--out", type=Path, default=Path("q2_gate.json"))
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    from ganaudit.training.datasets import read_idx
    from ganaudit.runtime.detector import Detector

    t0 = time.perf_counter()
    model = resolve_model_or_exit(args.model)
    det = Detector.load(model, threads=1, domain_gate=False)
    if not det.spec.domain:
        sys.exit(f"error: {model} has no domain gate (export it with this ganaudit, or models/fit_domain_gate.py)")
    thr = det.thresholds.generated
    limits = {"shipped": float(det.spec.domain["limit"])}
    for spec in args.extra_limit:
        name, _, value = spec.partition("=")
        limits[name] = float(value)

    real = list(read_idx(MNIST)[8000 : 8000 + args.n_test])
    gens = [(n, args.work / "full" / "generators" / n) for n, _, _ in GENERATORS]
    gens = [(n, p) for n, p in gens if RunDir(p).has_checkpoint()]
    if not gens:
        sys.exit(f"error: no Q2 test generators under {args.work}/full/generators (run benchmarks/q2_generated.py)")
    sets = {"real": real, **{n: sample_u8(p, args.n_test, seed=100) for n, p in gens}}
    sets["own generator (seen)"] = own_samples(model, args.n_test, seed=100)
    gens.append(("own generator (seen)", model))
    anomalies = sorted((ROOT / "examples" / "images" / "anomalies").iterdir())
    ood = {"demo anomalies": [str(p) for p in anomalies], "CIFAR-10 test": cifar_test(args.n_cifar),
           "noise": noise(args.n_noise)}  # fmt: skip
    scores = {name: score_all(det, ims) for name, ims in {**sets, **ood}.items()}
    print(f"scored in {time.perf_counter() - t0:.0f} s", file=sys.stderr)

    # The gated Detector must agree with the gate applied here.
    on = Detector.load(model, threads=1)
    sample = real[:50] + sets[gens[0][0]][:50] + ood["CIFAR-10 test"][:50]
    got = np.array([v.generated_score or 0.0 for v in on.detect(sample)])
    ref = np.concatenate([gated(scores[k], limits["shipped"])[:50] for k in ("real", gens[0][0], "CIFAR-10 test")])
    assert np.allclose(got, ref, atol=1e-9), "the gated Detector disagrees with the benchmark's gate"

    r = scores["real"]
    report: dict = {"model": str(model), "threshold": thr, "limits": limits, "n_test": args.n_test,
                    "in_domain": {}, "out_of_domain": {}}  # fmt: skip
    for name, _ in gens:
        f = scores[name]
        y = np.r_[np.zeros(len(r["generated"])), np.ones(len(f["generated"]))]
        row = {"auroc_off": float(roc_auc_score(y, np.r_[r["generated"], f["generated"]])),
               "tpr_off": float((f["generated"] > thr).mean()), "fpr_off": float((r["generated"] > thr).mean())}
        for lname, lim in limits.items():
            rg, fg = gated(r, lim), gated(f, lim)
            row[lname] = {
                "auroc": float(roc_auc_score(y, np.r_[rg, fg])), "tpr": float((fg > thr).mean()),
                "fpr": float((rg > thr).mean()), "fake_out": float((f["domain"] > lim).mean()),
                "real_out": float((r["domain"] > lim).mean()),
            }  # fmt: skip
            row[lname]["auroc_cost"] = row["auroc_off"] - row[lname]["auroc"]
        report["in_domain"][name] = row
    for name in ood:
        s = scores[name]
        row = {"n": len(s["generated"]), "generated_off": float((s["generated"] > thr).mean())}
        for lname, lim in limits.items():
            row[lname] = {"generated": float((gated(s, lim) > thr).mean()), "out": float((s["domain"] > lim).mean())}
        report["out_of_domain"][name] = row
    report["wall_s"] = time.perf_counter() - t0
    args.out.write_text(json.dumps(report, indent=2))
    print(markdown(report))


def markdown(rep: dict) -> str:
    lim = list(rep["limits"])
    head = " | ".join(f"AUROC, gate {k} ({v:.2f})" for k, v in rep["limits"].items())
    lines = [f"| generator | AUROC, no gate | {head} | fakes out of domain | reals out of domain "
             f"| fakes flagged as generated, no gate / gate {lim[0]} |",
             "| --- | --- | " + " | ".join("---" for _ in lim) + " | --- | --- | --- |"]  # fmt: skip
    for g, row in rep["in_domain"].items():
        cells = " | ".join(f"{row[k]['auroc']:.4f} ({-row[k]['auroc_cost']:+.4f})" for k in lim)
        outs = " / ".join(f"{row[k]['fake_out'] * 100:.1f} %" for k in lim)
        routs = " / ".join(f"{row[k]['real_out'] * 100:.1f} %" for k in lim)
        recall = f"{row['tpr_off'] * 100:.1f} % / {row[lim[0]]['tpr'] * 100:.1f} %"
        lines.append(f"| {g} | {row['auroc_off']:.4f} | {cells} | {outs} | {routs} | {recall} |")
    lines += ["", "| out of domain | images | called generated, no gate | "
              + " | ".join(f"called generated, gate {k}" for k in lim) + " | out of domain (gate " + lim[0] + ") |",
              "| --- | --- | --- | " + " | ".join("---" for _ in lim) + " | --- |"]  # fmt: skip
    for name, row in rep["out_of_domain"].items():
        cells = " | ".join(f"{row[k]['generated'] * 100:.1f} %" for k in lim)
        lines.append(f"| {name} | {row['n']} | {row['generated_off'] * 100:.1f} % | {cells} | {row[lim[0]]['out'] * 100:.1f} % |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
