"""`ganaudit scan --engine ray`: a local Ray cluster (2 CPUs, started here) gives the local scan's rows, image for
image, its summary counts and exit codes; --resume, the HTML report and Parquet shards work on it too."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import run_cli
from .test_scan import tree  # noqa: F401 - the bad-input tree of test_scan (bad files, oddities, real digits)

ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'ganaudit[distributed]'")
pq = pytest.importorskip("pyarrow.parquet")

SCAN = ["--batch-size", "4", "--no-progress", "--json", "--format", "csv,jsonl,html"]


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def scan(model: Path, tree_dir: Path, out: Path, *extra: str):  # noqa: F811
    return run_cli("scan", tree_dir, "--model", model, "--out", out, *SCAN, *extra)


def lines(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text(encoding="utf-8").splitlines()]


def test_ray_rows_equal_the_local_scan_image_for_image(cluster, tiny_model, tree, tmp_path):  # noqa: F811
    local = scan(tiny_model, tree, tmp_path / "local", "--workers", "2")
    remote = scan(tiny_model, tree, tmp_path / "ray", "--engine", "ray", "--workers", "2", "--threads", "1")
    assert local.exit_code == remote.exit_code == 0, remote.output
    a, b = lines(tmp_path / "local"), lines(tmp_path / "ray")
    assert len(a) > 30 and any(r["status"] == "error" for r in a) and any(r["flagged"] for r in a)
    assert a == b  # same files, same order, same scores, same per-image errors
    assert (tmp_path / "local/results.csv").read_bytes() == (tmp_path / "ray/results.csv").read_bytes()
    sa, sb = json.loads(local.stdout), json.loads(remote.stdout)
    assert sa["counts"] == sb["counts"] and sa["thresholds"] == sb["thresholds"]
    assert sb["engine"] == {"name": "ray", "address": "local", "actors": 2, "cpus_per_actor": 1, "cluster_cpus": 2}
    assert "engine" not in sa
    assert "flagged" in (tmp_path / "ray/report.html").read_text(encoding="utf-8")
    # a few files on a one-node cluster: a note that the local engine is faster; never for the local scan
    assert f"note: {sa['counts']['candidates']} files on a one-node Ray cluster" in remote.stderr
    assert "one-node Ray cluster" not in local.stderr


def test_ray_gives_no_local_engine_note_for_a_large_scan(cluster, tiny_model, tree, tmp_path, monkeypatch):  # noqa: F811
    from ganaudit.runtime.distributed import ray_scan

    monkeypatch.setattr(ray_scan, "LOCAL_FASTER_BELOW", 10)  # the tree's files count as a large scan
    res = scan(tiny_model, tree, tmp_path / "large", "--engine", "ray")
    assert res.exit_code == 0 and json.loads(res.stdout)["counts"]["candidates"] >= 10
    assert "one-node Ray cluster" not in res.stderr


def test_ray_exit_codes_match_the_local_scan(cluster, tiny_model, tree, tmp_path):  # noqa: F811
    for flags, code in ((["--strict"], 3), (["--fail-on-flag"], 1)):
        local = scan(tiny_model, tree, tmp_path / "l", *flags)
        remote = scan(tiny_model, tree, tmp_path / "r", "--engine", "ray", *flags)
        assert local.exit_code == remote.exit_code == code, remote.output


def test_ray_resume_keeps_finished_rows_and_parquet_holds_the_rows(cluster, tiny_model, tree, tmp_path):  # noqa: F811
    out = tmp_path / "ray"
    first = scan(tiny_model, tree, out, "--engine", "ray")
    assert first.exit_code == 0, first.output
    before = lines(out)
    again = scan(tiny_model, tree, out, "--engine", "ray", "--resume", "--parquet")
    assert again.exit_code == 0, again.output
    counts = json.loads(again.stdout)["counts"]
    assert counts["resumed"] == counts["ok"] > 0 and counts["processed"] == counts["error"]  # errors are retried
    assert lines(out) == before and len(before) == counts["candidates"]
    table = pq.read_table(out / "results-parquet")
    assert table.to_pylist() == lines(out)


def test_ray_options_are_checked(tiny_model, tree, tmp_path):  # noqa: F811
    res = run_cli("scan", tree, "--model", tiny_model, "--out", tmp_path / "o", "--address", "auto")
    assert res.exit_code == 2 and "--address needs --engine ray" in res.output
    res = run_cli("scan", tree, "--model", tiny_model, "--out", tmp_path / "o", "--engine", "spark")
    assert res.exit_code == 2 and "--engine must be local or ray" in res.output


def test_ray_reads_a_listing_of_paths_and_uris_like_the_local_scan(cluster, tiny_model, tree, tmp_path):  # noqa: F811
    files = sorted((tree / "digits").glob("*.png"))[:6]
    listing = tmp_path / "list.txt"
    listing.write_text(
        "".join(f"{f}\n" for f in files[:3]) + "".join(f"{f.as_uri()}\n" for f in files[3:]) + "s3x://no/such.png\n"
    )
    local = run_cli("scan", "--model", tiny_model, "--out", tmp_path / "l", *SCAN, "--files-from", listing)
    remote = run_cli("scan", "--model", tiny_model, "--out", tmp_path / "r", *SCAN, "--files-from", listing,
                     "--engine", "ray")  # fmt: skip
    assert local.exit_code == remote.exit_code == 0, remote.output
    a, b = lines(tmp_path / "l"), lines(tmp_path / "r")
    assert a == b and len(a) == 7 and a[-1]["status"] == "error" and a[3]["path"] == files[3].as_uri()


def test_ray_refuses_actors_larger_than_any_node(cluster, tiny_model, tree, tmp_path):  # noqa: F811
    res = scan(tiny_model, tree, tmp_path / "big", "--engine", "ray", "--threads", "3")  # the cluster has 2 CPUs
    assert res.exit_code == 2 and "largest node has 2 CPUs" in res.stderr and "Traceback" not in res.output
    assert not (tmp_path / "big").exists()
