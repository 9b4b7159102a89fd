"""The public API is exactly what `asyncflow/__init__.py` re-exports, listed in a sorted `__all__`."""

from __future__ import annotations

import types

import asyncflow


def _public_names() -> set[str]:
    # dir(), not vars(): names imported on first use (the module's __getattr__) count too.
    return {
        name
        for name in dir(asyncflow)
        if not name.startswith("_") and not isinstance(getattr(asyncflow, name), types.ModuleType)
    }


def test_all_is_sorted() -> None:
    assert asyncflow.__all__ == sorted(asyncflow.__all__)


def test_all_has_no_duplicates() -> None:
    assert len(asyncflow.__all__) == len(set(asyncflow.__all__))


def test_all_equals_the_public_names() -> None:
    assert set(asyncflow.__all__) == _public_names()


def test_every_name_in_all_exists() -> None:
    missing = [name for name in asyncflow.__all__ if not hasattr(asyncflow, name)]
    assert missing == []


def test_star_import_gives_exactly_all() -> None:
    namespace: dict[str, object] = {}
    exec("from asyncflow import *", namespace)
    namespace.pop("__builtins__", None)
    assert set(namespace) == set(asyncflow.__all__)


def test_public_names_come_from_asyncflow() -> None:
    # Re-exports of our own classes, not of a dependency's.
    foreign = [
        name
        for name in asyncflow.__all__
        if not getattr(getattr(asyncflow, name), "__module__", "asyncflow").startswith("asyncflow")
    ]
    assert foreign == []


def test_core_names_are_public() -> None:
    # What the spec's examples import.
    expected = {
        "Task",
        "SourceTask",
        "SinkTask",
        "Const",
        "Req",
        "Requires",
        "RequiresList",
        "RequiresDict",
        "infer_task_type",
        "register_key",
        "AsyncflowError",
        "TaskDefinitionError",
        "GraphError",
        "CycleError",
        "MissingRequirementError",
        "BuildError",
        "TaskFailedError",
        "WorkflowFailedError",
        "CacheError",
        "HostError",
        "EventLoopRunningError",
    }
    assert expected <= set(asyncflow.__all__)


def test_version_is_a_string_and_not_in_all() -> None:
    assert isinstance(asyncflow.__version__, str)
    assert "__version__" not in asyncflow.__all__


def test_exceptions_show_where_users_import_them_from() -> None:
    import traceback

    errors = [getattr(asyncflow, n) for n in asyncflow.__all__ if n.endswith("Error")]
    assert errors
    assert all(e.__module__ == "asyncflow" for e in errors)
    text = "".join(traceback.format_exception_only(asyncflow.CacheError("gone")))
    assert text == "asyncflow.CacheError: gone\n"


def test_typing_resolves_the_hints_of_a_user_task() -> None:
    # Task keeps its own __module__: get_type_hints resolves each base's annotations there.
    import typing

    class Mine(asyncflow.Task):
        def build_task(self) -> None:
            pass

    hints = typing.get_type_hints(Mine)
    assert hints["task_name"] == typing.ClassVar[str]
