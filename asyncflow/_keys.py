"""Encode task arguments into a canonical, readable cache key; refuse anything else.

No I/O here. The key looks like the call the user wrote (``Choose(6, 3)``), with the
ambiguities of JSON removed: ``1``, ``1.0`` and ``True`` encode differently, a tuple
differs from a list, and dict key order does not matter.

A key depends on the value only: never on ``id()``, an address or ``hash()`` (randomised
per process for str). Values are walked with an explicit stack, so any nesting depth
works; a value that holds itself is refused.
"""

from __future__ import annotations

import hashlib
import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

ACCEPTED = (
    "None, bool, int, float, str, a list/tuple of those, a dict with str keys, "
    "a task or a task item (task['key'])"
)


class UnsupportedValueError(Exception):
    """An argument holds a value that has no canonical key (internal, re-raised with context).

    `path` says where, as the user would index the argument (``x[1]['a']``), with a note
    in parentheses when the place itself is the problem (a value that holds itself).
    """

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


# Values that are always a leaf: one call gives the text, and it never raises.


def _float(value: float) -> str:
    # repr() round-trips and keeps 1.0 apart from 1; nan/inf have no literal form.
    if math.isfinite(value):
        return repr(value)
    return f"float('{value!r}')"


# Exact types only: a subclass may carry more state (an IntEnum member is not its int).
# Any: each encoder takes exactly the type it is filed under.
_LEAVES: dict[type, Callable[[Any], str]] = {
    int: repr,
    str: repr,
    bool: repr,
    type(None): repr,
    float: _float,
}


# Containers: a frame holds the children still to encode and the texts of those done.


class _Frame:
    """A value being encoded: its children, their texts so far, and how to join them."""

    __slots__ = ("children", "head", "ident", "join", "labels", "next", "parts", "step", "tail")

    def __init__(
        self,
        value: object,
        children: Sequence[object],
        join: Callable[[_Frame], str],
        step: Callable[[_Frame, int], str],
        *,
        head: str = "",
        tail: str = "",
        labels: Sequence[str] = (),
    ) -> None:
        self.ident = id(value)  # only to spot a value that holds itself, never part of a key
        self.children = children
        self.join = join
        self.step = step  # the path from this value to its i-th child: "[0]", " field 'x'"
        self.head, self.tail = head, tail  # the text around the children's, where it varies
        self.labels = labels  # per child: a dict key (as repr), a field name, a wrapped value's role
        self.next = 0
        self.parts: list[str] = []


def _join_list(frame: _Frame) -> str:
    return "[" + ", ".join(frame.parts) + "]"


def _join_tuple(frame: _Frame) -> str:
    parts = frame.parts
    return "(" + parts[0] + ",)" if len(parts) == 1 else "(" + ", ".join(parts) + ")"


def _join_dict(frame: _Frame) -> str:
    return "{" + ", ".join(f"{k}: {v}" for k, v in zip(frame.labels, frame.parts, strict=True)) + "}"


def _step_index(frame: _Frame, i: int) -> str:
    return f"[{i}]"


def _step_key(frame: _Frame, i: int) -> str:
    return f"[{frame.labels[i]}]"


# A container of leaves only (the common case) is joined at once, without a frame; a
# KeyError means a child is not a leaf, and the frame walks the children one by one.


def _list(value: list[object]) -> str | _Frame:
    try:
        return "[" + ", ".join([_LEAVES[type(v)](v) for v in value]) + "]"
    except KeyError:
        return _Frame(value, value, _join_list, _step_index)


def _tuple(value: tuple[object, ...]) -> str | _Frame:
    try:
        parts = [_LEAVES[type(v)](v) for v in value]
    except KeyError:
        return _Frame(value, value, _join_tuple, _step_index)
    return "(" + parts[0] + ",)" if len(parts) == 1 else "(" + ", ".join(parts) + ")"


def _dict(value: dict[object, object]) -> str | _Frame:
    keys: list[str] = []
    for k in value:
        if type(k) is not str:
            raise UnsupportedValueError(k, f" key {k!r}")
        keys.append(k)
    keys.sort()
    try:
        return "{" + ", ".join([f"{k!r}: {_LEAVES[type(value[k])](value[k])}" for k in keys]) + "}"
    except KeyError:
        labels = [repr(k) for k in keys]
        return _Frame(value, [value[k] for k in keys], _join_dict, _step_key, labels=labels)


# Any: as for _LEAVES. Openers return the text of a leaf or a frame of children.
_OPENERS: dict[type, Callable[[Any], str | _Frame]] = {
    list: _list,
    tuple: _tuple,
    dict: _dict,
}


# Encoding.


def encode(value: object, path: str = "") -> str:
    """Return the canonical text of one argument value.

    Raises:
        UnsupportedValueError: `value` (or something inside it, at `.path`) cannot be keyed.
    """
    leaf = _LEAVES.get(type(value))  # the hot path: an int or a str, one lookup and a call
    if leaf is not None:
        return leaf(value)
    return _walk(value, path)


def _walk(value: object, path: str) -> str:
    """Encode a value that is not a leaf, depth first with an explicit stack (no recursion)."""
    try:
        top = _open(value)
    except UnsupportedValueError as exc:
        raise UnsupportedValueError(exc.value, path + exc.path) from None
    if isinstance(top, str):
        return top
    stack = [top]
    open_ids = {top.ident}
    leaves = _LEAVES
    while True:
        frame = stack[-1]
        i = frame.next
        if i < len(frame.children):
            frame.next = i + 1
            child = frame.children[i]
            leaf = leaves.get(type(child))
            if leaf is not None:
                frame.parts.append(leaf(child))
                continue
            try:
                opened = _open(child)
            except UnsupportedValueError as exc:
                raise UnsupportedValueError(exc.value, _where(path, stack) + exc.path) from None
            if isinstance(opened, str):
                frame.parts.append(opened)
            elif opened.ident in open_ids:
                raise _holds_itself(child, path, stack)
            else:
                stack.append(opened)
                open_ids.add(opened.ident)
        else:
            stack.pop()
            open_ids.discard(frame.ident)
            text = frame.join(frame)
            if not stack:
                return text
            stack[-1].parts.append(text)


def _where(path: str, stack: Sequence[_Frame]) -> str:
    """Return the path of the child each frame of `stack` is at, from the argument's name."""
    return path + "".join(f.step(f, f.next - 1) for f in stack)


def _holds_itself(child: object, path: str, stack: list[_Frame]) -> UnsupportedValueError:
    depth = next(i for i, f in enumerate(stack) if f.ident == id(child))
    outer = _where(path, stack[:depth]) or "the value"
    return UnsupportedValueError(child, f"{_where(path, stack)} (which is {outer} again: it holds itself)")


def _open(value: object) -> str | _Frame:
    """Return the text of a leaf, or a frame for its children; paths in errors are relative."""
    opener = _OPENERS.get(type(value))
    if opener is not None:
        return opener(value)
    key = getattr(value, "__af_key__", None)  # tasks and task items carry their own key
    if isinstance(key, str):
        return key
    raise UnsupportedValueError(value, "")


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
