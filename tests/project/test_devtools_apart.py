"""The runtime never depends on the development tooling (issue 15, item 5): bot/ outside bot/devtools/, handlers/
and core/ import nothing from bot.devtools, but for the CLI's entry points named below, lazily."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def modules(package: str):
    for path in sorted((ROOT / package).rglob("*.py")):
        yield path, ast.parse(path.read_text(encoding="utf-8"))


#: The only places the runtime reaches into bot/devtools/, each lazily inside one function of the CLI: the demo, the
#: console, and DATABASE_URL's default (the private local cluster of a development machine).
DEVTOOLS_ENTRY_POINTS = {("bot/__main__.py", "cmd_demo"), ("bot/__main__.py", "cmd_console"),
                         ("bot/cli_support.py", "settings_with_database")}


def devtools_imports(tree: ast.AST):
    """(line, enclosing top-level function or None) of every import of bot.devtools in ``tree``."""
    def imports_devtools(node: ast.AST) -> bool:
        if isinstance(node, ast.Import):
            return any(a.name == "bot.devtools" or a.name.startswith("bot.devtools.") for a in node.names)
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            return (node.module == "bot.devtools" or node.module.startswith("bot.devtools.")
                    or (node.module == "bot" and any(a.name == "devtools" for a in node.names)))
        return False

    for top in tree.body:
        function = top.name if isinstance(top, (ast.FunctionDef, ast.AsyncFunctionDef)) else None
        for node in ast.walk(top):
            if imports_devtools(node):
                yield node.lineno, function


def test_the_runtime_does_not_import_the_development_tooling():
    """bot/ outside bot/devtools/, handlers/ and core/ never import bot.devtools (the local PostgreSQL, the demo
    world, the Slack stand-in, the request sender, the sandbox), except lazily in the CLI's entry points above."""
    for package in ("bot", "handlers", "core"):
        for path, tree in modules(package):
            name = path.relative_to(ROOT).as_posix()
            if name.startswith("bot/devtools/"):
                continue
            for line, function in devtools_imports(tree):
                assert (name, function) in DEVTOOLS_ENTRY_POINTS, (
                    f"{name}:{line} imports bot.devtools" + (f" in {function}()" if function else " at module level"))


def test_the_development_tooling_is_found_by_the_rule():
    """The rule above sees each way of importing the tooling, so that it cannot pass by missing them."""
    for source in ("import bot.devtools.localpg", "from bot.devtools import demo", "from bot import devtools",
                   "from bot.devtools.slack_standin import SlackStandIn", "def f():\n    import bot.devtools"):
        assert list(devtools_imports(ast.parse(source))), source
    for source in ("from bot import app", "import bot.server", "from core import devtools"):
        assert not list(devtools_imports(ast.parse(source))), source
