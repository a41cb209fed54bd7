"""Q2: generated-image detection across generators (BENCHMARKS.md).

Real: MNIST-t10k images with index >= 8000. Fake: samples of GANs trained by ganaudit on index < 8000 with
other losses, architectures and seeds. The detector is a ganaudit run with the generated head, trained on
index < 8000; its head only ever sees its own generator (snapshots, EMA, reconstructions), so every test
generator is unseen (a stricter protocol than leave-one-generator-out: all test generators are left out).

Reports per generator: AUROC, AP, accuracy at the shipped threshold vs best-threshold accuracy, and the AUROC
drop under JPEG 75, blur sigma 1, resize x0.5 and x2 applied to both classes. Also the head's training cost
next to the GAN + encoder phases of the same run.

    .venv/bin/python benchmarks/q2_generated.py [--quick] [--threads 1] [--work /tmp/q2] [--out q2.json]
        [--detector-run RUN_DIR] [--extra-generator NAME=RUN_DIR] [--no-head-spectral]

Without --detector-run it trains a short detector (width 16; GAN 1000, encoder 300, head 400 steps) and the
test GANs, about 35 minutes on one core; trained runs are reused on a second call. --detector-run evaluates an
existing run instead, e.g. the default `ganaudit train` run built by models/build_digits.sh.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

from ganaudit.training.rundir import RunDir

ROOT = Path(__file__).resolve().parents[1]
MNIST = ROOT.parent / "shared" / "data" / "mnist" / "t10k-images-idx3-ubyte.gz"

# Test generators: (name, extra `ganaudit train` options, GAN steps or None for the short default).
# All trained on index < 8000 at 32x32. The last one is a full-length GAN with the defaults of the third to ninth
# sessions (the strongest fakes). Each keeps the GAN step it was first trained with (LEGACY_STEP), so the test
# generators stay the same when ganaudit's own defaults change.
LEGACY_STEP = ["--d-head", "conv", "--no-reuse-fakes"]
GENERATORS = [
    ("hinge-w32-seed1", ["--loss", "hinge", "--seed", "1", *LEGACY_STEP], None),
    ("ns-w16-seed2", ["--loss", "ns", "--width", "16", "--seed", "2", *LEGACY_STEP], None),
    ("wgan-gp-w16-seed3", ["--loss", "wgan-gp", "--width", "16", "--seed", "3", "--lr-d", "2e-4", *LEGACY_STEP], None),
    ("hinge-noSN-noMBstd-w24-z128-seed4", ["--loss", "hinge", "--no-spectral-norm", "--no-minibatch-std",
                                           "--width", "24", "--z-dim", "128", "--lr-d", "2e-4", "--seed", "4",
                                           *LEGACY_STEP], None),
    ("default-w32-3000steps-seed5", ["--seed", "5", *LEGACY_STEP], 3000),
]  # fmt: skip
PERTURBATIONS = ["jpeg75", "blur1", "resize0.5", "resize2"]
# Control: the real test images are MNIST's 28x28 and the fakes the GANs' 32x32. Shrinking the fakes to 28x28
# (INTER_AREA) gives both classes one format, so a size or resampling cue cannot carry the result.
FORMAT_CONTROL = "fakes-at-28px"


def perturb(img: np.ndarray, kind: str) -> np.ndarray:
    if kind == "clean":
        return img
    if kind == "jpeg75":
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 75])
        return cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    if kind == "blur1":
        return cv2.GaussianBlur(img, (0, 0), 1.0)
    if kind == FORMAT_CONTROL:
        return cv2.resize(img, (28, 28), interpolation=cv2.INTER_AREA)
    f = {"resize0.5": 0.5, "resize2": 2.0}[kind]
    h, w = img.shape[:2]
    return cv2.resize(img, (round(w * f), round(h * f)), interpolation=cv2.INTER_AREA if f < 1 else cv2.INTER_LINEAR)


def run(cmd: list[str]) -> None:
    print("+ " + " ".join(cmd), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True)


def ganaudit(*args: str) -> list[str]:
    return [sys.executable, "-m", "ganaudit.cli", *args]


def train_generator(work: Path, name: str, opts: list[str], steps: int) -> Path:
    from ganaudit.training.train import load_checkpoint

    out = work / "generators" / name
    ckpt = RunDir(out).checkpoint
    if ckpt.is_file() and load_checkpoint(out)["step"] >= steps:
        return out
    run(ganaudit("train", str(MNIST), "--index-range", "0:8000", "--out", str(out), "--steps", str(steps),
                 "--encoder-steps", "0", "--no-generated-head", "--no-progress", *opts,
                 *(["--resume"] if ckpt.is_file() else [])))  # fmt: skip
    return out


def train_detector(
    work: Path, steps: int, encoder_steps: int, head_steps: int, width: int, spectral: bool = True
) -> tuple[Path, dict[str, float]]:
    """Train through the Python API in three segments (GAN, encoder, head) to time each phase side by side."""
    from ganaudit.training.datasets import load_dataset
    from ganaudit.training.train import TrainConfig, load_checkpoint, train

    suffix = "" if spectral else "-nospectral"
    out = work / f"detector{suffix}"
    timing_path = work / f"detector{suffix}_timing.json"
    if timing_path.is_file():
        return out, json.loads(timing_path.read_text())
    data = load_dataset(str(MNIST), size=32, index_range="0:8000", native_crops=4, progress=True)
    cfg = TrainConfig(steps=steps, encoder_steps=encoder_steps, generated_head=True, head_steps=head_steps, seed=0,
                      width=width, head_spectral=spectral)  # fmt: skip
    timing: dict[str, float] = {}
    for phase, stop in (("gan", steps), ("encoder", steps + encoder_steps), ("head", cfg.total_steps)):
        resume = RunDir(out).has_checkpoint()
        t0 = time.perf_counter()
        train(cfg, data, out, resume=resume, stop_at=stop, progress=True)
        timing[phase] = time.perf_counter() - t0
        assert load_checkpoint(out)["step"] == stop
    timing_path.write_text(json.dumps(timing))
    return out, timing


def head_cost(work: Path, n: int) -> dict[str, float]:
    """Seconds per step of each phase at the default `ganaudit train` settings (32x32, width 32, batch 64),
    timed side by side in one process, and the head's share projected for the default numbers of steps."""
    from ganaudit.training.datasets import load_dataset
    from ganaudit.training.train import TrainConfig, train

    out, cached = work / "cost", work / f"cost_{n}.json"
    if cached.is_file():
        per_step = json.loads(cached.read_text())
    else:
        if out.exists():
            import shutil

            shutil.rmtree(out)
        data = load_dataset(str(MNIST), size=32, index_range="0:8000", native_crops=4)
        cfg = TrainConfig(steps=n, encoder_steps=n, generated_head=True, head_steps=n, checkpoint_every=10**9,
                          sample_every=10**9)  # fmt: skip
        per_step = {}
        for phase, stop in (("gan", n), ("encoder", 2 * n), ("head", 3 * n)):
            t0 = time.perf_counter()
            train(cfg, data, out, resume=RunDir(out).has_checkpoint(), stop_at=stop, progress=False)
            per_step[phase] = (time.perf_counter() - t0) / n
        cached.write_text(json.dumps(per_step))
    default = TrainConfig(generated_head=True)
    base = default.steps * per_step["gan"] + default.encoder_steps * per_step["encoder"]
    return {**{f"s_per_step_{k}": v for k, v in per_step.items()}, "steps_each": n,
            "default_head_steps": default.n_head_steps,
            "projected_default_head_share": default.n_head_steps * per_step["head"] / base}  # fmt: skip


def sample_u8(run_dir: Path, n: int, seed: int) -> list[np.ndarray]:
    from ganaudit.training.generated import to_uint8
    from ganaudit.training.train import sample

    return list(to_uint8(sample(run_dir, n, seed=seed)))


def scores(det, images: list[np.ndarray], kind: str, batch: int = 256) -> np.ndarray:
    """Calibrated generated_score of each image after ``kind`` (through Detector.detect, as a user would)."""
    out = []
    for i in range(0, len(images), batch):
        out += [v.generated_score for v in det.detect([perturb(im, kind) for im in images[i : i + batch]])]
    return np.asarray(out, np.float64)


def downscaled_scores(det, images: list[np.ndarray], kind: str, batch: int = 256) -> np.ndarray:
    """Lever check: the head fed the whole image shrunk to the model size instead of its native-scale crops."""
    from ganaudit.core.thresholds import apply_calibration

    out = []
    for i in range(0, len(images), batch):
        x = np.stack([det.prepare(perturb(im, kind)).tensor for im in images[i : i + batch]])
        out.append(apply_calibration(det.run(x)["generated_logit"], det.spec.calibration["generated"]))
    return np.concatenate(out)


def metrics(real: np.ndarray, fake: np.ndarray, threshold: float) -> dict[str, float]:
    y = np.r_[np.zeros(len(real)), np.ones(len(fake))]
    s = np.r_[real, fake]
    cand = np.unique(s)
    acc_best = max(float(((s > t) == y).mean()) for t in np.r_[cand, -np.inf])
    acc_ship = float(((s > threshold) == y).mean())
    return {
        "auroc": float(roc_auc_score(y, s)), "ap": float(average_precision_score(y, s)),
        "acc_shipped": acc_ship, "acc_best": acc_best, "calibration_gap": acc_best - acc_ship,
        "fpr_shipped": float((real > threshold).mean()), "tpr_shipped": float((fake > threshold).mean()),
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="Tiny settings (minutes): a smoke run, not the result.")
    ap.add_argument("--work", type=Path, default=Path("/tmp/ganaudit-q2"), help="Runs and models go here (reused).")
    ap.add_argument("--out", type=Path, default=Path("q2_results.json"))
    ap.add_argument("--n-test", type=int, default=None, help="Fake images per generator (default 2000, quick 300).")
    ap.add_argument("--threads", type=int, default=2, help="torch / onnxruntime threads (1 on a busy machine).")
    ap.add_argument("--cost-steps", type=int, default=150, help="Steps per phase for the default-settings timing.")
    ap.add_argument("--detector-run", type=Path, default=None,
                    help="Use this finished ganaudit run (with the generated head, trained on index < 8000) as the "
                         "detector instead of training one.")
    ap.add_argument("--no-head-spectral", action="store_true", help="Lever check: train the head without the "
                    "spectral branch (everything else equal).")
    ap.add_argument("--extra-generator", action="append", default=[], metavar="NAME=RUN_DIR",
                    help="Also test the EMA generator of another ganaudit run trained on index < 8000 (repeatable).")
    args = ap.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the `ganaudit train` subprocesses
    import torch

    torch.set_num_threads(args.threads)
    from ganaudit.training.datasets import read_idx
    from ganaudit.runtime.detector import Detector

    # steps of each test GAN; detector GAN / encoder / head steps and width
    gen_steps, det_steps, enc_steps, head_steps, width = (
        (100, 100, 40, 60, 16) if args.quick else (600, 1000, 300, 400, 16)
    )
    n_test = args.n_test or (300 if args.quick else 2000)
    work = args.work / ("quick" if args.quick else "full")
    work.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()

    if args.detector_run is None:
        detector_run, timing = train_detector(work, det_steps, enc_steps, head_steps, width, not args.no_head_spectral)
        model = work / f"{detector_run.name}.onnx"
    else:
        detector_run, timing = args.detector_run, {}
        model = work / f"detector-{args.detector_run.resolve().name}.onnx"
    gens = {
        name: train_generator(work, name, opts, gen_steps if args.quick or steps is None else steps)
        for name, opts, steps in GENERATORS
    }
    run(ganaudit("export", str(detector_run), "-o", str(model), "--fpr", "0.01"))

    real = list(read_idx(MNIST)[8000 : 8000 + n_test])
    fakes = {name: sample_u8(path, n_test, seed=100) for name, path in gens.items()}
    for spec in args.extra_generator:
        name, _, path = spec.partition("=")
        gens[name] = Path(path)
        fakes[name] = sample_u8(Path(path), n_test, seed=100)
    fakes["own-generator (seen)"] = sample_u8(detector_run, n_test, seed=100)

    results: dict[str, dict] = {}
    for label, fpr in (("shipped (fpr 0.01)", None), ("fpr 0.05", 0.05)):
        # the head itself (the gate is q2_domain_gate.py's)
        det = Detector.load(model, fpr=fpr, threads=args.threads, domain_gate=False)
        thr = det.thresholds.generated
        kinds = ["clean"] + (PERTURBATIONS if fpr is None else [])
        res: dict[str, dict] = {"threshold": thr}
        r_clean = scores(det, real, "clean")
        for kind in kinds:
            r = scores(det, real, kind) if kind != "clean" else r_clean
            res[kind] = {name: metrics(r, scores(det, imgs, kind), thr) for name, imgs in fakes.items()}
        if fpr is None:  # format control: real images untouched, fakes shrunk to the real images' 28x28
            res[FORMAT_CONTROL] = {
                n: metrics(r_clean, scores(det, imgs, FORMAT_CONTROL), thr) for n, imgs in fakes.items()
            }
            r2 = downscaled_scores(det, real, "resize2")
            res["resize2-downscaled"] = {
                n: metrics(r2, downscaled_scores(det, imgs, "resize2"), thr) for n, imgs in fakes.items()
            }
        results[label] = res
        print(f"done: {label}", file=sys.stderr, flush=True)

    unseen = [name for name in fakes if name != "own-generator (seen)"]
    ship = results["shipped (fpr 0.01)"]
    summary = {
        "mean_unseen_auroc": float(np.mean([ship["clean"][g]["auroc"] for g in unseen])),
        "min_unseen_auroc": float(np.min([ship["clean"][g]["auroc"] for g in unseen])),
        "max_calibration_gap": float(np.max([ship["clean"][g]["calibration_gap"] for g in unseen])),
        "max_drop": {k: float(np.max([ship["clean"][g]["auroc"] - ship[k][g]["auroc"] for g in unseen]))
                     for k in PERTURBATIONS},
        "min_unseen_auroc_format_control": float(np.min([ship[FORMAT_CONTROL][g]["auroc"] for g in unseen])),
    }  # fmt: skip
    head_cost_ratio = timing["head"] / (timing["gan"] + timing["encoder"]) if timing else None
    cost = head_cost(work, args.cost_steps if not args.quick else 20)
    report = {
        "settings": {"quick": args.quick, "detector_run": str(detector_run), "head_spectral": not args.no_head_spectral,
                     "generator_steps": gen_steps, "detector_steps": det_steps,
                     "encoder_steps": enc_steps, "head_steps": head_steps, "detector_width": width,
                     "n_real": len(real), "n_fake": n_test, "threads": args.threads},
        "timing_s": timing, "head_cost_ratio": head_cost_ratio, "default_cost": cost, "summary": summary, "results": results,
        "wall_s": time.perf_counter() - t_start,
    }  # fmt: skip
    args.out.write_text(json.dumps(report, indent=2))
    print(markdown(report, unseen))


def markdown(report: dict, unseen: list[str]) -> str:
    ship = report["results"]["shipped (fpr 0.01)"]
    loose = report["results"]["fpr 0.05"]
    lines = [
        "| generator | AUROC | AP | acc @ shipped thr | best acc | gap | acc @ fpr 0.05 thr | "
        "drop JPEG75 | drop blur1 | drop x0.5 | drop x2 | x2 downscaled, not cropped | AUROC, fakes at 28 px |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for g, m in ship["clean"].items():
        drops = " | ".join(f"{m['auroc'] - ship[k][g]['auroc']:+.3f}" for k in PERTURBATIONS)
        lines.append(
            f"| {g} | {m['auroc']:.3f} | {m['ap']:.3f} | {m['acc_shipped']:.3f} | {m['acc_best']:.3f} | "
            f"{m['calibration_gap'] * 100:.1f} pt | {loose['clean'][g]['acc_shipped']:.3f} | {drops} | "
            f"{m['auroc'] - ship['resize2-downscaled'][g]['auroc']:+.3f} | {ship[FORMAT_CONTROL][g]['auroc']:.3f} |"
        )
    s = report["summary"]
    lines.append("")
    lines.append(
        f"Unseen generators: mean AUROC {s['mean_unseen_auroc']:.3f} (min {s['min_unseen_auroc']:.3f}); "
        f"largest calibration gap {s['max_calibration_gap'] * 100:.1f} pt; largest AUROC drop "
        + ", ".join(f"{k} {v:.3f}" for k, v in s["max_drop"].items())
        + (f". Head training cost: {report['head_cost_ratio'] * 100:.0f}% of the GAN + encoder time of the same run; "
           if report["head_cost_ratio"] is not None else ". Head training cost ")
        + f"at the default settings {report['default_cost']['projected_default_head_share'] * 100:.0f}% "
        f"(per-step timing, {report['default_cost']['steps_each']} steps of each phase side by side)."
    )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
