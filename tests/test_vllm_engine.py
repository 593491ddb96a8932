"""The vLLM engine against the hf engine on a tiny random chain (run in .venv-vllm: `make test-vllm`).

Skipped where vLLM is not installed (the main environment). Both readers come from the one factory
(``engines.factory.build_reader``) on the same config, so they hold the same seeded weights; vLLM
reads the optical model directory, its pages through the model plugin (DeepEncoder and the adapter
inside the engine). What is compared: the greedy tokens of the same prompt on both engines, and
the first step's log-probabilities. A wrong position layout for the pages (each page as one row of
64 tokens instead of its 8 x 8 grid) must be far past the parity tolerance, so the parity test
would catch it.
"""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("vllm")

from conftest import REPO_ROOT

from optical_cli.config.registry import load_config
from optical_cli.engines.chain import ChainSpec
from optical_cli.engines.factory import build_reader
from optical_cli.engines.reader import ContextExceeded, ReadRequest
from optical_cli.models.language_model import load_qwen3_vl
from optical_cli.models.vlm import build_layout, mrope_positions, splice
from optical_cli.prompts import PromptParts

NEW_TOKENS = 12
TOLERANCE = 1e-3  # first-step log-prob difference allowed between the engines (float32)
DOCUMENT = (
    "The lighthouse keeper counted ships every evening and wrote their names in a ledger. "
    "In the winter of 1887 the ledger lists forty-one ships, three of them lost in one storm. "
) * 4

# The tiny serve config's chain (its wide weight spread makes attention peaked, so positions and
# page content change the answer; with 0.02 a random model barely looks at them).
OVERRIDES = [
    "serve.max_pages=3",
    "vllm.max_model_len=1024",
    "vllm.max_num_seqs=4",
    "vllm.prefix_caching=false",
]


def tiny_spec(engine: str, *more: str) -> ChainSpec:
    cfg = load_config("serve", REPO_ROOT / "configs" / "tiny" / "serve.yaml", [*OVERRIDES, *more])
    return ChainSpec.from_config(cfg, "serve", engine=engine)


def adapter_with_page_embeddings(folder: Path) -> Path:
    """A trained-adapter file for the tiny chain whose page embeddings are not zero (a fresh adapter's
    are), so a page's place in its document changes what it encodes to."""
    from optical_cli.models.adapter import AdapterConfig, OpticalAdapter, save_adapter

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(11)
        adapter = OpticalAdapter(AdapterConfig(vision_dim=48, hidden_dim=96, llm_dim=64, max_pages=3))
        torch.nn.init.normal_(adapter.page_embed.weight)
    return save_adapter(adapter, folder / "adapter.pth")


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    os.environ["OPTICAL_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    adapter = adapter_with_page_embeddings(tmp_path_factory.mktemp("adapter"))
    hf = build_reader(tiny_spec("hf", f"serve.adapter={adapter}"), ["optical", "native"])
    vllm = build_reader(tiny_spec("vllm", f"serve.adapter={adapter}"), ["optical", "native"])
    return hf, vllm


def pages_of(reader, *texts):
    return [reader.renderer.draw([text, "and a second line of the same page"]) for text in texts]


def hf_answer(hf, layout, vision=None, positions=None):
    """The hf engine's greedy ids and first-step log-probabilities for a layout (``positions``:
    other M-RoPE positions than the layout's own, to show what a wrong layout does)."""
    embeds = splice(hf.vlm.embed_tokens, layout.input_ids, layout.vision_mask, vision)[None]
    positions = layout.position_ids if positions is None else positions
    with torch.no_grad():
        logits = hf.vlm.model(
            inputs_embeds=embeds,
            position_ids=positions[:, None, :],
            attention_mask=torch.ones(1, layout.length, dtype=torch.long),
        ).logits[0, -1]
    ids, _ = hf.vlm.generate_from_embeds(embeds, layout.position_ids, layout.rope_delta, NEW_TOKENS)
    return ids, torch.log_softmax(logits.float(), dim=-1)


def first_step_difference(result, hf_logprobs) -> float:
    """Largest |vLLM - hf| log-probability over the tokens vLLM reports at the first step."""
    return max(abs(value - float(hf_logprobs[token])) for token, value in result.first_logprobs.items())


def agreeing(a, b) -> int:
    count = 0
    for x, y in zip(a, b):
        if x != y:
            break
        count += 1
    return count


def report(what, hf_ids, vllm_ids, difference):
    print(
        f"\n{what}: {agreeing(hf_ids, vllm_ids)}/{len(hf_ids)} greedy tokens agree, "
        f"first-step log-prob difference {difference:.2e}"
    )


def test_native_prompt_same_greedy_tokens(engines):
    hf, reader = engines
    prompt = PromptParts(preamble="Read the text.\n", document=DOCUMENT, question="How many ships were listed?")
    layout = build_layout(hf.vlm.tokenizer, prompt.question, None, prompt.document, preamble=prompt.preamble)
    hf_ids, hf_logprobs = hf_answer(hf, layout)
    request, length = reader.text_request(prompt, max_new_tokens=NEW_TOKENS, temperature=0.0, seed=0, logprobs=5)
    assert request.prompt_ids == layout.input_ids.tolist() and length == layout.length
    result = reader.engine.generate([request])[0]
    difference = first_step_difference(result, hf_logprobs)
    report("native", hf_ids, result.ids, difference)
    assert result.ids[: len(hf_ids)] == hf_ids and len(hf_ids) == NEW_TOKENS
    assert difference < TOLERANCE


def test_pages_through_the_plugin_give_the_hf_engines_tokens_and_a_wrong_layout_is_caught(engines):
    hf, reader = engines
    prompt = PromptParts(preamble="Read the pages.\n", document="", question="What do the pages say?")
    pages = pages_of(hf, "The keeper counted ships.", "Three were lost in one storm.")
    layout = build_layout(hf.vlm.tokenizer, prompt.question, [64, 64], None, preamble=prompt.preamble)
    vision = hf.vlm.adapt(hf.encoder.encode(pages))  # DeepEncoder and the adapter in our process
    hf_ids, hf_logprobs = hf_answer(hf, layout, vision)
    request, length = reader.page_request(prompt, pages, max_new_tokens=NEW_TOKENS, temperature=0.0, seed=0, logprobs=5)
    assert length == layout.length and request.prompt_ids.count(layout.input_ids[layout.vision_mask][0].item()) == 2
    result = reader.engine.generate([request])[0]  # pages encoded inside the engine
    difference = first_step_difference(result, hf_logprobs)
    report("optical through the plugin", hf_ids, result.ids, difference)
    assert result.ids[: len(hf_ids)] == hf_ids and len(hf_ids) == NEW_TOKENS
    assert difference < TOLERANCE

    # the same pages laid out as one row of 64 tokens each: other M-RoPE positions
    rows, _ = mrope_positions(layout.vision_mask, [(1, 64), (1, 64)])
    wrong = torch.cat([layout.position_ids[:1], rows])
    _, wrong_logprobs = hf_answer(hf, layout, vision, positions=wrong)
    wrong_difference = first_step_difference(result, wrong_logprobs)
    print(f"against a one-row-per-page layout: first-step log-prob difference {wrong_difference:.2e}")
    assert wrong_difference > 10 * TOLERANCE


def test_a_page_is_read_at_its_place_in_the_document(engines):
    """The adapter's page embedding depends on a page's place: the same page first or second is two
    items for vLLM's caches (the page index is part of its hash), and each order reads as the hf
    engine reads it; the orders differ from one another far beyond the tolerance."""
    hf, reader = engines
    prompt = PromptParts(preamble="", document="", question="Which page is first?")
    first, second = pages_of(hf, "The first page of the ledger.", "The second page of the ledger.")
    layout = build_layout(hf.vlm.tokenizer, prompt.question, [64, 64], None, preamble=prompt.preamble)
    first_steps = []
    for order in ([first, second], [second, first], [first, first]):
        hf_ids, hf_logprobs = hf_answer(hf, layout, hf.vlm.adapt(hf.encoder.encode(order)))
        request, _ = reader.page_request(prompt, order, max_new_tokens=NEW_TOKENS, temperature=0.0, seed=0, logprobs=5)
        result = reader.engine.generate([request])[0]
        assert result.ids[: len(hf_ids)] == hf_ids
        assert first_step_difference(result, hf_logprobs) < TOLERANCE
        first_steps.append(hf_logprobs)
    apart = [float((first_steps[0] - other).abs().max()) for other in first_steps[1:]]
    print(f"\nfirst-step log-probs of the other orders move by {apart[0]:.2e} and {apart[1]:.2e}")
    assert min(apart) > 10 * TOLERANCE


def test_a_streamed_answer_is_the_whole_answer(engines):
    hf, reader = engines
    prompt = PromptParts(preamble="", document="", question="What does the page say?")
    pages = pages_of(hf, "A page read while its answer streams.")
    pieces: list[str] = []
    streamed = reader.read_pages(
        prompt, pages, max_new_tokens=NEW_TOKENS, temperature=0.0, seed=0, stream=pieces.append
    )
    whole = reader.read_pages(prompt, pages, max_new_tokens=NEW_TOKENS, temperature=0.0, seed=0)
    assert "".join(pieces) == streamed.text == whole.text and len(pieces) > 1
    assert streamed.input_tokens == whole.input_tokens and streamed.prefill_s > 0


def test_several_requests_in_flight_answer_as_one_at_a_time(engines):
    _, reader = engines
    prompts = [PromptParts(preamble="", document=DOCUMENT[: 60 * (i + 1)], question=f"Question {i}?") for i in range(3)]
    requests = [reader.text_request(p, max_new_tokens=6, temperature=0.0, seed=0)[0] for p in prompts]
    together = reader.engine.generate(requests)
    alone = [reader.engine.generate([r])[0] for r in requests]
    assert [r.ids for r in together] == [r.ids for r in alone]
    # a row pays for its own prompt: no KV cache reused from an earlier one (bench's default)
    assert reader.engine.llm.llm_engine.vllm_config.cache_config.enable_prefix_caching is False


def test_reads_in_flight_answer_as_one_at_a_time_and_a_too_long_one_fails_alone(engines):
    hf, reader = engines
    reads = [
        ReadRequest(PromptParts(preamble="", document=DOCUMENT[: 60 * (i + 1)], question=f"Question {i}?"), 6, 0.0, 0)
        for i in range(3)
    ]
    reads.append(ReadRequest(PromptParts("", "", "Read."), 6, 0.0, 0, pages=pages_of(hf, "A page in flight.")))
    too_long = ReadRequest(
        PromptParts(preamble="", document=DOCUMENT * 20, question="Q?"), 6, 0.0, 0
    )  # > 1024 positions
    outcomes = reader.read_many([reads[0], too_long, *reads[1:]])
    assert isinstance(outcomes[1], ContextExceeded)
    alone = [
        reader.read_pages(r.prompt, r.pages, max_new_tokens=6, temperature=0.0, seed=0)
        if r.pages
        else reader.read_text(r.prompt, max_new_tokens=6, temperature=0.0, seed=0)
        for r in reads
    ]
    together = [outcomes[0], *outcomes[2:]]
    assert [g.text for g in together] == [g.text for g in alone]
    assert [g.input_tokens for g in together] == [g.input_tokens for g in alone]
    assert all(g.prefill_s > 0 and g.decode_s >= 0 for g in together)


def _run_tiny(engine: str, out: Path, *sets: str) -> dict:
    optical = Path(sys.executable).with_name("optical")
    extra = [arg for value in sets for arg in ("--set", value)]
    done = subprocess.run(
        [
            str(optical),
            "bench",
            "longbench",
            "-c",
            "configs/tiny/longbench.yaml",
            "--engine",
            engine,
            "-o",
            str(out),
            "--set",
            "bench.temperature=0",
            *extra,
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "OPTICAL_CACHE": str(out.parent / "cache")},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    with open(out / "items.csv", newline="") as handle:
        return {(row["id"], row["condition"]): row for row in csv.DictReader(handle)}


def test_tiny_benchmark_on_both_engines_gives_the_same_answers(tmp_path):
    hf_rows = _run_tiny("hf", tmp_path / "hf")
    vllm_rows = _run_tiny("vllm", tmp_path / "vllm")
    assert hf_rows.keys() == vllm_rows.keys() and len(hf_rows) == 24
    assert all(row["status"] == "ok" for row in vllm_rows.values()), [r["reason"] for r in vllm_rows.values()]
    same = sum(hf_rows[key]["output"] == vllm_rows[key]["output"] for key in hf_rows)
    print(f"\ntiny bench: {same}/{len(hf_rows)} item/condition rows give the same text on both engines")
    assert same >= 0.9 * len(hf_rows)
    for key, row in vllm_rows.items():  # the same prompts: the same input lengths
        assert row["input_tokens"] == hf_rows[key]["input_tokens"], key
    manifest = json.loads((tmp_path / "vllm" / "manifest.json").read_text())
    assert manifest["engine"] == "vllm" and manifest["vllm"]["version"]
    assert json.loads((tmp_path / "hf" / "manifest.json").read_text())["engine"] == "hf"
    # the 24 rows went to vLLM 16 at a time (vllm.max_num_seqs) and gave the one-at-a-time engine's text
    assert manifest["throughput"]["in_flight"] == 16 and manifest["throughput"]["rows"] == 24
    assert json.loads((tmp_path / "hf" / "manifest.json").read_text())["throughput"]["in_flight"] == 1
    # pages encoded in our process and sent as embeddings (vllm.pages: embeddings): the same answers
    embedded = _run_tiny("vllm", tmp_path / "vllm-embeddings", "vllm.pages=embeddings")
    same = sum(hf_rows[key]["output"] == embedded[key]["output"] for key in hf_rows)
    print(f"with pages as embeddings: {same}/{len(hf_rows)} rows give the hf engine's text")
    assert same >= 0.9 * len(hf_rows)
    assert all(float(row["encode_s"]) > 0 for key, row in embedded.items() if key[1] == "optical")
    assert all(float(row["encode_s"]) == 0 for key, row in vllm_rows.items() if key[1] == "optical")  # in the engine


def _trained_adapter_with_lora(run: Path) -> Path:
    """adapter.pth with a LoRA beside it (lora/, as train-adapter writes them) for the tiny bench
    config's models; the LoRA's B matrices are drawn wide, so it changes what the model answers."""
    from optical_cli.models.adapter import AdapterConfig, OpticalAdapter, save_adapter
    from optical_cli.models.lora import add_lora, lora_config, save_lora

    cfg = load_config("longbench", REPO_ROOT / "configs" / "tiny" / "longbench.yaml", [])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        adapter = OpticalAdapter(AdapterConfig(vision_dim=48, hidden_dim=32, llm_dim=64, max_pages=cfg.bench.max_pages))
    save_adapter(adapter, run / "adapter.pth")
    model = load_qwen3_vl("random", torch.device("cpu"), torch.float32, cfg.vlm.random.dims(), seed=cfg.runtime.seed)
    config = lora_config(8, 16, 0.0, ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    params = add_lora(model, config, seed=1)
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for param in params:
            param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    save_lora(model, config, run / "lora")
    return run / "adapter.pth"


def test_a_lora_trained_beside_the_adapter_is_served_by_vllm_for_pages_as_the_hf_engine_reads_it(tmp_path):
    import shutil

    adapter = _trained_adapter_with_lora(tmp_path / "trained")
    hf_rows = _run_tiny("hf", tmp_path / "hf", f"bench.adapter={adapter}")
    vllm_rows = _run_tiny("vllm", tmp_path / "vllm", f"bench.adapter={adapter}")
    summary = json.loads((tmp_path / "vllm" / "summary.json").read_text())
    assert (
        summary["parameters"]["lora"]
        == json.loads((tmp_path / "hf" / "summary.json").read_text())["parameters"]["lora"]
    )
    assert "lora=" in summary["models"]
    same = {
        c: sum(hf_rows[k]["output"] == vllm_rows[k]["output"] for k in hf_rows if k[1] == c)
        for c in ("optical", "native")
    }
    print(
        f"\nwith a LoRA: optical {same['optical']}/6, native {same['native']}/6 rows give the same text on both engines"
    )
    assert same["optical"] >= 5 and same["native"] >= 5
    # the LoRA matters: without it the optical answers change (native ones read the base model either way)
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("adapter.pth", "adapter.json"):
        shutil.copy(adapter.parent / name, bare / name)
    without = _run_tiny("hf", tmp_path / "hf-bare", f"bench.adapter={bare / 'adapter.pth'}")
    changed = sum(without[k]["output"] != hf_rows[k]["output"] for k in hf_rows if k[1] == "optical")
    print(f"without the LoRA, {changed}/6 optical answers change")
    assert changed >= 3
    assert all(without[k]["output"] == hf_rows[k]["output"] for k in hf_rows if k[1] == "native")
