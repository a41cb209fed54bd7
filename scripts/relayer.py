"""Issue 18's move of ganaudit's flat modules into the layer folders (core/, runtime/, training/), kept to re-home
branches written against the flat layout: after `git merge` (git's rename detection moves edits of moved files),
run `python scripts/relayer.py .` to fix what still names the old places:

- relative imports inside ganaudit, resolved against the file's place first, else against its old place and
  mapped (idempotent: a second run changes nothing);
- `ganaudit.X` and `ganaudit/X.py` in code, tests, benchmarks, examples and docs.

A NEW flat module (ganaudit/foo.py) is moved by hand (`git mv ganaudit/foo.py ganaudit/<layer>/foo.py`, add
"foo" to its layer in LAYERS below and in tests/test_layers.py), then this script fixes the references.
usage: python scripts/relayer.py ROOT [--move]   (--move: the original git mv of issue 18; done once)
"""
import ast, re, subprocess, sys
from pathlib import Path

ROOT = Path(sys.argv[1]).resolve()
PKG = ROOT / "ganaudit"
LAYERS = {
    "core": ["errors", "atomic", "imaging", "spec", "spec_schema", "thresholds", "files", "grid", "layout", "domain",
             "threads"],
    "runtime": ["evidence", "reasons", "scan", "scan_writers", "report"],
    "training": ["nets", "losses", "train", "datasets", "generated", "aux_generators", "scoring", "calibrate",
                 "export", "export_graph", "export_fit", "export_int8", "rundir", "ddp"],
}
MAP = {m: f"{layer}.{m}" for layer, mods in LAYERS.items() for m in mods}
MAP["runtime"] = "runtime.detector"
MAP["models"] = "core.shipped"
MAP["distributed"] = "runtime.distributed"  # a package: its modules follow
REVERSE = {v: k for k, v in MAP.items()}


def exists(dotted: str) -> bool:
    p = PKG.parent / Path(*dotted.split("."))
    return p.with_suffix(".py").is_file() or (p / "__init__.py").is_file()


def map_abs(dotted: str) -> str:
    """ganaudit.X[.rest] -> its new name."""
    parts = dotted.split(".")
    assert parts[0] == "ganaudit"
    for n in range(len(parts), 1, -1):
        head = ".".join(parts[1:n])
        if head in MAP:
            return ".".join(["ganaudit", *MAP[head].split("."), *parts[n:]])
    return dotted


def modname(path: Path) -> list[str]:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return parts


def package_of(path: Path) -> list[str]:
    m = modname(path)
    return m if path.name == "__init__.py" else m[:-1]


def old_package_of(path: Path) -> list[str]:
    m = ".".join(modname(path)[1:])
    old = REVERSE.get(m, m)
    full = ["ganaudit", *old.split(".")] if old else ["ganaudit"]
    return full if path.name == "__init__.py" else full[:-1]


def relative(from_pkg: list[str], target: list[str]) -> tuple[int, str]:
    common = 0
    while common < min(len(from_pkg), len(target)) and from_pkg[common] == target[common]:
        common += 1
    level = len(from_pkg) - common + 1
    return level, ".".join(target[common:])


def fix_file(path: Path) -> bool:
    text = path.read_text()
    lines = text.split("\n")
    changed = False
    for node in ast.walk(ast.parse(text)):
        if not isinstance(node, ast.ImportFrom) or not node.level:
            continue
        pkg_now = package_of(path)
        base = pkg_now[: len(pkg_now) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
        if node.module and exists(target):
            continue
        if not node.module:
            continue  # `from . import x`: fixed by hand
        old_pkg = old_package_of(path)
        old_base = old_pkg[: len(old_pkg) - (node.level - 1)]
        old_target = ".".join(old_base + [node.module])
        new_target = map_abs(old_target)
        if not exists(new_target) and not exists(new_target.rsplit(".", 1)[0]):
            print(f"?? {path}:{node.lineno} {old_target} -> {new_target}")
            continue
        level, mod = relative(pkg_now, new_target.split("."))
        i = node.lineno - 1
        new_line = re.sub(r"from \.+[\w.]* import", f"from {'.' * level}{mod} import", lines[i], count=1)
        if new_line != lines[i]:
            lines[i] = new_line
            changed = True
    if changed:
        path.write_text("\n".join(lines))
    return changed


# absolute references anywhere (code, docs): ganaudit.X -> ganaudit.new, ganaudit/X.py -> ganaudit/new.py
NAMES = sorted(MAP, key=len, reverse=True)
SLASHED = re.compile(r"\bganaudit/(" + "|".join(NAMES) + r")\.py\b")


def fix_refs(path: Path, keep_runtime: bool) -> bool:
    text = path.read_text()

    new = text
    if "ganaudit" in text:
        # names already in the new layout (ganaudit.runtime.scan, ganaudit.core.x) are left alone
        new = re.sub(r"\bganaudit\.(" + "|".join(NAMES) + r")\b", lambda m: _dot(m, text, keep_runtime), new)
        new = SLASHED.sub(lambda m: "ganaudit/" + MAP[m.group(1)].replace(".", "/") + ".py", new)
    if new != text:
        path.write_text(new)
        return True
    return False


NEW_SUBS = {"runtime": {"detector", "evidence", "reasons", "scan", "scan_writers", "report", "distributed"}}


def _dot(m, text, keep_runtime):
    name = m.group(1)
    after = text[m.end(): m.end() + 40]
    nxt = re.match(r"\.([a-z_]+)", after)
    if name == "runtime":
        if nxt and nxt.group(1) in NEW_SUBS["runtime"]:
            return m.group(0)  # already the new layout
        if keep_runtime:
            return m.group(0)
    return "ganaudit." + MAP[name]


def main():
    if "--move" in sys.argv:
        for layer in LAYERS:
            (PKG / layer).mkdir(exist_ok=True)
        for old, new in MAP.items():
            src = PKG / f"{old}.py"
            dst = PKG / (new.replace(".", "/") + ".py")
            if src.is_file():
                subprocess.run(["git", "mv", str(src), str(dst)], cwd=ROOT, check=True)
    for p in sorted(PKG.rglob("*.py")):
        if fix_file(p):
            print("imports", p.relative_to(ROOT))
    code = [p for d in ("ganaudit", "tests", "benchmarks", "scripts", "examples", "models") for p in (ROOT / d).rglob("*.py")]
    docs = [*(ROOT / "docs").rglob("*.md"), ROOT / "README.md", *(ROOT / "models").glob("*.md"), *(ROOT / "models").glob("*.sh")]
    for p in code:
        if fix_refs(p, keep_runtime=(p.name == "__init__.py" and p.parent.name == "runtime")):
            print("refs", p.relative_to(ROOT))
    for p in docs:
        if p.is_file() and fix_refs(p, keep_runtime=True):
            print("doc refs", p.relative_to(ROOT))


main()
