"""The benchmarks, native text against optical pages, under one protocol (``runner``: the four conditions,
engines or a server, resume, statistics in ``scoring``) with one module per benchmark: LongBench v2
(``longbench``, its data in ``data``, prompts in ``prompts``), RULER (``ruler``, its tasks generated in
``ruler_tasks``), MRCR (``mrcr``) and LongBench v1 (``longbench_v1``); the benchmarks' own scorers in
``metrics``, plots in ``plots``. The models are read through the engine seam (:mod:`optical_cli.engines`)
or a server (:mod:`optical_cli.serving.remote`)."""
