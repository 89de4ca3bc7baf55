"""Write constraints.txt: the version installed here of every distribution `finops-ml[dev]` depends on.

Run by `make constraints` in the environment the test suite passed in (Linux). The Dockerfiles install with
`-c constraints.txt`, so an image gets the versions that were tested, whatever was released since.
"""

from __future__ import annotations

import sys
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

HEADER = """\
# The versions the test suite passed with (Linux, Python {python}): the dependency tree of finops-ml[dev].
# Used by deploy/Dockerfile.*: pip install -c constraints.txt ... Refresh with `make constraints`.
"""


def closure(root: str, extras: set[str]) -> dict[str, str]:
    """name -> installed version of `root[extras]` and everything it requires, markers evaluated here."""
    pins: dict[str, str] = {}
    todo = [(root, frozenset(extras))]
    seen: set[tuple[str, frozenset[str]]] = set()
    while todo:
        name, wanted = todo.pop()
        if (name, wanted) in seen:
            continue
        seen.add((name, wanted))
        dist = metadata.distribution(name)
        key = canonicalize_name(dist.metadata["Name"])
        if key != canonicalize_name(root):
            pins[key] = dist.version
        for text in dist.requires or []:
            req = Requirement(text)
            envs = [{**default_environment(), "extra": e} for e in (wanted or {""})]
            if req.marker is None or any(req.marker.evaluate(env) for env in envs):
                todo.append((req.name, frozenset(canonicalize_name(e) for e in req.extras)))
    return pins


def main(out: str = "constraints.txt") -> None:
    pins = closure("finops-ml", {"dev"})
    python = ".".join(map(str, sys.version_info[:2]))
    text = HEADER.format(python=python) + "".join(f"{name}=={version}\n" for name, version in sorted(pins.items()))
    tmp = Path(out).with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(out)
    print(f"{out}: {len(pins)} pinned distributions")


if __name__ == "__main__":
    main(*sys.argv[1:])
