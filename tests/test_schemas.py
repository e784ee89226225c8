"""Schema resolution (every --schema form), the built-in schemas' bounds, and the sample truth files."""

from __future__ import annotations

import datetime
import json
import time
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from glmv_cli.errors import UsageError
from glmv_cli.extraction.schema_check import check_schema
from glmv_cli.extraction.schemas import (
    builtin_dirs,
    builtin_names,
    builtin_schemas,
    local_schema_files,
    resolve_schema,
)

SAMPLES = Path(__file__).resolve().parent.parent / "samples"
BUILTINS = ["document", "invoice", "receipt", "screenshot"]
SAMPLE_SCHEMAS = {
    "invoice-acme": "invoice",
    "receipt-cafe": "receipt",
    "screenshot-login": "screenshot",
    "report-3pages": "document",
}

ORDER_PY = '''
from pydantic import BaseModel, Field

class Item(BaseModel):
    sku: str | None = Field(None, max_length=20, description="Stock code")

class Order(BaseModel):
    """An order."""
    number: str | None = Field(None, max_length=20, description="{desc}")
    items: list[Item] | None = Field(None, max_length=5)
'''


def walk_unbounded(node: Any, path: str = "$") -> list[str]:
    """Paths of JSON Schema nodes that let a constrained decoder run forever."""
    problems: list[str] = []
    if isinstance(node, dict):
        kind = node.get("type")
        dated = node.get("format") in ("date", "date-time")
        if kind == "string" and "maxLength" not in node and "enum" not in node and not dated:
            problems.append(f"{path}: string without maxLength")
        if kind in ("number", "integer") and not ("minimum" in node and "maximum" in node):
            problems.append(f"{path}: number without minimum and maximum")
        if kind == "array" and "maxItems" not in node:
            problems.append(f"{path}: array without maxItems")
        for key, value in node.items():
            problems += walk_unbounded(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            problems += walk_unbounded(value, f"{path}[{i}]")
    return problems


@pytest.mark.parametrize("name", BUILTINS)
def test_builtin_resolves_and_is_bounded(name: str, tmp_path: Path) -> None:
    schema = resolve_schema(name, cwd=tmp_path)
    assert schema.name == name
    assert schema.source == "builtin"
    assert issubclass(schema.model, BaseModel)
    js = schema.json_schema()
    assert js["description"], "the docstring describes the schema in the prompt"
    assert js["additionalProperties"] is False
    assert walk_unbounded(js) == []
    for field_name, _, description in schema.fields():
        assert description, f"{name}.{field_name} has no description"
    for field in schema.model.model_fields.values():
        assert field.default is None, "every top-level field is optional"


def test_builtin_names_and_list() -> None:
    assert builtin_names() == BUILTINS
    assert [s.name for s in builtin_schemas()] == BUILTINS
    assert local_schema_files(Path("/nonexistent")) == []
    assert local_schema_files(SAMPLES.parent) == [], "the repo's own schemas/ are the built-ins"


@pytest.mark.parametrize("stem", sorted(SAMPLE_SCHEMAS))
def test_sample_truth_validates(stem: str, tmp_path: Path) -> None:
    schema = resolve_schema(SAMPLE_SCHEMAS[stem], cwd=tmp_path)
    truth = json.loads((SAMPLES / f"{stem}.truth.json").read_text(encoding="utf-8"))
    assert set(truth) == set(schema.model.model_fields), "truth files spell out every field"
    schema.model.model_validate(truth)


def test_samples_exist_and_are_small() -> None:
    for name in ["invoice-acme.png", "invoice-acme.pdf", "receipt-cafe.jpg", "screenshot-login.png"]:
        assert 0 < (SAMPLES / name).stat().st_size < 200_000
    assert 0 < (SAMPLES / "report-3pages.pdf").stat().st_size < 200_000


def test_fields_order_nested() -> None:
    names = [name for name, _, _ in resolve_schema("invoice").fields()]
    assert names[:3] == ["vendor_name", "vendor_address", "vendor_tax_id"]
    i = names.index("line_items")
    assert names[i : i + 5] == [
        "line_items",
        "line_items.description",
        "line_items.quantity",
        "line_items.unit_price",
        "line_items.amount",
    ]
    types = dict((n, t) for n, t, _ in resolve_schema("invoice").fields())
    assert types["invoice_date"] == "date"
    assert types["total"] == "float"
    assert types["line_items"] == "list[object]"


def test_user_schema_shadows_builtin_only_when_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "schemas").mkdir()
    (tmp_path / "schemas" / "invoice.py").write_text(ORDER_PY.format(desc="mine"))
    monkeypatch.chdir(tmp_path)
    schema = resolve_schema("invoice")
    assert schema.model.__name__ == "Order"  # the root model, not the Item it uses
    assert schema.source == str(tmp_path / "schemas" / "invoice.py")
    assert schema.describe() == "invoice (./schemas/invoice.py)"
    assert local_schema_files() == [tmp_path / "schemas" / "invoice.py"]
    assert [s.source for s in builtin_schemas()] == ["builtin"] * len(BUILTINS)


MARKED_PY = """
from pathlib import Path
from pydantic import BaseModel
Path(__file__).with_name("ran.txt").write_text("executed")

class Local(BaseModel):
    note: str | None = None
"""


def test_working_folder_schemas_run_only_when_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from glmv_cli.cli import app

    (tmp_path / "schemas").mkdir()
    (tmp_path / "schemas" / "document.py").write_text(MARKED_PY)
    marker = tmp_path / "schemas" / "ran.txt"
    monkeypatch.chdir(tmp_path)
    default = resolve_schema(None, cwd=tmp_path)
    assert (default.name, default.source, default.describe()) == ("document", "builtin", "document (built-in)")
    listed = CliRunner().invoke(app, ["schemas"])
    assert listed.exit_code == 0, listed.output
    assert "./schemas/document.py" in listed.output and "not loaded" in listed.output
    assert not marker.exists(), "neither the default nor the listing may run ./schemas/document.py"
    named = resolve_schema("document", cwd=tmp_path)
    assert marker.exists() and named.model.__name__ == "Local"
    assert named.describe() == "document (./schemas/document.py)"


def test_stray_schemas_folder_beside_the_package_is_ignored(tmp_path: Path) -> None:
    """In site-packages a top-level schemas/ belongs to some other distribution: never a built-in."""
    package = tmp_path / "site" / "glmv_cli"
    (package / "_builtin_schemas").mkdir(parents=True)
    (tmp_path / "site" / "schemas").mkdir()
    assert builtin_dirs(package) == [package / "_builtin_schemas"]
    (tmp_path / "site" / "pyproject.toml").write_text('[project]\nname = "other"\n')
    assert builtin_dirs(package) == [package / "_builtin_schemas"]
    (tmp_path / "site" / "pyproject.toml").write_text('[project]\nname = "glmv"\n')
    assert builtin_dirs(package) == [package / "_builtin_schemas", tmp_path / "site" / "schemas"]


def test_py_file_with_model_name(tmp_path: Path) -> None:
    (tmp_path / "order.py").write_text(ORDER_PY.format(desc="number"))
    schema = resolve_schema("order.py:Item", cwd=tmp_path)
    assert schema.name == "order.py:Item"
    assert [f[0] for f in schema.fields()] == ["sku"]
    with pytest.raises(UsageError, match="no Pydantic model named 'Nope'"):
        resolve_schema("order.py:Nope", cwd=tmp_path)


def test_py_file_with_schema_variable(tmp_path: Path) -> None:
    (tmp_path / "two.py").write_text(
        "from pydantic import BaseModel\n"
        "class A(BaseModel):\n    a: int | None = None\n"
        "class B(BaseModel):\n    b: int | None = None\n"
    )
    with pytest.raises(UsageError, match="several models"):
        resolve_schema("two.py", cwd=tmp_path)
    (tmp_path / "two.py").write_text((tmp_path / "two.py").read_text() + "SCHEMA = B\n")
    schema = resolve_schema(str(tmp_path / "two.py"))
    assert schema.model.__name__ == "B"
    assert schema.name == "two.py:B"


def test_forward_references_resolve(tmp_path: Path) -> None:
    (tmp_path / "fwd.py").write_text(
        "from __future__ import annotations\n"
        "from pydantic import BaseModel\n"
        "class Doc(BaseModel):\n    parts: list[Part] | None = None\n"
        "class Part(BaseModel):\n    text: str | None = None\n"
    )
    schema = resolve_schema("fwd.py", cwd=tmp_path)
    assert schema.model.__name__ == "Doc"
    assert schema.model.model_validate({"parts": [{"text": "x"}]}).parts[0].text == "x"


def test_broken_py_is_usage_error(tmp_path: Path) -> None:
    (tmp_path / "bad.py").write_text("from pydantic import BaseModel\nclass X(BaseModel:\n")
    with pytest.raises(UsageError, match="SyntaxError") as info:
        resolve_schema("bad.py", cwd=tmp_path)
    assert "\n" not in info.value.one_line()
    (tmp_path / "boom.py").write_text("import not_a_module_anywhere\n")
    with pytest.raises(UsageError, match="ModuleNotFoundError"):
        resolve_schema("boom.py", cwd=tmp_path)
    with pytest.raises(UsageError, match="not found"):
        resolve_schema("missing.py", cwd=tmp_path)


def test_json_schema_file(tmp_path: Path) -> None:
    spec = {
        "title": "purchase order",
        "type": "object",
        "required": ["po"],
        "properties": {
            "po": {"type": "string", "maxLength": 20, "description": "PO number"},
            "amount": {"type": ["number", "null"], "minimum": 0, "maximum": 100},
            "when": {"type": "string", "format": "date"},
            "rush": {"type": "boolean"},
            "status": {"enum": ["open", "closed"]},
            "buyer": {"$ref": "#/$defs/Party"},
            "lines": {"type": "array", "maxItems": 3, "items": {"$ref": "#/$defs/Line"}},
            "tags": {"anyOf": [{"type": "array", "items": {"type": "string"}}, {"type": "null"}]},
        },
        "$defs": {
            "Party": {"type": "object", "properties": {"name": {"type": "string", "description": "Who"}}},
            "Line": {"type": "object", "properties": {"qty": {"type": "integer"}}},
        },
    }
    (tmp_path / "po.json").write_text(json.dumps(spec))
    schema = resolve_schema("po.json", cwd=tmp_path)
    assert schema.name == "po"
    assert schema.model.__name__ == "PurchaseOrder"
    assert [f[0] for f in schema.fields()] == [
        "po", "amount", "when", "rush", "status", "buyer", "buyer.name", "lines", "lines.qty", "tags",
    ]  # fmt: skip
    ok = schema.model.model_validate(
        {
            "po": "A1",
            "amount": 5,
            "when": "2024-01-02",
            "status": "open",
            "buyer": {"name": "Bo"},
            "lines": [{"qty": 2}],
        }
    )
    assert ok.when == datetime.date(2024, 1, 2)
    assert ok.buyer.name == "Bo"
    for bad in [{}, {"po": "x" * 21}, {"po": "A", "amount": 101}, {"po": "A", "status": "lost"}]:
        with pytest.raises(ValueError):
            schema.model.model_validate(bad)
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(UsageError):
        resolve_schema("broken.json", cwd=tmp_path)


def test_recursive_json_schema_is_usage_error(tmp_path: Path) -> None:
    node = {"type": "object", "properties": {"child": {"$ref": "#/$defs/Node"}}}
    spec = {"$defs": {"Node": node}, "properties": {"root": {"$ref": "#/$defs/Node"}}}
    (tmp_path / "tree.json").write_text(json.dumps(spec))
    with pytest.raises(UsageError, match="recursive") as info:  # was a RecursionError
        resolve_schema("tree.json", cwd=tmp_path)
    assert "#/$defs/Node -> #/$defs/Node" in info.value.one_line()


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ([1, 2], "no top-level object"),
        ({"type": "array", "properties": {}}, "not an object"),
        ({"properties": {"a": {"type": 5}}}, "TypeError"),
        ({"properties": {"a": {"type": "text"}}}, "type 'text'"),
        ({"properties": {"a": {"$ref": "#/$defs/Missing"}}}, "not found"),
        ({"properties": {"a": {"type": "string", "pattern": "^(?!x)a$"}}}, "look-around"),
    ],
)
def test_invalid_json_schema_is_usage_error(tmp_path: Path, spec: Any, message: str) -> None:
    (tmp_path / "bad.json").write_text(json.dumps(spec))
    with pytest.raises(UsageError, match="bad.json") as info:
        resolve_schema("bad.json", cwd=tmp_path)
    assert message in info.value.one_line() and "\n" not in info.value.one_line()


def test_recursive_model_fails_the_check(tmp_path: Path) -> None:
    (tmp_path / "tree.py").write_text(
        "from __future__ import annotations\n"
        "from pydantic import BaseModel\n"
        "class Node(BaseModel):\n    label: str | None = None\n    children: list[Node] | None = None\n"
    )
    with pytest.raises(UsageError, match=r"tree.py:Node .* is recursive \(#/\$defs/Node -> #/\$defs/Node\)"):
        check_schema(resolve_schema("tree.py", cwd=tmp_path))


def test_uncompilable_schema_fails_the_check(tmp_path: Path) -> None:
    (tmp_path / "tags.py").write_text(
        "from pydantic import BaseModel, Field\n"
        "class Tags(BaseModel):\n    tags: set[str] | None = Field(None, max_length=3)\n"
    )
    with pytest.raises(UsageError, match="cannot be compiled to a grammar: Unimplemented keys.*uniqueItems"):
        check_schema(resolve_schema("tags.py", cwd=tmp_path))
    spec = {"properties": {"code": {"type": "string", "maxLength": 9, "pattern": "\\bINV"}}}
    (tmp_path / "code.json").write_text(json.dumps(spec))
    resolved = resolve_schema("code.json", cwd=tmp_path)  # Pydantic's regex engine takes \b; llguidance does not
    with pytest.raises(UsageError, match="code.json .*cannot be compiled") as info:
        check_schema(resolved)
    assert "\n" not in info.value.one_line()


def test_model_without_json_schema_fails_the_check(tmp_path: Path) -> None:
    (tmp_path / "odd.py").write_text(
        "from typing import Callable\nfrom pydantic import BaseModel\n"
        "class Odd(BaseModel):\n    f: Callable[[], int] | None = None\n"
    )
    with pytest.raises(UsageError, match="has no JSON Schema"):
        check_schema(resolve_schema("odd.py", cwd=tmp_path))


@pytest.mark.parametrize("spec", [None, *BUILTINS, "vendor, total float: grand total, due date, paid bool"])
def test_builtins_and_inline_pass_the_check_quickly(spec: str | None) -> None:
    resolved = resolve_schema(spec)
    timings = []
    for _ in range(3):  # best of three: the machine is shared
        started = time.perf_counter()
        check_schema(resolved)
        timings.append(time.perf_counter() - started)
    assert min(timings) < 0.2


def test_check_loads_no_torch() -> None:
    import subprocess
    import sys

    code = (
        "import sys; from glmv_cli.extraction.schema_check import check_schema as c;"
        "from glmv_cli.extraction.schemas import resolve_schema as r; c(r('invoice'));"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers')))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_inline_dsl() -> None:
    schema = resolve_schema("vendor, total float: grand total incl. tax, due date, paid bool, n int")
    assert schema.name == "inline" and schema.source == "inline"
    assert schema.fields() == [
        ("vendor", "str", ""),
        ("total", "float", "grand total incl. tax"),
        ("due", "date", ""),
        ("paid", "bool", ""),
        ("n", "int", ""),
    ]
    assert walk_unbounded(schema.json_schema()) == []
    assert schema.model().model_dump() == {"vendor": None, "total": None, "due": None, "paid": None, "n": None}
    multiline = resolve_schema("vendor: who sold it, by name\ntotal float")
    assert multiline.fields()[0] == ("vendor", "str", "who sold it, by name")
    with pytest.raises(UsageError, match="Unknown type"):
        resolve_schema("vendor, total money")


def test_unknown_name_is_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="Unknown schema 'nope'") as info:
        resolve_schema("nope", cwd=tmp_path)
    assert "invoice" in (info.value.hint or "")


def test_fingerprint_stable_and_sensitive(tmp_path: Path) -> None:
    assert resolve_schema("invoice").fingerprint() == resolve_schema("invoice").fingerprint()
    assert len(resolve_schema("invoice").fingerprint()) == 64
    path = tmp_path / "order.py"
    path.write_text(ORDER_PY.format(desc="first"))
    first = resolve_schema("order.py", cwd=tmp_path).fingerprint()
    path.write_text(ORDER_PY.format(desc="second"))
    assert resolve_schema("order.py", cwd=tmp_path).fingerprint() != first
    path.write_text(ORDER_PY.format(desc="first"))
    assert resolve_schema("order.py", cwd=tmp_path).fingerprint() == first


def test_repo_root_schemas_count_as_builtin() -> None:
    assert resolve_schema("receipt", cwd=SAMPLES.parent).source == "builtin"


@pytest.mark.parametrize("name", BUILTINS)
def test_builtin_compiles_to_a_grammar(name: str) -> None:
    llguidance = pytest.importorskip("llguidance")
    grammar = llguidance.LLMatcher.grammar_from_json_schema(resolve_schema(name).json_schema())
    assert llguidance.LLMatcher.validate_grammar(grammar) == ""


def test_recursive_model_expands_once(tmp_path: Path) -> None:
    (tmp_path / "tree.py").write_text(
        "from __future__ import annotations\n"
        "from pydantic import BaseModel\n"
        "class Node(BaseModel):\n    label: str | None = None\n    children: list[Node] | None = None\n"
    )
    fields = [f[0] for f in resolve_schema("tree.py", cwd=tmp_path).fields()]
    assert fields == ["label", "children"], "a model inside itself is not expanded again"


def test_builtins_ship_inside_the_package(tmp_path: Path) -> None:
    """A plain (non-editable) install has no repo-root schemas/: the wheel's copy must be found."""
    import shutil
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    site = tmp_path / "site"
    shutil.copytree(root / "glmv_cli", site / "glmv_cli", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(root / "schemas", site / "glmv_cli" / "_builtin_schemas")  # as pyproject force-includes
    (site / "schemas").mkdir()  # another distribution's top-level folder: must never run
    for name in ["invoice", "stray"]:
        (site / "schemas" / f"{name}.py").write_text(f"open({str(tmp_path / 'ran')!r}, 'w')\n")
    code = (
        "from glmv_cli.extraction.schemas import resolve_schema as r, builtin_names as n; import sys\n"
        "print(r('invoice').model.__module__, r(None).describe(), n())\n"
        "try: r('stray')\nexcept Exception as e: print(type(e).__name__)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(site), "PATH": ""},
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[1] == "UsageError"
    assert "document (built-in)" in proc.stdout and "'stray'" not in proc.stdout
    assert not (tmp_path / "ran").exists(), "a stray site-packages/schemas/ file ran"
