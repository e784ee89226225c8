"""The layering rules of STYLE.md, checked by walking every module's imports."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "glmv_cli"
HEAVY = {"torch", "transformers", "llguidance", "tokenizers"}
HEAVY_ALLOWED = {
    "engine/local.py",
    "engine/loader.py",
    "engine/grammar.py",
    "engine/closing.py",
    "engine/steps.py",
    "engine/decode.py",
    "engine/prefix.py",
    "engine/tiny.py",
}
# llguidance alone is light (a Rust extension, ~30 ms to import beside pydantic, no torch):
# the schema check compiles a grammar before any model loads.
LLGUIDANCE_ALLOWED = {"extraction/schema_check.py"}
UI = {"typer", "rich", "click"}
LAYERS = {"inputs", "engine", "outputs"}


def imports(path: Path, top_level: bool = False) -> set[str]:
    """Imported module names; with top_level, only those run at import time (not inside functions)."""
    tree = ast.parse(path.read_text())
    nodes = ast.walk(tree)
    if top_level:
        nodes = [
            n for stmt in tree.body if not isinstance(stmt, ast.FunctionDef | ast.ClassDef) for n in ast.walk(stmt)
        ]
    names = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def modules(top_level: bool = False):
    for path in sorted(PACKAGE.rglob("*.py")):
        yield path.relative_to(PACKAGE).as_posix(), imports(path, top_level)


def test_heavy_libraries_only_in_the_local_backend():
    """At import time; `glmv --version` may import torch inside its callback."""
    for rel, names in modules(top_level=True):
        heavy = {n.split(".")[0] for n in names} & HEAVY
        if rel in LLGUIDANCE_ALLOWED:
            heavy -= {"llguidance"}
        assert not heavy or rel in HEAVY_ALLOWED, f"{rel} imports {heavy}"


def test_typer_and_rich_only_in_the_cli():
    for rel, names in modules():
        ui = {n.split(".")[0] for n in names} & UI
        assert not ui or rel.startswith("cli/"), f"{rel} imports {ui}"


def test_nothing_imports_the_cli():
    for rel, names in modules():
        if not rel.startswith("cli/") and rel != "__main__.py":
            assert not any(n.startswith("glmv_cli.cli") for n in names), rel


def test_inputs_engine_outputs_are_independent():
    for rel, names in modules():
        layer = rel.split("/")[0]
        if layer in LAYERS:
            others = {n.split(".")[1] for n in names if n.startswith("glmv_cli.") and n.count(".") >= 1} & LAYERS
            assert others <= {layer}, f"{rel} imports {others - {layer}}"
