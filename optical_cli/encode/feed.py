"""``optical encode``'s page feed: pages drawn and preprocessed in worker processes, moved as bytes
through shared memory, so the process that runs the encoder does little else.

Each page becomes its DeepEncoder views as 8-bit images (``views.view_arrays``: a drawn text page
stays one grey channel, 1 MB at base size against 12 MB as float32 views), its text measured
(characters, words, Qwen tokens: the metrics, off the encoder's path). A worker writes the views
into a slot of one shared-memory block and sends their shapes; the feed copies them out, frees the
slot and yields pages in page order. The bytes become float32 views on the encoder's device
(``preprocess.map_bytes``: the same table, the same bits as preprocessing on the CPU).

Memory is bounded whatever the page count: ``slots`` slots of shared memory, and at most ``ahead``
pages dispatched beyond the one the encoder waits for (held out of order until their turn). Pages
are dispatched in order and every slot is freed as soon as its page is copied out, so the page
waited for always gets a slot and the feed cannot deadlock. A worker that fails sends its error
(a bad image is the user's: exit 2); one that dies is noticed within a second.

This module never imports torch, and neither do the workers (spawned processes: a fork of a process
whose threads run torch is unsafe). ``workers`` 0 or 1 runs the same work on one background thread.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import signal
import threading
import traceback
from dataclasses import dataclass
from multiprocessing import shared_memory
from typing import Any, Iterable, Iterator

import numpy as np
from PIL import Image

from ..config.sections import RenderSection
from ..errors import InputError, OpticalError, RunFailed
from ..render.pages import PageRenderer
from ..textstats import text_counts
from ..views import max_view_bytes, view_arrays

Payload = tuple  # ("lines", [line, ...]) for a text page to draw; ("image", path, text or None) for an image file
POLL_S = 1.0  # how often a waiting feed checks that its workers are alive


@dataclass(frozen=True)
class FeedSpec:
    """What any worker needs to make any page."""

    mode: str  # DeepEncoder mode of the views
    pixels: str  # official | published (resolved)
    render_json: str | None = None  # the renderer's settings, for pages drawn from text


@dataclass
class FedPage:
    number: int
    views: list[np.ndarray]  # uint8 [S, S] (grey) or [S, S, 3], tiles first
    grid: tuple[int, int]
    counts: dict | None  # textstats.text_counts of the page's text (None: unknown)


class PageMaker:
    """Draws (or loads) one page and makes its views and text counts; one per worker."""

    def __init__(self, spec: FeedSpec):
        self.spec = spec
        self.renderer = (
            None if spec.render_json is None else PageRenderer(RenderSection.model_validate_json(spec.render_json))
        )

    def __call__(self, number: int, payload: Payload) -> FedPage:
        if payload[0] == "lines":
            lines = payload[1]
            image, text = self.renderer.draw(lines), "\n".join(lines)
        else:
            image, text = load_image(payload[1]), payload[2]
        views, grid = view_arrays(image, self.spec.mode, self.spec.pixels)
        return FedPage(number, views, grid, text_counts(text))


def load_image(path: str) -> Image.Image:
    try:
        with Image.open(path) as image:
            image.load()
            return image
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable image ({exc})") from None


def feed_pages(spec: FeedSpec, jobs: Iterable[tuple[int, Payload]], workers: int, ahead: int = 32) -> Iterator[FedPage]:
    """The pages of ``jobs`` (page number, payload; in page order), made by ``workers`` processes
    (0 or 1: one thread), yielded in page order with at most ``ahead`` of them made in advance."""
    if workers <= 1:
        maker = PageMaker(spec)
        yield from prefetch((maker(number, payload) for number, payload in jobs), ahead)
        return
    with PageWorkers(spec, workers, slots=2 * workers + 2) as pool:
        yield from pool.run(jobs, max(ahead, workers))


class PageWorkers:
    """``workers`` spawned processes and the shared-memory slots they write pages into."""

    def __init__(self, spec: FeedSpec, workers: int, slots: int):
        self.slot_bytes, self.slots = max_view_bytes(spec.mode), slots
        context = multiprocessing.get_context("spawn")
        self.memory = shared_memory.SharedMemory(create=True, size=self.slot_bytes * slots)
        self.tasks, self.done = context.Queue(), context.Queue()
        self.processes = [
            context.Process(
                target=_work,
                args=(spec, self.memory.name, self.slot_bytes, self.tasks, self.done),
                name=f"optical-page-worker-{n}",
                daemon=True,
            )
            for n in range(workers)
        ]
        for process in self.processes:
            process.start()

    def __enter__(self) -> "PageWorkers":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def run(self, jobs: Iterable[tuple[int, Payload]], ahead: int) -> Iterator[FedPage]:
        todo, free, waiting = iter(jobs), list(range(self.slots)), {}
        order: list[int] = []  # page numbers dispatched, in order; order[0] is the one to yield next
        exhausted = False
        while True:
            while not exhausted and free and len(order) < ahead:
                job = next(todo, None)
                if job is None:
                    exhausted = True
                    break
                self.tasks.put((job[0], free.pop(), job[1]))
                order.append(job[0])
            if not order:
                return
            if order[0] in waiting:
                yield waiting.pop(order.pop(0))
                continue
            message = self._receive()
            number, slot, shapes, grid, counts = message
            waiting[number] = FedPage(number, self._copy_out(slot, shapes), tuple(grid), counts)
            free.append(slot)

    def _receive(self) -> tuple:
        while True:
            try:
                message = self.done.get(timeout=POLL_S)
            except queue.Empty:
                dead = [p for p in self.processes if not p.is_alive()]
                if dead:
                    raise RunFailed(
                        f"a page worker died (exit code {dead[0].exitcode}); rerun, or set runtime.workers=1"
                    )
                continue
            if message[0] == "error":
                _, kind, text = message
                raise InputError(text) if kind == "input" else RunFailed(f"a page worker failed: {text}")
            return message[1:]

    def _copy_out(self, slot: int, shapes: list[tuple[int, ...]]) -> list[np.ndarray]:
        views, offset = [], slot * self.slot_bytes
        for shape in shapes:
            size = int(np.prod(shape))
            views.append(np.frombuffer(self.memory.buf, np.uint8, size, offset).reshape(shape).copy())
            offset += size
        return views

    def close(self) -> None:
        for _ in self.processes:
            self.tasks.put(None)
        for process in self.processes:
            process.join(timeout=5)
            if process.is_alive():
                process.terminate()
                process.join(timeout=5)
        for channel in (self.tasks, self.done):
            channel.cancel_join_thread()
            channel.close()
        self.memory.close()
        self.memory.unlink()


def _work(spec: FeedSpec, memory_name: str, slot_bytes: int, tasks, done) -> None:
    """A worker: make each page it is given into its slot, until told to stop (None)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the feed's to handle: it stops the workers
    memory = shared_memory.SharedMemory(name=memory_name)  # the feed that made it unlinks it (one resource tracker)
    maker = None
    try:
        maker = PageMaker(spec)  # ready before the first page: renderer, glyphs, the Qwen vocabulary
        text_counts("warm-up")
    except Exception:  # noqa: BLE001 - the first page reports it
        maker = None
    try:
        while (task := tasks.get()) is not None:
            number, slot, payload = task
            try:
                maker = maker or PageMaker(spec)
                page = maker(number, payload)
                offset = slot * slot_bytes
                for view in page.views:
                    np.frombuffer(memory.buf, np.uint8, view.nbytes, offset)[:] = view.reshape(-1)
                    offset += view.nbytes
                done.put(("page", number, slot, [view.shape for view in page.views], page.grid, page.counts))
            except OpticalError as exc:
                done.put(("error", "input", str(exc)))
            except Exception:  # noqa: BLE001 - sent to the feed, which fails the run with it
                done.put(("error", "failed", traceback.format_exc(limit=4)))
    finally:
        memory.close()


def prefetch(items: Iterator, depth: int) -> Iterator:
    """Run a generator on a background thread, ``depth`` items ahead; its errors re-raise here."""
    buffer: queue.Queue = queue.Queue(maxsize=depth)
    finished = object()
    stop = threading.Event()

    def worker() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                buffer.put(item)
            buffer.put(finished)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            buffer.put(exc)

    thread = threading.Thread(target=worker, name="encode-producer", daemon=True)
    thread.start()
    try:
        while True:
            item = buffer.get()
            if item is finished:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                buffer.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.05)


def worker_count(setting: int, processes: int = 1) -> int:
    """``runtime.workers``: 0 is one per core, shared among the ``processes`` encoding side by side
    (``accelerate launch``), so N processes do not each start a worker per core."""
    return setting if setting > 0 else max(1, (os.cpu_count() or 1) // max(processes, 1))
