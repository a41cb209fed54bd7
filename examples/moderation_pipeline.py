"""A moderation pipeline stage built on ganaudit's Detector: consume uploads, score them, route them.

    python examples/moderation_pipeline.py                      # the demo images, the shipped default model
    python examples/moderation_pipeline.py uploads/ --model my.onnx --workers 2 --json

Each upload is routed to one of three queues, with the reasons a reviewer (or an appeal) needs:

- ``allow``:  scored, and within the normal range of every head;
- ``review``: flagged at the model's own thresholds (about 1 % of normal images are, by design), or
  unreadable: a person should look;
- ``block``:  far outside normal: anomaly score above the model's 0.1 %-FPR threshold, or a
  generated-image probability of 0.99 or more.

The stage is the part to copy: ``ModerationStage`` owns one ``Detector`` (thread-safe, loaded once) and a
pool of worker threads that pull items from a bounded queue, score them in small batches and hand each
``Decision`` to a callback. Swap the queue for your message broker and the callback for your router.
Runtime only: numpy, OpenCV and onnxruntime; no torch.
"""

from __future__ import annotations

import argparse
import json
import queue
import sys
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from ganaudit import Detector
from ganaudit.core.shipped import resolve_model
from ganaudit.runtime.detector import Verdict

ALLOW, REVIEW, BLOCK = "allow", "review", "block"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff"}


@dataclass
class Item:
    """One upload: an id for your system and the raw bytes as received."""

    id: str
    data: bytes


@dataclass
class Decision:
    id: str
    route: str
    reasons: list[str]
    scores: dict[str, float | None] = field(default_factory=dict)


@dataclass(frozen=True)
class Policy:
    """Where review ends and block begins. The review line is the model's own thresholds."""

    block_anomaly_fpr: float = 0.001  # block above the threshold that flags 0.1 % of normal images
    block_generated: float = 0.99  # block at this generated probability or more


def route(verdict: Verdict, review_anomaly: float, block_anomaly: float, review_generated: float | None,
          policy: Policy) -> tuple[str, list[str]]:  # fmt: skip
    """Turn one Verdict into a route and human-readable reasons."""
    if verdict.status != "ok":
        return REVIEW, [f"could not be scored: {verdict.error}"]
    reasons: list[str] = []
    decision = ALLOW
    score, pct = verdict.anomaly_score, verdict.anomaly_percentile
    assert score is not None
    where = f"anomaly score {score:.3g} (stranger than {pct:.1f}% of normal images)"
    if score > block_anomaly:
        decision = BLOCK
        reasons.append(f"{where} is above the block line {block_anomaly:.3g} (FPR {policy.block_anomaly_fpr:g})")
    elif score > review_anomaly:
        decision = REVIEW
        reasons.append(f"{where} is above the review line {review_anomaly:.3g} (the model's threshold)")
    if verdict.in_domain is False:  # the domain gate: the generated head abstains on what it does not know
        decision = BLOCK if decision == BLOCK else REVIEW
        reasons.append("out of the model's domain: no generated verdict (a person should look)")
    g = verdict.generated_score
    if g is not None:
        if g >= policy.block_generated:
            decision = BLOCK
            reasons.append(f"generated probability {g:.3f} >= {policy.block_generated:g}")
        elif review_generated is not None and g > review_generated:
            decision = BLOCK if decision == BLOCK else REVIEW
            reasons.append(f"generated probability {g:.3f} above the review line {review_generated:.3f}")
    if decision == ALLOW:
        gen = "" if g is None else f", generated probability {g:.3f}"
        reasons.append(f"within the normal range: {where}{gen}")
    return decision, reasons


class ModerationStage:
    """Worker threads that score items from a bounded queue and hand Decisions to ``on_decision``.

    Parameters
    ----------
    detector
        A loaded Detector; one instance is shared by every worker.
    on_decision
        Called once per item, from a worker thread.
    workers, batch_size
        Threads, and most items scored per model call (a worker takes what is queued, up to this).
    policy
        Review / block lines.
    """

    def __init__(self, detector: Detector, on_decision: Callable[[Decision], None], *, workers: int = 2,
                 batch_size: int = 16, policy: Policy = Policy(), max_queue: int = 256) -> None:  # fmt: skip
        self.detector = detector
        self.on_decision = on_decision
        self.batch_size = batch_size
        self.policy = policy
        self.review_anomaly = detector.thresholds.anomaly
        self.block_anomaly = max(
            detector.resolve_thresholds(fpr=policy.block_anomaly_fpr).anomaly, self.review_anomaly
        )
        self.review_generated = detector.thresholds.generated
        self.queue: queue.Queue[Item | None] = queue.Queue(maxsize=max_queue)  # bounded: back-pressure
        self.threads = [threading.Thread(target=self._work, daemon=True) for _ in range(workers)]
        for t in self.threads:
            t.start()

    def submit(self, item: Item) -> None:
        """Queue one item; blocks while the queue is full."""
        self.queue.put(item)

    def close(self) -> None:
        """Finish everything queued, then stop the workers."""
        for _ in self.threads:
            self.queue.put(None)
        for t in self.threads:
            t.join()

    def _work(self) -> None:
        while True:
            first = self.queue.get()
            if first is None:
                return
            batch = [first]
            stop = False
            while len(batch) < self.batch_size:  # take whatever else is already waiting
                try:
                    nxt = self.queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                batch.append(nxt)
            self._score(batch)
            if stop:
                return

    def _score(self, batch: list[Item]) -> None:
        verdicts = self.detector.detect([item.data for item in batch])
        for item, verdict in zip(batch, verdicts):
            decision, reasons = route(
                verdict, self.review_anomaly, self.block_anomaly, self.review_generated, self.policy
            )
            scores = {
                "anomaly_score": verdict.anomaly_score,
                "anomaly_percentile": verdict.anomaly_percentile,
                "generated_score": verdict.generated_score,
            }
            self.on_decision(Decision(item.id, decision, reasons, scores))


def main() -> int:
    here = Path(__file__).resolve().parent
    ap = argparse.ArgumentParser(description="Route images to allow / review / block with a ganaudit detector.")
    ap.add_argument("folder", nargs="?", type=Path, default=here / "images", help="images to moderate")
    ap.add_argument("--model", default=None, help=".onnx detector or shipped model name (default: the shipped default)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--json", action="store_true", help="print one JSON decision per line")
    args = ap.parse_args()

    detector = Detector.load(resolve_model(args.model))
    lock = threading.Lock()
    decisions: list[Decision] = []

    def collect(d: Decision) -> None:
        with lock:
            decisions.append(d)

    stage = ModerationStage(detector, collect, workers=args.workers)
    files = sorted(p for p in args.folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    for path in files:  # in production: items arrive from a broker, a web handler, ...
        stage.submit(Item(str(path.relative_to(args.folder)), path.read_bytes()))
    stage.close()

    decisions.sort(key=lambda d: d.id)
    if args.json:
        for d in decisions:
            print(json.dumps(asdict(d)))
    else:
        heads = "anomaly + generated heads" if detector.has_generated_head else "anomaly head only"
        print(f"model {detector.name!r} ({heads}), {len(decisions)} items", file=sys.stderr)
        for d in decisions:
            print(f"{d.route:6}  {d.id}: {'; '.join(d.reasons)}")
        counts = {r: sum(d.route == r for d in decisions) for r in (ALLOW, REVIEW, BLOCK)}
        print(", ".join(f"{n} {r}" for r, n in counts.items()), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
