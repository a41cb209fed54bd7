"""``ganaudit scan --engine ray``: the local scan with its files scored on a Ray cluster by Ray Data.

The driver does what the local scan does (:func:`ganaudit.runtime.scan.scan`: the walk, ``--resume``, the rows'
order, the writers, the summary, the HTML report); only the reading, decoding and scoring of the chunks of
files moves to the cluster::

    walk (driver) -> waves of up to WAVE_FILES files
      -> ray.data.from_items: one item per chunk of up to --batch-size files to load
      -> map_batches(ScoreChunks): an actor pool; each actor loads the Detector once, with onnxruntime's
         intra-op threads = the actor's num_cpus, and runs the local scan's _process_chunk on the chunk
      -> rows back in walk order (preserve_order) -> the local scan's writers and tally

Each chunk is scored as one onnxruntime call on the same files as the local scan's chunk, so the rows are
those of the local scan, image for image. Files are read by path on the actors: on a cluster the paths must
name the same files on every node (a shared file system), or be URIs of an object store that every node can
read through pyarrow (a listing, ``--files-from``).

Runtime layer: numpy, onnxruntime, the standard library and ray (the ``[distributed]`` extra). No torch.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from typing import Any

import numpy as np

from ...core.errors import ConfigError
from ...core.listing import is_uri
from ..report import _jsonl_line
from ..detector import Detector, Thresholds
from ..scan import ChunkEngine, ChunkRows, _Entry, _process_chunk

log = logging.getLogger(__name__)

WAVE_FILES = 200_000  # files per Ray dataset: bounds the driver's memory on huge scans


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError("--engine ray needs Ray Data: pip install 'ganaudit[distributed]'") from None
    return ray


def connect(address: str | None, num_cpus: int | None = None) -> dict[str, Any]:
    """Join the cluster at ``address`` (``auto``, ``ray://HOST:PORT``), or start a local one when None;
    an already running connection is reused. Returns the cluster's resources."""
    ray = import_ray()
    if not ray.is_initialized():
        try:
            ray.init(address=address, num_cpus=num_cpus if address is None else None, include_dashboard=False,
                     logging_level=logging.WARNING, log_to_driver=False)  # fmt: skip
        except (ConnectionError, ValueError, RuntimeError) as e:
            raise ConfigError(f"--address {address}: could not connect to a Ray cluster ({e})") from None
    return dict(ray.cluster_resources())


# Below this many files, on one machine, a scan is faster with the local engine: Ray's start-up is 2.5-3.5 s of a
# one-off CLI scan (docs/benchmarks.md, D1).
LOCAL_FASTER_BELOW = 10_000


def local_engine_hint(n_files: int) -> str | None:
    """A note for a scan of few files on a one-node cluster, where the local engine is faster; else None."""
    if n_files >= LOCAL_FASTER_BELOW or sum(1 for node in import_ray().nodes() if node.get("Alive")) != 1:
        return None
    return (
        f"note: {n_files} files on a one-node Ray cluster: below about {LOCAL_FASTER_BELOW:,} files the local engine "
        "(without --engine ray) is usually faster (docs/distributed.md)"
    )


def largest_node_cpus() -> int:
    """The CPU count of the cluster's largest live node."""
    ray = import_ray()
    return int(max((node["Resources"].get("CPU", 0) for node in ray.nodes() if node.get("Alive")), default=0))


class ScoreChunks:
    """The ``map_batches`` callable: one :class:`Detector` per actor, loaded once; each item is one chunk."""

    def __init__(self, model_path: str, detector_options: dict[str, Any], thresholds: Thresholds) -> None:
        self.detector = Detector.load(model_path, **detector_options)
        self.thresholds = thresholds

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        texts = []
        for real, shown in zip(batch["real"], batch["shown"]):
            entries: list[_Entry] = [(r, s, None, None) for r, s in zip(real, shown)]
            rows = _process_chunk(self.detector, self.thresholds, entries)
            texts.append(b"".join(_jsonl_line(row) for row in rows).decode())
        return {"i": batch["i"], "jsonl": np.array(texts, dtype=object)}


def ray_engine(
    model_path: str | os.PathLike, detector_options: dict[str, Any], *, actors: int, cpus_per_actor: int,
    wave_files: int = WAVE_FILES,
) -> ChunkEngine:  # fmt: skip
    """A :data:`ganaudit.runtime.scan.ChunkEngine` that scores the chunks on ``actors`` Ray actors of
    ``cpus_per_actor`` CPUs each (onnxruntime runs ``cpus_per_actor`` intra-op threads in each)."""
    ray = import_ray()
    options = {**detector_options, "threads": cpus_per_actor}
    model = os.path.abspath(model_path)

    def score(items: list[dict[str, Any]], thr: Thresholds) -> Iterator[list[dict[str, Any]]]:
        ctx = ray.data.DataContext.get_current()
        ctx.execution_options.preserve_order = True
        ctx.enable_progress_bars = False
        ds = ray.data.from_items(items, override_num_blocks=max(1, min(len(items), 4 * actors))).map_batches(
            ScoreChunks, fn_constructor_args=(model, options, thr), batch_size=1, num_cpus=cpus_per_actor,
            compute=ray.data.ActorPoolStrategy(size=actors), zero_copy_batch=True,
        )  # fmt: skip
        for row in ds.iter_rows():
            yield [json.loads(line) for line in row["jsonl"].splitlines()]

    def run(detector: Detector, thr: Thresholds, chunks: Iterator[list[_Entry]]) -> Iterator[ChunkRows]:
        wave: list[list[_Entry]] = []
        n_files = 0
        for chunk in chunks:
            wave.append(chunk)
            n_files += len(chunk)
            if n_files >= wave_files:
                yield from _merge(wave, score(_items(wave), thr))
                wave, n_files = [], 0
        if wave:
            yield from _merge(wave, score(_items(wave), thr))

    return run


def _items(wave: list[list[_Entry]]) -> list[dict[str, Any]]:
    """One Ray item per chunk that has files to load: their absolute paths and the paths the rows show."""
    items = []
    for k, chunk in enumerate(wave):
        todo = [(real if is_uri(real) else os.path.abspath(real), shown) for real, shown, row, _ in chunk if row is None]
        if todo:
            items.append({"i": k, "real": [r for r, _ in todo], "shown": [s for _, s in todo]})
    return items


def _merge(wave: list[list[_Entry]], scored: Iterator[list[dict[str, Any]]]) -> Iterator[ChunkRows]:
    """Each chunk's rows in walk order: its ready rows (walk errors, resumed rows) and its scored files."""
    for chunk in wave:
        loaded = iter(next(scored)) if any(row is None for _, _, row, _ in chunk) else iter(())
        yield chunk, [row if row is not None else next(loaded) for _, _, row, _ in chunk]


def setup(
    model_path: str | os.PathLike, detector_options: dict[str, Any], *, address: str | None, actors: int | None,
    cpus_per_actor: int | None,
) -> tuple[ChunkEngine, dict[str, Any]]:  # fmt: skip
    """Connect to the cluster and size the actor pool: ``cpus_per_actor`` (default 1) CPUs each, ``actors``
    (default: as many as the cluster's CPUs hold). Returns the engine and what the summary records of it."""
    cpus = cpus_per_actor or 1
    resources = connect(address)
    total = int(resources.get("CPU", 1))
    largest = largest_node_cpus()
    if cpus > largest:  # such an actor fits on no node: Ray would leave it pending and the scan would hang
        raise ConfigError(f"--threads {cpus}: each actor runs on one node, and the largest node has {largest} CPUs")
    n = actors or max(1, total // cpus)
    if n * cpus > total:
        log.warning("%d actors x %d CPUs ask for more than the cluster's %d CPUs: some will wait", n, cpus, total)
    info = {"name": "ray", "address": address or "local", "actors": n, "cpus_per_actor": cpus, "cluster_cpus": total}
    return ray_engine(model_path, detector_options, actors=n, cpus_per_actor=cpus), info
