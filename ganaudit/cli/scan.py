"""``ganaudit scan``: scan image folders with an exported detector and write per-image reports.

Runtime only (onnxruntime, OpenCV, numpy): no torch. Heavy imports happen when the command runs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from .common import EXIT_FLAGGED, EXIT_INTERRUPTED, EXIT_UNREADABLE, fail, friendly_errors, progress_wanted



def _one_line(summary: dict[str, Any]) -> str:
    c = summary["counts"]
    flagged = f"{c['flagged']} flagged"
    if c.get("out_of_domain"):
        flagged += f" ({c['generated_flagged']} generated, {c['out_of_domain']} out of domain)"
    parts = [f"{c['ok']} scored", flagged, f"{c['error']} unreadable", f"{c['skipped']} skipped"]
    if c.get("resumed"):
        parts.append(f"{c['resumed']} kept from the previous run")
    if c.get("duplicates"):
        parts.append(f"{c['duplicates']} duplicates scanned once")
    rate = summary.get("images_per_second") or 0.0
    secs = summary["seconds"]
    took = f"{secs:.2f}s" if secs < 10 else f"{secs:.0f}s"
    return (
        f"scanned {c['candidates']} files: {', '.join(parts)} in {took} ({rate:.0f} images/s); "
        f"report in {summary['out']}"
    )


def scan_cmd(
    paths: Annotated[
        Optional[list[Path]],
        typer.Argument(help="Image files and folders to scan (or none, with --files-from).", show_default=False),
    ] = None,
    model: Annotated[
        Optional[str],
        typer.Option(
            "--model", "-m",
            help="Exported .onnx detector, or a shipped model's name (default: the shipped default model).",
        ),
    ] = None,
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Folder for results.csv, results.jsonl, report.html and summary.json.")
    ] = Path("ganaudit-report"),
    format: Annotated[
        str,
        typer.Option(
            "--format",
            help="Report files to write, comma-separated: csv, jsonl, html (summary.json is always written).",
        ),
    ] = "csv,jsonl,html",
    fpr: Annotated[
        Optional[float],
        typer.Option(
            help="Flag at this false-positive rate on the model's normal validation images (e.g. 0.01). "
            "Excludes the explicit thresholds."
        ),
    ] = None,
    anomaly_threshold: Annotated[
        Optional[float], typer.Option(help="Flag images whose raw anomaly score is above this.")
    ] = None,
    generated_threshold: Annotated[
        Optional[float],
        typer.Option(help="Flag images whose generated probability is above this (models with a generated head)."),
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Images per onnxruntime call.")] = 64,
    workers: Annotated[
        Optional[int],
        typer.Option(
            help="Threads that read, decode and score images (default: min(4, CPU count)). With --engine ray: "
            "Ray actors (default: the cluster's CPUs / --threads).",
            show_default=False,
        ),
    ] = None,
    threads: Annotated[
        Optional[int],
        typer.Option(
            help="onnxruntime threads per scoring call (default: CPU count / workers); idle ones sleep instead of "
            "spinning. With --engine ray: CPUs per actor, and its onnxruntime threads (default 1).",
            show_default=False,
        ),
    ] = None,
    max_pixels: Annotated[
        int, typer.Option(help="Refuse images with more pixels than this (read from the header, before decoding).")
    ] = 64_000_000,
    recursive: Annotated[bool, typer.Option("--recursive/--no-recursive", help="Walk into subfolders.")] = True,
    resume: Annotated[
        bool,
        typer.Option(help="Keep rows already in results.jsonl for files with unchanged size and mtime; scan the rest."),
    ] = False,
    fail_on_flag: Annotated[bool, typer.Option(help="Exit with code 1 when any image is flagged.")] = False,
    strict: Annotated[bool, typer.Option(help="Exit with code 3 when any file could not be read or decoded.")] = False,
    top_k: Annotated[
        int,
        typer.Option(help="Flagged images shown with thumbnails and heat maps in report.html (highest scores first)."),
    ] = 200,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print summary.json to stdout instead of the one-line summary.")
    ] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar on stderr.")] = True,
    engine: Annotated[
        str,
        typer.Option(
            help="local (threads in this process) or ray (Ray Data actors on a Ray cluster; pip install "
            "'ganaudit[distributed]'). Same rows, summary and exit codes.",
        ),
    ] = "local",
    address: Annotated[
        Optional[str],
        typer.Option(
            help="With --engine ray: the cluster, auto (the one `ray start` runs here) or ray://HOST:PORT "
            "(default: start a local one).",
            show_default=False,
        ),
    ] = None,
    parquet: Annotated[
        bool,
        typer.Option(
            help="Also write the rows as Parquet shards (results-parquet/part-NNNNN.parquet) for big runs; "
            "needs pyarrow ('ganaudit[distributed]')."
        ),
    ] = False,
    files_from: Annotated[
        Optional[str],
        typer.Option(
            "--files-from",
            help="A listing: one image path or URI (s3://, gs://, hdfs://, file://; needs pyarrow, "
            "'ganaudit[distributed]') per line; '#' starts a comment line. '-' reads it from standard input. "
            "Scanned after PATHS.",
        ),
    ] = None,
    domain_gate: Annotated[bool, typer.Option("--domain-gate/--no-domain-gate", help="Gate the generated verdict by the model's domain (default): outside the training domain it abstains and the image is reported as anomalous. --no-domain-gate gives a generated verdict for every image.")] = True,
) -> None:
    """Scan image folders: one verdict per file in CSV/JSONL, plus an HTML report and summary.json.

    Exit codes: 0 done; 1 something flagged (with --fail-on-flag); 2 usage or model error;
    3 some file unreadable (with --strict, checked first); 4 the report could not be written
    (disk full, permission, not a directory); 5 internal error.
    """
    # Long by its signature: typer reads the option table from it; the body is short.
    from ..core.shipped import resolve_model
    from ..runtime.detector import Detector
    from ..runtime.scan import check_options, default_threads, default_workers, parse_formats, scan

    formats = parse_formats(format)
    if engine not in ("local", "ray"):
        raise fail(f"--engine must be local or ray, got {engine!r}")
    check_options(
        formats, batch_size=batch_size, workers=workers, threads=threads, max_pixels=max_pixels, top_k=top_k,
        fpr=fpr, anomaly_threshold=anomaly_threshold, generated_threshold=generated_threshold, resume=resume,
        local=engine == "local",
    )  # fmt: skip
    if address is not None and engine != "ray":
        raise fail("--address needs --engine ray")
    if parquet and "jsonl" not in formats:
        raise fail("--parquet is written from results.jsonl: keep jsonl in --format")
    model_path = resolve_model(model)
    run_elsewhere = None, None
    if engine == "ray":
        from ..runtime.distributed.ray_scan import setup

        options = {"batch_size": batch_size, "max_pixels": max_pixels, "domain_gate": domain_gate}
        run_elsewhere = setup(model_path, options, address=address, actors=workers, cpus_per_actor=threads)
        workers, threads = None, None  # the driver's own pool only makes the report's thumbnails
    workers = default_workers() if workers is None else workers
    threads = default_threads(workers) if threads is None else threads
    detector = Detector.load(
        model_path, threads=threads, batch_size=batch_size, max_pixels=max_pixels, domain_gate=domain_gate
    )

    bar = None
    if progress_wanted(progress):
        from tqdm import tqdm

        bar = tqdm(desc="scanning", unit="img", file=sys.stderr, dynamic_ncols=True, mininterval=0.5)

    def on_progress(n: int, counts: dict[str, int]) -> None:
        if bar is not None:
            bar.set_postfix(flagged=counts["flagged"], errors=counts["error"], refresh=False)
            bar.update(n)

    try:
        result = scan(
            detector, paths or [], out, formats=formats, fpr=fpr, anomaly_threshold=anomaly_threshold,
            generated_threshold=generated_threshold, batch_size=batch_size, workers=workers, recursive=recursive,
            resume=resume, top_k=top_k, model_path=model_path, on_progress=on_progress, engine=run_elsewhere[0],
            engine_info=run_elsewhere[1], files_from=files_from,
        )  # fmt: skip
        if parquet:
            from ..runtime.distributed.parquet import parquet_from_jsonl

            parquet_from_jsonl(result.out / "results.jsonl", result.out / "results-parquet")
    except KeyboardInterrupt:
        raise fail(f"interrupted; partial results are in {out}. Continue with the same command plus --resume", EXIT_INTERRUPTED)
    finally:
        if bar is not None:
            bar.close()
    summary = result.summary
    typer.echo(json.dumps(summary, indent=2, ensure_ascii=False) if json_out else _one_line(summary))
    if engine == "ray":
        from ..runtime.distributed.ray_scan import local_engine_hint

        hint = local_engine_hint(summary["counts"]["candidates"])
        if hint:
            typer.echo(hint, err=True)
    counts = summary["counts"]
    if strict and counts["error"]:
        raise typer.Exit(EXIT_UNREADABLE)
    if fail_on_flag and counts["flagged"]:
        raise typer.Exit(EXIT_FLAGGED)


def register(app: typer.Typer) -> None:
    """Add the scan command to the CLI."""
    app.command("scan")(friendly_errors(scan_cmd))
