"""The house rules a newcomer relies on, checked: dependencies visible at the top of each module,
no import loops, domain code never importing the CLI, thin commands, and a fast ``optical --help``.

Imports inside functions below ``commands/`` are ruff's PLC0415 (pyproject.toml); each exception
carries a ``noqa`` that says why (an optional or heavy library's one import).
"""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys
import textwrap
from pathlib import Path

import typer

from optical_cli.cli import app

PACKAGE = Path(__file__).resolve().parent.parent / "optical_cli"
MAX_COMMAND_BODY_LINES = 40


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _top_level_imports(path: Path) -> set[str]:
    """The package modules a module imports at its top level (relative imports resolved)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = _module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found = set()
    for node in tree.body:
        if isinstance(node, ast.If):  # `if TYPE_CHECKING:` blocks are not imports at run time
            continue
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            if module.startswith("optical_cli"):
                found.add(module)
                found.update(f"{module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("optical_cli"))
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    return {name: {m for m in _top_level_imports(path) if m in modules and m != name} for name, path in modules.items()}


def test_no_import_loops():
    graph = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for child in graph[node]:
            if state.get(child) == 1:
                raise AssertionError("import loop: " + " -> ".join(stack[stack.index(child) :] + [child]))
            if child not in state:
                visit(child)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_nothing_below_commands_imports_a_command():
    graph = _graph()
    offenders = {
        module: sorted(m for m in imports if m.startswith("optical_cli.commands"))
        for module, imports in graph.items()
        if not module.startswith(("optical_cli.commands", "optical_cli.cli"))
    }
    assert not {module: found for module, found in offenders.items() if found}


# The layers below the jobs: what models/ and engines/ are built from must not reach up into a job
# (the benchmark, training, the index, the sweeps), which would drag that job into every server.
LOWER_LAYERS = ("optical_cli.models", "optical_cli.engines")
JOBS = ("optical_cli.bench", "optical_cli.train", "optical_cli.index", "optical_cli.sweep")


def test_models_and_engines_import_no_job_package():
    graph = _graph()
    offenders = {
        module: sorted(m for m in imports if m.startswith(JOBS))
        for module, imports in graph.items()
        if module.startswith(LOWER_LAYERS)
    }
    assert not {module: found for module, found in offenders.items() if found}


def _commands(group: typer.Typer):
    for command in group.registered_commands:
        yield command.callback
    for sub in group.registered_groups:
        yield from _commands(sub.typer_instance)


def test_every_command_is_thin():
    """A command parses, calls its domain, reports: at most 40 lines of body (signature and docstring aside)."""
    long = {}
    for callback in _commands(app):
        source = textwrap.dedent(inspect.getsource(callback))
        function = ast.parse(source).body[0]
        body = function.body[1:] if ast.get_docstring(function) else function.body
        lines = body[-1].end_lineno - body[0].lineno + 1
        if lines > MAX_COMMAND_BODY_LINES:
            long[callback.__name__] = lines
    assert not long, f"command bodies over {MAX_COMMAND_BODY_LINES} lines: {long}"


def test_help_imports_no_model_library():
    """`optical --help` loads the CLI, not torch or transformers (they cost seconds before any output)."""
    heavy = "('torch', 'transformers', 'numpy')"
    code = f"import sys, optical_cli.cli; print(sorted(m for m in {heavy} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
