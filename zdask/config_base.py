"""The pieces every part of the configuration is made of: its error, the stages a field can
change, the field declaration with its doc string, and the type checks (:mod:`zdask.config`
builds the configuration from them)."""

from __future__ import annotations

import math
import types
import typing
from dataclasses import field
from typing import Any, Callable

class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field and the allowed values."""


#: The stages whose stored outputs depend on settings. Each field names, in ``stages``, the
#: stages whose outputs it changes; a stage's fingerprint takes exactly those fields
#: (:meth:`Config.stage_digest`), so a new field cannot be left out of a stage's list.
STAGES = ("hotpixels", "align", "stack", "tiles", "mosaic", "import", "sds", "grid")


def _doc(text: str, stages: tuple[str, ...] = (), **kwargs: Any) -> Any:
    """A field with its doc string and the stages (:data:`STAGES`) whose outputs it changes."""
    return field(metadata={"doc": text, "stages": stages}, **kwargs)


def _has_type(value: Any, expected: Any) -> bool:
    """Whether ``value`` is of the annotated type: bool is not an int here, a float must be
    finite, a tuple must have the annotated length."""
    origin, args = typing.get_origin(expected), typing.get_args(expected)
    if origin in (typing.Union, types.UnionType):
        return any(_has_type(value, a) for a in args)
    if expected is type(None):
        return value is None
    if expected is bool:
        return isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if expected is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if origin is tuple and args[-1:] == (Ellipsis,):
        return isinstance(value, tuple) and all(_has_type(v, args[0]) for v in value)
    if origin is tuple:
        return (isinstance(value, tuple) and len(value) == len(args)
                and all(_has_type(v, a) for v, a in zip(value, args)))
    return isinstance(value, expected)


_TYPE_WORDS = {bool: ("true or false", "booleans"), int: ("an integer", "integers"),
               float: ("a finite number", "finite numbers"), str: ("a string", "strings"),
               type(None): ("unset", "unset")}


def _type_words(expected: Any) -> str:
    """How the allowed values of an annotation read in an error message."""
    origin, args = typing.get_origin(expected), typing.get_args(expected)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_words(a) for a in args)
    if origin is tuple and args[-1:] == (Ellipsis,):
        return f"a list of {_TYPE_WORDS[args[0]][1]}"
    if origin is tuple and len(set(args)) == 1:
        return f"{len(args)} {_TYPE_WORDS[args[0]][1]}"
    return _TYPE_WORDS.get(expected, (getattr(expected, "__name__", str(expected)),))[0]


def checked_types(obj: Any, section: str = "") -> Callable[[str, str], ConfigError]:
    """Check every field of the dataclass ``obj`` against its annotation (ConfigError naming the
    first that is of another type) and return the one-line error maker of its range rules:
    ``bad(name, allowed)`` for the field ``section.name`` (``section``: "sds", ""...)."""
    prefix = f"{section}." if section else ""

    def bad(name: str, allowed: str) -> ConfigError:
        return ConfigError(f"config field '{prefix}{name}' = {getattr(obj, name)!r}: {allowed}")

    # Types first, from the annotations, so that no field escapes and the range rules
    # compare numbers with numbers.
    for f, expected in typing.get_type_hints(type(obj)).items():
        if not _has_type(getattr(obj, f), expected):
            raise bad(f, f"must be {_type_words(expected)}")
    return bad
