"""Arrows point down: every module's imports, absolute and relative, against the layer order; no cycles.

Layers, lowest first (a module may import its own layer and those below; never above):
  0 foundation: xmlsafe, logs
  1 protocol, neighbours
  2 model and planner: model, planner, validation, importer (pure: device lists in, declarations out)
  3 provisioner: steps, provisioner, sudi
  4 stores: stores.*, downloads, handoff
  5 edges: listener, app, serving, httpserver, cli, views, metrics, service_module, simulator.*, clixon_module.*, discovery,
    element_standin
Flask, werkzeug, gunicorn and httptools only in the web edges; clixon-pyapi only in the Clixon store and the service module.
"""

from __future__ import annotations

import ast
import os

import pytest

from conftest import REPO

PACKAGE = os.path.join(REPO, "pnp_service")
LAYERS = [
    {"xmlsafe", "logs", "backoff"},
    {"protocol", "neighbours"},
    {"model", "steps", "planner", "validation", "importer"},
    {"machine", "provisioner", "sudi"},
    {"stores", "downloads", "handoff", "sightings", "behind", "timeline"},
    {"listener", "app", "serving", "httpserver", "cli", "composition", "views", "metrics", "service_module", "simulator", "clixon_module",
     "discovery", "element_standin", "ui", "summary"},
]
WEB = {"flask", "werkzeug", "gunicorn", "httptools"}
WEB_EDGES = {"app", "serving", "httpserver", "cli", "composition", "ui"}
CLIXON_EDGES = {"stores.clixon.netconf", "service_module", "clixon_module.pnp_service_module"}


def module_name(path: str) -> str:
    relative = os.path.relpath(path, PACKAGE)[:-3].replace(os.sep, ".")
    if relative == "__init__":
        return ""  # the package itself (its version): the foundation
    return relative[: -len(".__init__")] if relative.endswith(".__init__") else relative


def resolve(importer: str, is_package: bool, node: ast.ImportFrom) -> list[str]:
    """The ``pnp_service``-relative names an ImportFrom brings in (``from . import x`` included)."""
    if node.level == 0:
        if not (node.module or "").startswith("pnp_service"):
            return []
        anchor, part = [], (node.module or "")[len("pnp_service"):].lstrip(".")
    else:
        parts = importer.split(".") if importer else []
        anchor = parts if is_package else parts[:-1]
        anchor = anchor[: len(anchor) - (node.level - 1)]
        part = node.module or ""
    base = ".".join(anchor + ([part] if part else []))
    if not part:  # "from . import x": x are modules
        return [".".join(filter(None, [base, alias.name])) for alias in node.names]
    return [base]


def modules():
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                yield path, module_name(path), name == "__init__.py"


def imports_of(path: str, importer: str, is_package: bool) -> tuple[set[str], set[str]]:
    """(third-party top-level names, pnp_service modules) imported anywhere in the file, lazily too."""
    tree = ast.parse(open(path, encoding="utf-8").read())
    external, internal = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("pnp_service"):
                    internal.add(alias.name[len("pnp_service"):].lstrip("."))
                else:
                    external.add(alias.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom):
            names = resolve(importer, is_package, node)
            if node.level == 0 and not (node.module or "").startswith("pnp_service"):
                external.add((node.module or "").split(".")[0])
            internal.update(n for n in names if n)
    return external, internal


def layer_of(module: str) -> int:
    if module == "":
        return 0
    top = module.split(".")[0]
    for index, layer in enumerate(LAYERS):
        if top in layer:
            return index
    raise AssertionError(f"pnp_service.{module} belongs to no layer: add it to LAYERS in {__file__}")


def graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports (a name that is not a module means its package)."""
    known = {name for _, name, _ in modules()}
    found = {}
    for path, name, is_package in modules():
        _, internal = imports_of(path, name, is_package)
        targets = set()
        for target in internal:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target != name:
                targets.add(target)
        found[name] = targets
    return found


def test_the_resolver_sees_relative_imports():
    """The check below can fail: ``from . import x`` and ``from ..y import z`` resolve to modules."""
    assert resolve("stores.embedded", False, ast.parse("from .. import model").body[0]) == ["model"]
    assert resolve("stores.embedded", False, ast.parse("from ..planner import plan").body[0]) == ["planner"]
    assert resolve("stores.clixon", True, ast.parse("from .netconf import Session").body[0]) == ["stores.clixon.netconf"]
    assert resolve("stores.clixon.store", False, ast.parse("from ... import model").body[0]) == ["model"]
    assert resolve("cli", False, ast.parse("from . import logs, views").body[0]) == ["logs", "views"]


def test_every_module_has_a_layer_and_imports_nothing_above_it():
    for name, imported in graph().items():
        own = layer_of(name)
        for target in imported:
            assert layer_of(target) <= own, f"pnp_service.{name} (layer {own}) imports pnp_service.{target} (layer {layer_of(target)})"


def test_there_are_no_import_cycles():
    edges = graph()
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for target in edges.get(node, ()):
            if state.get(target) == 1:
                raise AssertionError("import cycle: " + " -> ".join(trail + [node, target]))
            if state.get(target) is None and target in edges:
                visit(target, trail + [node])
        state[node] = 2

    for node in edges:
        if state.get(node) is None:
            visit(node, [])


@pytest.mark.parametrize("path, name, is_package", list(modules()), ids=lambda value: value if isinstance(value, str) else "")
def test_web_framework_and_controller_api_stay_at_their_edges(path, name, is_package):
    external, _ = imports_of(path, name, is_package)
    if name.split(".")[0] not in WEB_EDGES:
        assert not external & WEB, f"pnp_service.{name} imports {external & WEB}"
    if name not in CLIXON_EDGES:
        assert "clixon" not in external, f"pnp_service.{name} imports clixon-pyapi"


def test_every_module_says_what_it_owns():
    for path, name, _ in modules():
        tree = ast.parse(open(path, encoding="utf-8").read())
        if name and tree.body:
            assert ast.get_docstring(tree), f"pnp_service/{os.path.relpath(path, PACKAGE)} has no module docstring"


def test_no_function_is_longer_than_80_lines():
    """A function that does not fit on a screen does more than one thing: split it (the command line's parser is
    one function per command group, the app's routes call module-level helpers)."""
    long = []
    for root, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(root, name)
                for node in ast.walk(ast.parse(open(path).read())):
                    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                        length = node.end_lineno - node.lineno + 1
                        if length > 80:
                            long.append(f"{os.path.relpath(path, PACKAGE)}:{node.lineno} {node.name} ({length} lines)")
    assert not long, long
