"""The documentation builds (mkdocs --strict), the CLI reference matches the code, and the README's quickstart
keeps its promised shape."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load_cli_reference():
    spec = importlib.util.spec_from_file_location("cli_reference", ROOT / "scripts" / "cli_reference.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def test_cli_reference_is_generated_from_the_current_cli():
    ref = _load_cli_reference()
    text = ref.render()
    committed = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    assert committed == text, "docs/cli.md is out of date: run `python scripts/cli_reference.py`"


def test_cli_reference_covers_every_command_and_option():
    import typer

    from ganaudit.cli import app

    text = _load_cli_reference().render()
    root = typer.main.get_command(app)
    ctx = root.make_context("ganaudit", [], resilient_parsing=True)
    for name in root.list_commands(ctx):
        assert f"## `ganaudit {name}`" in text
        for param in root.get_command(ctx, name).params:
            if param.param_type_name == "option":
                assert f"`{param.opts[0]}`" in text, f"{name} {param.opts[0]} missing from the CLI reference"


def test_mkdocs_build_strict(tmp_path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("material")
    res = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    site = tmp_path / "site"
    cli = (site / "cli" / "index.html").read_text()
    assert "ganaudit models" in cli and "--anomaly-threshold" in cli
    cards = (site / "models" / "index.html").read_text()
    assert "Intended use" in cards, "the model cards should be included in the Model cards page"
    for page in ("quickstart", "concepts", "thresholds", "heatmap", "python-api", "service", "model-format",
                 "benchmarks", "architecture", "training", "cli-scan"):  # fmt: skip
        assert (site / page / "index.html").is_file(), page


def _quickstart_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = re.search(r"## Quickstart\n(.*?)(?=\n## )", readme, re.S)
    assert section, "README.md needs a Quickstart section"
    blocks = re.findall(r"```(?:bash|sh)?\n(.*?)```", section.group(1), re.S)
    assert len(blocks) == 1, "the Quickstart holds exactly one fenced block"
    return [line for line in blocks[0].splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_readme_quickstart_is_two_commands_scan_then_tests():
    first, second = _quickstart_commands()  # exactly two
    assert "ganaudit scan examples/images" in first
    assert "torch" not in first, "the first quickstart command must not need torch"
    assert "--model" not in first, "the first command uses the shipped default model"
    assert second.index("torch==2.13.0") < second.index('".[all]"'), "pin torch before the extras resolve it"
    assert "pytest" in second
