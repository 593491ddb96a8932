"""Compare the numbers of two demo runs (scripts/demo.sh's results/demo/<step>.json): every number the two
reports share must be equal to 12 significant digits (a sum taken in another order moves the 16th), timings,
memory and paths aside. Prints the differences; exit 1 when any.

    python scripts/compare_demo.py results/demo-before results/demo
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any, Iterator

STEPS = ("render", "encode", "index", "search_energy", "search_cosine", "sweep")
# What a rerun may change without being another result: wall time, memory, where it ran.
VOLATILE = ("seconds", "_s", "time", "duration", "memory", "gib", "mb", "rss", "path", "dir", "run", "started")


def numbers(value: Any, where: str = "") -> Iterator[tuple[str, float]]:
    if isinstance(value, bool) or value is None:
        return
    if isinstance(value, (int, float)):
        yield where, float(value)
    elif isinstance(value, dict):
        for key, item in value.items():
            if not any(marker in key.lower() for marker in VOLATILE):
                yield from numbers(item, f"{where}.{key}" if where else str(key))
    elif isinstance(value, list):
        for position, item in enumerate(value):
            yield from numbers(item, f"{where}[{position}]")


def read(path: Path) -> Any:
    text = path.read_text(encoding="utf-8")
    try:
        return json.loads(text)
    except json.JSONDecodeError:  # JSON lines (index search)
        return [json.loads(line) for line in text.splitlines() if line.strip()]


def compare(before: Path, after: Path) -> list[str]:
    differences = []
    for step in STEPS:
        old, new = before / f"{step}.json", after / f"{step}.json"
        if not (old.is_file() and new.is_file()):
            differences.append(f"{step}: missing in {'before' if not old.is_file() else 'after'}")
            continue
        a, b = dict(numbers(read(old))), dict(numbers(read(new)))
        shared = sorted(set(a) & set(b))
        differences += [
            f"{step}: {key}: {a[key]!r} -> {b[key]!r}"
            for key in shared
            if not (
                math.isclose(a[key], b[key], rel_tol=1e-12, abs_tol=1e-15) or math.isnan(a[key]) and math.isnan(b[key])
            )
        ]
        print(f"{step}: {len(shared)} numbers compared ({len(set(a) ^ set(b))} in one run only)")
    return differences


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    args = parser.parse_args()
    differences = compare(args.before, args.after)
    for line in differences:
        print(line)
    print("same numbers" if not differences else f"{len(differences)} differences")
    sys.exit(1 if differences else 0)


if __name__ == "__main__":
    main()
