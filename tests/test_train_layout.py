"""train/ reads from the top of each file: imports at the top, no function over 60 lines, a thin command."""

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TRAIN = REPO / "optical_cli" / "train"


def _functions(tree: ast.AST):
    """(enclosing class or None, function) for every function of a module."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    yield node.name, item
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield None, node


def _body_lines(function: ast.FunctionDef) -> int:
    """Lines of the body, its docstring aside."""
    body = function.body
    if (
        isinstance(body[0], ast.Expr)
        and isinstance(body[0].value, ast.Constant)
        and isinstance(body[0].value.value, str)
    ):
        body = body[1:]
    return body[-1].end_lineno - body[0].lineno + 1 if body else 0


def test_no_function_in_train_is_over_60_lines_and_the_command_body_is_under_40():
    long = []
    for path in sorted(TRAIN.glob("*.py")):
        for owner, function in _functions(ast.parse(path.read_text(encoding="utf-8"))):
            if function.end_lineno - function.lineno + 1 > 60:
                long.append(f"{path.name}:{function.lineno} {owner or ''}.{function.name}")
    assert not long, long
    command = ast.parse((REPO / "optical_cli" / "commands" / "train.py").read_text(encoding="utf-8"))
    bodies = {function.name: _body_lines(function) for _, function in _functions(command)}
    assert all(lines <= 40 for lines in bodies.values()), bodies


def test_train_modules_import_at_their_top():
    inside = []
    for path in sorted(TRAIN.glob("*.py")):
        for owner, function in _functions(ast.parse(path.read_text(encoding="utf-8"))):
            for node in ast.walk(function):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    inside.append(f"{path.name}:{node.lineno} in {function.name}")
    assert not inside, inside
