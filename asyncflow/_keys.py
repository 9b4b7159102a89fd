"""Encode task arguments into a canonical, readable cache key; refuse anything else.

No I/O here. The key looks like the call the user wrote (``Choose(6, 3)``), with the
ambiguities of JSON removed: ``1``, ``1.0`` and ``True`` encode differently, a tuple
differs from a list, and dict key order does not matter.
"""

from __future__ import annotations

import hashlib
import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

ACCEPTED = (
    "None, bool, int, float, str, a list/tuple of those, a dict with str keys, "
    "a task or a task item (task['key'])"
)


class UnsupportedValueError(Exception):
    """An argument holds a value that has no canonical key (internal, re-raised with context)."""

    def __init__(self, value: object, path: str) -> None:
        super().__init__(path)
        self.value = value
        self.path = path


def type_name(value: object) -> str:
    """Name the type of `value` as a user would import it (``numpy.int64``)."""
    cls = type(value)
    module = cls.__module__
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"


def a_type(value: object) -> str:
    """Name the type of `value` with its article: ``an int``, ``a set``."""
    name = type_name(value)
    return ("an " if name[0].lower() in "aeiou" else "a ") + name


def _float(value: float) -> str:
    # repr() round-trips and keeps 1.0 apart from 1; nan/inf have no literal form.
    if math.isfinite(value):
        return repr(value)
    return f"float('{value!r}')"


def encode(value: object, path: str = "") -> str:
    """Return the canonical text of one argument value.

    Raises:
        UnsupportedValueError: `value` (or something inside it, at `.path`) cannot be keyed.
    """
    cls = type(value)
    encoder = _ENCODERS.get(cls)
    if encoder is not None:
        return encoder(value, path)
    key = getattr(value, "__af_key__", None)  # tasks and task items carry their own key
    if isinstance(key, str):
        return key
    raise UnsupportedValueError(value, path)


def _list(value: Any, path: str) -> str:
    return "[" + ", ".join(encode(v, f"{path}[{i}]") for i, v in enumerate(value)) + "]"


def _tuple(value: Any, path: str) -> str:
    items = [encode(v, f"{path}[{i}]") for i, v in enumerate(value)]
    return "(" + items[0] + ",)" if len(items) == 1 else "(" + ", ".join(items) + ")"


def _dict(value: Any, path: str) -> str:
    for k in value:
        if type(k) is not str:
            raise UnsupportedValueError(k, f"{path} key {k!r}")
    items = sorted(value.items())
    return "{" + ", ".join(f"{k!r}: {encode(v, f'{path}[{k!r}]')}" for k, v in items) + "}"


_ENCODERS: dict[type, Callable[[Any, str], str]] = {
    int: lambda v, _: repr(v),
    str: lambda v, _: repr(v),
    bool: lambda v, _: repr(v),
    type(None): lambda v, _: "None",
    float: lambda v, _: _float(v),
    list: _list,
    tuple: _tuple,
    dict: _dict,
}


def token(value: object) -> str:
    """Identify any value for staleness: ``k`` and its canonical text, else ``p`` and a hash of its pickle."""
    try:
        return "k" + encode(value)
    except UnsupportedValueError:
        import cloudpickle  # pyright: ignore[reportMissingTypeStubs]  # untyped

        data: bytes = cloudpickle.dumps(value, protocol=5)  # pyright: ignore[reportUnknownMemberType]  # untyped
        return "p" + hashlib.blake2b(data, digest_size=16).hexdigest()


def encode_call(values: list[tuple[str, object, bool]]) -> str:
    """Join bound arguments ``(name, value, keyword)``: positional bare, keyword ``name=value``.

    Raises:
        UnsupportedValueError: with `.path` starting at the parameter name.
    """
    parts: list[str] = []
    for name, value, keyword in values:
        text = encode(value, name)
        parts.append(f"{name}={text}" if keyword else text)
    return ", ".join(parts)


def node_key(task_name: str, argtext: str) -> str:
    """Return the cache key of a node: ``"module.Class(canonical arguments)"``."""
    return f"{task_name}({argtext})"


def split_key(key: str) -> tuple[str, str]:
    """Return ``(task_name, argument text)`` of a node key (a task_name holds no parenthesis)."""
    task_name, _, rest = key.partition("(")
    return task_name, rest[:-1]
