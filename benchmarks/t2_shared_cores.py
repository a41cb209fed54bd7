"""T2 groundwork: GAN step rate when two trainings share the cores, under OpenMP wait policies.

    python benchmarks/t2_shared_cores.py [--seconds 20]

Runs ganaudit's G and D (32 px, width 32, batch 64: a default GAN step without the rotation task) in a
child process for SECONDS, alone and then two at once, under each environment of SETTINGS, and prints the
step rates and each pair's rate as a share of the default solo rate. OpenMP threads that busy-wait for cores
another process holds are what slows two default trainings to a few percent of their solo rate (issue 16).
This measures the policies; it does not yet change ganaudit's defaults.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

SETTINGS = {
    "default": {},
    "GOMP_SPINCOUNT=20000": {"GOMP_SPINCOUNT": "20000"},
    "GOMP_SPINCOUNT=2000": {"GOMP_SPINCOUNT": "2000"},
    "OMP_WAIT_POLICY=PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"},
    "OMP_NUM_THREADS=1": {"OMP_NUM_THREADS": "1"},
}

CHILD = """
import sys, time, torch
from ganaudit.training.nets import Discriminator, Generator
torch.manual_seed(0)
D, G = Discriminator(32, 1, 32), Generator(32, 1, 64, 32)
opt = torch.optim.Adam([*D.parameters(), *G.parameters()], 1e-4)
x = torch.randn(64, 1, 32, 32)
def step():
    loss = D(x)[0].mean() - D(G(torch.randn(64, 64)))[0].mean()
    opt.zero_grad(); loss.backward(); opt.step()
for _ in range(3):
    step()
start, n = time.perf_counter(), 0
while time.perf_counter() - start < float(sys.argv[1]):
    step(); n += 1
print(n / (time.perf_counter() - start))
"""


def rates(env: dict[str, str], copies: int, seconds: float) -> list[float]:
    full = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    full.update(env)
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, str(seconds)], env=full, stdout=subprocess.PIPE, text=True)
             for _ in range(copies)]  # fmt: skip
    return [float(p.communicate()[0]) for p in procs]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=20.0, help="measuring time per process")
    args = ap.parse_args()
    print(f"{os.cpu_count()} cores; steps/s of a 32 px GAN step (batch 64)\n")
    print("| setting | solo | pair (each) | pair / default solo |\n| --- | --- | --- | --- |")
    base = None
    for name, env in SETTINGS.items():
        solo = rates(env, 1, args.seconds)[0]
        base = solo if base is None else base
        pair = rates(env, 2, args.seconds)
        print(f"| {name} | {solo:.2f} | {pair[0]:.2f}, {pair[1]:.2f} | {min(pair) / base:.2f}x |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
