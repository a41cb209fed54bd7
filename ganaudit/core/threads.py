"""How many threads ganaudit computes with, and how they wait: one policy for torch and onnxruntime.

Both libraries keep their idle worker threads spinning on a core for a while, waiting for the next piece of
work. On a dedicated machine that saves a little latency; when another process shares the cores, the spinning
threads take the very cores the other process's threads wait for, and two trainings side by side ran at 3 %
of their solo speed (docs/benchmarks.md, T2). ganaudit therefore waits politely by default:

- torch (training, export, audits): libgomp, the OpenMP runtime of torch's Linux wheels, reads its wait policy
  from the environment once, when torch is first imported. :func:`share_cores` sets ``GOMP_SPINCOUNT`` to a
  short spin before that happens, unless the user has chosen ``GOMP_SPINCOUNT`` or ``OMP_WAIT_POLICY``
  themselves. :func:`use_torch_threads` sets torch's intra-op thread count.
- onnxruntime (scan, serve, the Python API): :func:`session_options` sets the intra-op thread count and turns
  the pool's spinning off (``session.intra_op.allow_spinning = "0"``).

This module imports neither library at import time: the runtime layer uses it without torch.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from .errors import ConfigError

log = logging.getLogger(__name__)

# libgomp spins this many loop iterations before a waiting thread sleeps (its default: 300,000).
# Chosen by benchmarks/t2_shared_cores.py: pairs of trainings keep about half the solo rate (0.03x by default).
SPIN_COUNT = "2000"
USER_WAIT_VARIABLES = ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")
ORT_SPINNING = "session.intra_op.allow_spinning"
THREADS_PER_CORE = 4  # the most threads per available core that --threads and --workers accept


def available_cores() -> int:
    """CPUs this process may run on (its affinity mask where the system has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def thread_limit() -> int:
    """The most threads one option may ask for on this machine: past a few per core, threads add no speed
    and each costs memory (``--threads 100000`` once took 17 GB and starved every other job)."""
    return THREADS_PER_CORE * available_cores()


def check_threads(threads: int | None, flag: str = "--threads") -> int | None:
    """None (the default) or a thread count from 1 to :func:`thread_limit`; a ConfigError otherwise."""
    if threads is None:
        return None
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ConfigError(f"{flag} must be a whole number of at least 1, got {threads!r}")
    if threads > thread_limit():
        raise ConfigError(
            f"{flag} must be at most {thread_limit()} ({THREADS_PER_CORE} per CPU core this process may use), "
            f"got {threads}"
        )
    return threads


def share_cores() -> dict[str, str]:
    """Set the OpenMP wait policy for a process that may share its cores, unless the user chose one.

    Call it before torch is imported (libgomp reads the environment once, when it is loaded); the CLI does so
    for every command. Returns the variables it set (empty when the user's own choice stands)."""
    if any(name in os.environ for name in USER_WAIT_VARIABLES):
        return {}
    if "torch" in sys.modules:
        log.debug("share_cores: torch is already imported; its OpenMP wait policy is fixed for this process")
    os.environ["GOMP_SPINCOUNT"] = SPIN_COUNT
    return {"GOMP_SPINCOUNT": SPIN_COUNT}


def use_torch_threads(threads: int | None) -> int:
    """Set torch's intra-op threads (None: leave torch's default, one per core) and return the count in force."""
    import torch  # only the training side calls this

    if check_threads(threads) is not None:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def session_options(threads: int | None = None, opts: Any = None) -> Any:
    """onnxruntime SessionOptions with ganaudit's thread policy: ``threads`` intra-op threads (None: one per
    available core), one inter-op thread, and no spinning while a thread waits for work."""
    import onnxruntime as ort

    opts = ort.SessionOptions() if opts is None else opts
    opts.intra_op_num_threads = check_threads(threads) or available_cores()
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry(ORT_SPINNING, "0")
    return opts


def describe(torch_threads: int | None = None) -> str:
    """One line for logs: the thread count and the OpenMP wait policy in force."""
    waits = ", ".join(f"{k}={os.environ[k]}" for k in USER_WAIT_VARIABLES if k in os.environ) or "library default"
    count = f"{torch_threads} torch thread(s)" if torch_threads is not None else f"{available_cores()} core(s)"
    return f"threads: {count}; OpenMP wait: {waits}"
