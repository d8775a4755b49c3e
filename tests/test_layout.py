"""The package map of docs/DESIGN.md, enforced: who may import whom, no cycles, no
function-level imports of project modules in library packages."""
import ast
import os

import pytest

from tests.scripts import ROOT

# Package -> project packages it may import (besides itself). docs/DESIGN.md "Package map".
ALLOWED = {
    "fileio": set(),
    "tf_extended": set(),
    "datasets": {"fileio"},
    "nets": {"tf_extended", "fileio"},
    "preprocessing": {"tf_extended"},
    "engine": {"fileio", "tf_extended", "nets", "preprocessing", "datasets"},
    "inference": {"fileio", "tf_extended", "nets", "preprocessing", "datasets"},
    "caffe_convert": {"fileio", "nets"},
    "deploy": {"fileio", "tf_extended", "nets", "preprocessing", "datasets"},
    "cli": {"engine", "nets", "tf_extended", "datasets"},
}


def _modules():
    for package in ALLOWED:
        folder = os.path.join(ROOT, package)
        if not os.path.isdir(folder):
            continue
        for name in sorted(os.listdir(folder)):
            if name.endswith(".py"):
                yield package, os.path.join(folder, name)


def _imports(path):
    """(imported module, line, is at module level) for each project import of a file."""
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    nested = {id(inner) for node in ast.walk(tree)
              if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
              for inner in ast.walk(node) if inner is not node}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            if name.split(".")[0] in ALLOWED or name.split(".")[0] == "notebooks":
                yield name, node.lineno, id(node) not in nested


def test_packages_import_only_what_the_map_allows():
    bad = []
    for package, path in _modules():
        for name, line, _ in _imports(path):
            top = name.split(".")[0]
            if top != package and top not in ALLOWED[package]:
                bad.append(f"{os.path.relpath(path, ROOT)}:{line} imports {name}")
    assert not bad, "\n".join(bad)


def test_no_function_level_imports_of_project_modules():
    bad = [f"{os.path.relpath(path, ROOT)}:{line} imports {name} inside a function"
           for _, path in _modules() for name, line, top in _imports(path) if not top]
    assert not bad, "\n".join(bad)


def test_no_import_cycles_between_modules():
    graph = {}
    files = {}
    for package, path in _modules():
        module = f"{package}.{os.path.splitext(os.path.basename(path))[0]}"
        files[module] = path
    for module, path in files.items():
        graph[module] = {n for n, _, _ in _imports(path) if n in files and n != module}
    state = {}

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                pytest.fail("import cycle: " + " -> ".join(stack[stack.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
