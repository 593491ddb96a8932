"""A fake reader for the benchmark tests: word tokens, pages of words, scripted answers."""

from __future__ import annotations

from optical_cli.engines.reader import ContextExceeded, Generation
from optical_cli.prompts import middle_truncate

WORDS_PER_PAGE = 20
TOKENS_PER_PAGE = 4


class FakeReader:
    """Answers A on every text prompt and the right letter on pages; can fail on cue.

    ``fail`` maps (item question substring, condition kind "text"/"pages") to an exception.
    """

    random_weights = True
    description = "fake reader (tests)"
    parameters = {"deepencoder": None, "adapter": None, "language_model": 0}
    device = None
    conventions = {"adapter_layout": "optical", "pixels": "official"}

    def __init__(self, fail=None, max_input_tokens=None):
        self.fail = fail or {}
        self.max_input_tokens = max_input_tokens
        self.calls = []
        self.prompts = []

    def warm_up(self):
        pass

    def encode_text(self, text):
        return text.split()

    def decode_text(self, ids):
        return " ".join(ids)

    def _maybe_fail(self, prompt, kind):
        for (needle, which), exc in self.fail.items():
            if which == kind and needle in prompt.question:
                raise exc

    def read_text(self, prompt, *, max_new_tokens, temperature, seed, stream=None):
        self.calls.append(("text", prompt.question.split("Question: ")[1].split("\n")[0]))
        self.prompts.append(prompt)
        self._maybe_fail(prompt, "text")
        tokens = len(prompt.document.split()) + len(prompt.question.split())
        if self.max_input_tokens and tokens > self.max_input_tokens:
            raise ContextExceeded(f"{tokens} input tokens > {self.max_input_tokens}")
        return Generation("Reasoning... The correct answer is (A)", tokens, prefill_s=0.01, decode_s=0.02)

    def render(self, text, max_pages):
        words = text.split()
        pages = [words[i : i + WORDS_PER_PAGE] for i in range(0, len(words), WORDS_PER_PAGE)]
        kept, _ = middle_truncate(pages, max_pages)
        return kept, len(pages)

    def vision_tokens(self, pages):
        return TOKENS_PER_PAGE * len(pages)

    def read_pages(self, prompt, pages, *, max_new_tokens, temperature, seed, stream=None):
        self.calls.append(("pages", prompt.question.split("Question: ")[1].split("\n")[0]))
        self._maybe_fail(prompt, "pages")
        assert prompt.document == ""
        return Generation(
            "The correct answer is B",
            self.vision_tokens(pages) + len(prompt.question.split()),
            prefill_s=0.01,
            decode_s=0.02,
            encode_s=0.005,
            adapter_s=0.001,
        )


class BatchingFakeReader(FakeReader):
    """The fake with an engine that takes several requests at once (as the vLLM reader does):
    records each group's size; ``fail_groups`` makes a whole group's call raise."""

    def __init__(self, in_flight, fail_groups=False, **kwargs):
        super().__init__(**kwargs)
        self.in_flight = in_flight
        self.fail_groups = fail_groups
        self.groups = []

    def read_many(self, requests):
        from optical_cli.engines.reader import read_one

        self.groups.append(len(requests))
        if self.fail_groups:
            raise RuntimeError("the engine died")
        outcomes = []
        for request in requests:
            try:
                outcomes.append(read_one(self, request))
            except Exception as exc:  # noqa: BLE001 - one outcome per request, as an engine reports them
                outcomes.append(exc)
        return outcomes
