"""Imports run one way: `pipeline/` and `model/` import the shared layers (`ct_io/`,
`tfrecords_schema/`, `cli_shell/`), never each other; the shared layers import neither; no
module imports itself through a circle; pure maths modules load no I/O library."""

import ast
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("pipeline", "model", "ct_io", "tfrecords_schema", "cli_shell")
SHARED = ("ct_io", "tfrecords_schema", "cli_shell")


def module_files() -> dict[str, str]:
    modules = {}
    for package in PACKAGES:
        for root, _, files in os.walk(os.path.join(REPO, package)):
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(root, name)
                    module = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".")
                    modules[module.removesuffix(".__init__")] = path
    return modules


def imports_of(path: str, modules: dict[str, str]) -> set[str]:
    """Our modules that the file imports (at any depth in the file, `TYPE_CHECKING` blocks too)."""
    found = set()
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        found.update(name for name in names if name in modules)
    return found


GRAPH = {module: imports_of(path, module_files()) for module, path in module_files().items()}


@pytest.mark.parametrize("importer, forbidden", [("pipeline", ("model",)), ("model", ("pipeline",)),
                                                 *((shared, ("pipeline", "model")) for shared in SHARED)])
def test_imports_run_one_way(importer, forbidden):
    wrong = sorted(f"{module} -> {target}" for module, targets in GRAPH.items() if module.split(".")[0] == importer
                   for target in targets if target.split(".")[0] in forbidden)
    assert wrong == []


def test_no_import_circle():
    circles = []

    def visit(module, path):
        for target in GRAPH.get(module, ()):
            if target == path[0]:
                circles.append(" -> ".join([*path, target]))
            elif target not in path and len(path) < 8:
                visit(target, [*path, target])

    for module in GRAPH:
        visit(module, [module])
    assert [c for c in circles if not c.startswith(c.split(" -> ")[-1] + ".")] == []


@pytest.mark.parametrize("module", ["pipeline.kernels", "pipeline.noise", "pipeline.projection", "pipeline.respiratory",
                                    "pipeline.respiratory_measures",
                                    "ct_io.hu", "ct_io.series"])
def test_pure_module_loads_no_io_library(module):
    blocked = ("SimpleITK", "pydicom", "apache_beam", "tensorflow", "requests", "google")
    code = (f"import sys\nfor name in {blocked!r}: sys.modules[name] = None\n"
            f"import {module}\nprint('ok')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": REPO})
    assert done.stdout.strip() == "ok", done.stderr[-500:]
