"""T1: ganaudit's GAN training step against the pytorch/examples DCGAN step, same size, batch and threads.

    python benchmarks/t1_train_step.py [--seconds 10] [--rounds 3] [--threads 2] [--json t1.json]

ganaudit's side is the step users run: `Trainer._one_step` of a real Trainer (default TrainConfig: 32 px,
1 channel, width 32, z 64, batch 64, hinge loss, spectral norm and minibatch-std in D, EMA generator) on MNIST
digits. Beside it runs the same Trainer with the DCGAN-speed options (`--d-head linear --reuse-fakes`: D's last
layer one linear map, one generated batch shared by the D and G updates), so both ratios come from one run.
The reference is the training loop of pytorch/examples `dcgan/main.py` (BCE loss, Adam(0.5, 0.999),
BatchNorm, `.item()` for its printed statistics every step, one G forward shared by the D and G updates),
restated here at the same architecture size: its 64 px stacks lose one stage, so G is
z -> 4x4 x 4w -> 8x8 x 2w -> 16x16 x w -> 32x32 and D mirrors it, with ngf = ndf = width = 32 and nz = 64.
The reference loop is re-written here to be measured, not copied into the package.

Both run in this one process with the same torch thread count and the OpenMP wait policy `ganaudit train`
sets (ganaudit.core.threads.share_cores), alternating for ROUNDS rounds of SECONDS each
(so drifting machine load hits both alike); the medians and their ratio (ganaudit steps/s over reference
steps/s; >= 1.0x is the target) are printed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from ganaudit.core.threads import share_cores  # noqa: E402

share_cores()  # the wait policy `ganaudit train` runs with; before torch loads OpenMP
import torch  # noqa: E402
from torch import nn  # noqa: E402

from _common import MNIST  # noqa: E402


def reference_nets(nz: int, w: int, nc: int) -> tuple[nn.Module, nn.Module]:
    """DCGAN's G and D (pytorch/examples dcgan/main.py) for 32 px images."""
    G = nn.Sequential(
        nn.ConvTranspose2d(nz, w * 4, 4, 1, 0, bias=False), nn.BatchNorm2d(w * 4), nn.ReLU(True),
        nn.ConvTranspose2d(w * 4, w * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(w * 2), nn.ReLU(True),
        nn.ConvTranspose2d(w * 2, w, 4, 2, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU(True),
        nn.ConvTranspose2d(w, nc, 4, 2, 1, bias=False), nn.Tanh(),
    )  # fmt: skip
    D = nn.Sequential(
        nn.Conv2d(nc, w, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, True),
        nn.Conv2d(w, w * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(w * 2), nn.LeakyReLU(0.2, True),
        nn.Conv2d(w * 2, w * 4, 4, 2, 1, bias=False), nn.BatchNorm2d(w * 4), nn.LeakyReLU(0.2, True),
        nn.Conv2d(w * 4, 1, 4, 1, 0, bias=False), nn.Sigmoid(), nn.Flatten(0),
    )  # fmt: skip
    return G, D


class Reference:
    """One iteration of DCGAN's loop per call, on batches drawn from the same images ganaudit trains on."""

    def __init__(self, images: torch.Tensor, nz: int, width: int, batch: int) -> None:
        self.x, self.nz, self.batch = images, nz, batch
        self.G, self.D = reference_nets(nz, width, images.shape[1])
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=2e-4, betas=(0.5, 0.999))
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=2e-4, betas=(0.5, 0.999))
        self.loss = nn.BCELoss()

    def step(self) -> None:
        real = self.x[torch.randint(len(self.x), (self.batch,))]
        self.D.zero_grad()
        label = torch.full((self.batch,), 1.0)
        out = self.D(real)
        err_real = self.loss(out, label)
        err_real.backward()
        d_x = out.mean().item()
        fake = self.G(torch.randn(self.batch, self.nz, 1, 1))
        label.fill_(0.0)
        out = self.D(fake.detach())
        err_fake = self.loss(out, label)
        err_fake.backward()
        d_g_z1 = out.mean().item()
        self.opt_d.step()
        self.G.zero_grad()
        label.fill_(1.0)
        out = self.D(fake)
        err_g = self.loss(out, label)
        err_g.backward()
        d_g_z2 = out.mean().item()
        self.opt_g.step()
        self.stats = ((err_real + err_fake).item(), err_g.item(), d_x, d_g_z1, d_g_z2)  # what it prints


FAST_STEP = {"d_head": "linear", "reuse_fakes": True}


def ganaudit_trainer(work: Path, **options):
    from ganaudit.training.datasets import load_dataset
    from ganaudit.training.train import Trainer, TrainConfig, prepare_run

    cfg = TrainConfig(**options)
    data = load_dataset(str(MNIST), size=cfg.size, channels="1", label=8, index_range="0:8000")
    torch.manual_seed(cfg.seed)
    train = prepare_run(cfg, data, work, {})
    trainer = Trainer(cfg, train, work, torch.device("cpu"))
    for m in (trainer.nets.G, trainer.nets.D, trainer.nets.E):
        m.train()
    return trainer, cfg


def rate(step, seconds: float) -> float:
    for _ in range(3):
        step()
    start, n = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        step()
        n += 1
    return n / (time.perf_counter() - start)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=10.0, help="measuring time per side and round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch threads for both (default: torch's own)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        trainer, cfg = ganaudit_trainer(Path(tmp) / "run")
        fast, _ = ganaudit_trainer(Path(tmp) / "fast", **FAST_STEP)
        ref = Reference(trainer.x, cfg.z_dim, cfg.width, cfg.batch_size)

        def stepper(t):
            def step() -> None:
                t._one_step()
                t.step = (t.step + 1) % cfg.steps  # stay in the GAN phase

            return step

        rows = []
        for r in range(args.rounds):
            g, f, d = rate(stepper(trainer), args.seconds), rate(stepper(fast), args.seconds), rate(ref.step, args.seconds)
            rows.append((g, f, d))
            print(f"round {r + 1}: ganaudit {g:.2f} steps/s, with the DCGAN-speed options {f:.2f}, reference "
                  f"{d:.2f}; ratios {g / d:.2f}x and {f / d:.2f}x", flush=True)  # fmt: skip
    g, f, d = (statistics.median(row[i] for row in rows) for i in range(3))
    print(f"\n{torch.get_num_threads()} torch thread(s), batch {cfg.batch_size}, {cfg.size} px, width {cfg.width}")
    print("| ganaudit GAN step (default) | with --d-head linear --reuse-fakes | pytorch/examples DCGAN step | default / "
          "DCGAN | options / DCGAN |\n| --- | --- | --- | --- | --- |\n"
          f"| {g:.2f} steps/s | {f:.2f} steps/s | {d:.2f} steps/s | **{g / d:.2f}x** "
          f"({', '.join(f'{x / z:.2f}' for x, _, z in rows)}) | **{f / d:.2f}x** ({', '.join(f'{y / z:.2f}' for _, y, z in rows)}) |")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"ganaudit": g, "options": f, "reference": d, "ratio": g / d, "ratio_options": f / d,
                                         "rounds": rows, "threads": torch.get_num_threads()}, indent=2))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
