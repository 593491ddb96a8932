"""Raw config data into a schema: errors that name the file, line and key (or the ``--set`` item or flag
that set the value), the closest valid key for a misspelt one, and ``--set`` overrides."""

from __future__ import annotations

import difflib
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from ..errors import ConfigError
from .files import _Located
from .schema import Section


def _line_of(data: Any, loc: tuple) -> int | None:
    """Line of the deepest key along ``loc`` that exists in ``data``."""
    line = None
    node = data
    for part in loc:
        if isinstance(node, _Located) and part in node:
            line = node.lines.get(part, line)
            node = node[part]
        else:
            break
    return line


def _schema_at(schema: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """The nested schema class at a path, for suggesting keys."""
    current: type[BaseModel] | None = schema
    for part in loc:
        if current is None or not isinstance(part, str) or part not in current.model_fields:
            return None
        annotation = current.model_fields[part].annotation
        current = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    return current


def _closest_key(schema: type[BaseModel], loc: tuple) -> str:
    """A hint for a key path with an unknown part: the closest valid key at the first part that is
    unknown (a misspelled section as much as a misspelled key), or the valid keys there."""
    current: type[BaseModel] | None = schema
    for depth, part in enumerate(loc):
        if current is None:
            return ""
        valid = list(current.model_fields)
        if part not in valid:
            close = difflib.get_close_matches(str(part), valid, n=1, cutoff=0.5)
            if close:
                suggestion = ".".join([*map(str, loc[:depth]), close[0], *map(str, loc[depth + 1 :])])
                return f"; did you mean '{suggestion}'?"
            here = f"in '{'.'.join(map(str, loc[:depth]))}'" if depth else "at the top level"
            return f"; valid keys {here}: {', '.join(valid)}"
        annotation = current.model_fields[part].annotation
        current = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    return ""


def _format_errors(
    exc: ValidationError, schema: type[BaseModel], data: dict, source: str, overridden: dict[tuple, str] | None = None
) -> str:
    messages = []
    for error in exc.errors():
        loc = tuple(error["loc"])
        key = ".".join(str(p) for p in loc)
        line = _line_of(data, loc)
        where = f"{source}:{line}" if line else source
        setting = next((item for n in range(len(loc), 0, -1) if (item := (overridden or {}).get(loc[:n]))), None)
        if setting is not None:  # the value came from the command line, not from the file
            where = setting
        if error["type"] == "extra_forbidden":
            messages.append(f"{where}: unknown key '{key}'{_closest_key(schema, loc)}")
        else:
            value = error.get("input")
            shown = "" if isinstance(value, dict) else f" (got {value!r})"
            messages.append(f"{where}: key '{key}': {error['msg']}{shown}")
    return "\n".join(messages)


def validate(schema: type[Section], data: dict, source: str, overridden: dict[tuple, str] | None = None) -> Section:
    """``data`` as ``schema``; errors name the file and line, or the ``--set`` item (``overridden``:
    key path -> the item that set it) the value came from."""
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, schema, data, source, overridden)) from None


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key.path=value, for example --set runtime.seed=1")
    key, _, raw = item.partition("=")
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {item!r}: empty key; expected key.path=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw  # not valid YAML on its own: take it as a plain string
    return key.split("."), value


def apply_overrides(
    schema: type[Section], data: dict, overrides: list[str], overridden: dict[tuple, str] | None = None
) -> dict:
    """Apply ``key.path=value`` items (values parsed as YAML scalars) to raw config data;
    ``overridden`` (when given) learns which item set each key path."""
    for item in overrides:
        parts, value = _parse_override(item)
        if overridden is not None:
            overridden[tuple(parts)] = f"--set {item}"
        if (
            _schema_at(schema, tuple(parts[:-1])) is None
            or parts[-1] not in _schema_at(schema, tuple(parts[:-1])).model_fields
        ):
            raise ConfigError(f"--set {item!r}: unknown key '{'.'.join(parts)}'{_closest_key(schema, tuple(parts))}")
        node = data
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = _Located()
                child.lines = {}
                node[part] = child
            node = child
        node[parts[-1]] = value
        if isinstance(node, _Located):
            node.lines.pop(parts[-1], None)  # the value no longer comes from the file
    return data


def with_values(config: Section, values: dict[str, Any], where: dict[str, str]) -> Section:
    """``config`` with dotted keys set (``{"bench.num_samples": 5}``), validated like a file: a bad
    value is an error that names what set it (``where[key]``, e.g. ``--num-samples 5``)."""
    if not values:
        return config
    data = config.model_dump(mode="json")
    located = {}
    for key, value in values.items():
        parts = key.split(".")
        node = data
        for part in parts[:-1]:
            node = node[part]
        node[parts[-1]] = value
        located[tuple(parts)] = where.get(key, key)
    return validate(type(config), data, "command-line flags", located)
