"""The optical counters on the server's ``/metrics`` (beside vLLM's own ``vllm:*``).

They are counted where the work happens, in vLLM's processes: the middleware (API server) counts
the pages each chat request brings; the processor (API server) those vLLM's multimodal processor
cache already held; the model (engine core) the pages DeepEncoder encoded and the seconds it took;
the loop guard the answers it cut. ``optical serve`` gives every process one prometheus_client multiprocess
directory (``PROMETHEUS_MULTIPROC_DIR``), from which vLLM's ``/metrics`` reads them all. Elsewhere
(the offline engine, ``vllm serve`` without it) they count in their own process and are not shown.

- ``optical:pages_received_total``: page images received in chat requests;
- ``optical:page_cache_hits_total``: of those, pages vLLM's multimodal cache held already (not
  decoded or preprocessed again); a page whose encoding is still in vLLM's encoder cache, or whose
  prefix is in the KV cache, is not encoded again either: see ``pages_encoded``;
- ``optical:pages_encoded_total`` and ``optical:encoder_seconds_total``: pages DeepEncoder and
  the adapter encoded inside the engine, and the seconds it took (their ratio: seconds a page);
- ``optical:encoder_seconds_per_page``: a histogram of the same, one observation per encoder call;
- ``optical:loop_guard_cuts_total``: answers the loop guard ended.

vLLM code: imported by the plugin's modules only.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

PAGES_RECEIVED = Counter("optical:pages_received", "Page images received in requests")
PAGE_CACHE_HITS = Counter(
    "optical:page_cache_hits", "Pages of requests found in vLLM's multimodal cache (not processed again)"
)
PAGES_ENCODED = Counter("optical:pages_encoded", "Pages DeepEncoder and the adapter encoded inside the engine")
ENCODER_SECONDS = Counter("optical:encoder_seconds", "Seconds spent encoding pages inside the engine")
ENCODER_SECONDS_PER_PAGE = Histogram(
    "optical:encoder_seconds_per_page",
    "Seconds a page, one observation per encoder call",
    buckets=(0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0),
)
LOOP_GUARD_CUTS = Counter("optical:loop_guard_cuts", "Answers the loop guard ended (finish_reason repetition)")


def pages_received(pages: int) -> None:
    if pages:
        PAGES_RECEIVED.inc(pages)


def page_cache_hits(pages: int) -> None:
    if pages:
        PAGE_CACHE_HITS.inc(pages)


def pages_encoded(pages: int, seconds: float) -> None:
    if pages:
        PAGES_ENCODED.inc(pages)
        ENCODER_SECONDS.inc(seconds)
        ENCODER_SECONDS_PER_PAGE.observe(seconds / pages)


def loop_cut() -> None:
    LOOP_GUARD_CUTS.inc()
