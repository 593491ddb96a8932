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
MAX_FUNCTION_LINES = 60
CLI_LAYER = ("optical_cli.cli", "optical_cli.commands", "optical_cli.reports")


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


def _body_lines(function: ast.FunctionDef) -> int:
    body = function.body[1:] if ast.get_docstring(function) and len(function.body) > 1 else function.body
    return body[-1].end_lineno - body[0].lineno + 1


def _functions(path: Path):
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def test_every_command_is_thin():
    """A command parses, calls its domain, reports: at most 40 lines of body (signature and docstring aside)."""
    long = {}
    for callback in _commands(app):
        function = ast.parse(textwrap.dedent(inspect.getsource(callback))).body[0]
        if _body_lines(function) > MAX_COMMAND_BODY_LINES:
            long[callback.__name__] = _body_lines(function)
    assert not long, f"command bodies over {MAX_COMMAND_BODY_LINES} lines: {long}"


def test_report_printers_are_as_thin_as_commands():
    """The thin-command rule covers every function of the CLI layer: commands' helpers and report printers."""
    long = {
        f"{path.relative_to(PACKAGE)}:{function.name}": _body_lines(function)
        for folder in ("commands", "reports")
        for path in (PACKAGE / folder).glob("*.py")
        for function in _functions(path)
        if _body_lines(function) > MAX_COMMAND_BODY_LINES
    }
    assert not long, f"CLI-layer functions over {MAX_COMMAND_BODY_LINES} lines of body: {long}"


def test_no_function_is_over_60_lines():
    long = {
        f"{path.relative_to(PACKAGE)}:{function.name}": function.end_lineno - function.lineno + 1
        for path in PACKAGE.rglob("*.py")
        for function in _functions(path)
        if function.end_lineno - function.lineno + 1 > MAX_FUNCTION_LINES
    }
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines (signature included): {long}"


def test_domain_modules_never_import_typer_or_rich():
    """Below the CLI layer code takes configs and returns results: it prints nothing and parses no flags."""
    offenders = {}
    for path in PACKAGE.rglob("*.py"):
        if _module_name(path).startswith(CLI_LAYER):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
        found = sorted(name for name in imported if name.split(".")[0] in ("typer", "rich", "click"))
        if found:
            offenders[_module_name(path)] = found
    assert not offenders


# The names allowed at the top of several modules, because they are one thing in several places: each
# command group's Typer app, and the functions both index stores implement (files and Milvus).
SHARED_NAMES = {
    "app": ("optical_cli.cli", "optical_cli.commands."),
    "live_rows": ("optical_cli.index.store", "optical_cli.index.milvus"),
}


def test_no_module_level_name_means_two_things():
    """A name defined at the top of two modules (functions, classes, constants) is one name for two things."""
    homes: dict[str, list[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            names = [node.name] if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) else []
            if isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                names = [target.id for target in targets if isinstance(target, ast.Name) and target.id != "__all__"]
            for name in names:
                homes.setdefault(name, []).append(_module_name(path))
    twice = {
        name: modules
        for name, modules in homes.items()
        if len(modules) > 1 and not all(module.startswith(SHARED_NAMES.get(name, ("-",))) for module in modules)
    }
    assert not twice, twice


def test_help_imports_no_model_library():
    """`optical --help` loads the CLI, not torch or transformers (they cost seconds before any output)."""
    heavy = "('torch', 'transformers', 'numpy')"
    code = f"import sys, optical_cli.cli; print(sorted(m for m in {heavy} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
