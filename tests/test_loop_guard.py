"""The loop guard (models/loop_guard.py): the published no-repeat n-gram rule, its settings, and our
generate loop cutting an answer that loops on the tiny chain. vLLM's logits processor applies the
same rule (tests/test_vllm_operations.py compares the engines)."""

import pytest
import torch
from conftest import REPO_ROOT

from optical_cli.config.registry import load_config
from optical_cli.errors import ConfigError
from optical_cli.models import loop_guard
from optical_cli.models.loop_guard import LOOP_STOP_TOKEN, LOOP_STOP_TOKEN_ID, NoRepeatNGram
from optical_cli.models.tokenizers import QWEN_TIKTOKEN, load_chat_tokenizer
from optical_cli.models.vlm import VisionLanguageReader

TINY = REPO_ROOT / "configs" / "tiny" / "serve.yaml"
LOOPING = "Loop"  # the tiny chain's greedy answer to it falls into a loop (measured: a 30-gram repeats at token 207)


def test_the_rule_names_the_tokens_that_would_repeat_an_ngram_of_the_window():
    guard = NoRepeatNGram(3, 9)
    assert guard.repeats([1, 2, 3, 4, 1, 2]) == {3}  # "1 2 3" was written: 3 after "1 2" would repeat it
    assert guard.repeats([1, 2, 5, 1, 2, 6, 1, 2]) == {5, 6}  # every earlier continuation
    assert guard.repeats([1, 2, 3, 4, 5]) == set()
    assert guard.cuts([1, 2, 3, 4, 1, 2], top=3) and not guard.cuts([1, 2, 3, 4, 1, 2], top=7)
    # only n-grams that start inside the last `window` tokens count
    assert NoRepeatNGram(3, 6).repeats([1, 2, 3, 9, 9, 9, 9, 1, 2]) == set()
    assert NoRepeatNGram(3, 9).repeats([1, 2, 3, 9, 8, 7, 6, 1, 2]) == {3}
    assert NoRepeatNGram(2, 4).repeats([7, 7, 7]) == {7}  # a run of one token is a loop too
    assert not loop_guard.OFF.active and loop_guard.OFF.repeats([1, 1, 1, 1]) == set()


def test_settings_are_checked_and_requests_may_bring_their_own():
    with pytest.raises(ValueError):
        NoRepeatNGram(1, 10)
    with pytest.raises(ValueError):
        NoRepeatNGram(30, 20)
    default = NoRepeatNGram(30, 90)
    assert loop_guard.from_request(None, default) is default
    assert loop_guard.from_request({"other": 1}, default) is default
    assert loop_guard.from_request({"loop_guard_ngram": 0}, default) == NoRepeatNGram(0, 90)
    assert loop_guard.from_request({"loop_guard_ngram": 8, "loop_guard_window": 24}, default) == NoRepeatNGram(8, 24)
    with pytest.raises(ValueError):
        loop_guard.from_request({"loop_guard_ngram": "many"}, default)
    assert loop_guard.from_env("30,90") == default and loop_guard.from_env("") == loop_guard.OFF
    assert loop_guard.from_request(default.as_xargs(), loop_guard.OFF) == default
    with pytest.raises(ConfigError, match="window"):
        load_config("serve", TINY, ["serve.loop_guard.window=10"])
    bench = load_config("longbench", REPO_ROOT / "configs" / "tiny" / "longbench.yaml", [])
    assert bench.bench.loop_guard.ngram == 0  # off by default in bench: rows report the model as it is


def test_the_stop_token_is_qwens_unused_vision_pad():
    assert load_chat_tokenizer(QWEN_TIKTOKEN).token_id(LOOP_STOP_TOKEN) == LOOP_STOP_TOKEN_ID


@pytest.fixture(scope="module")
def tiny_vlm():
    cfg = load_config("serve", TINY, [])
    return VisionLanguageReader.from_config(cfg.vlm, torch.device("cpu"), torch.float32, seed=0)


def test_our_generate_loop_cuts_a_looping_answer_where_it_would_repeat(tiny_vlm):
    guard = NoRepeatNGram(8, 24)  # small sizes: the loop is caught within 80 tokens (the server test uses 30/90)
    free_ids, cut_ids = [], []
    free, free_stats = tiny_vlm.generate(LOOPING, max_new_tokens=120, on_token=free_ids.append)
    cut, cut_stats = tiny_vlm.generate(LOOPING, max_new_tokens=120, on_token=cut_ids.append, loop_guard=guard)
    assert free_stats["finish_reason"] == "length" and cut_stats["finish_reason"] == "repetition"
    assert free_ids[: len(cut_ids)] == cut_ids and len(cut_ids) < len(free_ids) and free.startswith(cut)
    # where it stopped, the model's next token would have repeated an 8-gram of the last 24 tokens
    assert guard.cuts(cut_ids, free_ids[len(cut_ids)])
    assert not any(guard.cuts(cut_ids[:n], cut_ids[n]) for n in range(len(cut_ids)))
    _, off = tiny_vlm.generate(LOOPING, max_new_tokens=20, loop_guard=loop_guard.OFF)
    assert off["finish_reason"] == "length"
