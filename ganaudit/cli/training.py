"""Training commands: ``ganaudit train``, ``ganaudit sample``, ``ganaudit export``.

torch is imported inside the commands, after ``require_training_extra`` has said how to install it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from .common import EXIT_INTERRUPTED, fail, friendly_errors, progress_wanted, require_training_extra


def train(
    data: Annotated[
        str,
        typer.Argument(
            help="Normal/real images: an image folder (recursive), an IDX file (MNIST style, .gz ok), "
            "or sklearn:digits (optionally sklearn:digits?label=3)."
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory for checkpoints, samples and metrics.")],
    size: Annotated[int, typer.Option(help="Square model input size: 16, 32, 64 or 128.")] = 32,
    channels: Annotated[str, typer.Option(help="1, 3, or auto (1 if every image is grayscale).")] = "auto",
    loss: Annotated[str, typer.Option(help="Adversarial loss: hinge, ns (non-saturating) or wgan-gp.")] = "hinge",
    steps: Annotated[int, typer.Option(help="Adversarial (GAN) training steps.")] = 3000,
    encoder_steps: Annotated[int, typer.Option(help="Encoder (izi_f) training steps after the GAN phase.")] = 2000,
    batch_size: Annotated[int, typer.Option(help="Images per training step.")] = 64,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed on CPU gives identical weights.")] = 0,
    resume: Annotated[bool, typer.Option(help="Continue the run in --out from its last checkpoint.")] = False,
    retrain_head: Annotated[
        bool,
        typer.Option(
            help="Train a new generated-image head (with --head-steps) on the finished GAN and encoder of the run "
            "in --out, replacing its head; nothing else is retrained."
        ),
    ] = False,
    device: Annotated[str, typer.Option(help="auto (cuda if present), cpu or cuda.")] = "auto",
    label: Annotated[Optional[int], typer.Option(help="Keep only images with this label (IDX / sklearn sources).")] = None,
    labels: Annotated[
        Optional[Path], typer.Option(help="Labels IDX file (default: guessed from the images file name).")
    ] = None,
    index_range: Annotated[
        Optional[str], typer.Option(help="Use only source images START:STOP (before the label filter), e.g. 0:8000.")
    ] = None,
    fit: Annotated[str, typer.Option(help="Non-square images: stretch or center_crop.")] = "stretch",
    val_fraction: Annotated[float, typer.Option(help="Fraction of images held out for thresholds.")] = 0.1,
    width: Annotated[int, typer.Option(help="Base channel width of G, D and E.")] = 32,
    z_dim: Annotated[int, typer.Option(help="Latent size.")] = 64,
    n_critic: Annotated[int, typer.Option(help="Discriminator steps per generator step.")] = 1,
    lr_g: Annotated[float, typer.Option(help="Generator learning rate (TTUR).")] = 1e-4,
    lr_d: Annotated[float, typer.Option(help="Discriminator learning rate (TTUR).")] = 4e-4,
    lr_e: Annotated[float, typer.Option(help="Encoder learning rate.")] = 5e-4,
    ema: Annotated[float, typer.Option(help="EMA decay of the generator copy used for scoring.")] = 0.999,
    kappa: Annotated[float, typer.Option(help="Weight of the D-feature residual in izi_f.")] = 1.0,
    rotation: Annotated[
        Optional[float],
        typer.Option(
            help="Weight of D's self-supervised rotation task (which way is up; its score joins the anomaly "
            "score). 0 = off. Default: 1 for colour images that are not textures (photographs), 0 otherwise; "
            "see docs/training.md.",
            show_default=False,
        ),
    ] = None,
    rotation_g: Annotated[float, typer.Option(help="Weight of the rotation task in G's loss.")] = 0.2,
    r1: Annotated[float, typer.Option(help="R1 penalty weight (0 = off).")] = 0.0,
    instance_noise: Annotated[float, typer.Option(help="Initial instance-noise sigma, annealed to 0.")] = 0.0,
    spectral_norm: Annotated[bool, typer.Option(help="Spectral normalisation in D.")] = True,
    minibatch_std: Annotated[bool, typer.Option(help="Minibatch-stddev layer in D (against mode collapse).")] = True,
    d_head: Annotated[
        str,
        typer.Option(help="D's last layer: conv (a 3x3 conv, then a linear map) or linear (the linear map alone, "
                     "as DCGAN: a faster step, weaker generated head; see docs/training.md)."),
    ] = "conv",
    reuse_fakes: Annotated[
        bool, typer.Option(help="The G step reuses the D step's generated batch (one G forward per step, as DCGAN).")
    ] = False,
    generated_head: Annotated[
        bool,
        typer.Option(help="Train the generated-image head (from D, on real vs generated images) and export it."),
    ] = True,
    augment: Annotated[
        str,
        typer.Option(
            help="Differentiable augmentation (DiffAugment) of every image D judges while the GAN trains, real and "
            "generated alike: none, translation, flip, or translation,flip. Helps on small sets of photographs."
        ),
    ] = "none",
    head_steps: Annotated[
        Optional[int], typer.Option(help="Generated-head training steps (default: four times --steps).")
    ] = None,
    native_crops: Annotated[
        int, typer.Option(help="Native-scale crops per image scored and averaged by the generated head.")
    ] = 4,
    scale_view: Annotated[
        bool,
        typer.Option(
            help="The generated head also scores as many crops of each image at least 1.41x the model's size, "
            "downscaled to it, so enlarged fakes are seen at the scale they were made at (docs/training.md)."
        ),
    ] = True,
    head_spectral: Annotated[
        Optional[bool],
        typer.Option(
            help="Add the power-spectrum branch to the generated head [default: on; with --retrain-head: as the "
            "run had it]."
        ),
    ] = None,
    head_npr: Annotated[
        Optional[bool],
        typer.Option(
            help="Add a second CNN to the generated head that reads only the image minus its nearest 2x down- and "
            "up-sampled copy (NPR: where upsampling layers leave traces); the head's logit is the larger of the "
            "two [default: on for colour images, off for greyscale ones; with --retrain-head: as the run had it]."
        ),
    ] = None,
    head_resize_max: Annotated[
        Optional[float],
        typer.Option(
            help="The largest factor by which the generated head's training images are resized (log-uniform from "
            "0.35; JPEG and blur are the other degradations) [default: 3 for colour images, 2 for greyscale ones; "
            "with --retrain-head: as the run had it]."
        ),
    ] = None,
    head_aux: Annotated[
        str,
        typer.Option(
            help="Auxiliary generators of other families whose samples join the generated head's fake pool: "
            "none, all, or a comma list of nearest, bilinear, pixelshuffle, transposed, mlp, autoencoder "
            "(all,-mlp drops one)."
        ),
    ] = "none",
    head_aux_steps: Annotated[int, typer.Option(help="Training steps of each auxiliary generator.")] = 400,
    sample_every: Annotated[int, typer.Option(help="Write a sample grid every N steps.")] = 500,
    checkpoint_every: Annotated[int, typer.Option(help="Write a checkpoint every N steps.")] = 500,
    progress: Annotated[bool, typer.Option(help="Show a progress bar on stderr.")] = True,
    audit: Annotated[
        bool, typer.Option(help="End with a short audit of the generator against the held-out images (RUN/audit/).")
    ] = True,
    threads: Annotated[
        Optional[int],
        typer.Option(help="torch threads (default: one per core). Idle threads wait briefly, then sleep, so "
                     "trainings can share the cores; see docs/training.md.", show_default=False),
    ] = None,
) -> None:
    """Train a GAN and its encoder on normal/real images."""
    # Long by its signature: typer reads the option table from it; the body is short.
    option_values = dict(locals())  # every option by name: TrainConfig takes those named like its fields
    from ..core.threads import check_threads, describe, use_torch_threads

    check_threads(threads)
    require_training_extra()
    from ..training.ddp import is_main_process

    logging.getLogger("ganaudit").info(describe(use_torch_threads(threads)))
    main_process = is_main_process()  # under torchrun only rank 0 prints, audits and writes
    progress = progress_wanted(progress) and main_process
    from dataclasses import replace

    from ..training.datasets import load_dataset
    from ..core.errors import ConfigError
    from ..training.rundir import RunDir
    from ..core.spec import check_size
    from ..training.train import load_config, pick_device
    from ..training.train import train as run_training

    check_size(size)
    if channels not in ("auto", "1", "3"):
        raise ConfigError(f"--channels must be 1, 3 or auto, got {channels!r}")
    source_dir = Path(data.partition("?")[0])
    if source_dir.is_dir() and Path(os.path.abspath(out)).is_relative_to(os.path.abspath(source_dir)):
        raise ConfigError(f"--out {out} is inside the training folder {source_dir}: the run's sample images would "
                          "become training data; put the run elsewhere")  # fmt: skip
    for flag, given in (("--resume", resume), ("--retrain-head", retrain_head)):
        if given and not RunDir(out).has_checkpoint():
            raise ConfigError(f"{flag}: no checkpoint in {out}; start a new run without {flag}")
    pick_device(device)
    cfg = config_from_options(option_values)
    run_cfg = load_config(out) if resume or retrain_head else cfg  # a resumed run keeps its own settings
    dataset = load_dataset(
        data, size=size, channels=channels, fit=fit, label=label, labels_file=labels,
        index_range=index_range, progress=progress,
        native_crops=run_cfg.native_crops if run_cfg.generated_head else 0, scale_view=run_cfg.scale_view,
    )  # fmt: skip
    if main_process:
        typer.echo(f"loaded {len(dataset)} images ({dataset.channels} channel(s), {size}x{size}) from {data}", err=True)
    options = {"label": label, "index_range": index_range, "labels_file": str(labels) if labels else None}
    try:
        if retrain_head:
            # head_steps None: the default for the run's GAN steps
            cfg = replace(
                run_cfg, head_steps=head_steps, head_aux=cfg.head_aux, head_aux_steps=head_aux_steps,
                head_spectral=run_cfg.head_spectral if head_spectral is None else head_spectral,
                head_npr=run_cfg.head_npr if head_npr is None else head_npr,
                head_resize_max=run_cfg.head_resize_max if head_resize_max is None else head_resize_max,
            )  # fmt: skip
        run_training(
            cfg, dataset, out, resume=resume, device=device, data_options=options, progress=progress,
            retrain_head=retrain_head,
        )  # fmt: skip
    except KeyboardInterrupt:
        raise fail(f"interrupted; checkpoint saved. Continue with: ganaudit train {data} --out {out} --resume", EXIT_INTERRUPTED)
    if not main_process:
        return
    if audit:
        from ..audit.after_training import audit_run, report_dir, summary

        headline = audit_run(out, progress=progress)
        if headline is not None:
            typer.echo(f"audit: {summary(headline)}; report in {report_dir(out)}", err=True)
    typer.echo(f"run complete: {out}")


def config_from_options(options: dict[str, Any]) -> Any:
    """The TrainConfig of the train command's options: each option named like a TrainConfig field sets it
    (``--channels auto`` gives 1: the data loader decides; the run records what it found)."""
    from dataclasses import fields

    from ..training.train import TrainConfig

    given = {f.name: options[f.name] for f in fields(TrainConfig) if f.name in options}
    given["channels"] = 1 if given["channels"] == "auto" else int(given["channels"])
    # Unset (None) head options take TrainConfig's default here; --retrain-head keeps the run's own (in train).
    for name in ("head_spectral", "head_npr", "head_resize_max"):
        if given[name] is None:
            del given[name]
    return TrainConfig(**given)


MAX_SAMPLES = 10_000  # one grid image; -n 100000000 tried to draw 25 GB at once


def sample(
    run_dir: Annotated[Path, typer.Argument(help="A training run directory.")],
    n: Annotated[int, typer.Option("-n", help="Number of samples.")] = 64,
    output: Annotated[Path, typer.Option("--output", "--out", "-o", help="PNG file to write.")] = Path("grid.png"),
    seed: Annotated[int, typer.Option(help="Random seed for the latent vectors.")] = 0,
) -> None:
    """Write a grid of images drawn from a run's (EMA) generator."""
    require_training_extra()
    from ..core.atomic import atomic_write
    from ..core.grid import encode_png, make_grid
    from ..training.rundir import RunDir
    from ..training.train import sample as draw

    if not 1 <= n <= MAX_SAMPLES:
        raise fail(f"-n must be from 1 to {MAX_SAMPLES:,} (one grid image), got {n}")
    RunDir(run_dir).refuse_output(output)
    atomic_write(output, encode_png(make_grid(draw(run_dir, n, seed))))
    typer.echo(str(output))


def export_cmd(
    run_dir: Annotated[Path, typer.Argument(help="A finished training run directory.")],
    output: Annotated[Path, typer.Option("--output", "--out", "-o", help="The .onnx file to write.")] = Path("detector.onnx"),
    fpr: Annotated[float, typer.Option(help="Target false-positive rate on normal images for the stored threshold.")] = 0.01,
    name: Annotated[Optional[str], typer.Option(help="Model name stored in the file (default: the run folder name).")] = None,
    quantize: Annotated[str, typer.Option(help="none, or int8 (static, calibrated on validation images).")] = "none",
    partial: Annotated[bool, typer.Option(help="Export a run that has not finished training.")] = False,
    anomalies: Annotated[
        Optional[str],
        typer.Option(
            help="Known anomalous images (a folder, an IDX file, or sklearn:digits?label=N; ?label= and ?range= "
            "filter any labelled source): calibrates anomaly_probability against the held-out normal images."
        ),
    ] = None,
    score: Annotated[
        str,
        typer.Option(
            help="Anomaly score: fused (weighted robust z-scores of the score components, fitted on held-out "
            "normal images; see --layout) or izif (f-AnoGAN's residual score)."
        ),
    ] = "fused",
    layout: Annotated[
        str,
        typer.Option(
            help="Weights of the fused score (not with --score izif): aligned (images share a layout, e.g. "
            "centred digits or objects: image-level components), stationary (textures and surfaces: the local patch distance), "
            "oriented (aligned, with D's rotation task: its rotation score), or auto (decided from the training images "
            "and the run)."
        ),
    ] = "auto",
    domain_coverage: Annotated[
        float,
        typer.Option(
            help="Domain gate of the generated verdict: the share of the training domain's own held-out real and "
            "generated images that stay inside it (see docs/thresholds.md)."
        ),
    ] = 0.99,
    patch_bank: Annotated[
        int,
        typer.Option(
            help="Entries of the anomaly map's bank of local features: fewer make a cheaper detector with a "
            "coarser map (the shipped digits model: 3.1 ms of CPU per image with 4096, 1.3 ms with 1024; on textures "
            "a smaller bank costs accuracy: see docs/benchmarks.md, Detector cost)."
        ),
    ] = 4096,
    json_out: Annotated[bool, typer.Option("--json", help="Print the export report as JSON.")] = False,
) -> None:
    """Export a run to one ONNX detector, verified against torch on the validation images."""
    require_training_extra()
    import json

    from ..training.export import export

    report = export(
        run_dir, output, fpr=fpr, name=name, quantize=quantize, allow_partial=partial, anomalies=anomalies, score=score,
        layout=layout, domain_coverage=domain_coverage, patch_bank=patch_bank,
    )
    if json_out:
        typer.echo(json.dumps(report.to_dict(), indent=2))
        return
    worst = max(report.parity_max_error.values())
    generated = "" if report.generated_threshold is None else f"; generated threshold {report.generated_threshold:.5g}"
    layout = "" if report.layout is None else f"; {report.layout} layout"
    typer.echo(
        f"wrote {report.path} (model {report.name!r}; parity max error {worst:.1e} on {report.n_validation} "
        f"validation images; anomaly threshold {report.anomaly_threshold:.5g}{layout}{generated})"
    )
    if report.anomaly_calibration:
        cal = report.anomaly_calibration
        typer.echo(f"anomaly_probability calibrated on {cal['n_negative']} normal vs {cal['n_positive']} anomalous images")
    if report.int8_drift:
        typer.echo(f"int8 score drift vs fp32: {report.int8_drift}")


def register(app: typer.Typer) -> None:
    """Add train, sample and export to the CLI."""
    app.command("train")(friendly_errors(train))
    app.command("sample")(friendly_errors(sample))
    app.command("export")(friendly_errors(export_cmd))
