"""Serving: `optical serve` (vLLM's OpenAI-compatible server with the optical model plugin) and
`optical export-model` (``server``), the client of such a server (``client``), and `optical ask`, one
question about a document on an engine or a server (``ask``); the schema in ``config``. The engines
(:mod:`optical_cli.engines`) stay the inference seam below it."""
