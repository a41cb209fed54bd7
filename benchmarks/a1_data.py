"""A1 data: a shuffled MNIST-t10k IDX pair and a CIFAR-10 folder subset, so that training, held-out and "ideal
generator" images come from one distribution (the MNIST test set is ordered: its first half is from other writers
than its second half, so index ranges are not exchangeable).

    python benchmarks/a1_data.py --out A1DIR
writes A1DIR/mnist-shuffled-images-idx3-ubyte (+ labels; seed 0) and A1DIR/cifar-{train,test}/<class>/*.jpg (the
first 1,000 training and test images of each class, read from the tar with tarfile) and prints the two training
commands.
"""

from __future__ import annotations

import argparse
import collections
import tarfile
from pathlib import Path

import numpy as np

from _common import ROOT

MNIST_DIR = ROOT.parent / "shared" / "data" / "mnist"
CIFAR_TAR = ROOT.parent / "shared" / "data" / "cifar10" / "cifar10-jpg.tar.gz"
MNIST_IMAGES = "mnist-shuffled-images-idx3-ubyte"
MNIST_LABELS = "mnist-shuffled-labels-idx1-ubyte"
MNIST_TRAIN = 6000  # shuffled indices [0, 6000): reference; [6000, 8000): ideal generator; [8000, 10000): held out
CIFAR_PER_CLASS = 1000


def write_idx(path: Path, arr: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    path.write_bytes(header + np.ascontiguousarray(arr, np.uint8).tobytes())


def shuffled_mnist(out: Path, seed: int = 0) -> None:
    from ganaudit.training.datasets import read_idx

    images = read_idx(MNIST_DIR / "t10k-images-idx3-ubyte.gz")
    labels = read_idx(MNIST_DIR / "t10k-labels-idx1-ubyte.gz")
    order = np.random.default_rng(seed).permutation(len(images))
    write_idx(out / MNIST_IMAGES, images[order])
    write_idx(out / MNIST_LABELS, labels[order])


def iter_cifar(split: str, per_class: int):
    """(class, member name, JPEG bytes) of the first ``per_class`` images of each class of ``split``."""
    counts: collections.Counter = collections.Counter()
    with tarfile.open(CIFAR_TAR) as tar:
        for m in tar:
            parts = m.name.split("/")
            if not m.isfile() or len(parts) != 3 or parts[0] != split or counts[parts[1]] >= per_class:
                continue
            counts[parts[1]] += 1
            yield parts[1], parts[2], tar.extractfile(m).read()


def cifar_folders(out: Path) -> None:
    for split in ("train", "test"):
        for cls, name, data in iter_cifar(split, CIFAR_PER_CLASS):
            (out / f"cifar-{split}" / cls).mkdir(parents=True, exist_ok=True)
            (out / f"cifar-{split}" / cls / name).write_bytes(data)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    shuffled_mnist(args.out)
    cifar_folders(args.out)
    # The runs of docs/benchmarks.md (A1): MNIST on t10k 0:8000 (the healthy-gan row audits it against its own
    # training and validation images, so it needs no shuffled split), CIFAR-10 stopped at step 2,031 with Ctrl-C.
    # Second session: the MNIST run was continued (its config.json "steps" raised to 5000, then the same command
    # with --resume) and stopped with Ctrl-C at step 4,255; the 2,000-step samples were malformed digits.
    common = "--size 32 --encoder-steps 0 --no-generated-head --seed 0"
    print(f"ganaudit train {MNIST_DIR / 't10k-images-idx3-ubyte.gz'} --index-range 0:8000 --steps 2000 {common} --out {args.out}/run-mnist")
    print(f"ganaudit train {args.out / 'cifar-train'} --steps 3000 {common} --out {args.out}/run-cifar")


if __name__ == "__main__":
    main()
