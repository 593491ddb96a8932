#!/usr/bin/env python3
"""Does a library cite the pages that hold the answers? Retrieval measured with the bundled MiniLM
embedder (not the reader: with random weights its answers are noise, its citations are not).

Makes --documents documents of bundled CVE descriptions (each its own stretch of the corpus),
plants ten facts (one sentence each, about things no CVE mentions) in ten of them, half-way into
the document, adds every document to a new library with `optical index add-documents`' own code
(tiny pages unless --config says otherwise), then asks each fact's question the way
`optical ask --library` does and checks whether the pages it would read (serve.max_pages of them,
--slots) include the page that holds the fact. Prints one line per question and the total; the
target is at least 9 of 10. Writes results/bench/library.csv.

    python scripts/library_check.py                            # 20 documents, 8 page slots, ~1 minute on 2 cores
    python scripts/library_check.py --documents 40 --paragraphs 60 --slots 4
    python scripts/library_check.py --set store.backend=milvus  # the same through Milvus Lite
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from optical_cli.artifacts import atomic_write_csv
from optical_cli.config.registry import load_config
from optical_cli.index.store import load_index
from optical_cli.serving.library import add_documents, labels_of, search_library

CORPUS = REPO / "data" / "cve" / "cves.jsonl"
CONFIG = REPO / "configs" / "tiny" / "index.yaml"
TARGET = 9
# (the sentence planted, the question asked, a phrase only the planted sentence holds)
FACTS = [
    (
        "The lighthouse on Corvin Island was repainted sea green in the spring of 1893.",
        "What colour was the lighthouse on Corvin Island repainted?",
        "Corvin Island",
    ),
    (
        "Professor Ilse Marwick keeps her herbarium of alpine gentians in the cellar of the Zurich observatory.",
        "Where does Professor Ilse Marwick keep her herbarium?",
        "Ilse Marwick",
    ),
    (
        "The ferry from Ostra to Velling leaves every Tuesday at a quarter past six in the morning.",
        "When does the ferry from Ostra to Velling leave?",
        "Ostra to Velling",
    ),
    (
        "Grandmother Pell's plum cake calls for three spoons of cardamom and a cup of dark rum.",
        "Which spices go into Grandmother Pell's plum cake?",
        "Grandmother Pell",
    ),
    (
        "The chess club of Lower Brindle meets in the back room of the Copper Kettle tavern.",
        "Where does the chess club of Lower Brindle meet?",
        "Lower Brindle",
    ),
    (
        "Captain Oduya's schooner, the Wandering Heron, ran aground on the sandbars off Kessick Point.",
        "Where did Captain Oduya's schooner run aground?",
        "Wandering Heron",
    ),
    (
        "The orchard at Fenwick Hall grows forty-two varieties of heritage apples.",
        "How many apple varieties grow in the orchard at Fenwick Hall?",
        "Fenwick Hall",
    ),
    (
        "The violinist Maren Solberg tunes her instrument half a tone low for Baroque concerts.",
        "How does the violinist Maren Solberg tune her instrument for Baroque music?",
        "Maren Solberg",
    ),
    (
        "Beekeepers in the Tarn valley harvest lavender honey twice a year, in July and in late September.",
        "When do beekeepers in the Tarn valley harvest lavender honey?",
        "Tarn valley",
    ),
    (
        "The abandoned silver mine near Gorrow closed in 1911 after its lower galleries flooded.",
        "Why did the silver mine near Gorrow close?",
        "near Gorrow",
    ),
]


def make_documents(folder: Path, documents: int = 20, paragraphs: int = 30) -> list[Path]:
    """``documents`` text files of ``paragraphs`` CVE descriptions each; fact i half-way into document 2i."""
    with open(CORPUS, encoding="utf-8") as handle:
        texts = [json.loads(line)["description"] for line, _ in zip(handle, range(documents * paragraphs))]
    paths = []
    for d in range(documents):
        part = texts[d * paragraphs : (d + 1) * paragraphs]
        fact = d // 2 if d % 2 == 0 and d // 2 < len(FACTS) else None
        if fact is not None:
            part.insert(len(part) // 2, FACTS[fact][0])
        path = folder / f"report-{d + 1:02d}.txt"
        path.write_text("\n\n".join(part), encoding="utf-8")
        paths.append(path)
    return paths


def fact_pages(library: Path) -> dict[str, str]:
    """Each fact's phrase -> the citation (DOCUMENT:PAGE) of the library page holding it."""
    index = load_index(library / "index")
    found = {}
    for text, labels in zip(index.texts, index.labels):
        for _, _, phrase in FACTS:
            if phrase in " ".join(text.split()):
                meta = labels_of(labels)
                found[phrase] = f"{meta['document']}:{meta['page']}"
    return found


def measure(library: Path, cfg, slots: int) -> list[dict]:
    """One row per fact: its page, the pages the library would read, and whether they hold it."""
    where = fact_pages(library)
    rows = []
    for _, question, phrase in FACTS:
        reads = search_library(library, question, cfg, slots).reads
        ranks = {read.citation: read.rank for read in reads}
        rows.append(
            {
                "question": question,
                "fact_page": where.get(phrase),
                "cited": where.get(phrase) in ranks,
                "rank": ranks.get(where.get(phrase)),
                "pages_read": " ".join(sorted(ranks, key=ranks.get)),
            }
        )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--documents", type=int, default=20)
    parser.add_argument("--paragraphs", type=int, default=30, help="CVE descriptions per document")
    parser.add_argument("--slots", type=int, default=8, help="pages one answer reads (serve.max_pages)")
    parser.add_argument("--config", default=str(CONFIG), help="the index config (embedder, search, library pages)")
    parser.add_argument("--set", dest="sets", action="append", default=[], help="index config overrides")
    parser.add_argument("--output", default=str(REPO / "results" / "bench" / "library.csv"))
    args = parser.parse_args()
    cfg = load_config("index", args.config, args.sets)
    with tempfile.TemporaryDirectory() as folder:
        paths = make_documents(Path(folder), args.documents, args.paragraphs)
        library = Path(folder) / "library"
        report = add_documents(library, [str(p) for p in paths], cfg)
        rows = measure(library, cfg, args.slots)
    for row in rows:
        print(f"{'yes' if row['cited'] else 'NO ':3}  rank {row['rank']!s:>4}  {row['fact_page']}  {row['question']}")
    hits = sum(row["cited"] for row in rows)
    print(
        f"{hits} of {len(rows)} questions cite the page holding their fact ({report.documents} documents, "
        f"{report.library_pages} pages, {report.passages} passages, {args.slots} pages read each, search "
        f"{cfg.search.mode}); target at least {TARGET}"
    )
    atomic_write_csv(args.output, rows)
    return 0 if hits >= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
