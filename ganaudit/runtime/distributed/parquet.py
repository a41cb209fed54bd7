"""Parquet shards of a scan's rows (``ganaudit scan --parquet``), for runs too big for one CSV or JSONL.

Written after the scan from its final ``results.jsonl`` (so ``--resume`` and its reordering are already
applied): ``results-parquet/part-00000.parquet``, ... of up to SHARD_ROWS rows each, all with one schema
(the row contract, :data:`ganaudit.runtime.report.ROW_FIELDS`). The folder is replaced as a whole.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from ...core.errors import ConfigError
from ..report import ROW_FIELDS

SHARD_ROWS = 1_000_000
_TYPES = {
    "width": "int64", "height": "int64", "size": "int64", "anomaly_score": "float64",
    "anomaly_percentile": "float64", "generated_score": "float64", "domain_score": "float64", "mtime": "float64",
    "anomaly_flag": "bool", "generated_flag": "bool", "flagged": "bool", "in_domain": "bool",
}  # fmt: skip


def _schema():  # type: ignore[no-untyped-def]
    import pyarrow as pa

    def typ(name: str):  # type: ignore[no-untyped-def]
        if name == "reasons":
            return pa.list_(pa.string())
        return pa.type_for_alias(_TYPES.get(name, "string"))

    return pa.schema([(name, typ(name)) for name in ROW_FIELDS])


def parquet_from_jsonl(jsonl: str | os.PathLike, folder: str | os.PathLike, shard_rows: int = SHARD_ROWS) -> int:
    """Write the rows of ``jsonl`` as Parquet shards in ``folder``; returns the number of shards."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ConfigError("--parquet needs pyarrow: pip install 'ganaudit[distributed]'") from None
    folder, schema = Path(folder), _schema()
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    n, rows = 0, []

    def flush() -> None:
        nonlocal n, rows
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), tmp / f"part-{n:05d}.parquet")
        n, rows = n + 1, []

    with open(jsonl, encoding="utf-8") as f:
        for line in f:
            rows.append(json.loads(line))
            if len(rows) >= shard_rows:
                flush()
    if rows or n == 0:
        flush()
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    return n
