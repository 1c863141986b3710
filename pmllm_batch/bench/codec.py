"""JSON for the bench's result dataclasses: :func:`to_json` writes one, :func:`from_json` reads it back.

Every section returns a dataclass whose field names are its JSON keys, so :func:`dataclasses.asdict` is the JSON
(nested dataclasses, lists and dicts included). :func:`from_json` is its inverse, for what a child process wrote
(a section run in a fresh interpreter) and for a saved ``bench-<preset>.json``: it follows the field annotations
(nested dataclasses, ``list[X]``, ``dict[K, X]`` with ``int`` keys restored from JSON's strings, ``X | None``, and a
union of dataclasses, which takes the first whose required fields are all present).
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar, get_args, get_origin, get_type_hints

T = TypeVar("T")

# What JSON holds: the values json.loads returns (nested), typed loosely on purpose; the dataclasses are the types.
Json = dict[str, Any]


def to_json(obj: object) -> Json:
    """A result dataclass as the JSON object it stands for (field names are the keys, in field order)."""
    if not dataclasses.is_dataclass(obj) or isinstance(obj, type):
        raise TypeError(f"not a dataclass instance: {obj!r}")
    return dataclasses.asdict(obj)


def from_json(cls: type[T], data: Mapping[str, object]) -> T:
    """The dataclass ``cls`` from its JSON object (keys not among its fields are ignored).

    Raises:
        KeyError: a field without a default is missing from ``data``.
    """
    return typing.cast(T, _convert(cls, data))


@functools.cache
def _hints(cls: type) -> dict[str, object]:
    return get_type_hints(cls)


def _convert(tp: object, value: object) -> object:
    if value is None:
        return None
    origin = get_origin(tp)
    if origin is typing.Union or origin is types.UnionType:
        return _convert_union(get_args(tp), value)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _convert_dataclass(tp, value)
    if origin is list and isinstance(value, list):
        (item,) = get_args(tp)
        return [_convert(item, v) for v in value]
    if origin is tuple and isinstance(value, list | tuple):
        args = get_args(tp)
        items = [args[0]] * len(value) if len(args) == 2 and args[1] is Ellipsis else list(args)
        return tuple(_convert(a, v) for a, v in zip(items, value, strict=True))
    if origin is dict and isinstance(value, Mapping):
        key_type, item = get_args(tp)
        return {_convert_key(key_type, k): _convert(item, v) for k, v in value.items()}
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _convert_union(args: tuple[object, ...], value: object) -> object:
    options = [a for a in args if a is not type(None)]
    classes = [a for a in options if isinstance(a, type) and dataclasses.is_dataclass(a)]
    if classes and isinstance(value, Mapping):
        for cls in classes:
            required = {f.name for f in dataclasses.fields(cls) if _required(f)}
            if required <= value.keys():
                return _convert_dataclass(cls, value)
        raise KeyError(f"none of {[c.__name__ for c in classes]} fits the keys {sorted(value)}")
    return _convert(options[0], value) if len(options) == 1 else value


def _convert_dataclass(cls: type, value: object) -> object:
    if not isinstance(value, Mapping):
        raise TypeError(f"{cls.__name__}: expected a JSON object, got {type(value).__name__}")
    hints = _hints(cls)
    kwargs = {f.name: _convert(hints[f.name], value[f.name]) for f in dataclasses.fields(cls) if f.name in value}
    return cls(**kwargs)


def _convert_key(key_type: object, key: object) -> object:
    return int(key) if key_type is int and isinstance(key, str) else key


def _required(f: dataclasses.Field[object]) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
