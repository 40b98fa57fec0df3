"""Study configs are frozen dataclasses; ``--set key=value`` overrides any field.

Values are parsed against the field's declared type (int, float, bool, str, tuples,
``X | None``), so ``--set lr=1e-2`` gives a float and ``--set depths=(2,2,2,2)`` a tuple.
Unknown fields, unparsable values and values outside a field's range raise
:class:`ConfigError`, which the CLI turns into a one-line error with exit code 2. A study's
config checks its ranges in ``__post_init__`` with :func:`check`, so every config that
exists (a profile, a row, an override) is valid; checks that need the data (image counts)
belong in the study's ``prepare``.
"""

from __future__ import annotations

import ast
import dataclasses
import math
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

C = TypeVar("C")


class ConfigError(ValueError):
    """A bad override: unknown field or a value that does not fit the field's type."""


def parse_overrides(pairs: Iterable[str]) -> dict[str, str]:
    """Split ``["lr=0.01", "epochs=3"]`` into ``{"lr": "0.01", "epochs": "3"}``."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {pair!r} is not of the form key=value")
        out[key.strip()] = value.strip()
    return out


def _parse(text: str, kind: Any, name: str) -> Any:
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(kind) if a is not type(None)]
        if text.lower() in ("none", "null") and len(options) < len(typing.get_args(kind)):
            return None
        errors = []
        for option in options:
            try:
                return _parse(text, option, name)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError("; ".join(errors))
    if kind is bool:
        lowered = text.lower()
        if lowered in ("true", "1", "yes", "on"):
            return True
        if lowered in ("false", "0", "no", "off"):
            return False
        raise ConfigError(f"{name}={text!r}: expected true or false")
    if kind is int:
        try:
            return int(text)
        except ValueError:
            try:
                value = float(text)  # accept "1e3"
            except ValueError:
                value = float("nan")
            if value.is_integer():
                return int(value)
            raise ConfigError(f"{name}={text!r}: expected an integer") from None
    if kind in (float, str):
        try:
            return kind(text)
        except ValueError:
            raise ConfigError(f"{name}={text!r}: expected {kind.__name__}") from None
    if kind is typing.Literal or origin is typing.Literal:
        allowed = typing.get_args(kind)
        if text not in allowed:
            raise ConfigError(f"{name}={text!r}: expected one of {', '.join(map(str, allowed))}")
        return text
    if origin in (tuple, list):
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = tuple(part for part in text.split(",") if part)
        if not isinstance(value, tuple | list):
            value = (value,)
        args = [a for a in typing.get_args(kind) if a is not Ellipsis]
        item = args[0] if args else str
        return origin(_parse(str(v), item, name) for v in value)
    raise ConfigError(f"{name}: fields of type {kind} cannot be set from the command line")


def apply_overrides(config: C, overrides: Mapping[str, str]) -> C:
    """Return ``config`` with string overrides parsed and applied.

    Raises:
        ConfigError: unknown field or a value that does not parse as the field's type.
    """
    hints = typing.get_type_hints(type(config))
    names = {f.name for f in dataclasses.fields(config)}
    changes = {}
    for key, text in overrides.items():
        if key not in names:
            raise ConfigError(
                f"unknown config field {key!r} for {type(config).__name__}; "
                f"fields: {', '.join(sorted(names))}"
            )
        changes[key] = _parse(text, hints[key], key)
    return dataclasses.replace(config, **changes)


def check(config: Any, *, positive: Iterable[str] = (), non_negative: Iterable[str] = ()) -> None:
    """Raise :class:`ConfigError` for the first field outside its range.

    Args:
        config: the config dataclass instance.
        positive: fields that must be finite and > 0 (epochs, batch size, learning rates).
        non_negative: fields that must be finite and >= 0 (0 meaning "all" or "off").
    """
    for names, test, words in ((positive, lambda v: v > 0, "a finite number > 0"),
                               (non_negative, lambda v: v >= 0, "a finite number >= 0")):
        for name in names:
            value = getattr(config, name)
            if not (math.isfinite(value) and test(value)):
                raise ConfigError(f"{name}={value!r}: must be {words}")
