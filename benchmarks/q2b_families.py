"""Q2b: generated-image detection against generator families the head never saw (BENCHMARKS.md).

The test generators are written HERE, outside ganaudit's training code (no ganaudit net, loss or trainer is
imported to build or train them): six families that differ in how they upsample and in what they are, each
trained twice (a longer and a short run, batch 32, with different losses; width 16) on the training part:

    transposed    ConvTranspose2d 4x4 stride 2                     non-saturating (long), hinge (short)
    nearest       nearest upsampling + 3x3 conv                    hinge (long), LSGAN (short)
    bilinear      bilinear upsampling + 3x3 conv                   LSGAN (long), non-saturating (short)
    pixelshuffle  3x3 conv to 4x channels + PixelShuffle(2)        WGAN-GP (long), hinge (short)
    mlp           fully connected generator (and critic)           non-saturating (long), LSGAN (short)
    vae           VAE: samples of its decoder from the prior       ELBO (long and short)

Real test images: MNIST-t10k index >= 8000 (28x28, as stored; the generators make 28x28 too) or CIFAR-10's
test split (32x32 RGB JPEGs). Generators train on MNIST index < 8000 or the first --cifar-train CIFAR-10
training images. Each detector is an exported ganaudit model; scores are `Verdict.generated_score` through
`Detector.detect` (onnxruntime), the threshold is the model's shipped one.

Leave one family out: ``--model FILE.onnx`` scores every family with one detector (right for any detector
whose fake pool holds none of these families, e.g. the shipped digits model), ``--model-template
'DIR/{family}.onnx'`` scores each family with its own detector, one whose head never saw that family.
Reports per family: AUROC, AP, recall at the shipped threshold, and the real-image FPR at that threshold; on
CIFAR-10 (or with --perturb) also the AUROC drop under JPEG 75, blur sigma 1, resize x0.5 and x2 (both
classes). Trained generators and their samples are cached under --cache, so a second call only scores.

    OMP_NUM_THREADS=1 python benchmarks/q2b_families.py --data mnist --model ganaudit/models/digits.onnx
    OMP_NUM_THREADS=1 python benchmarks/q2b_families.py --data cifar10 --model-template 'RUNS/cifar-{family}.onnx'
    python benchmarks/q2b_families.py --data cifar10 --write-train-folder DIR   # CIFAR training images for
                                                                              # `ganaudit train DIR ...`
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tarfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import MNIST, ROOT  # noqa: E402
from q2_generated import PERTURBATIONS, metrics, perturb  # noqa: E402

CIFAR = ROOT.parent / "shared" / "data" / "cifar10" / "cifar10-jpg.tar.gz"
FAMILIES = ["transposed", "nearest", "bilinear", "pixelshuffle", "mlp", "vae"]
# (family, loss, steps): two generators per family, a longer and a short run. The fully connected GAN learns
# slowly (noise at 800 steps), so its longer run is longer.
GENERATORS = [
    ("transposed", "ns", 800), ("transposed", "hinge", 150),
    ("nearest", "hinge", 800), ("nearest", "lsgan", 150),
    ("bilinear", "lsgan", 800), ("bilinear", "ns", 150),
    ("pixelshuffle", "wgan-gp", 800), ("pixelshuffle", "hinge", 150),
    ("mlp", "ns", 3000), ("mlp", "lsgan", 150),
    ("vae", "elbo", 800), ("vae", "elbo", 150),
]  # fmt: skip
Z_DIM = 64


# --------------------------------------------------------------------------- data


def _cifar_members(n_train: int):
    """(split, name, JPEG bytes) of CIFAR-10's test images and of its first n_train // 10 training images of each
    class (the archive is sorted by class: a plain prefix would hold two classes)."""
    with tarfile.open(CIFAR) as tar:
        for m in tar:
            if not m.isfile() or not m.name.endswith(".jpg"):
                continue
            split = m.name.split("/")[0]
            if split == "train" and int(Path(m.name).stem) >= n_train // 10:
                continue
            yield split, m.name, tar.extractfile(m).read()


def load_real(data: str, n_cifar_train: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) uint8 NHWC: MNIST index < 8000 / >= 8000, or the CIFAR-10 training subset / test split."""
    if data == "mnist":
        from ganaudit.datasets import read_idx

        x = read_idx(MNIST)[:, :, :, None]
        return x[:8000], x[8000:]
    import cv2

    parts: dict[str, list[np.ndarray]] = {"train": [], "test": []}
    for split, _, raw in _cifar_members(n_cifar_train):
        img = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_COLOR)
        parts[split].append(cv2.cvtColor(img, cv2.COLOR_BGR2RGB))
    return np.stack(parts["train"]), np.stack(parts["test"])


def write_cifar_train_folder(out: Path, n: int) -> None:
    """The CIFAR-10 training JPEGs the generators train on, as files (for `ganaudit train`)."""
    out.mkdir(parents=True, exist_ok=True)
    k = 0
    for split, name, raw in _cifar_members(n):
        if split == "train":
            (out / name.replace("/", "_")).write_bytes(raw)
            k += 1
    print(f"wrote {k} images to {out}", file=sys.stderr)


# --------------------------------------------------------------------------- generator families


def _nets(family: str, size: int, ch: int, width: int = 16):
    """(generator, critic) of a family; the generator maps [B, Z_DIM] to [B, ch, size, size] in [-1, 1]."""
    from torch import nn

    base = size // 4

    def up(cin: int, cout: int) -> list:
        if family == "transposed":
            return [nn.ConvTranspose2d(cin, cout, 4, 2, 1)]
        if family in ("nearest", "bilinear"):
            return [nn.Upsample(scale_factor=2, mode=family), nn.Conv2d(cin, cout, 3, 1, 1)]
        return [nn.Conv2d(cin, cout * 4, 3, 1, 1), nn.PixelShuffle(2)]  # pixelshuffle

    if family == "mlp":
        G = nn.Sequential(nn.Linear(Z_DIM, 256), nn.ReLU(), nn.Linear(256, 512), nn.ReLU(),
                          nn.Linear(512, ch * size * size), nn.Tanh(), nn.Unflatten(1, (ch, size, size)))
        D = nn.Sequential(nn.Flatten(), nn.Linear(ch * size * size, 512), nn.LeakyReLU(0.2),
                          nn.Linear(512, 256), nn.LeakyReLU(0.2), nn.Linear(256, 1))
        return G, D  # fmt: skip
    G = nn.Sequential(
        nn.Linear(Z_DIM, 4 * width * base * base), nn.Unflatten(1, (4 * width, base, base)),
        nn.BatchNorm2d(4 * width), nn.ReLU(),
        *up(4 * width, 2 * width), nn.BatchNorm2d(2 * width), nn.ReLU(),
        *up(2 * width, width), nn.BatchNorm2d(width), nn.ReLU(),
        nn.Conv2d(width, ch, 3, 1, 1), nn.Tanh(),
    )  # fmt: skip
    D = nn.Sequential(
        nn.Conv2d(ch, width, 4, 2, 1), nn.LeakyReLU(0.2),
        nn.Conv2d(width, 2 * width, 4, 2, 1), nn.LeakyReLU(0.2),
        nn.Flatten(), nn.Linear(2 * width * base * base, 1),
    )  # fmt: skip
    return G, D


def _d_loss(loss: str, r, f):
    import torch.nn.functional as F

    if loss == "ns":
        return F.softplus(-r).mean() + F.softplus(f).mean()
    if loss == "hinge":
        return F.relu(1 - r).mean() + F.relu(1 + f).mean()
    if loss == "lsgan":
        return ((r - 1) ** 2).mean() / 2 + (f**2).mean() / 2
    return f.mean() - r.mean()  # wgan-gp (penalty added by the caller)


def _g_loss(loss: str, f):
    import torch.nn.functional as F

    if loss == "ns":
        return F.softplus(-f).mean()
    if loss == "lsgan":
        return ((f - 1) ** 2).mean() / 2
    return -f.mean()  # hinge, wgan-gp


def train_gan(family: str, loss: str, steps: int, x, seed: int, batch: int = 32):
    import torch

    torch.manual_seed(seed)
    G, D = _nets(family, x.shape[-1], x.shape[1])
    betas = (0.0, 0.9) if loss == "wgan-gp" else (0.5, 0.999)
    opt_g = torch.optim.Adam(G.parameters(), 2e-4, betas=betas)
    opt_d = torch.optim.Adam(D.parameters(), 2e-4, betas=betas)
    for _ in range(steps):
        real = x[torch.randint(len(x), (batch,))]
        fake = G(torch.randn(batch, Z_DIM))
        d = _d_loss(loss, D(real), D(fake.detach()))
        if loss == "wgan-gp":
            a = torch.rand(batch, 1, 1, 1)
            xh = (a * real + (1 - a) * fake.detach()).requires_grad_(True)
            (g,) = torch.autograd.grad(D(xh).sum(), xh, create_graph=True)
            d = d + 10 * ((g.flatten(1).norm(dim=1) - 1) ** 2).mean()
        opt_d.zero_grad()
        d.backward()
        opt_d.step()
        g_loss = _g_loss(loss, D(fake))
        opt_g.zero_grad()
        g_loss.backward()
        opt_g.step()
    return G.eval()


def train_vae(steps: int, x, seed: int, batch: int = 32, zd: int = 16, width: int = 16):
    """A small convolutional VAE; returns its decoder (z [B, zd] -> images)."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    size, ch = x.shape[-1], x.shape[1]
    base = size // 4
    enc = nn.Sequential(nn.Conv2d(ch, width, 4, 2, 1), nn.ReLU(), nn.Conv2d(width, 2 * width, 4, 2, 1), nn.ReLU(),
                        nn.Flatten(), nn.Linear(2 * width * base * base, 2 * zd))
    dec = nn.Sequential(nn.Linear(zd, 2 * width * base * base), nn.ReLU(), nn.Unflatten(1, (2 * width, base, base)),
                        nn.ConvTranspose2d(2 * width, width, 4, 2, 1), nn.ReLU(),
                        nn.ConvTranspose2d(width, ch, 4, 2, 1), nn.Tanh())  # fmt: skip
    opt = torch.optim.Adam([*enc.parameters(), *dec.parameters()], 1e-3)
    for _ in range(steps):
        real = x[torch.randint(len(x), (batch,))]
        mu, logvar = enc(real).chunk(2, dim=1)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        rec = ((dec(z) - real) ** 2).flatten(1).sum(1).mean() / 0.1  # Gaussian likelihood, sigma^2 = 0.05
        kl = (-0.5 * (1 + logvar - mu**2 - logvar.exp()).sum(1)).mean()
        opt.zero_grad()
        (rec + kl).backward()
        opt.step()
    return dec.eval(), zd


def generator_samples(cache: Path, data: str, train_u8: np.ndarray, n_each: int) -> dict[str, np.ndarray]:
    """uint8 NHWC fakes of each family (half from each of its two generators), trained once and cached."""
    import torch

    x = torch.from_numpy(train_u8.transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1)
    out: dict[str, list[np.ndarray]] = {f: [] for f in FAMILIES}
    timing_path = cache / "timing.json"
    timing = json.loads(timing_path.read_text()) if timing_path.is_file() else {}
    for i, (family, loss, steps) in enumerate(GENERATORS):
        name = f"{family}-{loss}-{steps}"
        path = cache / f"{name}_{n_each}.npy"
        if not path.is_file():
            print(f"training {data} {name} ({steps} steps)", file=sys.stderr, flush=True)
            t0 = time.perf_counter()
            if family == "vae":
                G, zd = train_vae(steps, x, seed=100 + i)
            else:
                G, zd = train_gan(family, loss, steps, x, seed=100 + i), Z_DIM
            timing[name] = round(time.perf_counter() - t0, 1)
            with torch.no_grad():
                z = torch.randn(n_each, zd, generator=torch.Generator().manual_seed(1000 + i))
                img = np.rint((G(z).clamp(-1, 1).numpy() + 1) * 127.5).astype(np.uint8).transpose(0, 2, 3, 1)
            buf = io.BytesIO()
            np.save(buf, img)
            path.write_bytes(buf.getvalue())
            timing_path.write_text(json.dumps(timing, indent=1))
        out[family].append(np.load(path))
    return {f: np.concatenate(v) for f, v in out.items()}


# --------------------------------------------------------------------------- scoring


def scores(det, images: np.ndarray, kind: str, batch: int = 256) -> np.ndarray:
    out = []
    for i in range(0, len(images), batch):
        out += [v.generated_score for v in det.detect([perturb(im, kind) for im in images[i : i + batch]])]
    return np.asarray(out, np.float64)


def evaluate(models: dict[str, Path], real: np.ndarray, fakes: dict[str, np.ndarray], kinds: list[str],
             threads: int) -> dict[str, dict]:  # fmt: skip
    """Per family: the metrics of its detector (clean and each perturbation) and that detector's threshold."""
    from ganaudit.runtime import Detector

    res: dict[str, dict] = {}
    cache: dict[Path, tuple] = {}
    for family, imgs in fakes.items():
        model = models[family]
        if model not in cache:
            det = Detector.load(model, threads=threads, domain_gate=False)  # the head itself; the gate: q2_domain_gate.py
            cache[model] = (det, {k: scores(det, real, k) for k in kinds})
        det, real_scores = cache[model]
        thr = det.thresholds.generated
        res[family] = {"model": str(model), "threshold": thr,
                       **{k: metrics(real_scores[k], scores(det, imgs, k), thr) for k in kinds}}  # fmt: skip
        print(f"scored {family}: AUROC {res[family]['clean']['auroc']:.3f}", file=sys.stderr, flush=True)
    return res


def markdown(res: dict[str, dict], kinds: list[str]) -> str:
    pert = [k for k in kinds if k != "clean"]
    head = "| left-out family | AUROC | AP | recall @ shipped thr | real FPR @ shipped thr |"
    head += "".join(f" AUROC drop {k} |" for k in pert)
    lines = [head, "|" + " --- |" * (4 + len(pert) + 1)]
    for fam, r in res.items():
        c = r["clean"]
        row = f"| {fam} | {c['auroc']:.3f} | {c['ap']:.3f} | {c['tpr_shipped']:.3f} | {c['fpr_shipped']:.3f} |"
        row += "".join(f" {c['auroc'] - r[k]['auroc']:.3f} |" for k in pert)
        lines.append(row)
    aurocs = [r["clean"]["auroc"] for r in res.values()]
    recalls = [r["clean"]["tpr_shipped"] for r in res.values()]
    lines.append(f"\nmin AUROC {min(aurocs):.3f} (target 0.97), min recall {min(recalls):.3f} (target 0.90)")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", choices=["mnist", "cifar10"], default="mnist")
    ap.add_argument("--model", type=Path, help="One detector for every family (its head saw none of them).")
    ap.add_argument("--model-template", help="A detector per left-out family: a path with {family} in it.")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/ganaudit-q2b"), help="Trained generators' samples.")
    ap.add_argument("--n-test", type=int, default=400, help="Fakes per family and real test images (default 400).")
    ap.add_argument("--cifar-train", type=int, default=10000, help="CIFAR-10 training images the generators use (a tenth from each class).")
    ap.add_argument("--perturb", action="store_true", help="Also the robustness perturbations (on for cifar10).")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None, help="Write the results as JSON here.")
    ap.add_argument("--write-train-folder", type=Path, default=None,
                    help="Only write the CIFAR-10 training images the generators use to this folder, and exit.")
    args = ap.parse_args()
    if args.write_train_folder is not None:
        write_cifar_train_folder(args.write_train_folder, args.cifar_train)
        return
    import torch

    torch.set_num_threads(args.threads)
    cache = args.cache / args.data
    cache.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    train, test = load_real(args.data, args.cifar_train)
    fakes = generator_samples(cache, args.data, train, args.n_test // 2)
    if args.model is None and args.model_template is None:
        print(f"generators ready in {cache} ({time.perf_counter() - t0:.0f} s); pass --model to score",
              file=sys.stderr)
        return
    real = test[np.random.default_rng(0).permutation(len(test))[: args.n_test]]
    models = {f: Path(args.model_template.format(family=f)) if args.model_template else args.model for f in FAMILIES}
    kinds = ["clean"] + (PERTURBATIONS if args.perturb or args.data == "cifar10" else [])
    res = evaluate(models, real, fakes, kinds, args.threads)
    if args.out:
        args.out.write_text(json.dumps({"data": args.data, "n_test": args.n_test, "results": res,
                                        "generator_train_s": json.loads((cache / "timing.json").read_text()),
                                        "wall_s": time.perf_counter() - t0}, indent=2))  # fmt: skip
    print(markdown(res, kinds))


if __name__ == "__main__":
    main()
