"""Q4 lever proxy: D's rotation classifier alone (no GAN), to see what augmentation and depth do to the
rotation score before paying for full trainings.

    python benchmarks/q4_rotation_proxy.py --class-index 4 --arch trunk --augment [--steps 3000]
    python benchmarks/q4_rotation_proxy.py --class-index 4 --translation [--width 64]

Dev split only (no test image): the class's training images minus a seeded 10 % (500) held out, against
2,000 training images of the other classes. ``trunk`` is D's trunk at width 32 (three stride-2 4x4 convs) with
a linear head; ``branch`` adds a 3x3 conv with BatchNorm before each of D's second and third stages (the
"deeper rotation branch"). Prints one JSON line per 500 steps: dev AUROC of the summed 4-turn cross-entropy
(and with a mirrored copy added), and the mean loss on 500 training and on the held-out images.

``--translation`` (Hendrycks et al. 2019): each step also shifts the batch by one of 9 moves of a quarter side
(reflection fill; 4 random turn x move pairs per step, as many passes as the 4 turns) and two more heads name
the move along x and y. Then the JSON also has ``dev_auroc_all`` (the three cross-entropies summed over all 36
turn x move pairs) and ``dev_auroc_plus`` (over the 4 turns x 5 moves: none and one step along each axis).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from torch import nn

from ganaudit.core.imaging import decode
from ganaudit.training.losses import diff_augment
from ganaudit.training.nets import rotate4, rotation_targets
from q4_cifar import read_archive


MOVES = [(dx, dy) for dx in (-1, 0, 1) for dy in (-1, 0, 1)]  # the translation task's 9 classes


def network(arch: str, w: int = 32, outputs: int = 4) -> nn.Module:
    act = lambda: nn.LeakyReLU(0.2, True)  # noqa: E731
    if arch == "trunk":
        return nn.Sequential(nn.Conv2d(3, w, 4, 2, 1), act(), nn.Conv2d(w, 2 * w, 4, 2, 1), act(),
                             nn.Conv2d(2 * w, 4 * w, 4, 2, 1), act(), nn.Flatten(), nn.Linear(4 * w * 16, outputs))  # fmt: skip

    def stage(i: int, o: int) -> list[nn.Module]:
        return [nn.Conv2d(i, o, 3, 1, 1, bias=False), nn.BatchNorm2d(o), act(),
                nn.Conv2d(o, o, 4, 2, 1, bias=False), nn.BatchNorm2d(o), act()]  # fmt: skip

    return nn.Sequential(nn.Conv2d(3, w, 4, 2, 1), act(), *stage(w, 2 * w), *stage(2 * w, 4 * w),
                         nn.Conv2d(4 * w, 4 * w, 3, 1, 1), act(), nn.Flatten(), nn.Linear(4 * w * 16, outputs))  # fmt: skip


def move(x: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
    """``x`` shifted by (dx, dy) quarter sides, the border filled by reflection."""
    if dx == 0 and dy == 0:
        return x
    s = x.shape[-1] // 4
    p = F.pad(x, (s, s, s, s), mode="reflect")
    return p[..., s + dy * s : s + dy * s + x.shape[-2], s + dx * s : s + dx * s + x.shape[-1]]


def transformation_loss(net: nn.Module, x: torch.Tensor, turn: int, dx: int, dy: int) -> torch.Tensor:
    """Per image: cross-entropy of the turn, plus those of the x and y moves (logits 4, 3, 3)."""
    out = net(torch.rot90(move(x, dx, dy), turn, (2, 3)))
    n = len(x)
    target = lambda k: torch.full((n,), k)  # noqa: E731
    return (F.cross_entropy(out[:, :4], target(turn), reduction="none")
            + F.cross_entropy(out[:, 4:7], target(dx + 1), reduction="none")
            + F.cross_entropy(out[:, 7:], target(dy + 1), reduction="none"))  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--class-index", type=int, required=True)
    ap.add_argument("--arch", choices=["trunk", "branch"], default="trunk")
    ap.add_argument("--augment", action="store_true", help="shift up to 4 px and mirror each training image")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--translation", action="store_true", help="add the translation task (see above)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    data, labels, _ = read_archive("train")
    rng = np.random.default_rng(0)
    idx = rng.permutation(np.where(labels == args.class_index)[0])
    others = rng.choice(np.where(labels != args.class_index)[0], 2000, replace=False)

    def tensor(ids: np.ndarray) -> torch.Tensor:
        x = np.stack([decode(data[i]) for i in ids]).astype(np.float32) / 127.5 - 1
        return torch.from_numpy(x.transpose(0, 3, 1, 2).copy())

    x_val, x_train, x_other = tensor(idx[:500]), tensor(idx[500:]), tensor(others)
    torch.manual_seed(0)
    net = network(args.arch, args.width, 10 if args.translation else 4)
    opt = torch.optim.Adam(net.parameters(), 1e-3)

    @torch.no_grad()
    def score(x: torch.Tensor, mirror: bool = False) -> torch.Tensor:
        net.eval()
        out = []
        for b in x.split(500):
            b = b.flip(3) if mirror else b
            logits = net(rotate4(b))[:, :4]
            out.append(F.cross_entropy(logits, rotation_targets(len(b)), reduction="none").view(4, len(b)).sum(0))
        net.train()
        return torch.cat(out)

    @torch.no_grad()
    def score_moves(x: torch.Tensor, moves: list[tuple[int, int]]) -> torch.Tensor:
        net.eval()
        total = sum(transformation_loss(net, x, t, dx, dy) for t in range(4) for dx, dy in moves)
        net.train()
        return total

    y = np.r_[np.zeros(len(x_val)), np.ones(len(x_other))]
    t0, draw = time.time(), np.random.default_rng(1)
    for step in range(1, args.steps + 1):
        b = x_train[torch.from_numpy(draw.integers(0, len(x_train), 64))]
        b = diff_augment(b, ("translation", "flip")) if args.augment else b
        if args.translation:
            pairs = [(t, *MOVES[m]) for t, m in zip(draw.integers(0, 4, 4), draw.integers(0, len(MOVES), 4))]
            loss = sum(transformation_loss(net, b, int(t), dx, dy).mean() for t, dx, dy in pairs) / len(pairs)
        else:
            loss = F.cross_entropy(net(rotate4(b)), rotation_targets(len(b)))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 500 == 0 or step == args.steps:
            sv, so = score(x_val), score(x_other)
            mv, mo = score(x_val, True), score(x_other, True)
            row = {
                "class": args.class_index, "arch": args.arch, "augment": args.augment, "step": step,
                "seconds": round(time.time() - t0), "dev_auroc": round(roc_auc_score(y, torch.cat([sv, so])), 3),
                "dev_auroc_mirrored_too": round(roc_auc_score(y, torch.cat([sv + mv, so + mo])), 3),
                "loss_train": round(score(x_train[:500]).mean().item() / 4, 3), "loss_dev": round(sv.mean().item() / 4, 3),
            }  # fmt: skip
            if args.translation:
                plus = [(0, 0), (-1, 0), (1, 0), (0, -1), (0, 1)]
                for name, moves in (("all", MOVES), ("plus", plus)):
                    auroc = roc_auc_score(y, torch.cat([score_moves(x_val, moves), score_moves(x_other, moves)]))
                    row[f"dev_auroc_{name}"] = round(float(auroc), 3)
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
