"""The fingerprint of the code a task class can reach: a change to any of it re-runs the class.

What is hashed is the code that runs, as the interpreter holds it (bytecode, constants,
names), not the text of a file that may have changed since it was imported: so comments,
formatting and docstrings do not count, a notebook cell or ``exec``'d class works like a
file, and a long-running process never labels results of its old code as the new one's.

Reached from a task class: its methods and those of its user-defined bases and mixins,
and, followed transitively through the globals those functions name (in the user's own
modules only, cycles included): module-level functions, classes (their methods and
attributes), module-level constants (by value when key-able, else by their type), and
the attributes of modules they name (``helpers.scale``). The standard library, installed
packages and asyncflow itself are not hashed; dynamic lookups (``getattr(m, name)``) are
not followed. The class keywords ``version=`` (replaces all of this for the class) and
``hash_includes=[...]`` (more objects to hash) are the escape hatches.

A fingerprint is computed once per class per process, then checked on each use: if a
name it followed is bound to another object now (a notebook cell run again, a module
reloaded, a function's code replaced), it is computed again. A mutable module-level
value (a dict, a list) is hashed as it is then: changing it in place later in the same
process is not seen (so that module-level state such as a cache or a counter that the
bodies update does not make every run stale); binding the name to a new value is. No
I/O here.
"""

from __future__ import annotations

import functools
import inspect
import os
import site
import sys
import threading
import types
import weakref
from typing import TYPE_CHECKING, Any, NamedTuple

from . import _keys
from ._hashing import blake2b

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping

_LOCK = threading.Lock()  # concurrent runs prepare their graphs in worker threads
_ABSENT: Any = object()  # a name that was bound to nothing
_OWN_MODULE = "asyncflow._task"  # where asyncflow's own task classes are defined
# Class attributes that are not the user's: Python's, and what asyncflow sets itself.
_CLASS_SKIP = frozenset({
    "__module__", "__qualname__", "__doc__", "__dict__", "__weakref__", "__annotations__",
    "__orig_bases__", "__parameters__", "__slots__", "__firstlineno__", "__static_attributes__",
    "__abstractmethods__", "_abc_impl",
    "task_name", "_af_params", "__af_options__", "__af_requires__",
})  # fmt: skip
_COMPREHENSIONS = frozenset({"<listcomp>", "<setcomp>", "<dictcomp>", "<genexpr>"})
_CO_OPTIMIZED = 0x1  # a function's code (not a class body or module)
_METHODS = (types.MethodType, staticmethod, classmethod)
_DOC_FLAG: int = getattr(inspect, "CO_HAS_DOCSTRING", 0)  # Python 3.14+: a docstring is a flag


class Fingerprint(NamedTuple):
    """What a task class's results are made by.

    Attributes:
        digest: the hex digest of the whole; a record made by other code has another.
        manifest: each part by name (``"helpers.scale"``, ``"flow.Main.run_task"``,
            ``"flow.FACTOR"``, ``"version"``) with its own digest, to say what changed.
        identity: a digest of where the class is defined (its module's file), which
            tells apart two classes of the same name from different files.
    """

    digest: str
    manifest: dict[str, str]
    identity: str


class _Cached(NamedTuple):
    fingerprint: Fingerprint
    bindings: list[tuple[Mapping[str, Any], str, Any]]  # (namespace, name, what it held)
    codes: list[tuple[types.FunctionType, types.CodeType]]  # (function, its code then)


_CACHE: weakref.WeakKeyDictionary[type, _Cached] = weakref.WeakKeyDictionary()


def fingerprint(cls: type) -> Fingerprint:
    """Return the fingerprint of task class `cls` (computed once, checked on every call)."""
    with _LOCK:
        cached = _CACHE.get(cls)
        if cached is not None and _still_valid(cached):
            return cached.fingerprint
        walker = _Walker()
        found = walker.task_class(cls)
        _CACHE[cls] = _Cached(found, walker.bindings, walker.codes)
        return found


def _still_valid(cached: _Cached) -> bool:
    for namespace, name, held in cached.bindings:
        if namespace.get(name, _ABSENT) is not held:
            return False
    return all(func.__code__ is code for func, code in cached.codes)


@functools.cache
def _library_dirs() -> tuple[str, ...]:
    # Not sysconfig's paths: their first use imports the build's configuration (the
    # _sysconfigdata module), over a millisecond of every first run. The standard library
    # is where `os` is, packages are where `site` installs them, and a prefix's lib holds
    # both; a directory missed here would only make its modules hashed as the user's.
    dirs = {os.path.dirname(os.__file__)}
    dirs.update(site.getsitepackages() if hasattr(site, "getsitepackages") else ())
    dirs.add(site.getusersitepackages())
    dirs.update(os.path.join(p, "lib") for p in {sys.prefix, sys.base_prefix, sys.exec_prefix})
    return tuple(sorted(os.path.realpath(d) + os.sep for d in dirs))


def is_user_module(name: str) -> bool:
    """Tell whether module `name` is the user's own code (not the standard library, an installed package or asyncflow).

    When in doubt (a module that is not in `sys.modules`, or has no file and is neither
    built in nor frozen: ``exec``'d code, a notebook), it is the user's: hashing too
    much costs a re-run, hashing too little a stale result.
    """
    if name == "__main__":
        return True
    if name == "builtins" or name in sys.builtin_module_names or name == "asyncflow":
        return False
    if name.startswith("asyncflow.") and not name.startswith("asyncflow.examples"):
        return False
    module = sys.modules.get(name)
    if module is None:
        return True
    known = _PLACES.get(name)
    if known is not None and known[0] is module:
        return known[1]
    file = getattr(module, "__file__", None)
    if file:
        real = os.path.realpath(file)
        mine = not any(real.startswith(d) for d in _library_dirs())
    else:
        origin = getattr(getattr(module, "__spec__", None), "origin", None)
        mine = origin not in ("built-in", "frozen")
    _PLACES[name] = (module, mine)
    return mine


# Module name -> (the module, whether it is the user's): a module imported again may be elsewhere.
_PLACES: dict[str, tuple[types.ModuleType, bool]] = {}


def _module_of(obj: Any) -> str:
    return getattr(obj, "__module__", None) or ""


def _name_of(obj: Any) -> str:
    return f"{_module_of(obj)}.{getattr(obj, '__qualname__', getattr(obj, '__name__', '?'))}"


def _digest(*parts: str) -> str:
    return blake2b("\0".join(parts).encode(), digest_size=12).hexdigest()


def _identity(cls: type) -> str:
    module = sys.modules.get(cls.__module__)
    file = getattr(module, "__file__", None) or f"<{cls.__module__}>"
    return _digest(os.path.abspath(file) if not file.startswith("<") else file)


def code_digest(code: types.CodeType) -> str:
    """Hash what a code object does: bytecode, constants (nested code too), names; not its lines.

    A function's docstring (the first constant of a function's code, before Python 3.14)
    does not count.
    """
    consts: list[str] = []
    for i, const in enumerate(code.co_consts):
        if isinstance(const, types.CodeType):
            consts.append("code:" + code_digest(const))
        elif i == 0 and _holds_docstring(code):
            consts.append("doc")  # the docstring, or None where there is none: the same
        else:
            consts.append(_const_text(const))
    return _digest(
        code.co_name,
        code.co_code.hex(),
        "|".join(consts),
        ",".join(code.co_names),
        ",".join(code.co_varnames),
        ",".join(code.co_freevars),
        ",".join(code.co_cellvars),
        f"{code.co_argcount},{code.co_posonlyargcount},{code.co_kwonlyargcount},{code.co_flags & ~_DOC_FLAG}",
    )


def _holds_docstring(code: types.CodeType) -> bool:
    """Tell whether the first constant of `code` is the slot of its docstring.

    Up to Python 3.13 a function's (a def's or a lambda's, not a comprehension's) first
    constant is its docstring, or None when it has none; 3.14 flags a docstring instead.
    """
    if _DOC_FLAG:
        return bool(code.co_flags & _DOC_FLAG)
    return bool(code.co_flags & _CO_OPTIMIZED) and code.co_name not in _COMPREHENSIONS


def _const_text(const: object) -> str:
    kind = type(const).__name__
    if isinstance(const, (tuple, frozenset)):
        items: list[object] = list(const)  # pyright: ignore[reportUnknownArgumentType]  # any constant
        texts = [_const_text(c) for c in items]
        if isinstance(const, frozenset):  # folded from `x in {...}`: its order changes per process
            texts.sort()
        return f"{kind}({','.join(texts)})"
    return f"{kind}:{const!r}"


def _names(code: types.CodeType) -> Iterator[str]:
    """Every name the code (and the code nested in it) looks up: globals and attributes."""
    stack = [code]
    while stack:
        current = stack.pop()
        yield from current.co_names
        stack.extend(c for c in current.co_consts if isinstance(c, types.CodeType))


class _Walker:
    """One fingerprint's walk: what it reached, in a work-list (no recursion on the stack)."""

    def __init__(self) -> None:
        self.manifest: dict[str, str] = {}
        self.bindings: list[tuple[Mapping[str, Any], str, Any]] = []
        self.codes: list[tuple[types.FunctionType, types.CodeType]] = []
        self._seen: set[int] = set()
        self._keep: list[object] = []  # what _seen holds ids of, alive until the walk ends
        self._followed: set[tuple[int, str]] = set()  # (module namespace, attribute) pairs
        self._todo: list[object] = []

    def task_class(self, cls: type) -> Fingerprint:
        version = _own_options(cls, "version")
        if version is not None:
            self.manifest["version"] = version  # replaces the class's code
            self._includes(cls)
        else:
            self._push(cls)
        while self._todo:
            self._visit(self._todo.pop())
        digest = _digest(*(f"{k}={v}" for k, v in sorted(self.manifest.items())))
        return Fingerprint(digest, dict(sorted(self.manifest.items())), _identity(cls))

    def _push(self, obj: object) -> None:
        if id(obj) not in self._seen:
            self._seen.add(id(obj))
            self._keep.append(obj)
            self._todo.append(obj)

    def _visit(self, obj: object) -> None:
        if isinstance(obj, type):
            self._class(obj)
        elif isinstance(obj, types.FunctionType):
            self._function(obj)
        elif _wrapped(obj) is not None:  # a decorator's wrapper (lru_cache, wraps...)
            self._push(_wrapped(obj))

    def _class(self, cls: type) -> None:
        """Hash the user's classes in `cls`'s MRO: attributes here, methods as parts of their own."""
        for klass in cls.__mro__:
            if klass is object or klass.__module__ == _OWN_MODULE or not is_user_module(klass.__module__):
                continue
            if klass is not cls:
                self._push(klass)  # hashed once however many subclasses name it
                continue
            name = _name_of(klass)
            version = _own_options(klass, "version")
            if version is not None:  # a base with a version: it stands for its code
                self.manifest[f"{name} version"] = version
                self._includes(klass)
                continue
            self._includes(klass)
            parts = [f"bases={','.join(_name_of(b) for b in klass.__bases__)}"]
            namespace = vars(klass)
            for attr, value in sorted(namespace.items()):
                if attr not in _CLASS_SKIP:
                    self.bindings.append((namespace, attr, value))  # e.g. Main.FACTOR = 2, later
                    parts.append(f"{attr}={self._ref(value)}")
            self.manifest[name] = _digest(*parts)

    def _includes(self, klass: type) -> None:
        """Push what the class's ``hash_includes=[...]`` names (a module: all it defines)."""
        includes: tuple[object, ...] = _own_options(klass, "hash_includes") or ()
        for i, extra in enumerate(includes):
            if isinstance(extra, types.ModuleType):
                self._module(extra)
            elif callable(extra):
                self._push(extra)
            else:
                self.manifest[f"{_name_of(klass)} hash_includes[{i}]"] = self._value(extra)

    def _function(self, func: types.FunctionType) -> None:
        if not is_user_module(_module_of(func)):
            return
        self.codes.append((func, func.__code__))
        parts = [code_digest(func.__code__), self._value(func.__defaults__), self._value(func.__kwdefaults__)]
        for cell in func.__closure__ or ():
            try:
                parts.append(self._ref(cell.cell_contents))
            except ValueError:  # an empty cell
                parts.append("empty")
        self.manifest[_name_of(func)] = _digest(*parts)
        self._globals(func.__globals__, set(_names(func.__code__)))

    def _globals(self, namespace: dict[str, Any], names: set[str]) -> None:
        """Follow the names a function's code looks up in its module's namespace."""
        module = str(namespace.get("__name__", ""))
        for name in sorted(names):
            value = namespace.get(name, _ABSENT)
            self.bindings.append((namespace, name, value))  # a name bound later counts too
            if value is _ABSENT:
                continue
            if isinstance(value, types.ModuleType):
                self._attributes(value, names)
            self.manifest[f"{module}.{name}"] = self._ref(value)

    def _attributes(self, module: types.ModuleType, names: set[str]) -> None:
        """Follow ``module.attr`` for the names the code uses (a name may be an attribute of it)."""
        todo = [module]
        while todo:
            current = todo.pop()
            if not is_user_module(current.__name__):
                continue
            namespace = vars(current)
            for name in sorted(names & namespace.keys()):
                if (id(namespace), name) in self._followed:
                    continue
                self._followed.add((id(namespace), name))
                value = namespace[name]
                self.bindings.append((namespace, name, value))
                if isinstance(value, types.ModuleType):
                    todo.append(value)
                self.manifest[f"{current.__name__}.{name}"] = self._ref(value)

    def _module(self, module: types.ModuleType) -> None:
        """Hash everything a module defines (``hash_includes=[module]``)."""
        namespace = vars(module)
        for name, value in sorted(namespace.items()):
            if name.startswith("__") or isinstance(value, types.ModuleType):
                continue
            self.bindings.append((namespace, name, value))
            if not callable(value) or _module_of(value) == module.__name__:  # not imported from elsewhere
                self.manifest[f"{module.__name__}.{name}"] = self._ref(value)

    def _ref(self, value: object, depth: int = 0) -> str:
        """Describe a value met in the user's code, pushing the code it names to be hashed.

        Code (functions, classes, methods, wrappers) is named here and hashed as a part of
        its own; a module by its name; anything else by value (see `_value`).
        """
        if inspect.ismodule(value):
            return "module:" + value.__name__
        if isinstance(value, functools.partial):
            p: functools.partial[object] = value  # pyright: ignore[reportUnknownVariableType]  # any partial
            arguments = self._value(p.args, depth + 1) + self._value(p.keywords, depth + 1)
            return f"partial:{self._ref(p.func, depth + 1)}({arguments})"
        if isinstance(value, property):
            accessors = (value.fget, value.fset, value.fdel)
            return "property:" + ",".join(self._ref(a, depth + 1) for a in accessors if a is not None)
        if isinstance(value, functools.cached_property):
            return "cached_property:" + self._ref(value.func, depth + 1)
        code = _unwrap(value)
        if inspect.isclass(code) or inspect.isfunction(code) or _wrapped(code) is not None:
            self._push(code)
            return "code:" + _name_of(code)
        if callable(value) and not is_user_module(_module_of(type(value))):
            return "callable:" + _name_of(value)  # a builtin or an installed package's
        return self._value(value, depth)

    def _value(self, value: object, depth: int = 0) -> str:
        """Hash a value by its canonical key when it has one, else element by element, else by its type."""
        try:
            encoded = _keys.encode(value)
        except Exception:  # no key (or a proxy that raises on any attribute): by its type
            pass
        else:
            return _digest(encoded)
        if depth < 20 and isinstance(value, (tuple, list)):
            items: list[object] = list(value)  # pyright: ignore[reportUnknownArgumentType]  # any sequence
            return _digest(*(self._ref(v, depth + 1) for v in items))
        if depth < 20 and isinstance(value, dict):
            pairs: list[tuple[object, object]] = list(value.items())  # pyright: ignore[reportUnknownArgumentType]  # any dict
            return _digest(*(f"{k!r}:{self._ref(v, depth + 1)}" for k, v in pairs))
        kind: type = type(value)
        if is_user_module(kind.__module__):
            self._push(kind)
        return "type:" + _name_of(kind)


def _wrapped(value: object) -> object | None:
    """Return what a decorator's wrapper wraps (``__wrapped__``), or None.

    Any error counts as none: some objects (proxies) raise on every attribute.
    """
    try:
        return getattr(value, "__wrapped__", None)
    except Exception:
        return None


def _unwrap(value: object) -> object:
    """Return a method's function (bound, static or class method); anything else as it is."""
    if isinstance(value, _METHODS):
        return value.__func__  # pyright: ignore[reportUnknownMemberType, reportUnknownVariableType]  # any method's function
    return value


def _own_options(klass: type, name: str) -> Any:
    """Return class keyword `name` as given to `klass` itself (not inherited), or None."""
    options = vars(klass).get("__af_options__")
    return getattr(options, name, None)


def what_changed(old: dict[str, str], new: dict[str, str], limit: int = 3) -> str:
    """Say what differs between two manifests: ``"version 1 -> 2"``, ``"code changed: helpers.scale"``."""
    changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    versions = [k for k in changed if k == "version" or k.endswith(" version")]
    if versions:
        key = versions[0]
        of = "" if key == "version" else f" of {key.removesuffix(' version')}"
        return f"version{of} {old.get(key, '(none)')} -> {new.get(key, '(none)')}"
    if not changed:
        return "code changed"
    shown = ", ".join(changed[:limit])
    more = f" and {len(changed) - limit} more" if len(changed) > limit else ""
    return f"code changed: {shown}{more}"
