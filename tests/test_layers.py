"""The import contract (docs/architecture.md, Layers): every module has a layer, imports flow downward only, and
the runtime, the core and the service never import torch. Read from the source (AST), so a violation fails here
even where no other test happens to import the offending module.

Adding a module: give it a layer in LAYERS. Adding an import across layers: the arrow must be allowed below, or
be one of the named exceptions, with its reason.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ganaudit"

CORE, RUNTIME, TRAINING, AUDIT, INTERFACES = "core", "runtime", "training", "audit", "interfaces"
# The layer of every module; a package name covers its submodules. The tree shows them: ganaudit/core/,
# runtime/, training/, audit/, and the interfaces cli/ and service/.
LAYERS = {
    CORE: ["core"],
    RUNTIME: ["runtime"],
    TRAINING: ["training"],
    AUDIT: ["audit"],
    INTERFACES: ["cli", "service", "__main__", "__init__"],  # __init__: the Python API (Detector, errors)
}
# What each layer may import (itself included).
ALLOWED = {
    CORE: {CORE},
    RUNTIME: {RUNTIME, CORE},
    TRAINING: {TRAINING, CORE},
    AUDIT: {AUDIT, RUNTIME, CORE},
    INTERFACES: {INTERFACES, AUDIT, RUNTIME, TRAINING, CORE},
}
# Arrows outside ALLOWED, each with its reason.
EXCEPTIONS = {
    ("training.export", "runtime.detector"): "export checks the ONNX graph against torch with the Detector (parity)",
    ("training.export_fit", "runtime.detector"): "thresholds and calibrations are fitted on the shipped graph's scores",
    ("training.scoring", "runtime.detector"): "the patch-distance block size is the runtime's PATCH_MATRIX_BYTES",
    ("audit.sources", "training.datasets"): "the audit loads image sets with the training data loader (torch-free)",
    ("audit.sources", "training.rundir"): "a training run's files, read without torch",
    ("audit.sources", "training.train"): "sampling a run's generator (inside a function: the [train] extra)",
    ("audit.pipeline", "training.rundir"): "a training run's files, read without torch",
    ("audit.after_training", "training.rundir"): "the audit of a run is written into the run directory",
    ("audit.features", "training.train"): "--features discriminator (inside a function: the [train] extra)",
}
# Never import torch, not even inside a function (but for the named exceptions).
TORCH_FREE = {CORE, RUNTIME}
TORCH_EXCEPTIONS = {
    ("core.threads", "torch"): "use_torch_threads sets torch's thread count; only the training commands call it",
}
TORCH_FREE_MODULES = ("service", "cli.scan", "cli.serve", "cli.models")  # the runtime-only commands
TORCH = ("torch", "torchvision", "sklearn", "onnx")  # onnx: the graph builder (the runtime uses onnxruntime)


@dataclass
class Edge:
    source: str
    target: str  # a ganaudit module (without the "ganaudit." prefix) or a third-party top-level name
    line: int
    lazy: bool  # inside a function or `if TYPE_CHECKING:`, not run at import


def module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> str | None:
    for layer, names in LAYERS.items():
        for name in names:
            if module == name or module.startswith(name + "."):
                return layer
    return None


def _edges(path: Path, root: Path = PACKAGE) -> list[Edge]:
    module = module_name(path, root)
    package = module.split(".")[:-1] if path.name != "__init__.py" else module.split(".")
    if path.name == "__init__.py" and module == "__init__":
        package = []
    edges: list[Edge] = []

    def visit(node: ast.AST, lazy: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = lazy or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                inner = True
            if isinstance(child, ast.Import):
                for alias in child.names:
                    edges.append(Edge(module, _target(alias.name), child.lineno, lazy))
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package[: len(package) - (child.level - 1)]
                    full = ".".join(["ganaudit", *base, *([child.module] if child.module else [])])
                else:
                    full = child.module or ""
                for alias in child.names:  # `from . import x` and `from .pkg import module` name modules too
                    candidate = f"{full}.{alias.name}"
                    where = root.parent / Path(*candidate.split("."))
                    is_module = where.with_suffix(".py").is_file() or (where / "__init__.py").is_file()
                    edges.append(Edge(module, _target(candidate if is_module else full), child.lineno, lazy))
            visit(child, inner)

    visit(ast.parse(path.read_text(encoding="utf-8")), False)
    return edges


def _target(full: str) -> str:
    if full == "ganaudit":
        return "__init__"
    if full.startswith("ganaudit."):
        return full[len("ganaudit.") :]
    return full.split(".")[0]


MODULES = sorted(PACKAGE.rglob("*.py"))
EDGES = [e for p in MODULES for e in _edges(p)]


def test_every_module_has_a_layer():
    missing = [module_name(p) for p in MODULES if layer_of(module_name(p)) is None]
    assert not missing, f"give these modules a layer in tests/test_layers.py LAYERS: {missing}"


def upward(edges: list[Edge]) -> list[str]:
    """The imports against the layers (EXCEPTIONS left out)."""
    wrong = []
    for e in edges:
        src, dst = layer_of(e.source), layer_of(e.target)
        # The package root holds __version__ (and sets OpenCV's pixel ceiling): Python runs it before any module.
        if dst is None or dst in ALLOWED.get(src, set()) or e.target == "__init__":
            continue
        if (e.source, e.target) in EXCEPTIONS or (e.source.rsplit(".", 1)[0], e.target) in EXCEPTIONS:
            continue
        wrong.append(f"{e.source} ({src}) imports {e.target} ({dst}), line {e.line}")
    return wrong


def test_imports_flow_downward_only():
    wrong = upward(EDGES)
    assert not wrong, "imports against the layers:\n" + "\n".join(wrong)


@pytest.mark.parametrize("lib", TORCH)
def test_the_core_runtime_and_service_never_import_the_training_libraries(lib):
    wrong = [
        f"{e.source} line {e.line}"
        for e in EDGES
        if e.target == lib
        and (layer_of(e.source) in TORCH_FREE or e.source.startswith(TORCH_FREE_MODULES))
        and not (e.lazy and (e.source, lib) in TORCH_EXCEPTIONS)
    ]
    assert not wrong, f"{lib} imported by {wrong}"


def test_no_module_imports_torch_at_import_time_outside_training():
    """Everything outside the training layer imports without torch: torch only inside the functions that need it,
    and no module-level import reaches a training module that imports torch at module level."""
    eager: dict[str, set[str]] = {}
    for e in EDGES:
        if not e.lazy:
            eager.setdefault(e.source, set()).add(e.target)

    def reaches_torch(module: str, seen: set[str]) -> list[str] | None:
        for dst in sorted(eager.get(module, ())):
            if dst in TORCH:
                return [module, dst]
            if dst not in seen and layer_of(dst) is not None:
                seen.add(dst)
                chain = reaches_torch(dst, seen)
                if chain:
                    return [module, *chain]
        return None

    wrong = []
    for p in MODULES:
        module = module_name(p)
        if layer_of(module) != TRAINING:
            chain = reaches_torch(module, {module})
            if chain:
                wrong.append(" -> ".join(chain))
    assert not wrong, "imported at module level, these reach torch:\n" + "\n".join(wrong)


def test_the_contract_catches_an_upward_import(tmp_path):
    """The checker itself: a core module importing the runtime, and torch inside a function, are seen."""
    root = tmp_path / "ganaudit"
    (root / "core").mkdir(parents=True)
    (root / "runtime").mkdir()
    (root / "runtime" / "detector.py").write_text("")
    path = root / "core" / "grid.py"
    path.write_text("from ..runtime.detector import Detector\n\ndef f():\n    import torch\n")
    edges = _edges(path, root)
    assert [(e.target, e.lazy) for e in edges] == [("runtime.detector", False), ("torch", True)]
    assert upward(edges) == ["core.grid (core) imports runtime.detector (runtime), line 1"]
