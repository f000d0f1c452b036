"""The layering the design card asks for, checked: core/ knows nothing of Slack and reads no environment;
there is no module-level Bolt App."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def modules(package: str):
    for path in sorted((ROOT / package).rglob("*.py")):
        yield path, ast.parse(path.read_text(encoding="utf-8"))


def imported(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_core_does_not_import_slack_or_the_outer_layers():
    for path, tree in modules("core"):
        bad = imported(tree) & {"slack_bolt", "slack_sdk", "handlers", "bot"}
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_core_reads_no_environment():
    for path, tree in modules("core"):
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv"):
                raise AssertionError(f"{path.relative_to(ROOT)}:{node.lineno} reads the environment")


def test_no_module_level_app():
    for package in ("bot", "handlers"):
        for path, tree in modules(package):
            for node in tree.body:
                if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
                    func = node.value.func
                    name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
                    assert name not in ("App", "AsyncApp"), f"{path.relative_to(ROOT)}:{node.lineno}"


def test_handlers_do_not_import_the_composition_root():
    """bot/ wires handlers/ and core/ together; handlers receive what they need and never reach back up."""
    for path, tree in modules("handlers"):
        bad = imported(tree) & {"bot"}
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"
