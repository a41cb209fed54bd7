"""An asyncio micro-batcher in front of one Detector.

Requests hand in already-prepared images; the batcher queues them (bounded, counted in images), groups
whatever arrives within ``max_wait`` up to ``max_batch_size`` images into one model call, and runs that call
on a dedicated inference thread so the event loop never blocks. onnxruntime parallelises inside the call,
so one inference thread is enough; while it computes, the next batch collects.

A request whose images would overflow the queue is refused at once (:class:`QueueFull`, the service answers
503 + Retry-After). A request cancelled while waiting (timeout, client gone) has its images skipped.
Images of different requests share a model call when they use the same thresholds.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..runtime.detector import Detector, Prepared, Thresholds, Verdict

log = logging.getLogger("ganaudit.service")


class QueueFull(Exception):
    """The queue cannot take the request's images now; retry after ``retry_after`` seconds."""

    def __init__(self, pending: int, wanted: int, limit: int, retry_after: int) -> None:
        super().__init__(
            f"the scoring queue is full ({pending} of {limit} images waiting, this request adds {wanted}); "
            f"retry after {retry_after} s"
        )
        self.retry_after = retry_after


class BatcherClosed(Exception):
    """The service is shutting down and takes no new work."""


@dataclass
class JobTiming:
    """Where a request's scoring time went, in seconds."""

    queue: float = 0.0
    compute: float = 0.0


@dataclass(eq=False)
class _Job:
    items: Sequence["Prepared"]
    thresholds: "Thresholds"
    include_map: bool
    future: asyncio.Future
    enqueued: float
    results: list[Any] = field(default_factory=list)
    remaining: int = 0
    started: float | None = None
    timing: JobTiming = field(default_factory=JobTiming)


class MicroBatcher:
    """Collect images from concurrent requests into batched ``Detector.score_prepared`` calls.

    Parameters
    ----------
    detector
        The shared detector (anything with ``score_prepared``).
    max_batch_size
        Most images per model call.
    max_wait_s
        How long the first image of a batch waits for company before the batch runs anyway.
    max_queue
        Most images waiting (not yet in a model call); more is refused with :class:`QueueFull`.
    metrics
        A :class:`~ganaudit.service.metrics.ServiceMetrics` to record batch sizes into (optional).
    """

    def __init__(
        self,
        detector: "Detector",
        *,
        max_batch_size: int = 32,
        max_wait_s: float = 0.005,
        max_queue: int = 256,
        metrics: Any = None,
    ) -> None:
        self.detector = detector
        self.max_batch_size = max(1, int(max_batch_size))
        self.max_wait_s = max(0.0, float(max_wait_s))
        self.max_queue = max(1, int(max_queue))
        self.metrics = metrics
        self._pending: deque[tuple[_Job, int]] = deque()
        self._inflight: set[_Job] = set()
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._closing = False
        self._rate = 0.0  # images per second, smoothed, for Retry-After

    # ------------------------------------------------------------------ lifecycle
    @property
    def pending(self) -> int:
        """Images waiting for a batch (requests that were cancelled may still count until skipped)."""
        return len(self._pending)

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        if self.running:
            return
        self._closing = False
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ganaudit-infer")
        self._task = asyncio.get_running_loop().create_task(self._worker(), name="ganaudit-batcher")

    async def run_direct(self, items: Sequence["Prepared"]) -> list["Verdict"]:
        """Score on the inference thread, bypassing the queue (used for the warm-up batch)."""
        if self._executor is None:
            raise BatcherClosed("the batcher is not running")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: self.detector.score_prepared(items))

    async def close(self, drain_timeout_s: float = 10.0) -> None:
        """Stop taking work, finish what is queued (up to ``drain_timeout_s``), then stop the worker.

        Requests still waiting after the deadline fail with :class:`BatcherClosed`.
        """
        self._closing = True
        if self._wakeup is not None:
            self._wakeup.set()
        task = self._task
        if task is not None and not task.done():
            try:
                await asyncio.wait_for(asyncio.shield(task), timeout=max(0.0, drain_timeout_s))
            except (asyncio.TimeoutError, asyncio.CancelledError):
                task.cancel()
                try:
                    await task
                except (asyncio.CancelledError, Exception):  # noqa: BLE001 - we are tearing down
                    pass
        self._fail_all(BatcherClosed("the service is shutting down"))
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
        self._task = None

    def _fail_all(self, exc: Exception) -> None:
        jobs = {job for job, _ in self._pending} | self._inflight
        self._pending.clear()
        self._inflight.clear()
        for job in jobs:
            if not job.future.done():
                job.future.set_exception(exc)

    # ------------------------------------------------------------------ submitting
    def retry_after(self) -> int:
        """Seconds a refused client should wait: the time to work off the current queue, at least 1."""
        if self._rate <= 0:
            return 1
        return max(1, min(60, math.ceil(len(self._pending) / self._rate)))

    async def submit(
        self, items: Sequence["Prepared"], thresholds: "Thresholds", *, include_map: bool = False
    ) -> tuple[list["Verdict"], JobTiming]:
        """Score ``items`` (in order) within shared batches. Raises QueueFull or BatcherClosed."""
        if self._closing or not self.running:
            raise BatcherClosed("the service is shutting down")
        if not items:
            return [], JobTiming()
        n = len(items)
        if len(self._pending) + n > self.max_queue:
            raise QueueFull(len(self._pending), n, self.max_queue, self.retry_after())
        loop = asyncio.get_running_loop()
        job = _Job(items, thresholds, include_map, loop.create_future(), time.perf_counter(), [None] * n, n)
        self._pending.extend((job, i) for i in range(n))
        assert self._wakeup is not None
        self._wakeup.set()
        verdicts = await job.future
        return verdicts, job.timing

    # ------------------------------------------------------------------ the worker
    async def _collect(self) -> list[tuple[_Job, int]]:
        """Wait for the first image, then up to max_wait for a full batch; pop the batch."""
        assert self._wakeup is not None
        while not self._pending:
            if self._closing:
                return []
            self._wakeup.clear()
            await self._wakeup.wait()
        if len(self._pending) < self.max_batch_size and self.max_wait_s > 0 and not self._closing:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.max_wait_s
            while len(self._pending) < self.max_batch_size and not self._closing:
                left = deadline - loop.time()
                if left <= 0:
                    break
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), left)
                except asyncio.TimeoutError:
                    break
        batch: list[tuple[_Job, int]] = []
        while self._pending and len(batch) < self.max_batch_size:
            job, i = self._pending.popleft()
            if job.future.done():  # cancelled (timeout / client gone) or failed: skip its images
                continue
            batch.append((job, i))
        return batch

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            if not batch:
                if self._closing and not self._pending:
                    return
                continue
            # Group by thresholds (one model call per group; normally there is one).
            groups: dict[Any, list[tuple[_Job, int]]] = {}
            for entry in batch:
                groups.setdefault(entry[0].thresholds, []).append(entry)
            start = time.perf_counter()
            for job, _ in batch:
                if job.started is None:
                    job.started = start
                    job.timing.queue = start - job.enqueued
                self._inflight.add(job)
            assert self._executor is not None
            for thresholds, entries in groups.items():
                include_map = any(job.include_map for job, _ in entries)
                items = [job.items[i] for job, i in entries]
                try:
                    verdicts, seconds = await loop.run_in_executor(
                        self._executor, _score, self.detector, items, include_map, thresholds
                    )
                except Exception as e:  # noqa: BLE001 - a model failure fails these requests, not the worker
                    log.exception("model call failed")
                    for job, _ in entries:
                        if not job.future.done():
                            job.future.set_exception(e)
                    continue
                if self.metrics is not None:
                    self.metrics.batch_size.observe(len(items))
                if seconds > 0:
                    rate = len(items) / seconds
                    self._rate = rate if self._rate == 0 else 0.8 * self._rate + 0.2 * rate
                seen: set[int] = set()
                for (job, i), verdict in zip(entries, verdicts):
                    if id(job) not in seen:
                        seen.add(id(job))
                        job.timing.compute += seconds
                    if not job.include_map:
                        verdict.anomaly_map = None
                    job.results[i] = verdict
                    job.remaining -= 1
                    if job.remaining == 0:
                        self._inflight.discard(job)
                        if not job.future.done():
                            job.future.set_result(job.results)
            for job, _ in batch:  # jobs that failed or were cancelled meanwhile
                if job.future.done():
                    self._inflight.discard(job)


def _score(
    detector: "Detector", items: list["Prepared"], include_map: bool, thresholds: "Thresholds"
) -> tuple[list["Verdict"], float]:
    t0 = time.perf_counter()
    verdicts = detector.score_prepared(items, include_map=include_map, thresholds=thresholds)
    return verdicts, time.perf_counter() - t0
