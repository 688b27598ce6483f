"""Layering: no import cycles between fewlabel's modules, domain packages never import the API,
models/data/train never import a method package, and what must stay light stays light (the
command line without torch, the report and tracking without Lightning)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import fewlabel
from conftest import FAST

SRC = Path(fewlabel.__file__).parent
FRONT = {"fewlabel", "fewlabel.api", "fewlabel.cli", "fewlabel.serve", "fewlabel.demo"}  # may use the API
METHOD_PACKAGES = ("fewlabel.semi",)
BELOW_METHODS = ("fewlabel.models", "fewlabel.data", "fewlabel.train")


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, top_level_only: bool) -> set[str]:
    """fewlabel modules ``path`` imports (at module level only, or anywhere); TYPE_CHECKING
    blocks excluded. ``from pkg import name`` counts as ``pkg.name`` when that is a module."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found: set[str] = set()

    def visit(nodes, nested: bool) -> None:
        for node in nodes:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                if not top_level_only:
                    visit(node.body, True)
                continue
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name.startswith("fewlabel"))
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                    base = f"{anchor}.{base}" if base else anchor
                if base.startswith("fewlabel"):
                    for alias in node.names:
                        candidate = f"{base}.{alias.name}"
                        is_module = (SRC.parent / candidate.replace(".", "/")).with_suffix(".py").is_file() or (
                            SRC.parent / candidate.replace(".", "/") / "__init__.py"
                        ).is_file()
                        found.add(candidate if is_module else base)
            for field in ("body", "orelse", "finalbody", "handlers"):
                visit(getattr(node, field, []) or [], nested)

    visit(tree.body, False)
    return found


MODULES = {module_name(p): p for p in SRC.rglob("*.py")}


def test_no_import_cycles_even_through_imports_inside_functions():
    graph = {name: imports(path, top_level_only=False) & set(MODULES) for name, path in MODULES.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return [*stack[stack.index(target) :], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for name in sorted(graph):
        if name not in state and (cycle := visit(name)):
            pytest.fail("import cycle: " + " -> ".join(cycle))


def test_domain_packages_never_import_the_api_and_lower_layers_no_method_package():
    for name, path in MODULES.items():
        used = imports(path, top_level_only=False)
        if name not in FRONT and not name.startswith("fewlabel.cli"):
            assert "fewlabel.api" not in used, f"{name} imports fewlabel.api"
        if name.startswith(BELOW_METHODS):
            bad = [u for u in used if u.startswith(METHOD_PACKAGES)]
            assert not bad, f"{name} imports the method package(s) {bad}"


def run_python(code: str) -> str:
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert completed.returncode == 0, completed.stderr[-2000:]
    return completed.stdout


def test_importing_the_command_line_imports_neither_torch_nor_lightning():
    out = run_python("import sys, fewlabel.cli; print(sorted({'torch', 'lightning', 'timm'} & set(sys.modules)))")
    assert out.strip() == "[]"


def test_report_and_tracking_read_a_run_without_importing_lightning(split_folder, tmp_path):
    run = fewlabel.train(str(split_folder), tmp_path / "run", strategy="freeze-unfreeze", **FAST).run_dir
    (run / "report.html").unlink()
    code = (
        "import sys\n"
        "from fewlabel.report import write_report\n"
        "import fewlabel.tracking\n"
        f"write_report({str(run)!r})\n"
        "print('lightning' in sys.modules, 'pytorch_lightning' in sys.modules)"
    )
    assert run_python(code).strip() == "False False"
    assert "Grad-CAM" in (run / "report.html").read_text()  # the whole report, model included
