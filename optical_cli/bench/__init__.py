"""LongBench v2, native text against optical pages: data (``data``), the prompt template and
middle truncation (``prompts``), scoring and statistics (``scoring``), the resumable runner
(``runner``) behind a small reader protocol (``reader``), the real models (``models``) and
plots (``plots``)."""
