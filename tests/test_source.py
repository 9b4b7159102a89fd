"""What a task's fingerprint covers: the code it reaches, edited on disk between runs in fresh processes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest

from asyncflow import Task
from asyncflow._source import code_digest, fingerprint, what_changed


class Project:
    """A directory of modules and a taskfile, run with the real command line in new processes."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.cache = root / "cache"

    def write(self, name: str, source: str) -> None:
        (self.root / name).write_text(textwrap.dedent(source))

    def edit(self, name: str, old: str, new: str) -> None:
        path = self.root / name
        text = path.read_text()
        assert old in text, f"{old!r} is not in {name}"
        path.write_text(text.replace(old, new))

    def cli(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        environ = {k: v for k, v in os.environ.items() if not k.startswith("AF_")}
        environ["PYTHONDONTWRITEBYTECODE"] = "1"  # an edit within the same second must still be seen
        return subprocess.run(
            [sys.executable, "-m", "asyncflow", *args],
            cwd=self.root,
            env={**environ, **(env or {})},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def run(self, *options: str, taskfile: str = "flow.py") -> tuple[str, int, int]:
        """Run the taskfile; return (its result as printed, nodes run, nodes from cache)."""
        done = self.cli("run", taskfile, "--cache-dir", str(self.cache), "-l", "WARNING", *options)
        assert done.returncode == 0, done.stderr
        result, counts = done.stdout.splitlines()[:2]
        found = re.match(r"(\d+) run, (\d+) from cache", counts)
        assert found is not None, done.stdout
        return result.split(" = ", 1)[1], int(found.group(1)), int(found.group(2))

    def why(self, taskfile: str = "flow.py") -> str:
        """The text graph of the taskfile's Main, which says why each node is stale."""
        done = self.cli("graph", taskfile, "--cache-dir", str(self.cache))
        assert done.returncode == 0, done.stderr
        return done.stdout


@pytest.fixture
def project(tmp_path: Path) -> Project:
    return Project(tmp_path)


HELPERS = """
    def scale(x):
        return x * 2
"""

FLOW = """
    from asyncflow import Task
    from helpers import scale

    FACTOR = 10


    class Main(Task):
        def build_task(self) -> None:
            pass

        def run_task(self) -> int:
            return scale(3) * FACTOR
"""


def test_a_helper_in_another_module_and_a_constant(project: Project) -> None:
    # The very case of issue 11: each edit used to be served from the cache.
    project.write("helpers.py", HELPERS)
    project.write("flow.py", FLOW)
    assert project.run() == ("60", 1, 0)
    project.edit("helpers.py", "x * 2", "x * 3")
    assert "[stale]  Main(): code changed: helpers.scale" in project.why()
    assert project.run() == ("90", 1, 0)
    project.edit("flow.py", "FACTOR = 10", "FACTOR = 100")
    assert "code changed: flow.FACTOR" in project.why()
    assert project.run() == ("900", 1, 0)
    assert project.run() == ("900", 0, 1)


def test_comments_docstrings_and_formatting_do_not_count(project: Project) -> None:
    project.write("helpers.py", HELPERS)
    project.write("flow.py", FLOW)
    assert project.run() == ("60", 1, 0)
    project.edit(
        "helpers.py",
        "    return x * 2",
        '    """Twice x."""\n    # a comment\n    return (x\n            *   2)',
    )
    project.edit("flow.py", "return scale(3) * FACTOR", "return scale(3) * FACTOR  # a comment")
    project.edit("flow.py", "class Main(Task):", 'class Main(Task):\n    """The docstring."""\n')
    assert project.run() == ("60", 0, 1)


def test_a_module_attribute_two_modules_away_and_a_cycle(project: Project) -> None:
    project.write(
        "first.py",
        """
        import second

        def f(x):
            return second.g(x) + 1

        def ping(n):  # first and second call each other: a cycle to walk through
            return second.pong(n)
        """,
    )
    project.write(
        "second.py",
        """
        import first

        def g(x):
            return x * 10

        def pong(n):
            return n if n <= 0 else first.ping(n - 1)
        """,
    )
    project.write(
        "flow.py",
        """
        import first
        from asyncflow import Task

        class Main(Task):
            def build_task(self) -> None:
                pass

            def run_task(self) -> int:
                return first.f(1) + first.ping(3)
        """,
    )
    assert project.run() == ("11", 1, 0)
    project.edit("second.py", "x * 10", "x * 20")
    assert "code changed: second.g" in project.why()
    assert project.run() == ("21", 1, 0)
    assert project.run() == ("21", 0, 1)


def test_a_mixin_and_a_base_class(project: Project) -> None:
    project.write(
        "flow.py",
        """
        from asyncflow import Task

        class Mixin:
            offset = 1

            def shift(self, x: int) -> int:
                return x + self.offset

        class Base(Task):
            def build_task(self) -> None:
                pass

            def twice(self, x: int) -> int:
                return 2 * x

        class Main(Mixin, Base):
            def run_task(self) -> int:
                return self.shift(self.twice(5))
        """,
    )
    assert project.run() == ("11", 1, 0)
    project.edit("flow.py", "return x + self.offset", "return x + self.offset + 100")
    assert "code changed: flow.Mixin.shift" in project.why()
    assert project.run() == ("111", 1, 0)
    project.edit("flow.py", "offset = 1", "offset = 2")  # a class attribute
    assert project.run() == ("112", 1, 0)
    project.edit("flow.py", "return 2 * x", "return 3 * x")  # a Task base's method
    assert project.run() == ("117", 1, 0)


def test_version_stands_for_the_code(project: Project) -> None:
    project.write("helpers.py", HELPERS)
    project.write("flow.py", FLOW.replace("class Main(Task):", 'class Main(Task, version="1"):'))
    assert project.run() == ("60", 1, 0)
    project.edit("helpers.py", "x * 2", "x * 3")  # not looked at: the version speaks for the code
    assert project.run() == ("60", 0, 1)
    project.edit("flow.py", 'version="1"', 'version="2"')
    assert "[stale]  Main(): version 1 -> 2" in project.why()
    assert project.run() == ("90", 1, 0)


def test_hash_includes(project: Project) -> None:
    project.write(
        "ops.py",
        """
        def double(x):
            return 2 * x

        def triple(x):
            return 3 * x
        """,
    )
    project.write(
        "flow.py",
        """
        import ops
        from asyncflow import Task

        class Main(Task, hash_includes=[ops]):
            def build_task(self, op: str) -> None:
                self.op = op

            def run_task(self) -> int:
                return getattr(ops, self.op)(5)  # a dynamic lookup: not followed by itself
        """,
    )
    # An entrypoint taking no arguments, which requires Main('double').
    project.write(
        "run.py",
        """
        from asyncflow import Requires, Task
        from flow import Main as Op

        class Main(Task):
            value: Requires[int]

            def build_task(self) -> None:
                self.value = Op("double")

            async def run_task(self) -> int:
                return self.value
        """,
    )
    assert project.run(taskfile="run.py") == ("10", 2, 0)
    project.edit("ops.py", "2 * x", "20 * x")
    assert "code changed: ops.double" in project.why("run.py")
    assert project.run(taskfile="run.py") == ("100", 2, 0)


def test_installed_packages_are_not_hashed_but_their_bindings_are(project: Project) -> None:
    project.write(
        "flow.py",
        """
        import json
        from asyncflow import Task

        dump = json.dumps

        class Main(Task):
            def build_task(self) -> None:
                pass

            def run_task(self) -> str:
                return dump([1])
        """,
    )
    assert project.run() == ("'[1]'", 1, 0)
    assert project.run() == ("'[1]'", 0, 1)
    project.edit("flow.py", "dump = json.dumps", "dump = repr")  # what the name is bound to changed
    assert project.run() == ("'[1]'", 1, 0)


def test_two_taskfiles_of_one_name_never_share_results(tmp_path: Path) -> None:
    # Two projects' flow.py, one cache (a shared AF_CACHE_DIR): task names are equal.
    a, b = Project(tmp_path / "a"), Project(tmp_path / "b")
    for project, value in ((a, 1), (b, 2)):
        project.root.mkdir()
        project.cache = tmp_path / "shared-cache"
        project.write(
            "flow.py",
            f"""
            from asyncflow import Task

            class Main(Task):
                def build_task(self) -> None:
                    pass

                def run_task(self) -> int:
                    return {value}
            """,
        )
    assert a.run() == ("1", 1, 0)
    assert b.run() == ("2", 1, 0)  # another class's code: its result is not b's
    assert a.run("--no-detect-source-change") == ("1", 1, 0)  # even with code changes ignored
    graph = b.cli("graph", "flow.py", "--cache-dir", str(b.cache), env={"AF_DETECT_SOURCE_CHANGE": "0"})
    assert "[stale]  Main(): made by a class of the same name in another file" in graph.stdout
    assert b.run("--no-detect-source-change") == ("2", 1, 0)
    assert b.run("--no-detect-source-change") == ("2", 0, 1)


# In one process: what a notebook does when a cell is run again.


def _module(name: str, source: str) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__file__ = f"/nonexistent/{name}.py"  # the user's code, not an installed package
    sys.modules[name] = module
    exec(compile(textwrap.dedent(source), module.__file__, "exec"), module.__dict__)
    return module


def test_a_name_bound_again_is_seen_in_the_same_process() -> None:
    module = _module(
        "af_test_cells",
        """
        from asyncflow import Task

        def helper():
            return 1

        class Cell(Task):
            def build_task(self) -> None:
                pass

            def run_task(self) -> int:
                return helper()
        """,
    )
    try:
        cls: type[Task[[], int]] = module.Cell
        first = fingerprint(cls)
        assert fingerprint(cls) is first  # computed once...
        exec("def helper():\n    return 2\n", module.__dict__)  # ...until a cell defines it again
        second = fingerprint(cls)
        assert second.digest != first.digest
        assert what_changed(first.manifest, second.manifest) == "code changed: af_test_cells.helper"
        exec("def helper():\n    return 2  # same code\n", module.__dict__)
        assert fingerprint(cls).digest == second.digest
    finally:
        del sys.modules["af_test_cells"]


def test_a_mutable_constant_changed_in_place_is_not_seen_but_a_new_one_is() -> None:
    module = _module(
        "af_test_state",
        """
        from asyncflow import Task

        SEEN = {"runs": 0}

        class Counting(Task):
            def build_task(self) -> None:
                pass

            def run_task(self) -> int:
                SEEN["runs"] += 1  # state the body updates must not make every run stale
                return 1
        """,
    )
    try:
        first = fingerprint(module.Counting)
        module.SEEN["runs"] += 5
        assert fingerprint(module.Counting).digest == first.digest
        module.SEEN = {"runs": 0, "more": 1}
        assert fingerprint(module.Counting).digest != first.digest
    finally:
        del sys.modules["af_test_state"]


def _digest_of(source: str) -> str:
    namespace: dict[str, object] = {}
    exec(compile(textwrap.dedent(source), "<test>", "exec"), namespace)
    function = namespace["f"]
    assert isinstance(function, types.FunctionType)
    return code_digest(function.__code__)


def test_code_digest_ignores_docstrings_comments_and_layout_only() -> None:
    plain = _digest_of("def f(x):\n    return x + 1\n")
    assert _digest_of('def f(x):\n    """Doc."""\n    # note\n    return (x +\n            1)\n') == plain
    assert _digest_of("def f(x):\n    return x + 2\n") != plain
    assert _digest_of("def f(y):\n    return y + 1\n") != plain  # a renamed argument is a change
    # A string that is not a docstring counts; so do lambdas' and comprehensions' constants.
    assert _digest_of("def f(x):\n    return 'a'\n") != _digest_of("def f(x):\n    return 'b'\n")
    assert _digest_of("def f(x):\n    return [s for s in 'ab']\n") != _digest_of(
        "def f(x):\n    return [s for s in 'ac']\n"
    )
    assert _digest_of("def f(x):\n    return (lambda: 'a')()\n") != _digest_of(
        "def f(x):\n    return (lambda: 'b')()\n"
    )


def test_code_digest_is_the_same_in_every_process() -> None:
    # `x in {...}` folds to a frozenset constant, whose order depends on str hashing.
    source = "def f(x):\n    return x in {'alpha', 'beta', 'gamma', 'delta'}\n"
    script = (
        "import types; from asyncflow._source import code_digest\n"
        f"ns = {{}}; exec(compile({source!r}, '<test>', 'exec'), ns)\n"
        "print(code_digest(ns['f'].__code__))\n"
    )
    digests = {
        subprocess.run(
            [sys.executable, "-c", script],
            env={**os.environ, "PYTHONHASHSEED": str(seed)},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in (1, 2, 3)
    }
    assert len(digests) == 1


def test_odd_objects_do_not_break_a_fingerprint() -> None:
    # A proxy raising on any attribute (as werkzeug's LocalProxy does out of context),
    # a cached_property, a class's own __init_subclass__: all are walked without error.
    source = """
        import functools
        from asyncflow import Task

        class Proxy:
            def __getattr__(self, name):
                raise RuntimeError("working outside of a request")

        REQUEST = Proxy()

        class Base(Task):
            def __init_subclass__(cls, **kwargs):
                super().__init_subclass__(**kwargs)
                cls.marker = 1

        class Odd(Base):
            def build_task(self) -> None:
                pass

            @functools.cached_property
            def size(self) -> int:
                return 1

            def run_task(self) -> object:
                return REQUEST, self.size
        """
    module = _module("af_test_odd", source)
    try:
        first = fingerprint(module.Odd)
        assert "af_test_odd.Odd.size" in first.manifest  # the cached_property's function
        assert "af_test_odd.Base.__init_subclass__" in first.manifest
        edited = _module("af_test_odd", source.replace("return 1", "return 2"))
        assert (
            what_changed(first.manifest, fingerprint(edited.Odd).manifest)
            == "code changed: af_test_odd.Odd.size"
        )
    finally:
        del sys.modules["af_test_odd"]


def test_a_class_attribute_set_later_is_seen() -> None:
    module = _module(
        "af_test_attr",
        """
        from asyncflow import Task

        class Scaled(Task):
            factor = 2

            def build_task(self) -> None:
                pass

            def run_task(self) -> int:
                return 3 * self.factor
        """,
    )
    try:
        first = fingerprint(module.Scaled)
        module.Scaled.factor = 5
        assert fingerprint(module.Scaled).digest != first.digest
    finally:
        del sys.modules["af_test_attr"]


def test_code_from_a_module_python_does_not_know_is_hashed() -> None:
    # exec'd into a namespace that is not a registered module: when in doubt, it is yours.
    namespace: dict[str, object] = {"__name__": "af_test_nowhere"}
    exec("from asyncflow import Task\n\ndef helper():\n    return 1\n", namespace)
    exec(
        "class Floating(Task):\n"
        "    def build_task(self) -> None:\n        pass\n\n"
        "    def run_task(self) -> int:\n        return helper()\n",
        namespace,
    )
    cls = namespace["Floating"]
    assert isinstance(cls, type)
    first = fingerprint(cls)
    assert "af_test_nowhere.helper" in first.manifest
    exec("def helper():\n    return 2\n", namespace)
    assert fingerprint(cls).digest != first.digest
