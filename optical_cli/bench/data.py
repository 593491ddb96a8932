"""LongBench v2 items: loading (hub or local file), validation and seeded stratified sampling.

The schema is the benchmark's own: ``_id``, ``domain``, ``sub_domain``, ``difficulty``
(easy/hard), ``length`` (short/medium/long), ``question``, ``choice_A``..``choice_D``,
``answer`` (one of A-D) and ``context``; a local item may give ``context_file`` instead (a
.txt/.md/.pdf beside the data file: the user's own document, a PDF read for its text layer).
A local ``.json`` (a list of records, like the
benchmark's ``data.json``) or ``.jsonl`` (one record a line) in that schema works the same
as the hub dataset ``THUDM/LongBench-v2``.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from huggingface_hub import hf_hub_download

from ..artifacts import iter_jsonl_objects
from ..documents import read_document
from ..errors import InputError
from ..models.loading import go_offline_if_unreachable, offline_reason
from .config import DIFFICULTIES, LENGTHS

HUB_ID = "THUDM/LongBench-v2"
LETTERS = ("A", "B", "C", "D")
REQUIRED_FIELDS = (
    "_id",
    "domain",
    "difficulty",
    "length",
    "question",
    "choice_A",
    "choice_B",
    "choice_C",
    "choice_D",
    "answer",
    "context",
)


@dataclass(frozen=True)
class LongBenchItem:
    id: str
    domain: str
    sub_domain: str
    difficulty: str
    length: str
    question: str
    choices: tuple[str, str, str, str]  # A, B, C, D
    answer: str
    context: str


# ---------------------------------------------------------------------------------------
# Loading


def load_items(source: str, split: str = "train") -> list[LongBenchItem]:
    """Every item of a local ``.json``/``.jsonl`` file or of a hub dataset id, validated."""
    path = Path(source).expanduser()
    if path.suffix.lower() in {".json", ".jsonl"} or path.exists():
        records, where = _read_local(path), str(path)
        records = [_with_context_file(record, path.parent, where, index) for index, record in enumerate(records)]
    else:
        records, where = _read_hub(source, split), f"{source} (split {split})"
    items = [parse_record(record, where, index) for index, record in enumerate(records)]
    _check_unique_ids(items, where)
    if not items:
        raise InputError(f"{where}: no items; the file or dataset is empty")
    return items


def _with_context_file(record: Any, folder: Path, where: str, index: int) -> Any:
    """A local item may name its document instead of inlining it: ``context_file``, a .txt/.md/.pdf
    path (relative to the data file), read by the one document reader (a PDF: its text layer)."""
    if not isinstance(record, dict) or record.get("context_file") is None:
        return record

    name = f"item '{record.get('_id')}'" if record.get("_id") else f"record {index + 1}"
    if record.get("context") is not None:
        raise InputError(f"{where}: {name} has both context and context_file; give one")
    if not isinstance(record["context_file"], str):
        raise InputError(f"{where}: {name} field 'context_file' must be a path string")
    file = Path(record["context_file"]).expanduser()
    file = file if file.is_absolute() else folder / file
    if not file.is_file():
        raise InputError(f"{where}: {name}: context_file {file} not found (paths are relative to the data file)")
    document = read_document(file)
    if not document.has_text:
        raise InputError(
            f"{where}: {name}: context_file {file} has no text"
            + (" layer (a scan?); the native condition needs the document's text" if document.is_pdf else "")
        )
    return {k: v for k, v in record.items() if k != "context_file"} | {"context": document.text}


def _read_local(path: Path) -> list[Any]:
    if not path.is_file():
        raise InputError(
            f"data file not found: {path}; set bench.data to a LongBench v2 .json/.jsonl file or the hub id {HUB_ID}"
        )
    if path.suffix.lower() not in {".json", ".jsonl"}:
        raise InputError(f"{path}: unsupported data file type '{path.suffix}'; use .json (a list of records) or .jsonl")
    if path.suffix.lower() == ".jsonl":
        return [record for _, record in iter_jsonl_objects(path)]
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read data file: {exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg}") from None
    if not isinstance(data, list):
        raise InputError(f"{path}: expected a JSON list of LongBench v2 records, got {type(data).__name__}")
    return data


def _hub_datasets():
    """The ``datasets`` library, imported only to read the hub dataset: a local file never pays its
    import (1.6 s on 2 busy cores)."""
    import datasets  # noqa: PLC0415 - its one import, deferred (above)
    import datasets.utils.logging  # noqa: PLC0415 - the same import: its logging switches

    return datasets


class DatasetUnavailable(InputError):
    """The hub dataset could not be loaded while the hub is unreachable: a missing download."""


def _read_hub(source: str, split: str) -> list[Any]:
    """The hub dataset through ``datasets``; offline or missing gives one clear error."""
    offline = go_offline_if_unreachable()  # an unreachable hub: the cache only, not a minute of retries
    try:
        datasets = _hub_datasets()
        datasets.utils.logging.disable_progress_bar()
        dataset = datasets.load_dataset(source, split=split)
    except Exception as exc:  # noqa: BLE001 - offline, unknown id, missing split: all arrive as different types
        raise (DatasetUnavailable if offline else InputError)(
            f"cannot load the dataset '{source}' (split {split}) from the Hugging Face hub "
            f"({type(exc).__name__}: {_first_line(exc)}{'; ' + offline_reason() if offline else ''}); when offline, "
            f"download LongBench v2's data.json on a connected machine (`hf download {HUB_ID} data.json --repo-type "
            "dataset`) "
            "and set bench.data to the local .json/.jsonl file"
        ) from None
    return [dict(row) for row in dataset]


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else "no message"


def parse_record(record: Any, where: str, index: int) -> LongBenchItem:
    """One validated item; errors name the item id (or its position when the id is missing)."""
    if not isinstance(record, dict):
        raise InputError(f"{where}: record {index + 1} is a {type(record).__name__}, expected an object")
    name = f"item '{record['_id']}'" if isinstance(record.get("_id"), str) and record["_id"] else f"record {index + 1}"
    missing = [field for field in REQUIRED_FIELDS if field not in record or record[field] is None]
    if missing:
        raise InputError(
            f"{where}: {name} is missing field(s) {', '.join(missing)}; every item needs {', '.join(REQUIRED_FIELDS)}"
        )
    for field in REQUIRED_FIELDS:
        if not isinstance(record[field], str):
            raise InputError(f"{where}: {name} field '{field}' must be a string, got {type(record[field]).__name__}")
    answer = record["answer"].strip().upper()
    if answer not in LETTERS:
        raise InputError(f"{where}: {name} has answer {record['answer']!r}; it must be one of A, B, C, D")
    if record["length"] not in LENGTHS:
        raise InputError(f"{where}: {name} has length {record['length']!r}; it must be one of {', '.join(LENGTHS)}")
    if record["difficulty"] not in DIFFICULTIES:
        raise InputError(f"{where}: {name} has difficulty {record['difficulty']!r}; it must be easy or hard")
    return LongBenchItem(
        id=record["_id"],
        domain=record["domain"],
        sub_domain=str(record.get("sub_domain") or ""),
        difficulty=record["difficulty"],
        length=record["length"],
        question=record["question"],
        choices=tuple(record[f"choice_{letter}"] for letter in LETTERS),  # type: ignore[arg-type]
        answer=answer,
        context=record["context"],
    )


def _check_unique_ids(items: list[LongBenchItem], where: str) -> None:
    seen: set[str] = set()
    for item in items:
        if item.id in seen:
            raise InputError(f"{where}: duplicate item id '{item.id}'; ids must be unique")
        seen.add(item.id)


# ---------------------------------------------------------------------------------------
# Selection


def filter_items(
    items: list[LongBenchItem],
    lengths: Iterable[str] = (),
    difficulties: Iterable[str] = (),
    domains: Iterable[str] = (),
) -> list[LongBenchItem]:
    """Items whose length bucket, difficulty and domain are in the given sets (empty = all)."""
    lengths, difficulties, domains = set(lengths), set(difficulties), {d.lower() for d in domains}
    return [
        item
        for item in items
        if (not lengths or item.length in lengths)
        and (not difficulties or item.difficulty in difficulties)
        and (not domains or item.domain.lower() in domains)
    ]


def pick_ids(items: list[LongBenchItem], ids: Iterable[str]) -> list[LongBenchItem]:
    """The named items, in the order given; an unknown id is an error."""
    by_id = {item.id: item for item in items}
    wanted = list(dict.fromkeys(ids))
    unknown = [i for i in wanted if i not in by_id]
    if unknown:
        shown = ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else "")
        raise InputError(f"unknown item id(s) {shown}; they are not in the data (after length/domain filters)")
    return [by_id[i] for i in wanted]


def stratified_sample(items: list[LongBenchItem], n: int, seed: int) -> list[LongBenchItem]:
    """A seeded sample of ``n`` items stratified by (length bucket, difficulty).

    Each stratum gets its proportional share (largest remainder, ties broken by stratum
    name), drawn with a seeded shuffle of the stratum sorted by id, so the same data, ``n``
    and seed always give the same items whatever order the data came in.
    """
    if n < 1:
        raise InputError(f"--num-samples must be at least 1, got {n}")
    if n > len(items):
        raise InputError(
            f"--num-samples {n} is larger than the {len(items)} item(s) available after filters; use at most "
            f"{len(items)}"
        )
    strata: dict[tuple[str, str], list[LongBenchItem]] = defaultdict(list)
    for item in items:
        strata[(item.length, item.difficulty)].append(item)
    keys = sorted(strata)
    quotas = _largest_remainder({key: len(strata[key]) for key in keys}, n)
    rng = random.Random(seed)
    chosen: list[LongBenchItem] = []
    for key in keys:
        members = sorted(strata[key], key=lambda item: item.id)
        rng.shuffle(members)
        chosen.extend(members[: quotas[key]])
    return sorted(chosen, key=lambda item: (LENGTHS.index(item.length), item.difficulty, item.id))


def _largest_remainder(sizes: dict[tuple[str, str], int], n: int) -> dict[tuple[str, str], int]:
    total = sum(sizes.values())
    exact = {key: n * size / total for key, size in sizes.items()}
    quotas = {key: int(value) for key, value in exact.items()}
    leftover = n - sum(quotas.values())
    by_remainder = sorted(sizes, key=lambda key: (-(exact[key] - quotas[key]), key))
    for key in by_remainder[:leftover]:
        quotas[key] += 1
    return quotas


def select_items(
    items: list[LongBenchItem],
    *,
    num_samples: int | None,
    ids: Iterable[str] = (),
    lengths: Iterable[str] = (),
    difficulties: Iterable[str] = (),
    domains: Iterable[str] = (),
    seed: int = 0,
) -> list[LongBenchItem]:
    """Filters, then explicit ids (when given) or a stratified sample of ``num_samples`` (None = all)."""
    pool = filter_items(items, lengths, difficulties, domains)
    if not pool:
        raise InputError(
            "no items left after the length/difficulty/domain filters; loosen bench.lengths, bench.difficulties or "
            "bench.domains"
        )
    ids = list(ids)
    if ids:
        return pick_ids(pool, ids)
    if num_samples is None:
        return sorted(pool, key=lambda item: (LENGTHS.index(item.length), item.difficulty, item.id))
    return stratified_sample(pool, num_samples, seed)


def dataset_file(repo: str, filename: str, what: str, config_key: str) -> Path:
    """A file of a hub dataset (``repo``) from the local Hugging Face cache, or fetched when the hub answers;
    when it is in neither, one line naming its ``hf download`` command (exit 2)."""
    command = f"hf download {repo} {filename} --repo-type dataset"
    offline = go_offline_if_unreachable()
    try:
        return Path(hf_hub_download(repo, filename, repo_type="dataset", local_files_only=offline))
    except Exception as exc:  # noqa: BLE001 - offline, unknown repo, missing file: all arrive as different types
        reason = offline_reason() if offline else f"{type(exc).__name__}: {_first_line(exc)}"
        raise DatasetUnavailable(
            f"{what} ({repo}/{filename}) is not in the local Hugging Face cache and {reason}; fetch it with "
            f"`{command}` on a connected machine, or set {config_key} to a local copy"
        ) from None
