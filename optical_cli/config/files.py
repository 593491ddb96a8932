"""YAML with line numbers and duplicate-key detection: the raw form every config file is read into."""

from __future__ import annotations

from typing import Any

import yaml

from ..errors import ConfigError


class _Located(dict):
    """A mapping that remembers the line of each key (1-based)."""

    lines: dict[str, int]


def _construct(node: yaml.Node, source: str) -> Any:
    if isinstance(node, yaml.MappingNode):
        result = _Located()
        result.lines = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise ConfigError(f"{source}:{key_node.start_mark.line + 1}: YAML merge keys (<<) are not supported")
            key = _construct(key_node, source)
            line = key_node.start_mark.line + 1
            if not isinstance(key, str):
                raise ConfigError(f"{source}:{line}: keys must be strings, got {key!r}")
            if key in result:
                raise ConfigError(
                    f"{source}:{line}: duplicate key '{key}' (first set on line {result.lines[key]}); "
                    "remove one of them"
                )
            result[key] = _construct(value_node, source)
            result.lines[key] = line
        return result
    if isinstance(node, yaml.SequenceNode):
        return [_construct(child, source) for child in node.value]
    return yaml.SafeLoader("").construct_object(node, deep=True)  # a scalar: str, int, float, bool, null


def parse_yaml(text: str, source: str) -> dict[str, Any]:
    """Parse YAML text into nested dicts that remember line numbers."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{where}: invalid YAML: {problem}") from None
    if node is None:
        return {}
    data = _construct(node, source)
    if not isinstance(data, dict):
        raise ConfigError(f"{source}:1: the top level must be a mapping of sections, got {type(data).__name__}")
    return data
