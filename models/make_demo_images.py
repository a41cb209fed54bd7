"""Rebuild examples/images/, the demo folder that the README's quickstart scans with the default model.

    python models/make_demo_images.py --run runs/digits [--mnist ../shared/data/mnist/t10k-images-idx3-ubyte.gz]

Needs the train extra (torch, for the generated digits) and scikit-image (its bundled sample textures).
Nothing is downloaded. Run it after models/build_digits.sh, which calls it: the generated digits must come
from the GAN of the shipped model's run.

What it writes (PNG, all small):

- ``normal/``: one real MNIST digit per label 0-9, with index >= 8000 (the benchmark test split: the
  default model never trained on them);
- ``anomalies/``: letters drawn with OpenCV in MNIST's style, texture patches and a photo from
  scikit-image's sample data, and three kinds of noise;
- ``generated/``: digits drawn by the run's (EMA) generator.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import cv2
import numpy as np

from ganaudit.core.atomic import atomic_write
from ganaudit.training.datasets import read_idx
from ganaudit.core.grid import encode_png, to_uint8

ROOT = Path(__file__).resolve().parents[1]
MNIST = ROOT.parent / "shared" / "data" / "mnist" / "t10k-images-idx3-ubyte.gz"
LETTERS = "AHKMWX"
TEST_START = 8000  # MNIST-t10k images >= 8000 are the benchmark test split
N_GENERATED = 8


def write_png(path: Path, image: np.ndarray) -> None:
    atomic_write(path, encode_png(image))


def normal_digits(mnist: Path) -> dict[str, np.ndarray]:
    images = read_idx(mnist)
    labels = read_idx(mnist.with_name("t10k-labels-idx1-ubyte.gz"))
    out = {}
    for digit in range(10):
        index = TEST_START + int(np.flatnonzero(labels[TEST_START:] == digit)[0])
        out[f"digit{digit}_mnist{index}.png"] = images[index]
    return out


def letter(ch: str) -> np.ndarray:
    """A white letter on black, 28x28, about the stroke width and extent of an MNIST digit."""
    canvas = np.zeros((56, 56), np.uint8)
    font, scale, thick = cv2.FONT_HERSHEY_SIMPLEX, 1.5, 5
    (w, h), _ = cv2.getTextSize(ch, font, scale, thick)
    cv2.putText(canvas, ch, ((56 - w) // 2, (56 + h) // 2), font, scale, 255, thick, cv2.LINE_AA)
    small = cv2.resize(canvas, (28, 28), interpolation=cv2.INTER_AREA)
    return cv2.GaussianBlur(small, (3, 3), 0.6)


def textures() -> dict[str, np.ndarray]:
    from skimage import data

    out = {}
    for name in ("brick", "grass", "gravel"):
        img = getattr(data, name)()
        patch = img[:128, :128]
        out[f"texture_{name}.png"] = cv2.resize(patch, (64, 64), interpolation=cv2.INTER_AREA)
    cat = data.chelsea()  # RGB photo
    out["photo_cat.png"] = cv2.resize(cat, (96, 64), interpolation=cv2.INTER_AREA)
    return out


def noise(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    gauss = np.clip(rng.normal(128, 60, (32, 32)), 0, 255).astype(np.uint8)
    uniform_rgb = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    salt = np.where(rng.random((28, 28)) < 0.15, 255, 0).astype(np.uint8)
    return {"noise_gaussian.png": gauss, "noise_uniform_rgb.png": uniform_rgb, "noise_salt_pepper.png": salt}


def generated(run: Path, n: int, seed: int) -> dict[str, np.ndarray]:
    from ganaudit.training.train import sample

    tiles = to_uint8(sample(run, n, seed))
    return {f"gan_digit_{i:02d}.png": t for i, t in enumerate(tiles)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, default=ROOT / "runs" / "digits", help="training run of the default model")
    ap.add_argument("--mnist", type=Path, default=MNIST, help="MNIST t10k images IDX file")
    ap.add_argument("--out", type=Path, default=ROOT / "examples" / "images")
    ap.add_argument("--seed", type=int, default=0, help="seed of the generator's latent vectors")
    args = ap.parse_args()

    groups = {
        "normal": normal_digits(args.mnist),
        "anomalies": {f"letter_{c}.png": letter(c) for c in LETTERS} | textures() | noise(args.seed),
        "generated": generated(args.run, N_GENERATED, args.seed),
    }
    for group, images in groups.items():
        folder = args.out / group
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        for name, image in images.items():
            write_png(folder / name, image)
    print(f"wrote {sum(map(len, groups.values()))} images to {args.out}")


if __name__ == "__main__":
    main()
