"""Prometheus metrics in the text exposition format (version 0.0.4), without a client library.

Three metric kinds cover the service: counters, gauges (set or computed when scraped) and histograms
with fixed buckets. Every update takes one lock, so metrics may be updated from any thread.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable, Sequence

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

LabelValues = tuple[str, ...]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(v: float) -> str:
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if math.isnan(v):
        return "NaN"
    if float(v).is_integer() and abs(v) < 1e15:
        return str(int(v))
    return repr(float(v))


def _labels(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


class _Metric:
    kind = ""

    def __init__(self, registry: "Registry", name: str, help: str, labelnames: Sequence[str] = ()) -> None:
        self.name, self.help, self.labelnames = name, help, tuple(labelnames)
        self._lock = registry.lock
        registry.metrics.append(self)

    def _key(self, labels: dict[str, str] | None) -> LabelValues:
        labels = labels or {}
        if set(labels) != set(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, got {tuple(labels)}")
        return tuple(str(labels[n]) for n in self.labelnames)

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]

    def samples(self) -> list[str]:  # pragma: no cover - abstract
        raise NotImplementedError


class Counter(_Metric):
    """A monotonically increasing count, per label combination."""

    kind = "counter"

    def __init__(self, registry: "Registry", name: str, help: str, labelnames: Sequence[str] = ()) -> None:
        super().__init__(registry, name, help, labelnames)
        self._values: dict[LabelValues, float] = {}

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, **labels: str) -> float:
        with self._lock:
            return self._values.get(self._key(labels), 0.0)

    def samples(self) -> list[str]:
        return [f"{self.name}{_labels(self.labelnames, k)} {_number(v)}" for k, v in sorted(self._values.items())]


class Gauge(_Metric):
    """A value that goes up and down; ``function`` (if given) is called at scrape time."""

    kind = "gauge"

    def __init__(
        self,
        registry: "Registry",
        name: str,
        help: str,
        labelnames: Sequence[str] = (),
        function: Callable[[], float] | None = None,
    ) -> None:
        super().__init__(registry, name, help, labelnames)
        self._values: dict[LabelValues, float] = {}
        self._function = function

    def set(self, value: float, **labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = float(value)

    def samples(self) -> list[str]:
        if self._function is not None:
            return [f"{self.name} {_number(float(self._function()))}"]
        return [f"{self.name}{_labels(self.labelnames, k)} {_number(v)}" for k, v in sorted(self._values.items())]


class Histogram(_Metric):
    """Observations counted into cumulative ``le`` buckets, with their sum and count."""

    kind = "histogram"

    def __init__(
        self,
        registry: "Registry",
        name: str,
        help: str,
        labelnames: Sequence[str] = (),
        buckets: Iterable[float] = LATENCY_BUCKETS,
    ) -> None:
        super().__init__(registry, name, help, labelnames)
        self.buckets = tuple(sorted(float(b) for b in buckets))
        # label values -> [per-bucket counts (non-cumulative, last = +Inf), sum, count]
        self._series: dict[LabelValues, tuple[list[int], list[float]]] = {}

    def observe(self, value: float, **labels: str) -> None:
        key = self._key(labels)
        idx = len(self.buckets)
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                idx = i
                break
        with self._lock:
            series = self._series.get(key)
            if series is None:
                series = self._series[key] = ([0] * (len(self.buckets) + 1), [0.0, 0.0])
            series[0][idx] += 1
            series[1][0] += value
            series[1][1] += 1

    def count(self, **labels: str) -> int:
        with self._lock:
            series = self._series.get(self._key(labels))
            return int(series[1][1]) if series else 0

    def bucket_counts(self, **labels: str) -> dict[float, int]:
        """Non-cumulative count per upper bound (``inf`` for the overflow bucket)."""
        with self._lock:
            series = self._series.get(self._key(labels))
            counts = list(series[0]) if series else [0] * (len(self.buckets) + 1)
        return dict(zip((*self.buckets, math.inf), counts))

    def samples(self) -> list[str]:
        lines = []
        for key, (counts, (total, n)) in sorted(self._series.items()):
            running = 0
            for bound, c in zip((*self.buckets, math.inf), counts):
                running += c
                le = 'le="' + _number(bound) + '"'
                lines.append(f"{self.name}_bucket{_labels(self.labelnames, key, le)} {running}")
            lines.append(f"{self.name}_sum{_labels(self.labelnames, key)} {_number(total)}")
            lines.append(f"{self.name}_count{_labels(self.labelnames, key)} {_number(n)}")
        return lines


class Registry:
    """A set of metrics rendered together."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.metrics: list[_Metric] = []

    def render(self) -> str:
        lines: list[str] = []
        with self.lock:
            for m in self.metrics:
                lines += m.header()
                lines += m.samples()
        return "\n".join(lines) + "\n"


class ServiceMetrics:
    """The metrics `ganaudit serve` exposes on ``GET /metrics``."""

    def __init__(self, queue_depth: Callable[[], float] = lambda: 0.0) -> None:
        r = self.registry = Registry()
        self.requests = Counter(
            r, "ganaudit_http_requests_total", "HTTP requests by route template, method and status code.",
            ("route", "method", "status"),
        )  # fmt: skip
        self.request_seconds = Histogram(
            r, "ganaudit_http_request_duration_seconds", "Wall time of HTTP requests by route template.", ("route",)
        )
        self.latency = Histogram(
            r, "ganaudit_inference_latency_seconds",
            "Per scoring request: decode (decode + preprocess), queue (waiting for a batch) and compute "
            "(model run of the batches holding its images).",
            ("phase",),
        )  # fmt: skip
        self.batch_size = Histogram(
            r, "ganaudit_batch_size", "Images per model call made by the micro-batcher.", buckets=BATCH_BUCKETS
        )
        self.images = Counter(
            r, "ganaudit_images_scored_total", "Images scored, by anomaly and generated flag (none: no such head).",
            ("anomaly_flag", "generated_flag"),
        )  # fmt: skip
        self.image_errors = Counter(
            r, "ganaudit_image_errors_total", "Images that could not be scored (undecodable, over the pixel limit)."
        )
        self.queue_depth = Gauge(r, "ganaudit_queue_images", "Images waiting for a batch.", function=queue_depth)
        self.ready = Gauge(r, "ganaudit_ready", "1 once the model is loaded and warmed up, else 0.")
        self.model_info = Gauge(r, "ganaudit_model_info", "The served model (always 1).", ("name", "spec_hash"))
        self.ready.set(0)

    def count_verdicts(self, verdicts: Iterable[object]) -> None:
        for v in verdicts:
            if getattr(v, "status", "ok") != "ok":
                self.image_errors.inc()
                continue
            a, g = getattr(v, "anomaly_flag", None), getattr(v, "generated_flag", None)
            self.images.inc(
                anomaly_flag="none" if a is None else str(bool(a)).lower(),
                generated_flag="none" if g is None else str(bool(g)).lower(),
            )

    def render(self) -> str:
        return self.registry.render()
