"""Imports point down the layers of the design, and nothing reaches into another's private parts.

The layers (``../shared/DESIGN.md``, "Layout"), lowest first::

    protocol, cra_agents._* helpers, semconv        the wire and shared helpers
    atlas, trace, examples                          load atlases / hash, store, verify chains /
                                                    the shipped example atlases
    policy                                          decides (reads atlases)
    runtime                                         the gate, sessions, resolution, observers
    guard, client                                   configure / session / @guarded, and HTTP
                                                    mode's client (configure(mode="http"))
    otel, tools, replay, report, notebook, cli,     users of the runtime and of the trace fold
    conformance, server

Every import statement counts, including those inside functions (a lazy import is still a
dependency). A module may import its own layer or lower ones; the runtime knows its observers
only through a plug-in name, never an import; ``cra_agents`` imports no integration; and no module
imports another package's private module (``cra_agents.<pkg>._x`` from outside ``<pkg>``) or a
private name of another package.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "cra_agents"
LAYER = {
    "protocol": 0,
    "semconv": 0,
    "atlas": 1,
    "examples": 1,
    "trace": 1,
    "policy": 2,
    "runtime": 3,
    "guard": 4,
    "otel": 5,
    "tools": 5,
    "replay": 5,
    "report": 5,
    "notebook": 5,
    "cli": 5,
    "conformance": 5,
    "server": 5,
    "client": 4,
}


def _unit(module: str) -> str:
    """The layer unit of a ``cra_agents`` module: its subpackage, or ``_base`` for helpers."""
    parts = module.split(".")
    if len(parts) == 1:
        return "root"
    return "_base" if parts[1].startswith("_") else parts[1]


def _layer(unit: str) -> int:
    return -1 if unit == "_base" else LAYER[unit]


def _type_only(tree: ast.Module) -> set[int]:
    """Ids of the import nodes under ``if TYPE_CHECKING:`` (no run-time dependency)."""
    hidden: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            hidden.update(id(child) for stmt in node.body for child in ast.walk(stmt))
    return hidden


def _imports(path: Path) -> list[tuple[int, str, list[str]]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    hidden = _type_only(tree)
    found: list[tuple[int, str, list[str]]] = []
    for node in ast.walk(tree):
        if id(node) in hidden:
            continue
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name, []) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module, [alias.name for alias in node.names]))
    return found


def _modules() -> list[tuple[str, Path]]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = list(relative.parts)
        if parts[-1] == "__init__":
            parts.pop()
        out.append((".".join(parts), path))
    return out


MODULES = _modules()


def test_every_unit_has_a_layer():
    """A new subpackage must be placed in the layers before it can be imported."""
    units = {_unit(name) for name, _ in MODULES} - {"root", "_base"}
    assert units <= LAYER.keys(), sorted(units - LAYER.keys())


@pytest.mark.parametrize(("name", "path"), MODULES, ids=[name for name, _ in MODULES])
def test_imports_point_down_and_stay_public(name, path):
    """Each import goes to the same or a lower layer, and through public names only."""
    unit = _unit(name)
    if unit == "root":
        return  # cra_agents/__init__.py re-exports the public names of every layer
    problems = []
    for line, target, names in _imports(path):
        top = target.split(".")[0]
        if top.startswith("cra_agents_"):
            problems.append(f"{line}: imports the integration {target}")
            continue
        if top != "cra_agents":
            continue
        other = _unit(target)
        if other == "root" and names and all(_is_module(n) for n in names):
            targets = [f"cra_agents.{n}" for n in names]  # from cra_agents import semconv
        elif other == "root":
            if _layer(unit) < LAYER["otel"]:
                problems.append(f"{line}: {unit} imports the cra_agents root; import the module")
            continue
        else:
            targets = [target]
        for target in targets:
            problems.extend(_check(unit, name, line, target, names))
    assert problems == [], f"{name}:\n" + "\n".join(problems)


def _is_module(name: str) -> bool:
    return (PACKAGE / f"{name}.py").exists() or (PACKAGE / name).is_dir()


def _check(unit: str, name: str, line: int, target: str, names: list[str]) -> list[str]:
    """What is wrong with ``name`` (of ``unit``) importing ``names`` from ``target``."""
    problems = []
    other = _unit(target)
    if unit == "_base":
        if other != "_base" and _layer(other) > 0:
            problems.append(f"{line}: shared helper {name} imports {target}")
    elif _layer(other) > _layer(unit):
        problems.append(f"{line}: {unit} (layer {_layer(unit)}) imports {target} (higher)")
    if other not in (unit, "_base"):
        if any(part.startswith("_") for part in target.split(".")[2:]):
            problems.append(f"{line}: imports the private module {target}")
        hidden = [n for n in names if n.startswith("_") and n != "__version__"]
        if hidden:
            problems.append(f"{line}: imports private names {hidden} from {target}")
    return problems


def test_the_runtime_imports_no_observer():
    """The runtime declares observers; it never imports cra_agents.otel (no import cycle)."""
    for name, path in MODULES:
        if _unit(name) in ("runtime", "guard", "policy", "trace", "atlas", "protocol"):
            assert all(
                not target.startswith("cra_agents.otel") for _, target, _ in _imports(path)
            ), name
