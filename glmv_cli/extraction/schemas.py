"""Resolve a --schema value (built-in name, .py file, JSON Schema file or inline DSL) to a model."""

from __future__ import annotations

import datetime
import hashlib
import importlib.util
import json
import sys
import tomllib
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, create_model
from pydantic_core import SchemaError

import glmv_cli
from glmv_cli.errors import UsageError
from glmv_cli.schema_walk import SchemaWalkError, alternatives, non_null, ref_cycle, resolve_ref, walk_properties

FORMS_HINT = (
    "use a built-in name ({names}), ./schemas/NAME.py, file.py, file.py:Model, "
    "schema.json, or inline fields like 'vendor, total float: grand total'"
)
INLINE_TYPES: dict[str, Any] = {
    "str": str,
    "int": int,
    "float": float,
    "bool": bool,
    "date": datetime.date,
    "datetime": datetime.datetime,
}
DEFAULT_SCHEMA = "document"  # always the built-in: a default never runs a file from the working folder
INLINE_STR_MAX = 200
INLINE_NUMBER_BOUND = 10**12


@dataclass(frozen=True)
class ResolvedSchema:
    """A Pydantic model plus where it came from."""

    name: str  # "invoice", "file.py:Model", "inline", or a JSON file's stem
    model: type[BaseModel]
    source: str  # "builtin", "inline", or the file's path

    def json_schema(self) -> dict[str, Any]:
        """The model's JSON Schema."""
        return self.model.model_json_schema()

    def fingerprint(self) -> str:
        """sha256 of the compact, key-sorted JSON Schema: changes whenever the answer could."""
        return self._fingerprint

    def fields(self) -> list[tuple[str, str, str]]:
        """(dotted name, type text, description) for every field, nested ones after their parent."""
        return list(self._fields)

    # Made once: every document's cache key and prompt ask for them (Pydantic builds the schema in ms).
    @cached_property
    def _fingerprint(self) -> str:
        text = json.dumps(self.json_schema(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    @cached_property
    def _fields(self) -> tuple[tuple[str, str, str], ...]:
        schema = self.json_schema()  # a recursive model's schema is a bare $ref into $defs
        return tuple(
            (name, _type_text(schema, target), sub.get("description") or target.get("description") or "")
            for name, sub, target, _ in walk_properties(schema, schema, into_lists=True)
        )

    def describe(self) -> str:
        """Where the schema came from, for a stderr line: 'invoice (built-in)', 'x (./schemas/x.py)'."""
        if self.source in ("python", "dict"):
            return f"{self.name} ({'Pydantic model' if self.source == 'python' else 'JSON Schema'})"
        if self.source in ("builtin", "inline"):
            return f"{self.name} (built-in)" if self.source == "builtin" else "inline"
        shown = _shown(Path(self.source))
        return f"{shown} (JSON Schema)" if self.source.endswith(".json") else f"{self.name} ({shown})"


def builtin_dirs(package: Path | None = None) -> list[Path]:
    """Where built-in schemas live: the packaged copy, and glmv's own source tree (editable installs).

    A `schemas/` folder beside the package counts only when it sits in glmv's source tree: in
    site-packages it would be any other distribution's folder, and its files would run.
    """
    package = package or Path(glmv_cli.__file__).parent
    dirs = [package / "_builtin_schemas"]
    if _is_glmv_source_tree(package.parent):
        dirs.append(package.parent / "schemas")
    return dirs


def _is_glmv_source_tree(root: Path) -> bool:
    try:
        project = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8")).get("project", {})
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return False
    return isinstance(project, dict) and project.get("name") == "glmv"


def builtin_names() -> list[str]:
    """Names of the built-in schemas, sorted."""
    return sorted({p.stem for d in builtin_dirs() for p in _schema_files(d)})


def builtin_schemas() -> list[ResolvedSchema]:
    """Every built-in schema, loaded (they are glmv's own code)."""
    return [_builtin(name) for name in builtin_names()]


def local_schema_files(cwd: Path | None = None) -> list[Path]:
    """The user's ./schemas/*.py, not executed: only naming one (`--schema NAME`) runs it."""
    directory = (cwd or Path.cwd()) / "schemas"
    return [] if _is_builtin_dir(directory) else _schema_files(directory)


def resolve_schema(spec: str | None, cwd: Path | None = None) -> ResolvedSchema:
    """Turn a --schema value (None: the built-in default) into a ResolvedSchema; every failure is a UsageError.

    Only a file the user names runs: `file.py`, or `NAME` finding ./schemas/NAME.py before the built-ins.
    """
    if spec is None:
        return _builtin(DEFAULT_SCHEMA)
    cwd = cwd or Path.cwd()
    spec = spec.strip()
    file_part, _, attr = spec.rpartition(":")
    if file_part.endswith(".py") and attr.isidentifier():
        path = _existing(cwd, file_part)
        return ResolvedSchema(f"{path.name}:{attr}", _model_from_attr(path, attr), str(path))
    if spec.endswith(".py"):
        path = _existing(cwd, spec)
        model = _model_from_file(path)
        return ResolvedSchema(f"{path.name}:{model.__name__}", model, str(path))
    if spec.endswith(".json"):
        path = _existing(cwd, spec)
        return ResolvedSchema(path.stem, model_from_json_schema(path), str(path))
    if spec.isidentifier():
        found = _find_named(spec, [cwd / "schemas", *builtin_dirs()])
        if found:
            return found
    elif "," in spec or any(c.isspace() for c in spec):
        return ResolvedSchema("inline", model_from_dsl(spec), "inline")
    return _unknown(spec)


def as_schema(schema: Any) -> ResolvedSchema:
    """What the Python API takes as a schema: a ResolvedSchema, a name or inline spec (as --schema), a
    Pydantic model class, or a JSON Schema dict."""
    if isinstance(schema, ResolvedSchema):
        return schema
    if schema is None or isinstance(schema, str):
        return resolve_schema(schema)
    if isinstance(schema, type) and issubclass(schema, BaseModel):
        return ResolvedSchema(schema.__name__, schema, "python")
    if isinstance(schema, dict):
        title = str(schema.get("title") or "schema")
        return ResolvedSchema(title, model_from_schema(schema, Path(f"{title}.json")), "dict")
    raise UsageError(f"a schema is a name, an inline spec, a Pydantic model or a JSON Schema dict, not {schema!r}")


def _builtin(name: str) -> ResolvedSchema:
    return _find_named(name, builtin_dirs()) or _unknown(name)


def _unknown(spec: str) -> ResolvedSchema:
    raise UsageError(f"Unknown schema {spec!r}", hint=FORMS_HINT.format(names=", ".join(builtin_names())))


def _shown(path: Path) -> str:
    """The path relative to the working folder when inside it (./schemas/x.py), else absolute."""
    try:
        return f"./{path.resolve().relative_to(Path.cwd().resolve()).as_posix()}"
    except ValueError:
        return str(path)


# --- .py files ---------------------------------------------------------------------------


def _schema_files(directory: Path) -> list[Path]:
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.glob("*.py") if not p.name.startswith("_"))


def _find_named(name: str, directories: list[Path]) -> ResolvedSchema | None:
    for directory in directories:
        path = directory / f"{name}.py"
        if path.is_file():
            return ResolvedSchema(
                name, _model_from_file(path), "builtin" if _is_builtin_dir(path.parent) else str(path)
            )
    return None


def _is_builtin_dir(directory: Path) -> bool:
    """True for a built-in folder (./schemas in glmv's own source tree is one)."""
    return directory.is_dir() and any(directory.resolve() == d.resolve() for d in builtin_dirs() if d.is_dir())


def _existing(cwd: Path, text: str) -> Path:
    path = Path(text).expanduser()
    path = path if path.is_absolute() else cwd / path
    if not path.is_file():
        raise UsageError(f"Schema file not found: {text}")
    return path


_loaded: dict[str, Any] = {}  # module name -> module, so one file's content loads once


def _load_module(path: Path) -> Any:
    """Execute a schema file as its own module (registered first, so forward refs resolve)."""
    try:
        source = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"Cannot read schema file {path}: {exc.strerror or exc}") from exc
    digest = hashlib.sha256(str(path.resolve()).encode() + b"\0" + source).hexdigest()[:16]
    name = f"glmv_schema_{path.stem if path.stem.isidentifier() else 'file'}_{digest}"
    if name in _loaded:
        return _loaded[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise UsageError(f"Cannot load schema file {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:  # exec the bytes hashed above; unlike exec_module this leaves no __pycache__ beside them
        exec(compile(source, str(path), "exec"), module.__dict__)
    except Exception as exc:
        del sys.modules[name]
        raise UsageError(
            f"Cannot load schema file {path}: {_one_line(exc)}",
            hint="run it with python to see the traceback",
        ) from exc
    for model in _defined_models(module):  # forward refs to models defined later in the file
        model.model_rebuild(raise_errors=False)
    _loaded[name] = module
    return module


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, SyntaxError):
        return f"SyntaxError: {exc.msg} (line {exc.lineno})"
    first = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {first[0]}" if first else type(exc).__name__


def _is_model(value: Any) -> bool:
    return isinstance(value, type) and issubclass(value, BaseModel) and value is not BaseModel


def _defined_models(module: Any) -> list[type[BaseModel]]:
    return [v for v in vars(module).values() if _is_model(v) and v.__module__ == module.__name__]


def _model_from_attr(path: Path, attr: str) -> type[BaseModel]:
    module = _load_module(path)
    value = getattr(module, attr, None)
    if not _is_model(value):
        names = ", ".join(m.__name__ for m in _defined_models(module)) or "none"
        raise UsageError(f"{path.name} has no Pydantic model named {attr!r}", hint=f"models in it: {names}")
    return value


def _model_from_file(path: Path) -> type[BaseModel]:
    """SCHEMA if the file sets it, else the one model no other model in the file uses."""
    module = _load_module(path)
    if hasattr(module, "SCHEMA"):
        if not _is_model(module.SCHEMA):
            raise UsageError(f"SCHEMA in {path.name} is not a Pydantic model class")
        return module.SCHEMA
    models = _defined_models(module)
    used = {u for m in models for f in m.model_fields.values() for u in _models_in(f.annotation)}
    roots = [m for m in models if m not in used] or models
    if len(roots) == 1:
        return roots[0]
    if not roots:
        raise UsageError(f"{path.name} defines no Pydantic model")
    names = ", ".join(m.__name__ for m in roots)
    raise UsageError(
        f"{path.name} defines several models ({names})",
        hint=f"pick one with {path.name}:{roots[0].__name__} or set SCHEMA = {roots[0].__name__}",
    )


def _models_in(annotation: Any) -> set[type[BaseModel]]:
    """Models named anywhere in a type annotation (list[Item] | None -> {Item})."""
    found = {annotation} if _is_model(annotation) else set()
    return found.union(*(_models_in(a) for a in get_args(annotation)))


# --- inline DSL ----------------------------------------------------------------------------


def model_from_dsl(spec: str) -> type[BaseModel]:
    """Build a model from 'name [type][: description]' items, comma- or newline-separated.

    With newlines in the spec, items are split on newlines only, so descriptions may hold commas.
    """
    multiline = "\n" in spec.strip()
    items = spec.splitlines() if multiline else spec.split(",")
    fields: dict[str, Any] = {}
    for item in items:
        head, _, description = (item.strip().rstrip(",") if multiline else item).partition(":")
        words = head.split()
        if not words:
            continue
        if len(words) > 2 or not words[0].isidentifier():
            raise UsageError(
                f"Cannot read inline schema field {item.strip()!r}",
                hint="write 'name [type][: description]', e.g. 'total float: grand total'",
            )
        name, type_name = words[0], (words[1] if len(words) == 2 else "str")
        if name.startswith(("_", "model_")) or hasattr(BaseModel, name):
            raise UsageError(
                f"Inline field name {name!r} is reserved by Pydantic",
                hint="pick another name (not starting with _ or model_)",
            )
        if type_name not in INLINE_TYPES:
            raise UsageError(
                f"Unknown type {type_name!r} for inline field {name!r}",
                hint=f"types: {', '.join(INLINE_TYPES)}",
            )
        if name in fields:
            raise UsageError(f"Inline schema names field {name!r} twice")
        fields[name] = _inline_field(type_name, description.strip() or None)
    if not fields:
        raise UsageError("The inline schema has no fields")
    return create_model("Inline", __config__=ConfigDict(extra="forbid"), **fields)


def _inline_field(type_name: str, description: str | None) -> tuple[Any, Any]:
    bounds: dict[str, Any] = {}
    if type_name == "str":
        bounds = {"max_length": INLINE_STR_MAX}
    elif type_name in ("int", "float"):
        bounds = {"ge": -INLINE_NUMBER_BOUND, "le": INLINE_NUMBER_BOUND}
    return INLINE_TYPES[type_name] | None, Field(None, description=description, **bounds)


# --- JSON Schema files ---------------------------------------------------------------------

_JSON_SCALARS: dict[str, Any] = {"string": str, "number": float, "integer": int, "boolean": bool}
_CONSTRAINTS = {
    "maxLength": "max_length",
    "minLength": "min_length",
    "pattern": "pattern",
    "minimum": "ge",
    "maximum": "le",
    "exclusiveMinimum": "gt",
    "exclusiveMaximum": "lt",
    "maxItems": "max_length",
    "minItems": "min_length",
}


def model_from_json_schema(path: Path) -> type[BaseModel]:
    """Build a model from a JSON Schema file's object properties (nested objects become models)."""
    try:
        schema = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"Cannot read JSON Schema {path}: {exc}") from exc
    return model_from_schema(schema, path)


def model_from_schema(schema: Any, path: Path) -> type[BaseModel]:
    """A model from a JSON Schema already read (`path` names it in messages and gives a default title)."""
    if not isinstance(schema, dict) or not isinstance(schema.get("properties"), dict):
        raise UsageError(f"JSON Schema {path} has no top-level object 'properties'")
    if schema.get("type", "object") != "object":
        raise UsageError(f"JSON Schema {path} is not an object (type {schema['type']!r})")
    cycle = ref_cycle(schema)
    if cycle:
        raise recursive_error(path.name, cycle)
    builder = _JsonSchemaModels(schema, path)
    try:
        return builder.model(schema, _model_name(schema.get("title"), path.stem))
    except SchemaError as exc:  # pydantic-core rejects a keyword, e.g. a regex with look-around
        raise builder.fail(str(exc).strip().splitlines()[-1]) from exc
    except (TypeError, ValueError, AttributeError, KeyError) as exc:  # malformed keywords, e.g. "type": 5
        raise builder.fail(_one_line(exc)) from exc


def recursive_error(name: str, cycle: list[str]) -> UsageError:
    """The usage error for a schema whose answers could nest without end."""
    return UsageError(
        f"Schema {name} is recursive ({' -> '.join(cycle)}): a constrained answer must have a bounded depth",
        hint="unroll the self-reference into a fixed number of nested levels",
    )


def _model_name(title: Any, fallback: str) -> str:
    text = "".join(w[:1].upper() + w[1:] for w in str(title or fallback).replace("-", " ").split())
    return text if text.isidentifier() else "Schema"


class _JsonSchemaModels:
    """Translate JSON Schema nodes to Python types, resolving local $refs."""

    def __init__(self, root: dict[str, Any], path: Path):
        self.root, self.path = root, path

    def fail(self, what: str) -> UsageError:
        return UsageError(f"Unsupported JSON Schema in {self.path.name}: {what}")

    def flatten(self, node: Any) -> tuple[dict[str, Any], bool]:
        """(node with $refs resolved and one non-null type, whether null is allowed)."""
        if not isinstance(node, dict):
            raise self.fail(f"node {node!r}")
        try:
            node = resolve_ref(self.root, node, strict=True)
            found, nullable = alternatives(self.root, node, strict=True)
        except SchemaWalkError as exc:
            raise self.fail(str(exc)) from exc
        key = next((k for k in ("anyOf", "oneOf") if k in node), None)
        if key and len(found) != 1:
            raise self.fail(f"{key} with several non-null types")
        if not found:
            return {**node, "type": "null"}, True
        if len(found) != 1:
            raise self.fail(f"type {node.get('type')!r}")
        flat = {**found[0], "type": found[0].get("type", "string")}
        enum = flat.get("enum")
        return flat, nullable or (isinstance(enum, list) and None in enum)

    def model(self, node: dict[str, Any], name: str) -> type[BaseModel]:
        required = set(node.get("required", []))
        fields: dict[str, Any] = {}
        for key, sub in node.get("properties", {}).items():
            if not key.isidentifier() or key.startswith("_"):
                raise self.fail(f"property name {key!r} is not a Python identifier")
            flat, nullable = self.flatten(sub)
            annotation = self.type_of(flat, f"{name}{_model_name(key, key)}")
            default: Any = ...
            if key not in required or nullable:
                annotation, default = annotation | None, None
            fields[key] = (annotation, Field(default, description=flat.get("description")))
        extra = "forbid" if node.get("additionalProperties") is False else "ignore"
        return create_model(name, __config__=ConfigDict(extra=extra), __doc__=node.get("description"), **fields)

    def type_of(self, node: dict[str, Any], name: str) -> Any:
        """The Python type, with its constraints, for a flattened node."""
        kind = node["type"]
        if "enum" in node or "const" in node:
            values = tuple(v for v in node.get("enum", [node.get("const")]) if v is not None)
            return Literal[values]  # type: ignore[valid-type]
        if kind == "string" and node.get("format") in ("date", "date-time"):
            base: Any = datetime.date if node["format"] == "date" else datetime.datetime
        elif kind in _JSON_SCALARS:
            base = _JSON_SCALARS[kind]
        elif kind == "array":
            items, item_null = self.flatten(node.get("items", {"type": "string"}))
            item = self.type_of(items, name)
            base = list[item | None] if item_null else list[item]  # type: ignore[valid-type]
        elif kind == "object" and "properties" in node:
            return self.model(node, _model_name(node.get("title"), name))
        elif kind == "object":
            base = dict[str, Any]
        else:
            raise self.fail(f"type {kind!r}")
        constraints = {_CONSTRAINTS[k]: v for k, v in node.items() if k in _CONSTRAINTS}
        return Annotated[base, Field(**constraints)] if constraints else base


# --- fields() ------------------------------------------------------------------------------


def _type_text(root: dict[str, Any], node: dict[str, Any]) -> str:
    if "enum" in node:
        return "one of " + "|".join(str(v) for v in node["enum"] if v is not None)
    kind = node.get("type")
    if kind == "string":
        return {"date": "date", "date-time": "datetime"}.get(node.get("format", ""), "str")
    if kind == "array":
        return f"list[{_type_text(root, non_null(root, node.get('items', {})))}]"
    if kind == "object" or "properties" in node:
        return "object"
    names = {"number": "float", "integer": "int", "boolean": "bool", "null": "null"}
    if isinstance(kind, str):
        return names.get(kind, kind)
    if "anyOf" in node:
        return " or ".join(_type_text(root, non_null(root, o)) for o in node["anyOf"])
    return "any"
