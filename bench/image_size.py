"""What each image target installs, measured from the packages installed here (no Docker engine is needed):
the Python distributions a requirements file pulls in, their installed size, the largest of them, and Java for
the Spark target. Writes bench/image_size.md.

    python -m bench.image_size
"""
from __future__ import annotations

import argparse
import re
import subprocess
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

from config import ROOT

TARGETS = {"serve": "requirements.txt", "spark": "requirements-spark.txt", "dev (never in the image)":
           "requirements-dev.txt"}


def top_level(name: str) -> list[Requirement]:
    """The requirements a file names, with the files it includes (``-r``)."""
    found = []
    for line in (ROOT / name).read_text().splitlines():
        line = line.split("#")[0].strip()
        if line.startswith("-r "):
            found += top_level(line[3:].strip())
        elif line:
            found.append(Requirement(line))
    return found


def closure(requirements: list[Requirement]) -> set[str]:
    """Every installed distribution the requirements pull in, with the dependencies of their extras."""
    names: set[str] = set()
    done: set[tuple[str, frozenset[str]]] = set()
    todo = [(r.name, frozenset(r.extras)) for r in requirements]
    while todo:
        name, extras = todo.pop()
        if (canonical(name), extras) in done:
            continue
        done.add((canonical(name), extras))
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # a dependency for another platform, not installed here
        names.add(canonical(dist.metadata["Name"]))
        for text in dist.requires or []:
            child = Requirement(text)
            if child.marker is None or any(child.marker.evaluate({"extra": e}) for e in (extras or {""})):
                todo.append((child.name, frozenset(child.extras)))
    return names


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def installed_bytes(name: str) -> int:
    dist = metadata.distribution(name)
    total = 0
    for file in dist.files or []:
        path = Path(dist.locate_file(file))
        if path.is_file():
            total += path.stat().st_size
    return total


def java_bytes() -> int:
    jvm = Path("/usr/lib/jvm")
    if not jvm.is_dir():
        return 0
    out = subprocess.run(["du", "-sb", "--dereference-args", str(jvm)], capture_output=True, text=True, check=False)
    return int(out.stdout.split()[0]) if out.returncode == 0 else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "image_size.md")
    args = parser.parse_args(argv)
    mb = 1 / 2**20
    lines = ["| target | requirements | distributions | Python packages | largest | Java |", "|---|---|---|---|---|---|"]
    for target, file in TARGETS.items():
        names = closure(top_level(file))
        sizes = sorted(((installed_bytes(n), n) for n in names), reverse=True)
        largest = ", ".join(f"{n} {b * mb:,.0f} MB" for b, n in sizes[:3])
        java = java_bytes() if target.startswith("spark") else 0
        lines.append(f"| {target} | `{file}` | {len(names)} | {sum(b for b, _ in sizes) * mb:,.0f} MB | {largest} | "
                     f"{f'{java * mb:,.0f} MB' if java else '—'} |")
    text = "\n".join(lines) + "\n"
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
