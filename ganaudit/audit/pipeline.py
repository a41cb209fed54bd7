"""``audit gan`` end to end: load the image sets, embed them, run the metrics, keep what the report shows."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from ..core.errors import ConfigError
from .detail import detail_figures
from .features import embed, extractor
from .gan import DEFAULT_BINS, Features, GanAudit, audit_features
from .prdc import DEFAULT_K
from ..training.rundir import MEMORY_BANK, VALIDATION, RunDir
from .sources import ImageSet, drop_shared, is_run, load_images, read_labels_csv, run_file, sample_run

DEFAULT_N = 5000  # generated samples drawn from a run
DEFAULT_SIZE = 32


@dataclass
class GanAuditRun:
    audit: GanAudit
    generated: ImageSet
    reference: ImageSet
    holdout: ImageSet | None
    classes: list[str]


def load_sets(
    generated: str, reference: str | None, holdout: str | None, *, n: int, size: int | None, seed: int, progress: bool
) -> tuple[ImageSet, ImageSet, ImageSet | None, str | None]:
    """The generated, reference and held-out sets; a run fills in its own memory bank and validation images."""
    run = generated if is_run(generated) else None
    size = size or (RunDir(run).image_size() if run else DEFAULT_SIZE)
    if run:
        gen = sample_run(run, n, seed, progress)
    else:
        gen = load_images(generated, size, progress=progress)
    if reference is None:
        ref = run_file(run, MEMORY_BANK) if run else None
        if ref is None:
            raise ConfigError("--reference is required: the real images the generator was trained on")
        ref.description = f"training images kept in {run}/{MEMORY_BANK}"
    else:
        ref = load_images(reference, size, progress=progress)
    hold = load_images(holdout, size, progress=progress) if holdout else (run_file(run, VALIDATION) if run else None)
    if hold is not None and hold.description.endswith(VALIDATION):
        hold.description = f"held-out validation images of {run}"
    return gen, ref, hold, run


def class_indices(labels: list[str]) -> tuple[np.ndarray, list[str]]:
    classes = sorted(set(labels), key=lambda c: (len(c), c) if c.isdigit() else (0, c))
    index = {c: i for i, c in enumerate(classes)}
    return np.array([index[c] for c in labels], dtype=np.int64), classes


def run_gan_audit(
    generated: str,
    reference: str | None = None,
    holdout: str | None = None,
    labels: str | None = None,
    *,
    features: str = "auto",
    n: int = DEFAULT_N,
    size: int | None = None,
    k: int = DEFAULT_K,
    bins: int = DEFAULT_BINS,
    seed: int = 0,
    progress: bool = False,
) -> GanAuditRun:
    """Audit a generator (a run) or a folder of generated images against real reference (and held-out) images."""
    t0 = time.perf_counter()
    gen, ref, hold, run = load_sets(generated, reference, holdout, n=n, size=size, seed=seed, progress=progress)
    if labels is not None and labels != "folders":
        ref.labels = read_labels_csv(labels, ref.ids)
    elif labels == "folders" and ref.labels is None:
        raise ConfigError("--labels folders: the reference images are not all in class subfolders")
    return audit_sets(
        gen, ref, hold, features=features, run=run, k=k, bins=bins, seed=seed, progress=progress,
        labels_from=labels or "the reference source", started=t0,
    )  # fmt: skip


def audit_sets(
    gen: ImageSet,
    ref: ImageSet,
    hold: ImageSet | None,
    *,
    features: str = "auto",
    run: str | None = None,
    k: int = DEFAULT_K,
    bins: int = DEFAULT_BINS,
    seed: int = 0,
    progress: bool = False,
    labels_from: str = "the reference source",
    started: float | None = None,
) -> GanAuditRun:
    """Audit loaded image sets (``ref.labels``, when set, drive the class-balance figures)."""
    t0 = time.perf_counter() if started is None else started
    notes = []
    if hold is not None:
        ref, dropped = drop_shared(ref, hold)
        if len(ref.images) == 0:
            raise ConfigError(
                f"every reference image ({dropped}) is also in the held-out set: pass two different sets to "
                "--reference and --holdout"
            )
        if dropped:
            notes.append(f"{dropped} reference image(s) equal to held-out images were left out of the reference")
    for role, image_set in (("generated", gen), ("reference", ref), ("held-out", hold)):
        if image_set is not None and len(image_set.images) and image_set.images.min() >= 0:
            notes.append(
                f"the {role} set has no value below 0, as if it were scaled to [0, 1] instead of [-1, 1]: its "
                "comparisons with the other sets may be wrong (scale it: 2x - 1)"
            )
    fn, feature_desc = extractor(features, run, ref.images)
    f = Features(
        embed(fn, ref.images, progress, "reference features"),
        embed(fn, gen.images, progress, "generated features"),
        None if hold is None else embed(fn, hold.images, progress, "held-out features"),
        detail=detail_figures(gen.images, ref.images),
    )
    classes: list[str] = []
    if ref.labels is not None:
        f.labels, classes = class_indices(ref.labels)
        f.classes = classes
    audit = audit_features(f, k=k, bins=bins, seed=seed, progress=progress)
    audit.result = {
        "generated": gen.description,
        "reference": ref.description,
        "holdout": None if hold is None else hold.description,
        "labels": None if ref.labels is None else labels_from,
        "features": feature_desc,
        "notes": notes,
        "unreadable": {"generated": gen.unreadable, "reference": ref.unreadable, "holdout": hold.unreadable if hold else 0},
        **audit.result,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    return GanAuditRun(audit, gen, ref, hold, classes)
