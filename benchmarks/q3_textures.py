"""Q3: localisation of texture defects (protocol in the project's BENCHMARKS.md).

    python benchmarks/q3_textures.py [--textures brick,grass,gravel] [--quick] [--out runs/q3]
                                     [--json q3.json] [--png docs/img/q3_heatmaps.png]

For each texture photograph shipped with scikit-image (512 x 512, grayscale):
- the top three quarters are the *train* region: random 32 x 32 patches of it (with flips) are written to a
  folder, and `ganaudit train FOLDER` / `ganaudit export` build a detector with the default settings,
  exactly as a user would;
- the bottom quarter is the *test* region, never trained on: it is tiled into overlapping 32 x 32 patches,
  and half of them (seeded) get one pasted defect from `paste_defect` (a scratch, a blob or a hole) whose
  ground-truth mask the generator returns.
The test patches are scored through the ONNX `Detector`. Reported: image AUROC of `anomaly_score` and pixel
AUROC of `anomaly_map` over every pixel of every test patch (normal patches count with all-zero masks).
Nothing is fitted on the test patches.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np
from sklearn.metrics import roc_auc_score

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _common import train_and_export  # noqa: E402
from ganaudit.runtime.report import heat_overlay  # noqa: E402
from ganaudit.runtime.detector import Detector  # noqa: E402

PATCH = 32
N_TRAIN_PATCHES = 2000
TEST_STRIDE = 16
QUICK_ARGS = ["--steps", "600", "--encoder-steps", "300"]
DEFECTS = ("scratch", "blob", "hole")


def texture(name: str) -> np.ndarray:
    import skimage.data

    img = getattr(skimage.data, name)()
    return img if img.ndim == 2 else cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)


def split_regions(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    cut = img.shape[0] * 3 // 4
    return img[:cut], img[cut:]


def train_patches(region: np.ndarray, n: int, rng: np.random.Generator) -> list[np.ndarray]:
    h, w = region.shape
    out = []
    for _ in range(n):
        y, x = rng.integers(0, h - PATCH + 1), rng.integers(0, w - PATCH + 1)
        p = region[y : y + PATCH, x : x + PATCH]
        if rng.random() < 0.5:
            p = p[:, ::-1]
        out.append(np.ascontiguousarray(p))
    return out


def test_patches(region: np.ndarray) -> list[np.ndarray]:
    h, w = region.shape
    return [
        np.ascontiguousarray(region[y : y + PATCH, x : x + PATCH])
        for y in range(0, h - PATCH + 1, TEST_STRIDE)
        for x in range(0, w - PATCH + 1, TEST_STRIDE)
    ]


def paste_defect(patch: np.ndarray, kind: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic defect pasted on a uint8 patch. Returns (defective patch, boolean mask)."""
    mask = np.zeros(patch.shape, np.uint8)
    cx, cy = (int(v) for v in rng.integers(8, PATCH - 8, size=2))
    if kind == "scratch":
        angle, length = rng.uniform(0, np.pi), rng.integers(12, 26)
        dx, dy = int(np.cos(angle) * length / 2), int(np.sin(angle) * length / 2)
        cv2.line(mask, (cx - dx, cy - dy), (cx + dx, cy + dy), 1, int(rng.integers(1, 3)))
        value = rng.choice([rng.uniform(0, 40), rng.uniform(215, 255)])
        layer = np.full(patch.shape, value, np.float32)
    elif kind == "blob":
        axes = (int(rng.integers(3, 8)), int(rng.integers(3, 8)))
        cv2.ellipse(mask, (cx, cy), axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
        shift = rng.choice([-1, 1]) * rng.uniform(60, 100)
        layer = np.clip(patch.astype(np.float32) + shift, 0, 255)
    elif kind == "hole":
        cv2.circle(mask, (cx, cy), int(rng.integers(3, 7)), 1, -1)
        layer = np.clip(rng.normal(12, 6, patch.shape), 0, 255).astype(np.float32)
    else:
        raise ValueError(f"unknown defect kind {kind!r}")
    m = mask.astype(bool)
    out = patch.astype(np.float32)
    out[m] = layer[m]
    return np.clip(out, 0, 255).astype(np.uint8), m


def write_folder(patches: list[np.ndarray], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, p in enumerate(patches):
        cv2.imwrite(str(folder / f"{i:05d}.png"), p)


def train_and_export_texture(name: str, region: np.ndarray, out: Path, extra: list[str], seed: int) -> tuple[Path, float]:
    run, model, folder = out / name, out / f"{name}.onnx", out / f"{name}-train"
    if not model.exists():
        write_folder(train_patches(region, N_TRAIN_PATCHES, np.random.default_rng(seed)), folder)
    return train_and_export([str(folder), "--size", str(PATCH), *extra], run, model, f"texture-{name}")


def make_test_set(region: np.ndarray, seed: int) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Test patches, image labels (1 = defective) and pixel masks [N, PATCH, PATCH]."""
    rng = np.random.default_rng(seed)
    patches, labels, masks = [], [], []
    for i, p in enumerate(test_patches(region)):
        if rng.random() < 0.5:
            p, m = paste_defect(p, DEFECTS[i % len(DEFECTS)], rng)
            labels.append(1)
        else:
            m = np.zeros(p.shape, bool)
            labels.append(0)
        patches.append(p)
        masks.append(m)
    return patches, np.array(labels), np.stack(masks)


def overlay_strip(patches: list[np.ndarray], masks: np.ndarray, maps: np.ndarray, k: int = 6) -> np.ndarray:
    """Rows of (patch | true mask | heat overlay) for the first k defective patches, 4x upscaled."""
    rows = []
    idx = [i for i in range(len(patches)) if masks[i].any()][:k]
    vmax = float(np.quantile(maps, 0.995))
    for i in idx:
        big = cv2.resize(patches[i], (PATCH * 4, PATCH * 4), interpolation=cv2.INTER_NEAREST)
        mask = cv2.resize(masks[i].astype(np.uint8) * 255, big.shape[::-1], interpolation=cv2.INTER_NEAREST)
        heat = heat_overlay(big, maps[i], vmax=vmax)
        gray3 = lambda a: cv2.cvtColor(a, cv2.COLOR_GRAY2RGB)  # noqa: E731
        rows.append(np.hstack([gray3(big), gray3(mask), heat]))
    return np.vstack(rows)


def evaluate(name: str, model: Path, region: np.ndarray, seed: int) -> tuple[dict, np.ndarray]:
    patches, labels, masks = make_test_set(region, seed)
    verdicts = Detector.load(model).detect(patches, include_map=True)
    scores = np.array([v.anomaly_score for v in verdicts])
    maps = np.stack([cv2.resize(v.anomaly_map, (PATCH, PATCH)) for v in verdicts])
    row = {
        "texture": name,
        "n_test": len(patches),
        "n_defective": int(labels.sum()),
        "image_auroc": float(roc_auc_score(labels, scores)),
        "pixel_auroc": float(roc_auc_score(masks.ravel(), maps.ravel())),
    }
    for kind_i, kind in enumerate(DEFECTS):  # per defect kind: its patches against all normal ones
        sel = np.array([lab == 0 or i % len(DEFECTS) == kind_i for i, lab in enumerate(labels)])
        row[f"image_auroc_{kind}"] = float(roc_auc_score(labels[sel], scores[sel]))
    return row, overlay_strip(patches, masks, maps)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--textures", default="brick,grass,gravel", help="comma-separated skimage.data textures")
    ap.add_argument("--quick", action="store_true", help=f"shorter training ({' '.join(QUICK_ARGS)})")
    ap.add_argument("--out", type=Path, default=Path("runs/q3"), help="runs, models and patches (reused if present)")
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--png", type=Path, help="write heat-map overlays of defective test patches here")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("train_args", nargs="*", help="extra `ganaudit train` options, after --")
    args = ap.parse_args()

    extra = (QUICK_ARGS if args.quick else []) + args.train_args
    rows, strips = [], []
    for name in args.textures.split(","):
        train_region, test_region = split_regions(texture(name))
        model, seconds = train_and_export_texture(name, train_region, args.out, extra, args.seed)
        row, strip = evaluate(name, model, test_region, args.seed + 1)
        row["train_seconds"] = round(seconds, 1)
        rows.append(row)
        strips.append(strip)
        print(f"{name}: image AUROC {row['image_auroc']:.3f}  pixel AUROC {row['pixel_auroc']:.3f}  "
              f"({row['n_defective']}/{row['n_test']} defective, {seconds:.0f} s)", flush=True)  # fmt: skip
    mean = {k: float(np.mean([r[k] for r in rows])) for k in ("image_auroc", "pixel_auroc")}
    print("\n| texture | image AUROC | pixel AUROC | scratch | blob | hole |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['texture']} | {r['image_auroc']:.3f} | {r['pixel_auroc']:.3f} | {r['image_auroc_scratch']:.3f} | "
              f"{r['image_auroc_blob']:.3f} | {r['image_auroc_hole']:.3f} |")  # fmt: skip
    print(f"| mean | {mean['image_auroc']:.3f} | {mean['pixel_auroc']:.3f} | | | |")
    ok = mean["image_auroc"] >= 0.95 and mean["pixel_auroc"] >= 0.90
    print(f"target image AUROC >= 0.95 and pixel AUROC >= 0.90: {'met' if ok else 'NOT met'}")
    if args.png:
        args.png.parent.mkdir(parents=True, exist_ok=True)
        height = max(s.shape[0] for s in strips)
        padded = [np.pad(s, ((0, height - s.shape[0]), (0, 8), (0, 0)), constant_values=255) for s in strips]
        cv2.imwrite(str(args.png), cv2.cvtColor(np.hstack(padded), cv2.COLOR_RGB2BGR))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"rows": rows, "mean": mean, "train_args": extra}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
