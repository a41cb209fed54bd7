"""The output formats of a scan, behind one interface.

A writer is opened before the first row, given each chunk's new rows in walk order, closed after the last row
(also when the scan fails), and finished once the scan is complete: the HTML report is built there, from the
bounded inputs the scan kept. Adding a format is one class here and one entry in :data:`WRITERS`.

Runtime layer: numpy, OpenCV and the standard library only (never torch).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from .report import CsvWriter, JsonlWriter, ReportData, csv_from_jsonl, render_html, write_output

FORMATS = ("csv", "jsonl", "html")
FILE_NAMES = {"csv": "results.csv", "jsonl": "results.jsonl", "html": "report.html"}


@dataclass
class FinishedScan:
    """What a writer may use when the scan is complete."""

    jsonl_rewritten: bool  # results.jsonl was rewritten in walk order (--resume): files derived from it follow
    report: Callable[[], ReportData]  # the HTML report's inputs, built on demand (flagged files are decoded again)


class ScanWriter:
    """One output format: ``open`` / ``write`` / ``close``, then ``finish`` when the scan completed."""

    format: ClassVar[str]

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.path = out_dir / FILE_NAMES[self.format]

    def open(self, resume: bool) -> None:
        """Before the first row; ``resume``: the rows of an earlier scan in results.jsonl are kept."""

    def write(self, rows: Sequence[dict[str, Any]]) -> Sequence[int]:
        """Add new rows (walk order). Returns each row's byte offset where the file is indexed (JSONL), else ()."""
        return ()

    def close(self) -> None:
        """After the last row, whether or not the scan completed."""

    def finish(self, done: FinishedScan) -> None:
        """Once the scan completed, after ``close``."""


class JsonlScanWriter(ScanWriter):
    format = "jsonl"

    def open(self, resume: bool) -> None:
        self._w = JsonlWriter(self.path, append=resume)

    def write(self, rows: Sequence[dict[str, Any]]) -> Sequence[int]:
        return self._w.write(rows)

    def close(self) -> None:
        self._w.close()


class CsvScanWriter(ScanWriter):
    """results.csv; on --resume it is first rebuilt from results.jsonl (the JSONL is the record of a scan)."""

    format = "csv"

    def open(self, resume: bool) -> None:
        if resume:
            csv_from_jsonl(self.out_dir / FILE_NAMES["jsonl"], self.path)  # consistent with the (possibly truncated) JSONL
        self._w = CsvWriter(self.path, append=resume)

    def write(self, rows: Sequence[dict[str, Any]]) -> Sequence[int]:
        self._w.write(rows)
        return ()

    def close(self) -> None:
        self._w.close()

    def finish(self, done: FinishedScan) -> None:
        if done.jsonl_rewritten:
            csv_from_jsonl(self.out_dir / FILE_NAMES["jsonl"], self.path)


class HtmlScanWriter(ScanWriter):
    """report.html: nothing per row; built at the end."""

    format = "html"

    def open(self, resume: bool) -> None:
        self.path.unlink(missing_ok=True)  # never leave a stale report beside new rows

    def finish(self, done: FinishedScan) -> None:
        write_output(self.path, render_html(done.report()))


WRITERS: dict[str, type[ScanWriter]] = {w.format: w for w in (CsvScanWriter, JsonlScanWriter, HtmlScanWriter)}
