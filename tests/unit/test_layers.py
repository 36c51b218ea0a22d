"""The import graph of ``gateway/`` follows the data path: no circles, no production code importing the
demo, no lower layer importing a higher one, and a short top level.

Every ``import`` counts, wherever it is: at the top of a module, inside a function (imported lazily
so a command does not pay for another's libraries), or under ``TYPE_CHECKING``. A module belongs to
its package under ``gateway/`` (``gateway/status/app.py`` -> ``status``), a top-level module to
itself. README.md draws the same order as a map.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "gateway"

# Lowest first. A module may import its own layer and the layers below it, never one above.
LAYERS: list[tuple[str, ...]] = [
    # shared by everything: wire models and in-RAM records, the settings model, the floor plan,
    # logging, retry timing, the version, what the SQLite stores share on a small or full disk
    ("gateway", "models", "config", "layout", "log", "backoff", "storage"),
    # the pure cores, in the order an observation goes through them (no I/O, time passed in)
    ("parsers",),
    ("identity",),
    ("localization",),
    ("presence",),
    ("pipeline",),
    # I/O adapters: the MQTT transport first (sources, content and the uplink speak it), then content
    # activation, the simulator and the capture relay (which stand for the store and the radios),
    # the sources that turn them into observations, the uplink, the status page
    ("mqtt",),
    ("content",),
    ("sim",),
    ("capture",),
    ("sources",),
    ("uplink",),
    ("status",),
    # what runs: offline tools, the daemon that wires everything, the demo around the daemon, the CLI
    ("ops",),
    ("runtime",),
    ("demo",),
    ("cli", "__main__"),
]
LAYER_OF = {unit: i for i, units in enumerate(LAYERS) for unit in units}
MAX_TOP_LEVEL_MODULES = 8  # beside the packages and __init__/__main__


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def unit_of(module: str) -> str:
    """``gateway.status.app`` -> ``status``; ``gateway.config`` -> ``config``; ``gateway`` -> ``gateway``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def import_graph() -> dict[str, set[str]]:
    """module -> the ``gateway`` modules it imports (``from gateway.x import y`` is ``gateway.x.y``
    when that is a module, else ``gateway.x``)."""
    modules = {module_name(p): p for p in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in modules.items():
        graph[name]  # every module is a node, importing something or not
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative import
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for t in targets:
                if t == "gateway" or t.startswith("gateway."):
                    while t not in modules and "." in t:  # gateway.x.y where y is an attribute
                        t = t.rpartition(".")[0]
                    if t != name:
                        graph[name].add(t)
    return graph


GRAPH = import_graph()


def test_every_unit_has_a_layer() -> None:
    units = {unit_of(m) for m in GRAPH}
    assert units - set(LAYER_OF) == set(), "add the new package or module to LAYERS (and README's map)"
    assert set(LAYER_OF) - units == set(), "LAYERS names something that is not in gateway/"


def test_no_lower_layer_imports_a_higher_one() -> None:
    wrong = sorted(
        f"{a} ({unit_of(a)}) imports {b} ({unit_of(b)})"
        for a, targets in GRAPH.items()
        for b in targets
        if LAYER_OF[unit_of(a)] < LAYER_OF[unit_of(b)]
    )
    assert wrong == []


def test_production_code_never_imports_the_demo() -> None:
    allowed = {unit_of(m) for m in GRAPH if LAYER_OF[unit_of(m)] >= LAYER_OF["demo"]}
    wrong = sorted(
        f"{a} imports {b}"
        for a, targets in GRAPH.items()
        for b in targets
        if unit_of(b) == "demo" and unit_of(a) not in allowed
    )
    assert wrong == []


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as [a, b, ..., a], or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for start in sorted(graph):
        if state.get(start):
            continue
        path = [start]
        stack = [iter(sorted(graph[start]))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph.get(nxt, ()))))
    return None


def test_no_import_circles() -> None:
    assert find_cycle(GRAPH) is None, " -> ".join(find_cycle(GRAPH) or [])


def test_the_top_level_stays_short() -> None:
    top = sorted(p.stem for p in ROOT.glob("*.py") if p.stem not in ("__init__", "__main__"))
    assert len(top) <= MAX_TOP_LEVEL_MODULES, top


@pytest.mark.parametrize(
    ("graph", "cycle"),
    [
        ({"a": {"b"}, "b": {"c"}, "c": set()}, None),
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, ["a", "b", "c", "a"]),
        ({"a": {"b", "x"}, "b": set(), "x": {"y"}, "y": {"x"}}, ["x", "y", "x"]),
        ({"a": {"a2"}, "a2": {"b"}, "b": {"a2"}}, ["a2", "b", "a2"]),
    ],
)
def test_the_circle_finder_finds_circles(graph: dict[str, set[str]], cycle: list[str] | None) -> None:
    assert find_cycle(graph) == cycle


def test_the_walker_sees_lazy_and_type_checking_imports(tmp_path: Path) -> None:
    """The graph must include imports inside functions and under TYPE_CHECKING (the daemon <-> status
    provider circle was one of those)."""
    provider = GRAPH["gateway.runtime.status_provider"]
    assert "gateway.status.provider" in provider
    assert "gateway.runtime.daemon" not in provider
    assert "gateway.sources.ble" in GRAPH["gateway.runtime.daemon"]  # imported inside a function
