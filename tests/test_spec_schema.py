"""Issue 13 item 5: a model's spec is validated whole at load (ModelFormatError / exit 2, what is wrong)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

onnx = pytest.importorskip("onnx")

from ganaudit.core.errors import ModelFormatError  # noqa: E402
from ganaudit.runtime.detector import Detector  # noqa: E402
from ganaudit.core.spec import METADATA_KEY  # noqa: E402
from ganaudit.core.spec_schema import json_schema  # noqa: E402

from .conftest import run_cli  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def edited(tiny_model: Path, path: Path, mutate) -> Path:
    """A copy of the tiny model whose spec JSON was changed by ``mutate(dict)``, as a hand edit would."""
    proto = onnx.load(str(tiny_model))
    for p in proto.metadata_props:
        if p.key == METADATA_KEY:
            d = json.loads(p.value)
            mutate(d)
            p.value = json.dumps(d)
    onnx.save(proto, str(path))
    return path


def _set(path: str, value):
    def mutate(d):
        *parents, last = path.split(".")
        for key in parents:
            d = d[key]
        d[last] = value

    return mutate


CASES = {
    "thresholds-list": (_set("thresholds", []), "thresholds: Input should be a valid dictionary"),
    "threshold-string": (_set("thresholds.anomaly.value", "8.3"), "thresholds.anomaly.value: Input should be a valid number"),
    "threshold-nan": (_set("thresholds.anomaly.value", float("nan")), "thresholds.anomaly.value: must be a finite number"),
    "quantiles-strings": (_set("quantiles.anomaly", ["1", "2"]), "quantiles.anomaly.0: Input should be a valid number"),
    "quantiles-empty": (_set("quantiles.anomaly", []), "quantiles.anomaly: List should have at least 2 items"),
    "quantiles-unsorted": (_set("quantiles.anomaly", [3.0, 1.0]), "quantiles must be sorted"),
    "size": (_set("preprocess.size", 17), "preprocess.size: Input should be 16, 32, 64 or 128"),
    "heads": (_set("heads", ["generated"]), "heads must include 'anomaly'"),
    "fused-lengths": (_set("scoring.weight", [1.0]), "equally long"),
    "name": (_set("name", 5), "name: Input should be a valid string"),
    "domain-list": (_set("domain", [[]]), "domain: Input should be a valid dictionary"),  # found by test_fuzz
    # Found by trying as an attacker (seventh session): each loaded, then failed every image or the report (exit 5).
    "domain-no-limit": (_set("domain", {"score": "anomaly_score"}), "domain.limit: Field required"),
    "domain-limit-string": (_set("domain", {"limit": "abc"}), "domain.limit: Input should be a valid number"),
    "domain-weight-short": (_set("domain", {"limit": 1.0, "weight": [1.0]}), "domain.weight needs a fused score"),
    "transform-unknown": (lambda d: d["scoring"]["transforms"].__setitem__(0, "sqrt"), "Input should be 'log' or 'negate'"),
    "scale-zero": (lambda d: d["scoring"]["scale"].__setitem__(0, 0.0), "scoring.scale.0: must be greater than 0"),
    "component-unknown": (lambda d: d["scoring"]["components"].__setitem__(0, "nope"), "outputs the model does not list: ['nope']"),
    "patch-bank-string": (_set("scoring.patch_bank_size", "many"), "scoring.patch_bank_size: Input should be a valid integer"),
    "size-lie": (_set("preprocess.size", 64), "but its spec preprocesses to 1 x 64 x 64"),
}
CRASHED_SCAN = ("quantiles-empty", "thresholds-list", "domain-weight-short", "size-lie")


@pytest.mark.parametrize("case", sorted(CASES))
def test_hand_edited_specs_are_refused_whole_with_what_is_wrong(case, tiny_model, tmp_path):
    mutate, message = CASES[case]
    path = edited(tiny_model, tmp_path / f"{case}.onnx", mutate)
    with pytest.raises(ModelFormatError, match=re.escape(message)):
        Detector.load(path)
    commands = [("info", path)]
    if case in CRASHED_SCAN:  # passed `info` and crashed `scan` before
        commands.append(("scan", tmp_path, "--model", path, "--out", tmp_path / "out"))
    for args in commands:
        res = run_cli(*args)
        assert res.exit_code == 2 and message in res.stderr and "Traceback" not in res.output


def test_a_graph_without_the_anomaly_map_is_refused_at_load(tiny_model, tmp_path):
    proto = onnx.load(str(tiny_model))
    kept = [o for o in proto.graph.output if o.name != "anomaly_map"]
    del proto.graph.output[:]
    proto.graph.output.extend(kept)
    path = tmp_path / "no-map.onnx"
    onnx.save(proto, str(path))
    with pytest.raises(ModelFormatError, match="lacks inputs/outputs named in its spec: anomaly_map"):
        Detector.load(path)
    res = run_cli("scan", tmp_path, "--model", path, "--out", tmp_path / "out")
    assert res.exit_code == 2 and "anomaly_map" in res.stderr and not (tmp_path / "out").exists()


def test_several_problems_are_listed_together(tiny_model, tmp_path):
    def mutate(d):
        d["thresholds"] = []
        d["quantiles"]["anomaly"] = []

    path = edited(tiny_model, tmp_path / "two.onnx", mutate)
    with pytest.raises(ModelFormatError) as e:
        Detector.load(path)
    assert "thresholds:" in str(e.value) and "quantiles.anomaly:" in str(e.value)


def test_unknown_keys_are_kept_for_newer_files_of_the_same_version(tiny_model, tmp_path):
    path = edited(tiny_model, tmp_path / "newer.onnx", _set("a_future_field", {"x": 1}))
    assert Detector.load(path).name == "tiny-zeros"


def test_the_published_schema_is_the_one_the_code_checks():
    text = (ROOT / "docs" / "model-format.md").read_text(encoding="utf-8")
    block = re.search(r"<!-- spec-schema -->\n```json\n(.*?)```", text, re.S)
    assert block, "docs/model-format.md lacks the schema block"
    assert json.loads(block.group(1)) == json_schema(), "regenerate it with `python -m ganaudit.core.spec_schema`"
