"""Encoding: pages to DeepEncoder features with compression metrics, streamed in shards (``pipeline``), the
features on disk (``features``: the shard writer and the one reader); the schema in ``config``."""
