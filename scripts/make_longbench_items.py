#!/usr/bin/env python3
"""Write LongBench-schema items built from real CVE text (offline), for `optical bench longbench`.

Each item's document is consecutive records of the bundled CVE corpus, one paragraph each, of
about --chars characters; its question asks which CVE a paragraph describes (four ids from the
document as choices). Items start at different records, so their documents differ.

    python scripts/make_longbench_items.py --chars 16000 --output results/bench/cve_16k.json
    optical bench longbench -c configs/fullsize/longbench.yaml --set bench.data=results/bench/cve_16k.json \\
        --ids cve-16000-0 --conditions native,optical
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from optical_cli.artifacts import atomic_write_text
from optical_cli.bench.synthetic import cve_document, longbench_item


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--chars", type=int, default=16000, help="characters per document (whole paragraphs, at least this many)"
    )
    parser.add_argument("--count", type=int, default=1, help="items to write")
    parser.add_argument(
        "--output", type=Path, required=True, help=".json file (a list of records, like LongBench v2's data.json)"
    )
    args = parser.parse_args()
    if args.chars < 200 or args.count < 1:
        parser.error("--chars must be at least 200 and --count at least 1")
    items, start = [], 0
    for number in range(args.count):
        document, ids = cve_document(args.chars, start=start)
        items.append(longbench_item(document, ids, f"cve-{args.chars}-{number}"))
        start += len(ids)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.output, json.dumps(items, indent=1, ensure_ascii=False) + "\n")
    for item in items:
        print(f"{item['_id']}: {len(item['context']):,} characters", file=sys.stderr)
    print(f"wrote {args.output}", file=sys.stderr)


if __name__ == "__main__":
    main()
