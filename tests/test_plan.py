"""Fresh or stale, and why: the plan, tested without an event loop (plain `def` tests)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio
import pytest

from asyncflow import Const, Requires, RequiresList, Task
from asyncflow._cache.session import Record
from asyncflow._graph import FRESH, STALE, build_graph
from asyncflow._plan import (
    CODE_CHANGED,
    DYNAMIC_CHANGED,
    ELSEWHERE,
    INPUTS_CHANGED,
    NO_RESULT,
    NOT_STALE,
    UPSTREAM_STALE,
    Awaited,
    add_awaited,
    is_current,
    node_signature,
    order,
    plan,
    prepare,
    signature,
)
from asyncflow._recipes import encode
from asyncflow._source import Fingerprint

if TYPE_CHECKING:
    from asyncflow._graph import Graph


class Leaf(Task):
    def build_task(self, i: int) -> None:
        self.i = i

    async def run_task(self) -> int:
        return self.i


class Scaled(Task):
    leaf: Requires[int]
    factor: Requires[int]

    def build_task(self, i: int, factor: int) -> None:
        self.leaf = Leaf(i)
        self.factor = Const(factor)

    async def run_task(self) -> int:
        return self.leaf * self.factor


class Total(Task):
    parts: RequiresList[int]

    def build_task(self, n: int, factor: int) -> None:
        self.parts = [Scaled(i, factor) for i in range(n)]

    async def run_task(self) -> int:
        return sum(self.parts)


def _made(digest: str, where: str = "here") -> Fingerprint:
    return Fingerprint(digest, {"part": digest}, where)


SOURCES = {Leaf: _made("leaf-src"), Scaled: _made("scaled-src"), Total: _made("total-src")}


def _records(graph: Graph, sources: dict[type, Fingerprint] = SOURCES) -> dict[str, Record]:
    """Records as a run of `graph` would leave them: every node fresh, deps first."""
    versions: dict[str, str] = {}
    records: dict[str, Record] = {}
    for node in graph:
        deps = signature([versions[d.key] for d in node.deps], node.consts)
        versions[node.key] = f"v-{node.key}"
        records[node.key] = Record(sources[type(node.task)].digest, versions[node.key], deps)
    return records


def _why(graph: Graph) -> dict[str, int]:
    return {repr(n.task): n.why for n in graph}


def test_nothing_cached_is_all_stale_for_no_result() -> None:
    graph = build_graph(Total(2, 1))
    stale = plan(graph, {}, SOURCES, detect=True)
    assert [repr(n.task) for n in stale] == [repr(n.task) for n in graph]  # deps first
    assert all(n.state == STALE for n in graph)
    assert set(_why(graph).values()) == {NO_RESULT}


def test_matching_records_are_all_fresh_with_their_versions() -> None:
    records = _records(build_graph(Total(2, 1)))
    graph = build_graph(Total(2, 1))
    assert plan(graph, records, SOURCES, detect=True) == []
    assert all(n.state == FRESH and n.why == NOT_STALE for n in graph)
    assert all(n.version == records[n.key].version for n in graph)


def test_a_changed_class_is_stale_and_dooms_its_dependents() -> None:
    records = _records(build_graph(Total(2, 1)))
    graph = build_graph(Total(2, 1))
    changed = {**SOURCES, Leaf: _made("leaf-src-2")}
    stale = plan(graph, records, changed, detect=True)
    assert _why(graph) == {
        "Leaf(0)": CODE_CHANGED,
        "Leaf(1)": CODE_CHANGED,
        "Scaled(0, 1)": UPSTREAM_STALE,
        "Scaled(1, 1)": UPSTREAM_STALE,
        "Total(2, 1)": UPSTREAM_STALE,
    }
    assert len(stale) == 5
    # Without source detection, the same records are fresh.
    again = build_graph(Total(2, 1))
    made_where = {f.digest: f.identity for f in SOURCES.values()}
    assert plan(again, records, changed, detect=False, made_where=made_where) == []


def test_code_changed_comes_before_upstream_stale() -> None:
    records = _records(build_graph(Total(2, 1)))
    graph = build_graph(Total(2, 1))
    plan(graph, records, {**SOURCES, Leaf: _made("new"), Total: _made("new")}, detect=True)
    assert _why(graph)["Total(2, 1)"] == CODE_CHANGED  # its own change is named, not its deps'


def test_no_result_comes_before_upstream_stale() -> None:
    records = _records(build_graph(Total(2, 1)))
    del records[Leaf(0).__af_key__]
    del records[Scaled(0, 1).__af_key__]
    graph = build_graph(Total(2, 1))
    plan(graph, records, SOURCES, detect=True)
    why = _why(graph)
    assert (why["Leaf(0)"], why["Scaled(0, 1)"], why["Total(2, 1)"]) == (NO_RESULT, NO_RESULT, UPSTREAM_STALE)
    assert (why["Leaf(1)"], why["Scaled(1, 1)"]) == (NOT_STALE, NOT_STALE)


def test_an_upstream_result_that_changed_makes_inputs_changed() -> None:
    records = _records(build_graph(Total(2, 1)))
    leaf = Leaf(1).__af_key__
    records[leaf] = records[leaf]._replace(version="v-rewritten")  # another run wrote it since
    graph = build_graph(Total(2, 1))
    plan(graph, records, SOURCES, detect=True)
    why = _why(graph)
    assert why["Leaf(1)"] == NOT_STALE
    assert why["Scaled(1, 1)"] == INPUTS_CHANGED
    assert why["Total(2, 1)"] == UPSTREAM_STALE
    assert why["Scaled(0, 1)"] == NOT_STALE


def test_a_const_value_that_changed_makes_inputs_changed() -> None:
    records = _records(build_graph(Total(1, 2)))
    # Same keys but for the Const: rename the records of factor 2 as if made for factor 3.
    moved = {k.replace(", 2)", ", 3)"): r for k, r in records.items()}
    graph = build_graph(Total(1, 3))
    assert {n.key for n in graph} == set(moved)
    plan(graph, moved, SOURCES, detect=True)
    assert _why(graph) == {
        "Leaf(0)": NOT_STALE,
        "Scaled(0, 3)": INPUTS_CHANGED,
        "Total(1, 3)": UPSTREAM_STALE,
    }


def test_without_detection_a_record_must_come_from_the_same_file() -> None:
    records = _records(build_graph(Total(2, 1)))
    graph = build_graph(Total(2, 1))
    elsewhere = {**SOURCES, Leaf: _made("leaf-src-2", where="another file")}
    made_where = {f.digest: f.identity for f in SOURCES.values()}
    plan(graph, records, elsewhere, detect=False, made_where=made_where)
    assert _why(graph)["Leaf(0)"] == ELSEWHERE  # same name, another file's class
    assert _why(graph)["Scaled(0, 1)"] == UPSTREAM_STALE
    unknown = build_graph(Total(2, 1))  # a record whose fingerprint the index does not know
    plan(unknown, records, SOURCES, detect=False, made_where={})
    assert set(_why(unknown).values()) == {ELSEWHERE}


def test_is_current() -> None:
    record = Record("src", "v1", "deps")
    assert is_current(record, "deps", "src")
    assert not is_current(None, "deps", "src")
    assert not is_current(record, "other deps", "src")
    assert not is_current(record, "deps", "other src")


def test_node_signature_is_kept_only_when_final() -> None:
    graph = build_graph(Total(1, 1))
    total = graph.root
    (scaled,) = total.deps
    scaled.version = "v1"
    first = node_signature(total)
    assert total.signature is None
    scaled.version = "v2"
    assert node_signature(total, keep=True) != first
    scaled.version = "v3"
    assert node_signature(total) == total.signature  # kept: the deps' versions were final


def test_prepare_fingerprints_each_class_once() -> None:
    graph, fingerprints, _ = prepare(Total(3, 1))
    assert len(graph) == 7
    assert set(fingerprints) == {Leaf, Scaled, Total}
    assert len({f.digest for f in fingerprints.values()}) == 3
    assert len({f.identity for f in fingerprints.values()}) == 1  # all from this file


def test_the_plan_needs_no_event_loop() -> None:
    with pytest.raises(anyio.NoEventLoopError):
        anyio.get_current_task()  # none runs in a plain def test
    graph, fingerprints, _ = prepare(Total(2, 1))
    assert len(plan(graph, {}, fingerprints, detect=True)) == 5


def _awaiting(records: dict[str, Record], parent: Task, children: list[Task], versions: list[str]) -> None:
    """Make `parent`'s record say its body awaited `children` and read `versions` of them."""
    records[parent.__af_key__] = records[parent.__af_key__]._replace(
        awaited=encode(zip(children, versions, strict=True))
    )


def test_a_parent_is_fresh_only_while_what_it_awaited_is_fresh_and_unchanged() -> None:
    records = _records(build_graph(Leaf(9)))
    for i in range(2):
        records.update(_records(build_graph(Scaled(i, 3))))
    children = [Scaled(0, 3), Scaled(1, 3)]
    versions = [records[c.__af_key__].version for c in children]
    _awaiting(records, Leaf(9), children, versions)

    def planned(records: dict[str, Record]) -> tuple[list[str], dict[str, int]]:
        graph = build_graph(Leaf(9))
        known = {n.key: n for n in graph}
        awaited: dict[object, Awaited] = {}
        added = add_awaited(list(graph), records, known, awaited)  # type: ignore[arg-type]
        nodes = order([*graph, *added], awaited)  # type: ignore[arg-type]
        plan(nodes, records, SOURCES, detect=True, awaited=awaited)  # type: ignore[arg-type]
        return [repr(n.task) for n in nodes], {repr(n.task): n.why for n in nodes}

    names, why = planned(records)
    assert names[-1] == "Leaf(9)"  # after the nodes it awaited, which come with their upstream
    assert set(names) == {"Leaf(9)", "Leaf(0)", "Leaf(1)", "Scaled(0, 3)", "Scaled(1, 3)"}
    assert set(why.values()) == {NOT_STALE}
    del records[Leaf(1).__af_key__]  # upstream of an awaited node
    _, why = planned(records)
    assert (why["Scaled(1, 3)"], why["Leaf(9)"], why["Scaled(0, 3)"]) == (UPSTREAM_STALE, DYNAMIC_CHANGED, 0)
    records.update(_records(build_graph(Scaled(1, 3))))
    _awaiting(records, Leaf(9), children, [versions[0], "another"])  # it read another result
    assert planned(records)[1]["Leaf(9)"] == DYNAMIC_CHANGED


def test_awaited_nodes_that_await_each_other_lose_what_they_awaited() -> None:
    a, b = build_graph(Leaf(1)).root, build_graph(Leaf(2)).root
    awaited = {a: Awaited([(b, "v")], ""), b: Awaited([(a, "v")], "")}
    assert set(order([a, b], awaited)) == {a, b}
    assert all(awaited[n].lost and not awaited[n].nodes for n in (a, b))
