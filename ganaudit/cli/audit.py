"""``ganaudit audit``: audit generators and generated image sets (``audit gan``) and detectors (``audit detector``).

Exit codes as in ``scan``: 0 done; 1 a verdict named in --fail-on tripped; 2 usage, input or model error;
130 interrupted. Heavy imports happen when a command runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from .common import EXIT_FLAGGED, fail, friendly_errors

audit_app = typer.Typer(
    name="audit",
    help="Audit a generator or a set of generated images (collapse, memorisation, class balance), or a detector "
    "(per-group error rates, calibration).",
    no_args_is_help=True,
)


def parse_fail_on(text: str, allowed: tuple[str, ...]) -> list[str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [n for n in names if n not in allowed]
    if unknown:
        from ..core.errors import ConfigError

        raise ConfigError(f"--fail-on: unknown verdict {', '.join(unknown)}; choose from {', '.join(allowed)}")
    return names


def gan_cmd(
    generated: Annotated[
        str,
        typer.Argument(
            help="A training run directory (its generator is sampled) or generated images: a folder, an IDX file or "
            "a .npy array (float NCHW in [-1, 1]).",
            show_default=False,
        ),
    ],
    reference: Annotated[
        Optional[str],
        typer.Option(
            "--reference", "-r",
            help="The real images the generator was trained on (folder, IDX with ?range=, .npy). A run defaults to "
            "the training images it keeps (memory_bank.npy).",
        ),
    ] = None,
    holdout: Annotated[
        Optional[str],
        typer.Option(
            help="Real images of the same distribution never used in training (memorisation needs them). "
            "A run defaults to its held-out validation images."
        ),
    ] = None,
    labels: Annotated[
        Optional[str],
        typer.Option(
            help="Class or group of each reference image: a path,label CSV, or 'folders' (one subfolder per class). "
            "An IDX reference with a labels file is labelled already."
        ),
    ] = None,
    features: Annotated[
        str,
        typer.Option(
            help="Feature space: auto (see docs/auditing.md), patches (a patch dictionary fitted on the reference "
            "images), random (a fixed seeded random conv net), discriminator (the run's own D; biased towards its "
            "generator) or FILE.onnx (your feature extractor)."
        ),
    ] = "auto",
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for audit.json and audit.html.")] = Path("ganaudit-audit"),
    n: Annotated[int, typer.Option("-n", help="Images drawn from a run's generator.")] = 5000,
    size: Annotated[
        Optional[int], typer.Option(help="Image size the sets are loaded at (default: the run's size, else 32).")
    ] = None,
    k: Annotated[int, typer.Option(help="Nearest neighbours for precision, recall, density and coverage.")] = 5,
    bins: Annotated[int, typer.Option(help="k-means bins (NDB) and cells (C_T) on the reference features.")] = 20,
    seed: Annotated[int, typer.Option(help="Seed for sampling, k-means and the bootstrap.")] = 0,
    fail_on: Annotated[
        str, typer.Option(help="Exit with code 1 when one of these verdicts trips, e.g. collapse,memorisation,imbalance.")
    ] = "",
    json_out: Annotated[bool, typer.Option("--json", help="Print audit.json to stdout instead of the summary line.")] = False,
    progress: Annotated[bool, typer.Option(help="Show progress bars on stderr.")] = True,
) -> None:
    """Audit a generator: fidelity, diversity, mode collapse, memorisation and class balance, with verdicts.

    Writes audit.json and audit.html to --out and prints a summary line. Exit codes: 0 done; 1 a verdict named in
    --fail-on tripped (or was explained by one that did); 2 usage, input or model error.
    """
    from ..audit.gan import summary_line
    from ..audit.gan_report import write_gan_report
    from ..audit.pipeline import run_gan_audit
    from ..audit.rules import VERDICTS, gate
    from ..core.spec import check_size

    gates = parse_fail_on(fail_on, VERDICTS)
    if n < 2:
        raise fail(f"-n must be at least 2, got {n}")
    if k < 1 or bins < 1:
        raise fail("-k and --bins must be at least 1")
    if size is not None:
        check_size(size)  # 0 used to mean the default
    try:
        run = run_gan_audit(
            generated, reference, holdout, labels, features=features, n=n, size=size, k=k, bins=bins, seed=seed,
            progress=progress,
        )  # fmt: skip
    except ValueError as e:  # too few images for k, mismatched feature sizes
        raise fail(str(e)) from None
    paths = write_gan_report(out, run)
    result = run.audit.result
    for note in result["notes"]:
        typer.echo(f"note: {note}", err=True)
    typer.echo(json.dumps(result, indent=2) if json_out else f"{summary_line(result)}; report in {paths['html']}")
    if gate(result["verdicts"], gates):
        raise typer.Exit(EXIT_FLAGGED)


def detector_cmd(
    data: Annotated[list[Path], typer.Argument(help="Image files and folders to score.", show_default=False)],
    model: Annotated[
        Optional[str], typer.Option("--model", "-m", help="Exported .onnx detector or a shipped model's name.")
    ] = None,
    truth: Annotated[
        str,
        typer.Option(
            help="CSV with a 'path' column and a truth column per head ('anomaly', 'generated', or 'label' for "
            "every head): 1 positive, 0 normal. Paths match in full, relative to the CSV, or by file name."
        ),
    ] = "truth.csv",
    group: Annotated[Optional[str], typer.Option(help="A column of the truth CSV whose values are the groups.")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for audit.json and audit.html.")] = Path("ganaudit-audit"),
    seed: Annotated[int, typer.Option(help="Seed for the bootstrap.")] = 0,
    json_out: Annotated[bool, typer.Option("--json", help="Print audit.json to stdout instead of the summary line.")] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar on stderr.")] = True,
) -> None:
    """Audit a detector: per-group TPR, FPR, precision and AUROC, calibration (reliability, ECE), realised FPR.

    Writes audit.json and audit.html to --out and prints a summary line. Exit codes: 0 done; 2 usage, input or
    model error.
    """
    from ..audit.detector_report import write_detector_report
    from ..audit.detector_run import run_detector_audit, summary_line

    result = run_detector_audit(model, data, truth, group=group, seed=seed, progress=progress)
    paths = write_detector_report(out, result)
    typer.echo(json.dumps(result, indent=2) if json_out else f"{summary_line(result)}; report in {paths['html']}")


def register(app: typer.Typer) -> None:
    """Add the audit sub-app to the CLI."""
    audit_app.command("gan")(friendly_errors(gan_cmd))
    audit_app.command("detector")(friendly_errors(detector_cmd))
    app.add_typer(audit_app, name="audit")
