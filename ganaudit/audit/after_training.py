"""The short audit ``ganaudit train`` ends with: the run's generator against its own training and held-out images,
written to RUN_DIR/audit/ (``ganaudit.training.rundir.AUDIT_JSON``); ``ganaudit export`` copies its ``headline``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ..core.errors import GanauditError
from ..training.rundir import RunDir
from .gan_report import write_gan_report
from .pipeline import run_gan_audit

log = logging.getLogger(__name__)

N_SAMPLES = 1000
BINS = 10

HEADLINE_FIGURES = (("fidelity", ("precision", "recall", "density", "coverage")), ("ndb", ("ndb_over_k", "jsd")))


def headline(result: dict[str, Any]) -> dict[str, Any]:
    """The figures a model spec and card carry: fidelity, NDB/K, C_T, copy share, flags, feature space."""
    out: dict[str, Any] = {k: result[section][k] for section, keys in HEADLINE_FIGURES for k in keys}
    mem = result.get("memorisation")
    out["c_t"] = mem["c_t"]["c_t"] if mem else None
    out["copy_share"] = mem["copy_share"]["share"] if mem else None
    out["flags"] = sorted(n for n, v in result["verdicts"].items() if v["tripped"])
    out["n_generated"] = result["counts"]["generated"]
    out["n_holdout"] = result["counts"]["holdout"]
    out["features"] = result["features"]
    return out


def report_dir(run_dir: str | Path) -> Path:
    return RunDir(run_dir).audit_dir


def audit_run(run_dir: str | Path, *, progress: bool = False) -> dict[str, Any] | None:
    """Audit a finished run in place; returns the headline, or None (with a warning) when it cannot be audited."""
    run_dir = Path(run_dir)
    try:
        run = run_gan_audit(str(run_dir), n=N_SAMPLES, bins=BINS, progress=progress)
    except (GanauditError, ValueError) as e:
        log.warning("the run's audit was skipped: %s", e)
        return None
    run.audit.result["headline"] = headline(run.audit.result)
    write_gan_report(report_dir(run_dir), run)
    return run.audit.result["headline"]


def summary(h: dict[str, Any]) -> str:
    ct = "n/a" if h["c_t"] is None else f"{h['c_t']:.2f}"
    flags = ", ".join(h["flags"]) or "none"
    return f"precision {h['precision']:.3f}, recall {h['recall']:.3f}, C_T {ct}; flags: {flags}"
