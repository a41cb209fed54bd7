"""The ``ganaudit`` command line. Heavy imports (torch) happen inside the commands that need them."""

from __future__ import annotations

import functools
import importlib
import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Any, Callable, Optional, TypeVar

import typer

from . import __version__
from .errors import GanauditError

app = typer.Typer(
    name="ganaudit",
    help="Train GAN-based detectors on normal/real images, export them to ONNX, and flag anomalous or generated images.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

F = TypeVar("F", bound=Callable[..., Any])
# Exit codes (docs/cli.md): 0 done; 1 flagged (scan --fail-on-flag, and nothing else); 2 usage, configuration or
# model error; 3 unreadable images (scan --strict); 4 the operating system refused a read or write (disk full,
# permission, not a directory); 5 internal error (a bug: please report it); 130 interrupted.
EXIT_USAGE = 2
EXIT_OS = 4
EXIT_INTERNAL = 5
MAX_SHOWN = 300  # characters of a value or message echoed in an error line


def fail(message: str, code: int = EXIT_USAGE) -> typer.Exit:
    """Print a one-line error on stderr and return the Exit to raise."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def _cut(text: str) -> str:
    return text if len(text) <= MAX_SHOWN else text[:MAX_SHOWN] + f"... ({len(text)} characters)"


def os_error_line(e: OSError) -> str:
    """One line for an OSError: what the system said, and the file it said it about."""
    what = e.strerror or str(e) or type(e).__name__
    names = [os.fsdecode(x) for x in (e.filename, e.filename2) if x is not None]
    return _cut(f"{what}: {' -> '.join(names)}" if names else what)


def _click_flow() -> tuple[type[BaseException], ...]:
    """Exceptions that carry click's own control flow (exit, abort, usage errors): passed through untouched.
    Recent typer releases (0.29 here) vendor click as typer._click and no longer install click itself."""
    kinds: list[type[BaseException]] = [typer.Exit, typer.Abort]
    for name in ("click.exceptions", "typer._click.exceptions"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        kinds += [getattr(module, n) for n in ("Exit", "ClickException", "Abort") if hasattr(module, n)]
    return tuple(kinds)


_CLICK_FLOW = _click_flow()


def friendly_errors(fn: F) -> F:
    """Turn ganaudit errors into a one-line message and exit code 2, OSError into exit 4, any other exception
    into exit 5 (the traceback only with -v), Ctrl-C into exit 130. Exit 1 stays for "flagged"."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except _CLICK_FLOW:
            raise
        except GanauditError as e:
            raise fail(_cut(str(e))) from None
        except KeyboardInterrupt:
            raise fail("interrupted", 130) from None
        except OSError as e:
            raise fail(os_error_line(e), EXIT_OS) from None
        except Exception as e:  # noqa: BLE001 - a bug: one line for the user, the traceback with -v
            logging.getLogger("ganaudit").info("internal error", exc_info=True)
            raise fail(
                _cut(f"internal error ({type(e).__name__}: {e}); please report it with the output of `ganaudit -v ...`"),
                EXIT_INTERNAL,
            ) from None

    return wrapper  # type: ignore[return-value]


_state = {"quiet": False}


def progress_wanted(requested: bool) -> bool:
    """Draw a progress bar only when asked for, not silenced by -q, and stderr is a terminal (a log file or a
    pipe would fill with its \\r frames)."""
    return requested and not _state["quiet"] and sys.stderr.isatty()


def _version(value: bool) -> None:
    if value:
        typer.echo(f"ganaudit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log more detail to stderr.")] = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No progress bars and no warnings on stderr; errors still show.")
    ] = False,
) -> None:
    _state["quiet"] = quiet
    from .threads import share_cores

    share_cores()  # before any command imports torch: libgomp reads its wait policy once
    level = logging.ERROR if quiet else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s: %(message)s", stream=sys.stderr)
    logging.getLogger().setLevel(level)


def _require_training_extra() -> None:
    try:
        import torch  # noqa: F401
    except ImportError:
        raise fail("this command needs the training extra: pip install torch==2.13.0 'ganaudit[train]'") from None


@app.command()
@friendly_errors
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
        float,
        typer.Option(
            help="Weight of D's self-supervised rotation task (which way is up; its score joins the anomaly "
            "score). 0 = off. Try 1 for photographs of objects; see docs/training.md."
        ),
    ] = 0.0,
    rotation_g: Annotated[float, typer.Option(help="Weight of the rotation task in G's loss.")] = 0.2,
    r1: Annotated[float, typer.Option(help="R1 penalty weight (0 = off).")] = 0.0,
    instance_noise: Annotated[float, typer.Option(help="Initial instance-noise sigma, annealed to 0.")] = 0.0,
    spectral_norm: Annotated[bool, typer.Option(help="Spectral normalisation in D.")] = True,
    minibatch_std: Annotated[bool, typer.Option(help="Minibatch-stddev layer in D (against mode collapse).")] = True,
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
            "two [default: off; with --retrain-head: as the run had it]."
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
    from .threads import check_threads, describe, use_torch_threads

    check_threads(threads)
    _require_training_extra()
    from .ddp import is_main_process

    logging.getLogger("ganaudit").info(describe(use_torch_threads(threads)))
    main_process = is_main_process()  # under torchrun only rank 0 prints, audits and writes
    progress = progress_wanted(progress) and main_process
    from dataclasses import replace

    from .datasets import load_dataset
    from .errors import ConfigError
    from .spec import check_size
    from .train import TrainConfig, load_config, pick_device
    from .train import train as run_training

    check_size(size)
    if channels not in ("auto", "1", "3"):
        raise ConfigError(f"--channels must be 1, 3 or auto, got {channels!r}")
    for flag, given in (("--resume", resume), ("--retrain-head", retrain_head)):
        if given and not (out / "checkpoints" / "last.pt").is_file():
            raise ConfigError(f"{flag}: no checkpoint in {out}; start a new run without {flag}")
    pick_device(device)
    cfg = TrainConfig(
        size=size, channels=1 if channels == "auto" else int(channels), fit=fit, loss=loss, steps=steps,
        encoder_steps=encoder_steps, batch_size=batch_size, seed=seed, z_dim=z_dim, width=width, lr_g=lr_g,
        lr_d=lr_d, lr_e=lr_e, n_critic=n_critic, ema=ema, spectral_norm=spectral_norm,
        minibatch_std=minibatch_std, r1=r1, instance_noise=instance_noise, kappa=kappa, rotation=rotation,
        rotation_g=rotation_g, augment=augment,
        val_fraction=val_fraction, sample_every=sample_every, checkpoint_every=checkpoint_every,
        generated_head=generated_head, head_steps=head_steps, native_crops=native_crops,
        head_spectral=head_spectral is not False, head_npr=bool(head_npr), head_aux=head_aux, head_aux_steps=head_aux_steps,
    )  # fmt: skip
    run_cfg = load_config(out) if resume or retrain_head else cfg  # a resumed run keeps its own settings
    dataset = load_dataset(
        data, size=size, channels=channels, fit=fit, label=label, labels_file=labels,
        index_range=index_range, progress=progress,
        native_crops=run_cfg.native_crops if run_cfg.generated_head else 0,
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
            )  # fmt: skip
        run_training(
            cfg, dataset, out, resume=resume, device=device, data_options=options, progress=progress,
            retrain_head=retrain_head,
        )  # fmt: skip
    except KeyboardInterrupt:
        raise fail(f"interrupted; checkpoint saved. Continue with: ganaudit train {data} --out {out} --resume", 130)
    if not main_process:
        return
    if audit:
        from .audit.after_training import audit_run, report_dir, summary

        headline = audit_run(out, progress=progress)
        if headline is not None:
            typer.echo(f"audit: {summary(headline)}; report in {report_dir(out)}", err=True)
    typer.echo(f"run complete: {out}")


@app.command()
@friendly_errors
def sample(
    run_dir: Annotated[Path, typer.Argument(help="A training run directory.")],
    n: Annotated[int, typer.Option("-n", help="Number of samples.")] = 64,
    output: Annotated[Path, typer.Option("--output", "--out", "-o", help="PNG file to write.")] = Path("grid.png"),
    seed: Annotated[int, typer.Option(help="Random seed for the latent vectors.")] = 0,
) -> None:
    """Write a grid of images drawn from a run's (EMA) generator."""
    _require_training_extra()
    from .atomic import atomic_write
    from .grid import encode_png, make_grid
    from .train import sample as draw

    if n < 1:
        raise fail("-n must be at least 1")
    atomic_write(output, encode_png(make_grid(draw(run_dir, n, seed))))
    typer.echo(str(output))


@app.command("export")
@friendly_errors
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
    json_out: Annotated[bool, typer.Option("--json", help="Print the export report as JSON.")] = False,
) -> None:
    """Export a run to one ONNX detector, verified against torch on the validation images."""
    _require_training_extra()
    import json

    from .export import export

    report = export(
        run_dir, output, fpr=fpr, name=name, quantize=quantize, allow_partial=partial, anomalies=anomalies, score=score,
        layout=layout, domain_coverage=domain_coverage,
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


@app.command()
@friendly_errors
def info(
    model: Annotated[Path, typer.Argument(help="An exported .onnx detector.")],
    json_out: Annotated[bool, typer.Option("--json", help="Print the whole spec as JSON.")] = False,
) -> None:
    """Print a detector's spec: preprocessing, heads, thresholds and provenance."""
    import json

    from .runtime import Detector

    det = Detector.load(model)
    spec = det.spec
    if json_out:
        typer.echo(json.dumps({**json.loads(spec.to_json()), "spec_hash": spec.spec_hash}, indent=2))
        return
    p = spec.preprocess
    prov = spec.provenance
    lines = [
        f"name:          {spec.name}",
        f"spec hash:     {spec.spec_hash} (format version {spec.format_version})",
        f"input:         {p.channels} x {p.size} x {p.size}, fit={p.fit}"
        + (f"; generated head: {p.native_crops} native-scale crops per image" if "crops" in spec.inputs else ""),
        f"heads:         {', '.join(spec.heads)}",
        f"outputs:       {', '.join(spec.outputs)}",
        f"anomaly score: {_describe_scoring(spec.scoring)}",
    ]
    for head, t in spec.thresholds.items():
        lines.append(f"threshold:     {head} > {t.value:.6g} (FPR {t.fpr} on {t.n_val} normal validation images)")
    from .domain import describe

    lines.append(f"domain gate:   {describe(spec.domain)}")
    data = prov.get("data", {})
    lines.append(f"trained on:    {data.get('source', '?')} ({prov.get('n_train', '?')} images, fingerprint {prov.get('fingerprint', '?')})")
    lines.append(f"exported:      {prov.get('exported', '?')} by ganaudit {prov.get('export_ganaudit_version', '?')}")
    if prov.get("audit"):
        from .audit.after_training import summary

        lines.append(f"audit:         {summary(prov['audit'])} ({prov['audit']['n_generated']} samples, after training)")
    typer.echo("\n".join(lines))


def _describe_scoring(scoring: dict) -> str:
    method = scoring.get("method", "izif")
    if method != "fused":
        return f"{method} (f-AnoGAN's pixel + kappa x feature residual)"
    if "layout" not in scoring:
        return "fused (exported before layouts)"
    shown = {"log": "log {}", "negate": "-{}"}
    terms = zip(scoring["components"], scoring["transforms"], scoring["weight"])
    weighted = [f"{w:g} z({shown.get(t, '{}').format(c)})" for c, t, w in terms if w]
    return f"fused, {scoring['layout']} layout (alignment {scoring['alignment']:.3g}): " + " + ".join(weighted)


# Front ends live in their own modules and register their commands here.
from .cli_scan import register as _register_scan  # noqa: E402
from .service.cli import register as _register_serve  # noqa: E402
from .cli_models import register as _register_models  # noqa: E402
from .cli_audit import register as _register_audit  # noqa: E402

_register_scan(app)
_register_serve(app)
_register_models(app)
_register_audit(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
