"""Comma-separated flag values (``--eta 0.05,0.1``, ``--conditions native,optical``), one rule for every flag:
items are stripped of spaces; an empty value, or an empty item between commas (``a,,b``, ``a,``), is a usage
error naming the flag and showing an example; an item given twice is kept once, in its first place."""

from __future__ import annotations

from typing import Callable, Sequence, TypeVar

from .errors import InputError

Item = TypeVar("Item")


def split_list(text: str, option: str, example: str) -> list[str]:
    """The items of ``text`` as strings, under the rule above; ``example`` is a valid value for the message."""
    parts = [part.strip() for part in str(text).split(",")]
    if not any(parts):  # "", " ", " , "
        raise InputError(f"{option}: empty list; give comma-separated values, for example {option} {example}")
    if any(not part for part in parts):
        raise InputError(f"{option} {text!r}: empty entry between commas; remove the extra comma")
    return list(dict.fromkeys(parts))


def parse_list(
    text: str,
    option: str,
    example: str,
    convert: Callable[[str], Item],
    what: str,
    check: Callable[[Item], str | None] | None = None,
) -> list[Item]:
    """Each item converted (``convert``: ``float``, ``int``...; a failure says the item is not ``what``) and checked
    (``check(value)`` returns why a value is refused, or None)."""
    values = []
    for part in split_list(text, option, example):
        try:
            value = convert(part)
        except ValueError:
            raise InputError(
                f"{option} {text!r}: '{part}' is not {what}; give comma-separated values, for example "
                f"{option} {example}"
            ) from None
        problem = check(value) if check else None
        if problem:
            raise InputError(f"{option} {text!r}: '{part}' {problem}")
        values.append(value)
    return list(dict.fromkeys(values))


def parse_choices(text: str, option: str, allowed: Sequence[str], hint: str = "") -> list[str]:
    """Items each one of ``allowed`` (``hint``: what else to say when one is not)."""
    values = split_list(text, option, ",".join(allowed[:2]))
    bad = [value for value in values if value not in allowed]
    if bad:
        more = f"; {hint}" if hint else ""
        raise InputError(f"{option} {text!r}: '{bad[0]}' is not one of {', '.join(allowed)}{more}")
    return values


def parse_choice(text: str, option: str, allowed: Sequence[str], hint: str = "") -> str:
    """Exactly one of ``allowed``."""
    values = parse_choices(text, option, allowed, hint)
    if len(values) != 1:
        raise InputError(f"{option} {text!r}: give one of {', '.join(allowed)}{'; ' + hint if hint else ''}")
    return values[0]
