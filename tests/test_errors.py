"""asyncflow's exceptions pickle, facts included, and so cross process boundaries."""

from __future__ import annotations

import multiprocessing
import pickle
from concurrent.futures import ProcessPoolExecutor
from typing import TYPE_CHECKING, Any

import cloudpickle  # pyright: ignore[reportMissingTypeStubs]
import pytest

import asyncflow
from asyncflow import (
    AsyncflowError,
    BuildError,
    CacheError,
    CacheWarning,
    CycleError,
    EventLoopRunningError,
    GraphError,
    HostError,
    InputFileError,
    MissingRequirementError,
    OptionError,
    Task,
    TaskDefinitionError,
    TaskFailedError,
    UndeclaredRequirementError,
    UnreadableResultError,
    WorkflowFailedError,
    _errors,
)

if TYPE_CHECKING:
    from pathlib import Path

FAILED = TaskFailedError(
    "Choose(6, 3) failed: ValueError: no",
    task="Choose(6, 3)",
    command=["srun", "python"],
    returncode=3,
    stderr_tail="last words\n",
)

# An instance of every exception class asyncflow defines, each attribute set.
SAMPLES: dict[type[BaseException], BaseException] = {
    AsyncflowError: AsyncflowError("something"),
    TaskDefinitionError: TaskDefinitionError("Choose: bad keyword"),
    OptionError: OptionError("unknown run option 'x'"),
    GraphError: GraphError("the graph cannot be built"),
    BuildError: BuildError("Choose(6, 3): build_task raised", task="Choose(6, 3)"),
    MissingRequirementError: MissingRequirementError("unset", task="Choose(6, 3)", attribute="left"),
    UndeclaredRequirementError: UndeclaredRequirementError("undeclared", task="Choose(6, 3)", attribute="xs"),
    CycleError: CycleError("a cycle", cycle=["A()", "B()", "A()"]),
    InputFileError: InputFileError("missing", task="Size('a')", path="/data/a"),
    TaskFailedError: FAILED,
    WorkflowFailedError: WorkflowFailedError(
        "2 task(s) failed", [FAILED, TaskFailedError("B() failed", task="B()")]
    ),
    CacheError: CacheError("could not write the results of 1 task(s)", lost=["tests.Square(3)"]),
    UnreadableResultError: UnreadableResultError(
        "the cached result of Noise(3) cannot be read: its result file ab/ab12 is missing",
        task="Noise(3)",
        reason="its result file ab/ab12 is missing",
    ),
    CacheWarning: CacheWarning("Noise(3): its cached result cannot be read; computing it again"),
    HostError: HostError("refused", host="ssh://root@127.0.0.1:2222", reason="refused"),
    EventLoopRunningError: EventLoopRunningError("run_graph() blocks"),
    _errors.GraphvizError: _errors.GraphvizError("no dot", reason="missing"),
    _errors.UnstorableResultError: _errors.UnstorableResultError("returned a lock"),
    _errors.WorkerTracebackError: _errors.WorkerTracebackError("ValueError was raised in the worker:\n..."),
    _errors.UsageError: _errors.UsageError("no such command"),
}


def _exception_classes() -> list[type[BaseException]]:
    """Every exception class in asyncflow's public names and in its errors module."""
    names = [getattr(asyncflow, name) for name in asyncflow.__all__] + list(vars(_errors).values())
    found = {
        c
        for c in names
        if isinstance(c, type) and issubclass(c, BaseException) and c.__module__.startswith("asyncflow")
    }
    return sorted(found, key=lambda c: c.__name__)


def _same(copy: BaseException, original: BaseException) -> None:
    assert type(copy) is type(original)
    assert str(copy) == str(original)
    assert repr(copy.args) == repr(original.args)  # exceptions compare by identity
    assert repr(vars(copy)) == repr(vars(original))  # on 3.10 a group keeps its exceptions there
    if isinstance(original, WorkflowFailedError):
        assert isinstance(copy, WorkflowFailedError)
        assert copy.message == original.message
        for inner, inner_original in zip(copy.exceptions, original.exceptions, strict=True):
            _same(inner, inner_original)


@pytest.mark.parametrize("cls", _exception_classes(), ids=lambda c: c.__name__)
@pytest.mark.parametrize("dumps", [pickle.dumps, cloudpickle.dumps], ids=["pickle", "cloudpickle"])
def test_every_exception_pickles(cls: type[BaseException], dumps: Any) -> None:
    assert cls in SAMPLES, f"add an instance of the new {cls.__name__}, every attribute set, to SAMPLES"
    original = SAMPLES[cls]
    assert type(original) is cls
    _same(pickle.loads(dumps(original)), original)


def test_a_cause_does_not_travel_but_does_not_break() -> None:
    try:
        try:
            raise ValueError("no")
        except ValueError as exc:
            raise TaskFailedError("A() failed: ValueError: no", task="A()") from exc
    except TaskFailedError as exc:
        error = exc
    error.__notes__ = ["a note"]  # what add_note does (3.11 and later)
    copy = pickle.loads(pickle.dumps(error))
    assert copy.task == "A()"
    assert copy.__cause__ is None
    assert copy.__notes__ == ["a note"]


def test_exceptions_keep_their_other_bases() -> None:
    copy = pickle.loads(pickle.dumps(SAMPLES[HostError]))
    assert isinstance(copy, OSError)
    assert (copy.host, copy.reason) == ("ssh://root@127.0.0.1:2222", "refused")
    group = pickle.loads(pickle.dumps(SAMPLES[WorkflowFailedError]))
    match, rest = group.split(lambda e: isinstance(e, TaskFailedError) and e.task == "B()")
    assert match is not None  # still a working group
    assert rest is not None
    assert [e.task for e in rest.exceptions] == ["Choose(6, 3)"]


class Fails(Task):
    def build_task(self, i: int) -> None:
        self.i = i

    def run_task(self) -> int:
        raise ValueError(f"no {self.i}")


class Works(Task):
    def build_task(self, i: int) -> None:
        self.i = i

    def run_task(self) -> int:
        return self.i * 2


def run_in_job(cls: type[Task[[int], int]], i: int, cache_dir: str) -> int:
    """A process pool's job: a whole workflow, run with the blocking twin."""
    return cls(i).run_graph(cache_dir=cache_dir)


def test_a_failed_workflow_in_a_process_pool_job(tmp_path: Path) -> None:
    # Before: unpickling TaskFailedError in the pool's result thread broke the pool.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        future = pool.submit(run_in_job, Fails, 1, str(tmp_path / "cache"))
        with pytest.raises(TaskFailedError) as info:
            future.result(timeout=60)
        assert info.value.task == "Fails(1)"
        assert str(info.value) == "Fails(1) failed: ValueError: no 1"
        assert pool.submit(run_in_job, Works, 4, str(tmp_path / "cache")).result(timeout=60) == 8
