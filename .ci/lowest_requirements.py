"""Print the lowest versions pyproject.toml declares for the runtime (base + serve + dev extras), as pins.

Each ``name>=X`` becomes ``name==X``; requirements without a floor are printed as they are. Used by
.ci/floors to check that every declared floor really works.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

# train and distributed are not here: the runtime tests .ci/floors runs use neither (their tests run in
# the README's test command, on the versions it installs).
EXTRAS = ("serve", "dev")
# Not used by the runtime tests .ci/floors runs: benchmark/example data and the fuzzers' tools.
SKIP = {"scikit-image", "hypothesis", "schemathesis"}


def lowest(requirement: str) -> str:
    spec = requirement.split(";", 1)[0].strip()
    m = re.match(r"^([A-Za-z0-9_.\-\[\]]+)\s*(.*)$", spec)
    name, constraints = m.group(1), m.group(2)
    floor = re.search(r">=\s*([^,\s]+)", constraints)
    return f"{name}=={floor.group(1)}" if floor else spec


def main() -> None:
    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in EXTRAS:
        reqs += project["optional-dependencies"][extra]
    pins = [lowest(r) for r in reqs]
    sys.stdout.write("".join(p + "\n" for p in pins if re.split(r"[=<>\[ ]", p, maxsplit=1)[0] not in SKIP))


if __name__ == "__main__":
    main()
