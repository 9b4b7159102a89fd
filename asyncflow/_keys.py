"""Encode task arguments into a canonical, readable cache key; refuse anything else.

No I/O here. The key looks like the call the user wrote (``Choose(6, 3)``), with the
ambiguities of JSON removed: ``1``, ``1.0`` and ``True`` encode differently, a tuple
differs from a list, and dict key order does not matter. How each accepted value reads:

- None, bool, int, float, str: ``repr()`` (``float('nan')`` for non-finite floats);
  list ``[1, 2]``, tuple ``(1,)``, dict with str keys ``{'a': 1}`` (keys sorted).
- set ``{1, 2}`` and ``frozenset({1, 2})``: items sorted by their encoded text.
- bytes ``b'ab'``; bytearray ``bytearray(b'ab')``, accepted like a list is (mutable, read
  when the task is made) and kept apart from bytes.
- ``decimal.Decimal('1.10')`` (its exponent kept), ``uuid.UUID('...')``,
  ``pathlib.PosixPath('data/x.csv')`` (the path as written, not resolved and not the
  file's content: `asyncflow.File` tracks content), ``datetime.date(2024, 1, 2)``,
  ``datetime.datetime(2024, 1, 2, 3, 4, tzinfo=zoneinfo.ZoneInfo('Europe/Paris'))``
  (naive and aware differ), ``datetime.time(...)``, ``datetime.timedelta(days=1)``.
- An Enum member by class, name and value: ``mod.Colour.RED(1)``; a frozen dataclass or a
  NamedTuple by class and fields: ``mod.Point(x=1, y=2)``.
- numpy and pandas values, only if the value's type comes from them (this module never
  imports them): ``numpy.int64(5)``, ``numpy.ndarray(int64, (3,), <digest>)``,
  ``pandas.DataFrame((3, 2), <digest>)``; a digest covers dtypes, shape, labels and content.
- A type registered with `register_key`: ``mod.Type(<its encoding, encoded>)``.

A key depends on the value only: never on ``id()``, an address, ``hash()`` (randomised
per process for str) or the iteration order of a set. Values are walked with an explicit
stack, so any nesting depth works; a value that holds itself is refused.
"""

from __future__ import annotations

import enum
import math
import sys
from typing import TYPE_CHECKING, Any, TypeVar

from ._errors import TaskDefinitionError

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

T = TypeVar("T")

ACCEPTED = (
    "None, bool, int, float, str, bytes, Decimal, UUID, a Path, an input File, a date/time/datetime/timedelta, "
    "an Enum member, a frozen dataclass or NamedTuple, numpy/pandas data, a list/tuple/set/frozenset "
    "of those, a dict with str keys, a task or a task item (task['key']); or register a key for "
    "the type with asyncflow.register_key(type, encode)"
)

_DIGEST_SIZE = 8  # bytes: 16 hex digits; 64 bits keep apart arrays a 48-bit prefix might not


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
    """Name the type of `value` with its article: ``an int``, ``a set``.

    A dataclass that is not frozen says how to fix it, since a frozen one is accepted.
    """
    name = type_name(value)
    text = ("an " if name[0].lower() in "aeiou" else "a ") + name
    if _dataclass_frozen(type(value)) is False and not isinstance(value, type):
        text += " (a dataclass that is not frozen: declare it @dataclass(frozen=True))"
    return text


def _named_tuple_fields(cls: type[object]) -> tuple[str, ...] | None:
    """Return the field names of a NamedTuple (or collections.namedtuple) class, else None."""
    fields: object = getattr(cls, "_fields", None)
    if issubclass(cls, tuple) and isinstance(fields, tuple):
        names: tuple[object, ...] = fields  # pyright: ignore[reportUnknownVariableType]  # str, by definition
        return tuple(map(str, names))
    return None


def _dataclass_frozen(cls: type[object]) -> bool | None:
    """Return whether a dataclass is frozen, or None if `cls` is not a dataclass."""
    params = getattr(cls, "__dataclass_params__", None)
    return None if params is None else bool(getattr(params, "frozen", False))


# Values that are always a leaf: one call gives the text, and it never raises.


def _float(value: float) -> str:
    # repr() round-trips and keeps 1.0 apart from 1; nan/inf have no literal form.
    if math.isfinite(value):
        return repr(value)
    return f"float('{value!r}')"


def _decimal(value: object) -> str:
    # str() keeps the exponent ('1.10' is not '1.1'); the `capitals` of the current decimal
    # context may print 1e+2 instead of 1E+2, so settle that one choice here.
    return f"decimal.Decimal({str(value).replace('e', 'E')!r})"


def _uuid(value: object) -> str:
    return f"uuid.UUID({str(value)!r})"


def _date(value: Any) -> str:  # Any: a datetime.date (the module is imported only by users)
    return f"datetime.date({value.year}, {value.month}, {value.day})"


def _timedelta(value: Any) -> str:  # Any: a datetime.timedelta, as above
    fields = [
        f"{name}={amount}"
        for name, amount in (
            ("days", value.days),
            ("seconds", value.seconds),
            ("microseconds", value.microseconds),
        )
        if amount
    ]
    return f"datetime.timedelta({', '.join(fields) or '0'})"


# Exact types only: a subclass may carry more state (an IntEnum member is not its int).
# Any: each encoder takes exactly the type it is filed under.
_LEAVES: dict[type, Callable[[Any], str]] = {
    int: repr,
    str: repr,
    bool: repr,
    type(None): repr,
    float: _float,
    bytes: repr,
    bytearray: repr,
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


def _join_set(frame: _Frame) -> str:
    # Sorted by text: a set's iteration order follows hash(), which differs per process.
    return "{" + ", ".join(sorted(frame.parts)) + "}" if frame.parts else "set()"


def _join_frozenset(frame: _Frame) -> str:
    return "frozenset(" + _join_set(frame) + ")" if frame.parts else "frozenset()"


def _join_fields(frame: _Frame) -> str:
    return (
        frame.head + "(" + ", ".join(f"{n}={v}" for n, v in zip(frame.labels, frame.parts, strict=True)) + ")"
    )


def _join_wrapped(frame: _Frame) -> str:
    return frame.head + frame.parts[0] + frame.tail


def _step_index(frame: _Frame, i: int) -> str:
    return f"[{i}]"


def _step_key(frame: _Frame, i: int) -> str:
    return f"[{frame.labels[i]}]"


def _step_member(frame: _Frame, i: int) -> str:
    return " member"


def _step_field(frame: _Frame, i: int) -> str:
    return f" field {frame.labels[i]!r}"


def _step_wrapped(frame: _Frame, i: int) -> str:
    return frame.labels[0]


def _wrapped(value: object, inner: object, head: str, tail: str, role: str) -> _Frame:
    """Encode `value` as ``head + <inner, encoded> + tail``; `role` names `inner` in a path."""
    return _Frame(value, (inner,), _join_wrapped, _step_wrapped, head=head, tail=tail, labels=(role,))


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


def _set(value: set[object]) -> _Frame:
    return _Frame(value, list(value), _join_set, _step_member)


def _frozenset(value: frozenset[object]) -> _Frame:
    return _Frame(value, list(value), _join_frozenset, _step_member)


def _clock(name: str, fields: list[int], value: Any) -> str | _Frame:  # Any: a datetime or time
    """Encode a datetime or a time like its repr; an aware one wraps its tzinfo's key."""
    if value.second or value.microsecond:
        fields.append(value.second)
    if value.microsecond:
        fields.append(value.microsecond)
    head = f"{name}({', '.join(map(str, fields))}"
    tail = ", fold=1)" if value.fold else ")"
    if value.tzinfo is None:
        return head + tail
    return _wrapped(value, value.tzinfo, head + ", tzinfo=", tail, " tzinfo")


def _datetime(value: Any) -> str | _Frame:  # Any: a datetime.datetime
    fields = [value.year, value.month, value.day, value.hour, value.minute]
    return _clock("datetime.datetime", fields, value)


def _time(value: Any) -> str | _Frame:  # Any: a datetime.time
    return _clock("datetime.time", [value.hour, value.minute], value)


def _zoneinfo(value: Any) -> str:  # Any: a zoneinfo.ZoneInfo
    if value.key is None:  # ZoneInfo.from_file: no name to key it by
        raise UnsupportedValueError(value, "")
    return f"zoneinfo.ZoneInfo({value.key!r})"


# Any: as for _LEAVES. Openers return the text of a leaf or a frame of children.
_OPENERS: dict[type, Callable[[Any], str | _Frame]] = {
    list: _list,
    tuple: _tuple,
    dict: _dict,
    set: _set,
    frozenset: _frozenset,
}

# Standard-library types by name, so that asyncflow imports none of their modules: a value
# of one exists only once its module is imported. Filed into the tables above on first use.
# Any: a table and an encoder of that table.
_STDLIB: dict[str, tuple[dict[type, Any], Callable[[Any], Any]]] = {
    "decimal.Decimal": (_LEAVES, _decimal),
    "uuid.UUID": (_LEAVES, _uuid),
    "datetime.date": (_LEAVES, _date),
    "datetime.timedelta": (_LEAVES, _timedelta),
    "datetime.timezone": (_LEAVES, repr),  # datetime.timezone(datetime.timedelta(seconds=3600))
    "datetime.datetime": (_OPENERS, _datetime),
    "datetime.time": (_OPENERS, _time),
    "zoneinfo.ZoneInfo": (_OPENERS, _zoneinfo),
}


def _stdlib(cls: type[object]) -> tuple[dict[type, Any], Callable[[Any], Any]] | None:
    """Return the table and encoder of a standard-library type asyncflow encodes, if `cls` is one."""
    found = _STDLIB.get(f"{cls.__module__}.{cls.__qualname__}")
    module = sys.modules.get(cls.__module__)
    if found is None or getattr(module, cls.__qualname__, None) is not cls:
        return None
    return found


# Any: an encoder takes an instance of the type it was registered for.
_REGISTERED: dict[type, Callable[[Any], object]] = {}


def register_key(cls: type[T], encode: Callable[[T], object]) -> None:
    """Let instances of `cls` be task arguments, keyed by what `encode` returns.

    ``encode(value)`` returns a value asyncflow can key (a str, a tuple of numbers, a dict
    with str keys...) that tells values apart exactly when they may give different results.
    Its return value is encoded canonically in turn, so the key stays canonical; it reads
    ``module.Type(<encoded>)``. Only instances of exactly `cls` use it, not of subclasses.
    Registering a type again replaces its encoder; it also replaces asyncflow's own encoding
    of an Enum, a dataclass or a NamedTuple of yours.

    ```python
    register_key(Money, lambda m: (m.currency, str(m.amount)))
    Invoice(Money("EUR", 12))  # key: mod.Invoice(mod.Money(('EUR', '12')))
    ```

    Args:
        cls: The class whose instances become valid arguments.
        encode: Called with each instance when a task is made; returns its key-able form.

    Raises:
        TaskDefinitionError: `cls` is not a class, is a task class (a task is keyed by its
            own arguments), or is a type asyncflow already encodes (int, str, Path, ...);
            or `encode` is not callable.
    """
    if not isinstance(cls, type):  # pyright: ignore[reportUnnecessaryIsInstance]  # users pass anything
        raise TaskDefinitionError(f"register_key({cls!r}, ...): the first argument must be a class")
    name = cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    if not callable(encode):
        raise TaskDefinitionError(
            f"register_key({name}, {encode!r}): the encoder must be a function of one value, "
            f"e.g. lambda value: (value.a, value.b)"
        )
    if _handles(cls):
        raise TaskDefinitionError(
            f"register_key({name}, ...): asyncflow already encodes {name} values canonically; "
            f"pass them as they are (register a class of your own to key it differently)"
        )
    if any("__af_key__" in vars(k) or "__af_key__" in getattr(k, "__annotations__", {}) for k in cls.__mro__):
        raise TaskDefinitionError(
            f"register_key({name}, ...): {name} is a task (or a task item), which is keyed by "
            f"its class and arguments already"
        )
    _REGISTERED[cls] = encode


def _handles(cls: type[object]) -> bool:
    """Return whether asyncflow encodes instances of `cls` itself (those cannot be registered)."""
    if cls in _LEAVES or cls in _OPENERS or _stdlib(cls) is not None:
        return True
    package = cls.__module__.partition(".")[0]
    if package == "pathlib":
        import pathlib  # imported already: `cls` comes from it

        return issubclass(cls, pathlib.PurePath)
    library = sys.modules.get(package) if package in ("numpy", "pandas") else None
    if library is None:
        return False
    if package == "numpy":
        return cls is library.ndarray or issubclass(cls, library.generic)
    handled = (library.Series, library.DataFrame, library.Index, library.Timestamp, library.Timedelta)
    return issubclass(cls, handled) or cls in (type(library.NA), type(library.NaT))


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


def parts_of(value: object) -> Sequence[object]:
    """Return the values the key of `value` encodes inside it, one level down.

    A container's items, a dataclass's fields, a registered type's encoding; none for a
    leaf, a task or a file. For a value `encode` accepted (so that nothing here raises).
    """
    if type(value) in _LEAVES:
        return ()
    opened = _open(value)
    return () if isinstance(opened, str) else opened.children


def _where(path: str, stack: Sequence[_Frame]) -> str:
    """Return the path of the child each frame of `stack` is at, from the argument's name."""
    return path + "".join(f.step(f, f.next - 1) for f in stack)


def _holds_itself(child: object, path: str, stack: list[_Frame]) -> UnsupportedValueError:
    depth = next(i for i, f in enumerate(stack) if f.ident == id(child))
    outer = _where(path, stack[:depth]) or "the value"
    return UnsupportedValueError(child, f"{_where(path, stack)} (which is {outer} again: it holds itself)")


def _open(value: object) -> str | _Frame:
    """Return the text of a leaf, or a frame for its children; paths in errors are relative."""
    cls = type(value)
    opener = _OPENERS.get(cls)
    if opener is not None:
        return opener(value)
    encoder = _REGISTERED.get(cls)
    if encoder is not None:
        encoded = encoder(value)
        if type(encoded) is cls:  # would be encoded by the same encoder again, forever
            raise UnsupportedValueError(
                encoded, f" (as register_key's encoder for {type_name(value)} returns it)"
            )
        return _wrapped(value, encoded, type_name(value) + "(", ")", " encoded")
    key = getattr(value, "__af_key__", None)  # tasks and task items carry their own key
    if isinstance(key, str):
        return key
    return _open_other(value, cls)


def _open_other(value: object, cls: type[object]) -> str | _Frame:
    """Encode the kinds recognised by a check rather than by their exact type."""
    found = _stdlib(cls)
    if found is not None:
        table, encoder = found
        table[cls] = encoder  # next time, one lookup
        text: str | _Frame = encoder(value)
        return text
    if isinstance(value, enum.Enum):
        name = value.name  # None for a combination of flags before Python 3.11
        head = f".{name}(" if isinstance(name, str) and name.isidentifier() else f"[{name!r}]("  # pyright: ignore[reportUnnecessaryIsInstance]  # see above
        return _wrapped(value, value.value, type_name(value) + head, ")", " value")
    if "pathlib" in sys.modules:  # else no value is a path: `import asyncflow` leaves pathlib to users
        import pathlib

        if isinstance(value, pathlib.PurePath):
            public = getattr(pathlib, cls.__name__, None) is cls  # PosixPath lives in pathlib._local on 3.13
            return f"{'pathlib.' + cls.__name__ if public else type_name(value)}({str(value)!r})"
    names = _named_tuple_fields(cls)
    if names is not None:
        items = [getattr(value, name) for name in names]
        return _Frame(value, items, _join_fields, _step_field, head=type_name(value), labels=names)
    if _dataclass_frozen(cls) and not isinstance(value, type):
        import dataclasses  # imported already: `value` is a dataclass

        fields = dataclasses.fields(value)  # pyright: ignore[reportArgumentType]  # a dataclass, checked above
        children = [getattr(value, f.name) for f in fields]
        return _Frame(
            value, children, _join_fields, _step_field, head=type_name(value), labels=[f.name for f in fields]
        )
    package = cls.__module__.partition(".")[0]
    if package == "numpy":
        return _numpy(value)
    if package == "pandas":
        return _pandas(value)
    raise UnsupportedValueError(value, "")


# numpy and pandas, reached only through a value whose type they define, so both are
# already imported. Any: neither is a dependency, and either may lack type information.


def _digest(pieces: list[bytes]) -> str:
    """Return a short hex digest of `pieces`, each framed by its length (no two splits collide)."""
    from ._hashing import blake2b  # numpy and pandas data only

    h = blake2b(digest_size=_DIGEST_SIZE)
    for piece in pieces:
        h.update(len(piece).to_bytes(8, "little"))
        h.update(piece)
    return h.hexdigest()


def _nested(value: object, where: str) -> bytes:
    """Return the canonical text of Python objects inside numpy or pandas data, as bytes."""
    try:
        return encode(value).encode()
    except UnsupportedValueError as exc:
        raise UnsupportedValueError(exc.value, where + exc.path) from None


def _numpy(value: Any) -> str:
    np: Any = sys.modules.get("numpy")
    if np is not None and type(value) is np.ndarray:  # not a subclass: a masked array hides values
        dtype = value.dtype
        # descr: the byte order and fields, which the name leaves out.
        pieces = [repr(dtype.descr).encode(), repr(value.shape).encode()]
        # Python objects are keyed by their canonical text, not by their addresses.
        pieces.append(_nested(value.tolist(), "") if dtype.hasobject else value.tobytes())
        return f"numpy.ndarray({dtype.name}, {value.shape!r}, {_digest(pieces)})"
    if np is not None and isinstance(value, np.generic):
        dtype = value.dtype
        if dtype.kind in "mM":  # datetime64, timedelta64: the unit is part of the value
            return f"numpy.{dtype.name}({str(value)!r})"
        item = value.item()
        if type(item) in (bool, int, float, complex, str, bytes):  # exact: not longdouble
            return f"numpy.{type(value).__name__}({item!r})"
    raise UnsupportedValueError(value, "")


def _pandas(value: Any) -> str:
    pd: Any = sys.modules.get("pandas")
    if pd is None:
        raise UnsupportedValueError(value, "")
    obj: object = value
    cls = type(obj)
    name = f"pandas.{cls.__name__}" if getattr(pd, cls.__name__, None) is cls else type_name(value)
    if value is pd.NA or value is pd.NaT:
        return "pandas.NA" if value is pd.NA else "pandas.NaT"
    if isinstance(value, (pd.Timestamp, pd.Timedelta)):
        return f"pandas.{value!r}"  # pandas.Timestamp('2024-01-01 00:00:00+0100', tz='Europe/Paris')
    if isinstance(value, pd.DataFrame):
        pieces = _pandas_index(pd, value.columns, " columns") + _pandas_index(pd, value.index, " index")
        for label, column in value.items():
            pieces += _pandas_values(pd, column, f" column {label!r}")
        return f"{name}({value.shape!r}, {_digest(pieces)})"
    if isinstance(value, pd.Series):
        pieces = [_nested(value.name, " name"), *_pandas_index(pd, value.index, " index")]
        pieces += _pandas_values(pd, value, " values")
        return f"{name}({value.dtype}, {value.shape!r}, {_digest(pieces)})"
    if isinstance(value, pd.Index):
        return f"{name}({value.dtype}, {value.shape!r}, {_digest(_pandas_index(pd, value, ''))})"
    raise UnsupportedValueError(value, "")


def _pandas_index(pd: Any, index: Any, where: str) -> list[bytes]:
    """Return the pieces identifying an Index: its type, names and labels."""
    names = _nested(list(index.names), where + " names")
    return [type_name(index).encode(), names, *_pandas_values(pd, index, where)]


def _pandas_values(pd: Any, data: Any, where: str) -> list[bytes]:
    """Return the pieces identifying the values of a Series or an Index, with their dtype."""
    np: Any = sys.modules["numpy"]  # pandas imports it
    dtype = data.dtype
    pieces = [str(dtype).encode()]
    if isinstance(dtype, np.dtype) and not dtype.hasobject:
        array = data.to_numpy()
        pieces += [repr(dtype.descr).encode(), array.tobytes()]
    elif isinstance(dtype, np.dtype):
        # hash_pandas_object hashes objects by str(): it would take 1 and '1' for one value.
        pieces.append(_nested(list(data), where))
    elif isinstance(dtype, pd.CategoricalDtype):
        categorical = data.array
        pieces += [repr(categorical.ordered).encode(), categorical.codes.tobytes()]
        pieces += _pandas_values(pd, categorical.categories, where + " categories")
    else:  # extension dtypes: strings, nullable numbers, datetimes with a zone...
        # categorize=True (the default): without it, a missing string hashes like 'nan'.
        hashes = pd.util.hash_pandas_object(data, index=False)
        pieces.append(hashes.to_numpy().tobytes())
    return pieces


def token(value: object) -> str:
    """Identify any value for staleness: ``k`` and its canonical text, else ``p`` and a hash of its pickle."""
    try:
        return "k" + encode(value)
    except UnsupportedValueError:
        import cloudpickle  # pyright: ignore[reportMissingTypeStubs]  # untyped

        from ._hashing import blake2b

        data: bytes = cloudpickle.dumps(value, protocol=5)  # pyright: ignore[reportUnknownMemberType]  # untyped
        return "p" + blake2b(data, digest_size=16).hexdigest()


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
