"""Arrows point down: nothing below the edges imports Flask or clixon-pyapi."""

from __future__ import annotations

import ast
import os

from conftest import REPO

PACKAGE = os.path.join(REPO, "pnp_service")
# Edges may import the web framework or the controller API; nothing else may.
EDGES = {"app.py", "serving.py", "cli.py", "service_module.py", os.path.join("stores", "clixon.py"), os.path.join("clixon_module", "pnp_service_module.py")}


def imports(path: str) -> set[str]:
    with open(path, encoding="utf-8") as handle:
        tree = ast.parse(handle.read())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            found.add(("." * node.level) + (node.module or ""))
    return found


def modules():
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                yield os.path.relpath(path, PACKAGE), imports(path)


def test_no_flask_or_clixon_below_the_edges():
    for relative, names in modules():
        if relative in EDGES:
            continue
        bad = {n for n in names if n.split(".")[0] in ("flask", "werkzeug", "clixon", "gunicorn")}
        assert not bad, f"{relative} imports {bad}"


def test_protocol_and_planner_import_no_upper_layer():
    upper = ("provisioner", "steps", "stores", "listener", "app", "cli", "simulator")
    for relative, names in modules():
        if relative in ("protocol.py", "planner.py", "model.py"):
            bad = {n for n in names if n.lstrip(".").split(".")[0] in upper}
            assert not bad, f"{relative} imports {bad}"
