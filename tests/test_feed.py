"""`optical encode`'s feed: pages made by worker processes as bytes through shared memory, mapped on the
device to the very views of CPU preprocessing; the same features with any number of workers; bounded
memory whatever the page count; errors from a worker; the batch chosen by a measurement."""

import json
import tracemalloc

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from typer.testing import CliRunner

from optical_cli.cli import app
from optical_cli.config.sections import RenderSection
from optical_cli.encode.batching import BatchChooser, read_store
from optical_cli.encode.feed import FeedSpec, feed_pages
from optical_cli.errors import InputError
from optical_cli.models.deepencoder.preprocess import map_bytes, prepare
from optical_cli.modes import page_size
from optical_cli.views import view_arrays

runner = CliRunner()
TINY = ["-c", "configs/tiny/encode.yaml", "--set", "encode.batch_size=2"]
LINE = "The quick brown fox jumps over the lazy dog, and the dog sleeps on."


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.mark.parametrize("kind", ["L", "RGB", "RGBA"])
def test_bytes_mapped_on_the_device_equal_preprocessing_on_the_cpu(kind):
    rng = np.random.default_rng(0)
    for mode in ("tiny", "small", "base", "large", "gundam"):
        for size in ((700, 500), (page_size(mode),) * 2):  # any page, and one drawn at the mode's size
            shape = size if kind == "L" else (*size, len(kind))
            image = Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), kind)
            for pixels in ("official", "published") if mode != "gundam" else ("official",):
                reference = prepare(image, mode, pixels)
                views, grid = view_arrays(image, mode, pixels)
                assert grid == reference.grid and len(views) == len(reference.views)
                assert all(view.ndim == (2 if kind == "L" else 3) for view in views)  # a grey page: one channel
                for view, expected in zip(views, reference.views):
                    assert torch.equal(map_bytes(torch.from_numpy(view)[None], pixels)[0], expected)


def test_two_page_workers_give_the_features_and_metrics_of_one_thread(tmp_path):
    text = tmp_path / "doc.txt"
    text.write_text((LINE + "\n") * 400)
    runs = {}
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        done = invoke("encode", "--text", text, *TINY, "--set", f"runtime.workers={workers}", "-o", out, "--json")
        assert done.exit_code == 0, done.output
        runs[workers] = (json.loads(done.stdout), out)
    (one, one_dir), (two, two_dir) = runs[1], runs[2]
    assert one["pages"] > 4 and (one["workers"], two["workers"]) == (1, 2)
    assert torch.equal(
        load_file(str(one_dir / "features.safetensors"))["features"],
        load_file(str(two_dir / "features.safetensors"))["features"],
    )
    assert (one_dir / "pages.jsonl").read_text() == (two_dir / "pages.jsonl").read_text()
    assert two["pages_per_s"] > 0 and two["s_per_page"] == pytest.approx(1 / two["pages_per_s"], rel=0.01)


def test_a_page_a_worker_cannot_read_is_the_users_error(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    spec = FeedSpec("tiny", "official")
    for workers in (1, 2):
        with pytest.raises(InputError, match="not a readable image"):
            list(feed_pages(spec, [(0, ("image", str(bad), None))], workers))


def _peak_kib(pages: int, workers: int) -> float:
    """Peak bytes the consumer side allocates while ``pages`` tiny pages go through the feed (none kept)."""
    spec = FeedSpec("tiny", "official", RenderSection(mode="tiny", tokenizer="none").model_dump_json())
    jobs = ((n, ("lines", [f"{LINE} page {n}"] * 20)) for n in range(pages))
    tracemalloc.start()
    count = sum(1 for _ in feed_pages(spec, jobs, workers, ahead=8))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert count == pages
    return peak / 1024


@pytest.mark.parametrize("workers", [1, 2])
def test_the_feed_holds_a_bounded_number_of_pages_whatever_their_count(workers):
    small, large = _peak_kib(24, workers), _peak_kib(96, workers)
    # a 512 px grey page is 256 KiB: holding the 72 extra pages would add 18 MiB; bounded, the peak stays put
    assert large < small + 2048, (small, large)


def test_batch_auto_measures_each_candidate_keeps_the_fastest_and_remembers_it():
    cpu = torch.device("cpu")
    chooser = BatchChooser.for_run("auto", cpu, torch.float32, "tiny | tiny | auto")
    assert (chooser.size, chooser.source) == (1, "measuring")
    chooser.record(1, 9.0)  # the warm-up: not a measurement
    chooser.record(1, 1.0)
    chooser.record(1, 5.0)  # a batch of another size than asked (a shard's end): not a measurement either
    assert chooser.size == 2
    chooser.record(2, 1.0)  # 0.5 s a view: the fastest
    chooser.record(4, 3.2)
    assert (chooser.size, chooser.source) == (2, "measured")
    assert chooser.summary()["batch_seconds_per_view"] == {"1": 1.0, "2": 0.5, "4": 0.8}
    again = BatchChooser.for_run("auto", cpu, torch.float32, "tiny | tiny | auto")
    assert (again.size, again.source) == (2, "stored") and len(read_store()) == 1
    assert BatchChooser.for_run(3, cpu, torch.float32, "x").summary()["batch_choice"] == "config"


def test_encode_with_batch_auto_reports_what_it_measured_and_the_rate(tmp_path):
    text = tmp_path / "doc.txt"
    text.write_text((LINE + "\n") * 600)
    first = invoke(
        "encode",
        "--text",
        text,
        "-c",
        "configs/tiny/encode.yaml",
        "--set",
        "encode.batch_size=auto",
        "-o",
        tmp_path / "a",
        "--json",
    )
    assert first.exit_code == 0, first.output
    summary = json.loads(first.stdout)
    assert summary["batch_choice"] in ("measured", "measuring") and summary["batch_seconds_per_view"]
    assert summary["pages_per_s"] > 0 and 0 < summary["encoder_share"] <= 1 and "pages/s" in first.stderr
    if summary["batch_choice"] == "measured":
        second = invoke(
            "encode",
            "--text",
            text,
            "-c",
            "configs/tiny/encode.yaml",
            "--set",
            "encode.batch_size=auto",
            "-o",
            tmp_path / "b",
            "--json",
        )
        assert json.loads(second.stdout)["batch_choice"] == "stored"


def test_the_feed_and_its_workers_import_no_torch():
    """Page workers are spawned processes: they import the feed's module, which must stay light."""
    import subprocess
    import sys

    code = (
        "import sys, optical_cli.encode.feed; print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
