"""Q2b folds: one generated head per fold of left-out families, its fake pool holding ganaudit's auxiliary
generators of every OTHER family, plus the development-split score that chooses between pool settings.

    python benchmarks/q2b_folds.py --run RUN --data DATA [--index-range 0:8000] --work DIR --variant NAME
        [--head-aux-steps 400] [--head-steps 1500] [--no-aux]

For each fold of Q2b families F, G (benchmarks/q2b_families.py; two per fold, see FOLDS) it copies the
finished run RUN, retrains only its head (`ganaudit train DATA --retrain-head --head-aux all,-F',-G'`, where
F' is ganaudit's auxiliary family of the same kind: vae -> autoencoder), and exports it as DIR/NAME-F.onnx
and DIR/NAME-G.onnx; score them on the test families with
`q2b_families.py --model-template 'DIR/NAME-{family}.onnx'`. --no-aux retrains without auxiliary generators
(the baseline pool, one model copied to every family's name).

Development split (no test image, no Q2b test generator): real = the run's held-out validation images;
generated = the cached samples of ganaudit's own auxiliary family F' (aux_pool/ in the run), which that
fold's head never saw (800 of them, from every moment of their training). For F = transposed the head still
saw ganaudit's own GAN, a transposed-conv DCGAN, in every fold and in the baseline. Reported per fold: dev AUROC, recall at the shipped threshold, real FPR.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from q2_generated import metrics, scores  # noqa: E402
from q2b_families import FAMILIES  # noqa: E402

N_DEV = 800
AUX_OF = {"vae": "autoencoder"}  # the other families share their name with ganaudit's auxiliary family
# Leave-two-out folds (stricter than leave-one-out, and half the head trainings): each pairs families whose
# traces are closest, so the head cannot learn one from the other: the two interpolating upsamplers, the two
# transposed-conv decoders, and pixel shuffle with the fully connected generator.
FOLDS = "nearest+bilinear,transposed+vae,pixelshuffle+mlp"


def validation_images(run: Path, data: str) -> list[np.ndarray]:
    """The run's held-out validation images as decoded uint8 (MNIST ids hold the source index, folders a path)."""
    from ganaudit.datasets import read_idx
    from ganaudit.imaging import decode

    ids = json.loads((run / "run.json").read_text())["validation_ids"]
    if ids and ids[0].endswith("]"):
        source = read_idx(data)
        return [source[int(i.rsplit("[", 1)[1].rstrip("]"))] for i in ids]
    return [decode(i) for i in ids]


def retrain(run: Path, fold: Path, data: str, index_range: str | None, head_steps: int, aux: str,
            aux_steps: int) -> float:  # fmt: skip
    if fold.exists():
        shutil.rmtree(fold)
    shutil.copytree(run, fold, ignore=shutil.ignore_patterns("samples", "aux_pool"))
    (run / "aux_pool").mkdir(exist_ok=True)
    (fold / "aux_pool").symlink_to((run / "aux_pool").resolve())  # auxiliary samples trained once, shared
    cmd = [sys.executable, "-m", "ganaudit.cli", "train", data, "--out", str(fold), "--retrain-head", "--no-progress",
           "--head-steps", str(head_steps), "--head-aux", aux, "--head-aux-steps", str(aux_steps), "--device", "cpu",
           *(["--index-range", index_range] if index_range else [])]  # fmt: skip
    t0 = time.perf_counter()
    print("+ " + " ".join(cmd), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, required=True, help="A finished run with the generated head.")
    ap.add_argument("--data", required=True, help="The run's DATA (the same as given to `ganaudit train`).")
    ap.add_argument("--index-range", default=None)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--variant", required=True, help="Name of this pool setting (model file prefix).")
    ap.add_argument("--head-steps", type=int, default=1500)
    ap.add_argument("--head-aux-steps", type=int, default=400)
    ap.add_argument("--no-aux", action="store_true", help="Baseline: the default pool, no auxiliary generators.")
    ap.add_argument("--folds", default=FOLDS, help="Folds: comma list of left-out families joined by +.")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    from ganaudit.export import export
    from ganaudit.runtime import Detector

    args.work.mkdir(parents=True, exist_ok=True)
    reals = validation_images(args.run, args.data)[:N_DEV]
    out: dict[str, dict] = {}
    folds = [fold.split("+") for fold in args.folds.split(",")]
    families = [f for fold in folds for f in fold]
    assert sorted(families) == sorted(FAMILIES), f"the folds must cover {FAMILIES} once each"
    if args.no_aux:  # the run's own head (trained with the default pool): one model for every family
        model = args.work / f"{args.variant}.onnx"
        if not model.is_file():
            export(args.run, model, fpr=0.01, name=args.variant)
        for family in families:
            shutil.copyfile(model, args.work / f"{args.variant}-{family}.onnx")
    for left_out in folds if not args.no_aux else []:
        aux = "all," + ",".join(f"-{AUX_OF.get(f, f)}" for f in left_out)
        name = f"{args.variant}-{'+'.join(left_out)}"
        model = args.work / f"{name}.onnx"
        if not model.is_file():
            seconds = retrain(args.run, args.work / name, args.data, args.index_range, args.head_steps, aux,
                              args.head_aux_steps)  # fmt: skip
            export(args.work / name, model, fpr=0.01, name=name)
            print(f"fold {name}: head retrained in {seconds:.0f} s", file=sys.stderr, flush=True)
            out["+".join(left_out)] = {"aux": aux, "retrain_s": seconds, "model": str(model)}
        for family in left_out:
            shutil.copyfile(model, args.work / f"{args.variant}-{family}.onnx")
    # development split: each fold's head against the auxiliary family it never saw
    from ganaudit.aux_generators import AUX_DIR

    for family in families:
        model = args.work / f"{args.variant}-{family}.onnx"
        det = Detector.load(model, threads=1, domain_gate=False)  # the head itself; the gate: q2_domain_gate.py
        held = sorted((args.run / AUX_DIR).glob(f"{AUX_OF.get(family, family)}_*.npy"))
        if not held:
            print(f"no cached auxiliary samples of {family} in {args.run / AUX_DIR}: dev split skipped", file=sys.stderr)
            continue
        fakes = np.load(held[0])
        fakes = list(fakes[np.random.default_rng(0).permutation(len(fakes))[:N_DEV]])
        m = metrics(scores(det, reals, "clean"), scores(det, fakes, "clean"), det.thresholds.generated)
        out.setdefault(family, {})["dev"] = m
        print(f"| {args.variant} | {family} | {m['auroc']:.3f} | {m['tpr_shipped']:.3f} | {m['fpr_shipped']:.3f} |",
              flush=True)  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
