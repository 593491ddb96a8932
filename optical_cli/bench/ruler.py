"""`optical bench ruler`: RULER's synthetic tasks through the benchmark's one protocol.

Steps a caller runs in order:

1. :func:`generate` builds the seeded set (``ruler_tasks``) to each target length in the reader's own
   tokenizer, before any model loads;
2. :func:`render_grid` names the render settings (font sizes x modes) and :func:`page_readers` gives
   each its reader; the runner reads every item under the four conditions, the page conditions once per
   setting;
3. :func:`write_set` writes the set in RULER's JSONL fields (plus the pages' paths), :func:`judge_needles`
   reads every optical item's needles off its pages with the OCR judge, and :func:`finish` writes the
   summary, RULER's task table and the plots.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field, replace
from itertools import product
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..artifacts import atomic_write_bytes, atomic_write_csv, atomic_write_text, to_json_line
from ..config.sections import RenderSection
from ..distributed import Processes
from ..engines.chain import ChainSpec
from ..errors import ConfigError
from ..models.loading import require_downloads
from ..models.tokenizers import load_chat_tokenizer
from ..models.vlm import chat_ids
from ..prompts import PromptParts
from ..records import KeyedLog
from ..render.frontier import OcrJudge, Segment, comparable, crop_segment
from ..render.pages import PageRenderer, png_bytes
from . import ruler_tasks
from .benchmark import Scored
from .config import SERVER_RESUMABLE, RulerConfig
from .longbench import model_downloads
from .metrics import ruler_postprocess, string_match_all, string_match_part, task_score
from .plots import plot_score_by_compression, plot_score_by_length
from .runner import settings_from
from .scoring import condition_key, wilson_interval
from .steps import BenchSelection, run_selection

LENGTH_TOLERANCE = 0.01  # a native prompt within 1% of its target


@dataclass
class RulerItem:
    id: str
    task: str
    target: int  # the target length (tokens)
    index: int  # sample index within (task, target)
    sample: ruler_tasks.Sample
    length: int  # the native prompt's tokens, as the reader counts them


class Ruler:
    """RULER as a :class:`~optical_cli.bench.benchmark.Benchmark`."""

    title = "RULER"
    item_columns = ("task", "length", "render", "depth", "references")
    groups = {"by_task": ("task", ()), "by_length": ("length", ())}
    chance = None

    def __init__(self, max_new_tokens: int):
        self.cap = max_new_tokens

    def context(self, item: RulerItem) -> str:
        return item.sample.context

    def fields(self, item: RulerItem) -> dict[str, Any]:
        depth = item.sample.depth[0] if item.sample.depth else None
        return {"task": item.task, "length": item.target, "depth": depth, "references": list(item.sample.outputs)}

    def document_prompt(self, item: RulerItem, document: str) -> PromptParts:
        return PromptParts(item.sample.instruction, document, item.sample.question)

    def no_context_prompt(self, item: RulerItem) -> PromptParts:
        return PromptParts(item.sample.instruction, "", item.sample.question)

    def score(self, item: RulerItem, output: str) -> Scored:
        prediction = ruler_postprocess(output)
        match = string_match_part if ruler_tasks.scorer_name(item.task) == "string_match_part" else string_match_all
        return Scored(prediction, match(prediction, item.sample.outputs))

    def max_new_tokens(self, item: RulerItem) -> int:
        return min(self.cap, ruler_tasks.tokens_to_generate(item.task))


# ---------------------------------------------------------------------------------------
# The set


class PromptCounter:
    """Tokens of a prompt as the reader reads it: the chat turn of ``models/vlm.py`` around its text."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def prompt(self, parts: PromptParts) -> int:
        return len(chat_ids(self.tokenizer, [parts.text])[0])

    def text(self, text: str) -> int:
        return len(self.tokenizer.encode(text))


def item_seed(seed: int, task: str, target: int, index: int) -> int:
    return zlib.crc32(f"ruler/{seed}/{task}/{target}/{index}".encode())


def generate(cfg: RulerConfig, counter: PromptCounter, progress: Callable[..., None] | None = None) -> list[RulerItem]:
    """Every (task, length, sample) the config asks for, each grown to its target (tasks outer, so a
    resumed run with more lengths keeps its item order per task)."""
    section = cfg.bench
    qa = {task: _qa_source(section, task) for task in section.tasks if task.startswith("qa_")}
    items = []
    for task, target in product(section.tasks, sorted(section.lengths)):
        for index in range(section.num_samples):
            items.append(generate_one(task, target, index, cfg, counter, qa.get(task)))
            if progress:
                progress(1, description=f"generated {task} at {target}")
    return items


def _qa_source(section, task: str) -> ruler_tasks.QASource:
    path = section.qa_files.get(task)
    if not path:
        dataset = ruler_tasks.TASKS[task]["dataset"]
        raise ConfigError(
            f"{task} reads a local {dataset} file: --set 'bench.qa_files={{{task}: PATH}}' "
            f"({'SQuAD 2.0 dev-v2.0.json' if dataset == 'squad' else 'HotpotQA hotpot_dev_distractor_v1.json'})"
        )
    return ruler_tasks.read_squad(Path(path)) if task == "qa_1" else ruler_tasks.read_hotpotqa(Path(path))


def generate_one(task: str, target: int, index: int, cfg: RulerConfig, counter: PromptCounter, qa=None) -> RulerItem:
    section = cfg.bench
    n = section.num_samples
    depth = 100.0 * index / (n - 1) if n > 1 else 50.0
    budget = target - (ruler_tasks.tokens_to_generate(task) if section.count_generation else 0)
    seed = item_seed(cfg.runtime.seed, task, target, index)
    build = ruler_tasks.builder(
        task,
        rng_seed=seed,
        index=index,
        depth=depth,
        target=budget,
        seed=cfg.runtime.seed,
        measure_text=counter.text,
        qa=qa,
    )
    length_of = lambda units: counter.prompt(build(units).parts())
    units = ruler_tasks.fit_units(length_of, budget, start=max(8, budget // 16))
    sample = build(units)
    return RulerItem(f"{task}-{target}-{index:03d}", task, target, index, sample, counter.prompt(sample.parts()))


def length_report(items: Sequence[RulerItem], count_generation: bool) -> dict[str, Any]:
    """How close the prompts came to their targets: the largest shortfall (as a share of the target)."""
    gaps = [
        (item.target - (ruler_tasks.tokens_to_generate(item.task) if count_generation else 0) - item.length)
        / item.target
        for item in items
    ]
    return {
        "max_shortfall": max(gaps, default=0.0),
        "within_1_percent": sum(1 for g in gaps if 0 <= g <= LENGTH_TOLERANCE),
        "items": len(items),
        "over_target": sum(1 for g in gaps if g < 0),
    }


# ---------------------------------------------------------------------------------------
# The render grid


@dataclass(frozen=True)
class RenderSetting:
    font_size: int
    mode: str

    @property
    def label(self) -> str:
        return f"{self.font_size}px-{self.mode}"

    def section(self, base: RenderSection) -> RenderSection:
        return base.model_copy(update={"font_size": self.font_size, "mode": self.mode})


def render_grid(cfg: RulerConfig) -> list[RenderSetting]:
    """Font sizes x modes (each empty: the config's own), the config's own setting first when it is in the grid."""
    fonts = cfg.bench.font_sizes or [cfg.render.font_size]
    modes = cfg.bench.modes or [cfg.deepencoder.mode]
    settings = [RenderSetting(f, m) for m, f in product(dict.fromkeys(modes), dict.fromkeys(fonts))]
    for setting in settings:
        PageRenderer(setting.section(cfg.render))  # a size that cannot lay out a line fails before any model loads
    return settings


def page_readers(reader, settings: Sequence[RenderSetting], render: RenderSection) -> dict[str, Any]:
    """Each setting's reader: the reader itself drawing pages in that setting (``with_pages``)."""
    return {s.label: reader.with_pages(s.section(render), s.mode) for s in settings}


# ---------------------------------------------------------------------------------------
# The set on disk, in RULER's fields


def write_set(items: Sequence[RulerItem], out_dir: Path, settings: Sequence[RenderSetting], cfg: RulerConfig) -> Path:
    """``set/<length>/<task>/validation.jsonl`` (RULER's layout) with RULER's fields (index, input, outputs,
    length, answer_prefix) plus task, depth, the prompt's three parts and the pages' paths (Glyph's
    ``image_paths`` and ``question``; pages under ``set/pages/<setting>/<id>/``). Existing pages are kept."""
    root = out_dir / "set"
    paths = {s.label: _write_pages(items, root, s, cfg) if cfg.bench.write_pages else {} for s in settings}
    first = settings[0].label
    for (target, task), group in _by_file(items).items():
        records = [_set_record(item, paths, first, out_dir) for item in group]
        text = "".join(to_json_line(record) + "\n" for record in records)
        atomic_write_text(root / str(target) / task / "validation.jsonl", text)
    return root


def _by_file(items: Sequence[RulerItem]) -> dict[tuple[int, str], list[RulerItem]]:
    groups: dict[tuple[int, str], list[RulerItem]] = {}
    for item in items:
        groups.setdefault((item.target, item.task), []).append(item)
    return groups


def _set_record(item: RulerItem, paths: dict, first: str, out_dir: Path) -> dict[str, Any]:
    sample = item.sample
    by_render = {label: [str(p.relative_to(out_dir)) for p in found.get(item.id, [])] for label, found in paths.items()}
    return {
        "index": item.index,
        "input": sample.instruction
        + sample.context
        + "\n"
        + sample.question[: len(sample.question) - len(sample.answer_prefix)],
        "outputs": list(sample.outputs),
        "length": item.length,
        "answer_prefix": sample.answer_prefix,
        "id": item.id,
        "task": item.task,
        "task_name": item.task,
        "target_length": item.target,
        "depth": list(sample.depth),
        "instruction": sample.instruction,
        "context": sample.context,
        "question": sample.question,
        "image_paths": by_render.get(first, []),
        "image_paths_by_render": by_render,
    }


def _write_pages(
    items: Sequence[RulerItem], root: Path, setting: RenderSetting, cfg: RulerConfig
) -> dict[str, list[Path]]:
    renderer = PageRenderer(setting.section(cfg.render))
    found: dict[str, list[Path]] = {}
    for item in items:
        folder = root / "pages" / setting.label / item.id
        pages, _, _ = renderer.layout(item.sample.context)
        found[item.id] = [folder / f"page-{n + 1:03d}.png" for n in range(len(pages))]
        for path, lines in zip(found[item.id], pages):
            if not path.is_file():
                atomic_write_bytes(path, png_bytes(renderer.draw(lines)))
    return found


# ---------------------------------------------------------------------------------------
# needle_legible: can the page show the needle at all?


def needle_spans(pages: list[list[str]], needle: str) -> tuple[int, int, int] | None:
    """(page, line, start) of the needle's first whole occurrence in the layout's lines; None when no line
    holds it whole (it was split across lines or is not there)."""
    for p, lines in enumerate(pages):
        for number, line in enumerate(lines):
            start = line.find(needle)
            if start >= 0:
                return p, number, start
    return None


def judge_item(item: RulerItem, setting: RenderSetting, cfg: RulerConfig, judge) -> dict[str, Any]:
    """Every needle of one item on its pages in one setting: found on a page kept by the middle truncation,
    and read exactly (NFKC, no whitespace) by the OCR judge from a crop of its own characters."""
    renderer = PageRenderer(setting.section(cfg.render))
    pages, _, _ = renderer.layout(item.sample.context)
    kept = set(range(len(pages))[: cfg.bench.max_pages // 2]) | set(
        range(len(pages))[len(pages) - (cfg.bench.max_pages - cfg.bench.max_pages // 2) :]
    )
    drawn: dict[int, np.ndarray] = {}
    crops, record = [], {"id": item.id, "render": setting.label, "task": item.task, "length": item.target}
    shown = []
    for needle in item.sample.needles:
        where = needle_spans(pages, needle)
        shown.append(where is not None and where[0] in kept)
        if shown[-1]:
            p, number, start = where
            if p not in drawn:
                drawn[p] = np.asarray(renderer.draw(pages[p]).convert("L"))
            crops.append(
                crop_segment(drawn[p], renderer, pages[p][number], Segment(p, number, start, start + len(needle)))
            )
    readings = iter(judge.read(crops))
    read = [next(readings) if s else "" for s in shown]
    legible = [bool(s) and comparable(r) == comparable(n) for s, r, n in zip(shown, read, item.sample.needles)]
    return record | {"needles": list(item.sample.needles), "shown": shown, "read": read, "legible": legible}


def judge_needles(
    items: Sequence[RulerItem],
    settings: Sequence[RenderSetting],
    cfg: RulerConfig,
    out_dir: Path,
    *,
    resume: bool,
    judge_factory: Callable[[], Any] | None = None,
    progress: Callable[..., None] | None = None,
) -> list[dict[str, Any]]:
    """needles.jsonl (one record per item and setting, resumable) and needles.csv."""
    log = KeyedLog(out_dir / "needles.jsonl", lambda r: (r["id"], r["render"]), resume=resume)
    todo = [(i, s) for s in settings for i in items if i.sample.needles and not log.done((i.id, s.label))]
    judge = (judge_factory or (lambda: OcrJudge(threads=cfg.bench.ocr_threads)))() if todo else None
    for item, setting in todo:
        log.add(judge_item(item, setting, cfg, judge))
        if progress:
            progress(1, description=f"needles {item.id} {setting.label}")
    wanted = {(i.id, s.label) for s in settings for i in items if i.sample.needles}
    records = [r for key, r in log.records.items() if key in wanted]
    rows = [
        {k: r[k] for k in ("id", "task", "length", "render")}
        | {"needles": len(r["needles"]), "shown": sum(r["shown"]), "legible": sum(r["legible"])}
        for r in records
    ]
    atomic_write_csv(out_dir / "needles.csv", rows, ["id", "task", "length", "render", "needles", "shown", "legible"])
    return records


def legibility_summary(records: Sequence[dict[str, Any]], settings: Sequence[RenderSetting]) -> dict[str, Any]:
    """Per setting (and per length within it): the share of needles read exactly, with a Wilson interval."""

    def block(chosen: list[dict[str, Any]]) -> dict[str, Any]:
        needles = sum(len(r["legible"]) for r in chosen)
        legible = sum(sum(r["legible"]) for r in chosen)
        low, high = wilson_interval(legible, needles)
        shown = sum(sum(r["shown"]) for r in chosen)
        return {
            "needles": needles,
            "legible": legible,
            "shown": shown,
            "share": legible / needles if needles else None,
            "ci95": [low, high],
        }

    out = {}
    for setting in settings:
        mine = [r for r in records if r["render"] == setting.label]
        lengths = sorted({r["length"] for r in mine})
        out[setting.label] = block(mine) | {
            "font_size": setting.font_size,
            "mode": setting.mode,
            "by_length": {str(n): block([r for r in mine if r["length"] == n]) for n in lengths},
        }
    return out


# ---------------------------------------------------------------------------------------
# RULER's own table


def task_table(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """Per condition (and setting): per length, each task's score as RULER prints it (mean x100, 2 decimals)
    and their average, RULER's headline number."""
    table: dict[str, dict[str, dict[str, float]]] = {}
    for key in dict.fromkeys(condition_key(r) for r in rows):
        mine = [r for r in rows if condition_key(r) == key]
        per_length: dict[str, dict[str, float]] = {}
        for length in sorted({r["length"] for r in mine}):
            at = [r for r in mine if r["length"] == length]
            scores = {
                t: task_score([r["score"] or 0.0 for r in at if r["task"] == t])
                for t in dict.fromkeys(r["task"] for r in at)
            }
            per_length[str(length)] = scores | {"average": round(sum(scores.values()) / len(scores), 2)}
        table[key] = per_length
    return table


# ---------------------------------------------------------------------------------------
# The command's steps

RULER_FILES = ("summary.json", "score_by_length.png", "score_by_compression.png", "needles.csv")
# Keys that may change between a run and its --resume: which tasks, lengths and conditions; the grid may grow.
RULER_RESUMABLE = {
    "bench.tasks",
    "bench.lengths",
    "bench.conditions",
    "bench.font_sizes",
    "bench.modes",
    "bench.plots",
    "bench.needle_legible",
    "bench.ocr_threads",
    "bench.write_pages",
    "runtime.workers",
} | SERVER_RESUMABLE


RULER_DATA_SOURCE = "generated (RULER's tasks, seeded): set/"


@dataclass
class RulerSelection(BenchSelection):
    grid: list[RenderSetting] = field(default_factory=list)


def select_ruler(cfg: RulerConfig, resume_from: Path | None = None, progress=None) -> RulerSelection:
    """The generated set and the grid, before any model loads (offline, a missing download is named first;
    with a server only the tokenizer is needed here)."""
    if not cfg.bench.server:
        require_downloads(model_downloads(cfg))
    grid = render_grid(cfg)
    counter = PromptCounter(load_chat_tokenizer(ChainSpec.from_config(cfg, "bench").tokenizer_source()))
    items = generate(cfg, counter, progress)
    settings = replace(settings_from(cfg.bench, cfg.runtime.seed), renders=tuple(s.label for s in grid))
    benchmark = Ruler(cfg.bench.max_new_tokens)
    return RulerSelection(settings, items, benchmark, RULER_DATA_SOURCE, grid=grid).count_done(resume_from)


def run_ruler(
    cfg: RulerConfig,
    selection: RulerSelection,
    reader,
    out_dir: Path,
    *,
    resume: bool,
    procs: Processes,
    progress: Callable[..., None] | None = None,
) -> dict[str, Any] | None:
    """The generated set on disk, every row still to do (one reader per render setting), then (main process)
    the needles, the summary with RULER's task table, and the plots; returns the summary in the main
    process, None in the others."""
    if procs.is_main:
        write_set(selection.items, out_dir, selection.grid, cfg)
    pages = {"optical", "native-matched"} & set(selection.settings.conditions)

    def extra(rows: list[dict[str, Any]]) -> dict[str, Any]:
        legibility = None
        if cfg.bench.needle_legible and "optical" in selection.settings.conditions:
            records = judge_needles(selection.items, selection.grid, cfg, out_dir, resume=resume, progress=progress)
            legibility = legibility_summary(records, selection.grid)
        lengths = length_report(selection.items, cfg.bench.count_generation)
        return {"ruler": task_table(rows), "lengths": lengths, "needle_legible": legibility}

    return run_selection(
        cfg,
        selection,
        reader,
        out_dir,
        resume=resume,
        procs=procs,
        name="bench-ruler",
        progress=progress,
        extra=extra,
        plot=plot_ruler,
        page_readers=page_readers(reader, selection.grid, cfg.render) if pages else None,
    )


def plot_ruler(rows: list[dict[str, Any]], summary: dict[str, Any], out_dir: Path, random_weights: bool) -> None:
    """Score against length, and against compression (with the needles' legibility where judged)."""
    note = " [random weights]" if random_weights else ""
    plot_score_by_length(rows, out_dir / "score_by_length.png", "RULER", note)
    plot_score_by_compression(rows, summary["needle_legible"], out_dir / "score_by_compression.png", "RULER", note)
