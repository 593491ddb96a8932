"""LongBench v2, native text against optical pages: data (``data``), the prompt template and
middle truncation (``prompts``), scoring and statistics (``scoring``), the resumable runner
(``runner``) and plots (``plots``). The models are read through the engine seam
(:mod:`optical_cli.engines`)."""
