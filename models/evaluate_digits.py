"""Evaluate the shipped digits detector: the numbers in its model card (models/digits.md).

    python models/evaluate_digits.py [--model ganaudit/models/digits.onnx] [--run runs/digits] [--json out.json]

Normal/real test images: MNIST-t10k images with index >= 8000 (2,000 digits the model never saw; it trained
on index < 8000). Anomalies, made here, deterministically, with nothing downloaded:

- letters: A-Z drawn with four OpenCV fonts at two stroke widths, small random rotations (208 images);
- textures: random 64 x 64 patches of seven scikit-image sample photographs (brick, grass, gravel, camera,
  moon, coins, text), 210 images;
- noise: Gaussian, uniform (color) and salt-and-pepper, 50 each.

Generated digits (only with ``--run`` and torch): 500 fresh samples from the run's EMA generator, with a
latent seed the training never used.

Reported per set: the shares flagged at the model's shipped thresholds and put out of domain by its domain
gate (as `ganaudit scan` reports them; the gate abstains from the generated verdict), and the AUROC against
the real test digits (the generated head's with the gate off). Runtime only except for the generated samples.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MNIST = ROOT.parent / "shared" / "data" / "mnist" / "t10k-images-idx3-ubyte.gz"
TEST_START = 8000
FONTS = {
    "simplex": cv2.FONT_HERSHEY_SIMPLEX,
    "duplex": cv2.FONT_HERSHEY_DUPLEX,
    "complex": cv2.FONT_HERSHEY_COMPLEX,
    "script": cv2.FONT_HERSHEY_SCRIPT_SIMPLEX,
}
TEXTURES = ("brick", "grass", "gravel", "camera", "moon", "coins", "text")


def auroc(negative: np.ndarray, positive: np.ndarray) -> float:
    """Probability that a positive outscores a negative (ties count half): the Mann-Whitney AUROC."""
    neg, pos = np.sort(np.asarray(negative, np.float64)), np.asarray(positive, np.float64)
    below = np.searchsorted(neg, pos, side="left")
    equal = np.searchsorted(neg, pos, side="right") - below
    return float((below + 0.5 * equal).sum() / (len(neg) * len(pos)))


def letters(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for ch in (chr(c) for c in range(ord("A"), ord("Z") + 1)):
        for fname, font in FONTS.items():
            for thick in (4, 6):
                canvas = np.zeros((56, 56), np.uint8)
                (w, h), _ = cv2.getTextSize(ch, font, 1.5, thick)
                cv2.putText(canvas, ch, ((56 - w) // 2, (56 + h) // 2), font, 1.5, 255, thick, cv2.LINE_AA)
                rot = cv2.getRotationMatrix2D((28, 28), float(rng.uniform(-12, 12)), 1.0)
                canvas = cv2.warpAffine(canvas, rot, (56, 56))
                small = cv2.resize(canvas, (28, 28), interpolation=cv2.INTER_AREA)
                out[f"{ch}_{fname}_{thick}"] = cv2.GaussianBlur(small, (3, 3), 0.6)
    return out


def textures(seed: int = 0, per: int = 30) -> dict[str, np.ndarray]:
    from skimage import data

    rng = np.random.default_rng(seed)
    out = {}
    for name in TEXTURES:
        img = getattr(data, name)()
        h, w = img.shape[:2]
        for i in range(per):
            y, x = int(rng.integers(0, h - 64)), int(rng.integers(0, w - 64))
            out[f"{name}_{i}"] = np.ascontiguousarray(img[y : y + 64, x : x + 64])
    return out


def noise(seed: int = 0, n: int = 50) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for i in range(n):
        out[f"gaussian_{i}"] = np.clip(rng.normal(128, rng.uniform(20, 80), (32, 32)), 0, 255).astype(np.uint8)
        out[f"uniform_{i}"] = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
        out[f"saltpepper_{i}"] = np.where(rng.random((28, 28)) < rng.uniform(0.05, 0.3), 255, 0).astype(np.uint8)
    return out


def generated(run: Path, n: int = 500, seed: int = 12345) -> dict[str, np.ndarray]:
    from ganaudit.core.grid import to_uint8
    from ganaudit.training.train import sample

    return {f"gan_{i}": t for i, t in enumerate(to_uint8(sample(run, n, seed)))}


def generated_scores(head_only, images: list[np.ndarray]) -> np.ndarray:
    """The generated head's probabilities with the domain gate off (the head's own AUROC)."""
    return np.array([v.generated_score for v in head_only.detect(images)])


def generated_flags(vs) -> dict[str, float]:
    """Shares flagged as generated and gated out of domain (the gate abstains: no generated flag)."""
    return {
        "generated_flagged": float(np.mean([bool(v.generated_flag) for v in vs])),
        "out_of_domain": float(np.mean([v.in_domain is False for v in vs])),
    }


def evaluate(detector, head_only, sets: dict[str, dict[str, np.ndarray]], real: list[np.ndarray]) -> dict:
    """Flags from ``detector`` (as users run it, domain gate on); the generated AUROC from ``head_only``."""
    real_v = detector.detect(real)
    real_a = np.array([v.anomaly_score for v in real_v])
    real_g = generated_scores(head_only, real) if detector.has_generated_head else None
    result = {
        "model": detector.name,
        "spec_hash": detector.spec_hash,
        "heads": list(detector.spec.heads),
        "thresholds": {"anomaly": detector.thresholds.anomaly, "generated": detector.thresholds.generated},
        "real_test": {
            "n": len(real),
            "flagged": float(np.mean([v.flagged for v in real_v])),
            "anomaly_flagged": float(np.mean([v.anomaly_flag for v in real_v])),
        },
        "sets": {},
    }
    if real_g is not None:
        result["real_test"].update(generated_flags(real_v))
    for name, images in sets.items():
        vs = detector.detect(list(images.values()))
        a = np.array([v.anomaly_score for v in vs])
        row = {
            "n": len(vs),
            "flagged": float(np.mean([v.flagged for v in vs])),
            "anomaly_flagged": float(np.mean([v.anomaly_flag for v in vs])),
            "anomaly_auroc": auroc(real_a, a),
        }
        if real_g is not None:
            row.update(generated_flags(vs))
            row["generated_auroc"] = auroc(real_g, generated_scores(head_only, list(images.values())))
        if name == "letters":
            missed = sorted({k.split("_")[0] for k, v in zip(images, vs) if not v.flagged})
            row["letters_ever_missed"] = "".join(missed)
        result["sets"][name] = row
    return result


def markdown(result: dict) -> str:
    gen = "generated" in result["heads"]
    head = "| set | n | flagged | anomaly flag | anomaly AUROC |"
    head += " out of domain | generated flag | generated AUROC (head alone) |" if gen else ""
    lines = [head, "| --- " * (8 if gen else 5) + "|"]
    rt = result["real_test"]
    cells = [f"real test digits (MNIST >= {TEST_START})", rt["n"], f"{rt['flagged']:.1%}", f"{rt['anomaly_flagged']:.1%}", "-"]
    if gen:
        cells += [f"{rt['out_of_domain']:.1%}", f"{rt['generated_flagged']:.1%}", "-"]
    lines.append("| " + " | ".join(map(str, cells)) + " |")
    for name, r in result["sets"].items():
        cells = [name, r["n"], f"{r['flagged']:.1%}", f"{r['anomaly_flagged']:.1%}", f"{r['anomaly_auroc']:.3f}"]
        if gen:
            cells += [f"{r['out_of_domain']:.1%}", f"{r['generated_flagged']:.1%}", f"{r['generated_auroc']:.3f}"]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description="Evaluate the shipped digits detector.")
    ap.add_argument("--model", default=str(ROOT / "ganaudit" / "models" / "digits.onnx"))
    ap.add_argument("--mnist", type=Path, default=MNIST)
    ap.add_argument("--run", type=Path, default=None, help="the model's training run, to sample generated digits")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args()

    from ganaudit import Detector
    from ganaudit.training.datasets import read_idx

    detector = Detector.load(args.model)
    head_only = Detector.load(args.model, domain_gate=False)
    real = list(read_idx(args.mnist)[TEST_START:])
    sets = {"letters": letters(), "textures": textures(), "noise": noise()}
    if args.run is not None:
        sets["generated digits"] = generated(args.run)
    result = evaluate(detector, head_only, sets, real)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2), file=sys.stderr)
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
