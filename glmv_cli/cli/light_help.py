"""Import typer's help renderer without the two rich modules glmv's help never uses.

typer renders --help and usage errors with `typer.rich_utils`, which imports `rich.markdown`
(markdown-it, pygments) for rich_markup_mode="markdown" and `rich.traceback` (pygments, attrs)
for pretty exceptions. glmv uses rich markup and turns pretty exceptions off, yet those imports
were about a third of `glmv --help`. While `typer.rich_utils` is imported, `Markdown` and
`Traceback` are bound to stand-ins that import the real class the first time they are used, so
nothing changes except when (and whether) the two modules load. Every other import of them gets
the real modules.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

TARGET = "typer.rich_utils"
DEFERRED = {"rich.markdown": "Markdown", "rich.traceback": "Traceback"}


class Deferred(type):
    """A stand-in for class `__name__` of module `_module`: calling it or reading an attribute imports it."""

    _module: str

    def real(cls) -> Any:
        return getattr(importlib.import_module(cls._module), cls.__name__)

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        return cls.real()(*args, **kwargs)

    def __getattr__(cls, name: str) -> Any:  # e.g. Traceback.from_exception
        return getattr(cls.real(), name)

    def __instancecheck__(cls, obj: Any) -> bool:
        return isinstance(obj, cls.real())


@contextmanager
def _stand_ins() -> Iterator[None]:
    """Stand-in modules for DEFERRED (unless already imported) for the duration of the block."""
    import types

    placed = {}
    for module, name in DEFERRED.items():
        if module in sys.modules:
            continue
        stub = types.ModuleType(module, f"glmv stand-in for {module} (see {__name__})")
        setattr(stub, name, Deferred(name, (), {"_module": module}))
        placed[module] = stub
    sys.modules.update(placed)
    try:
        yield
    finally:
        for module, stub in placed.items():
            if sys.modules.get(module) is stub:
                del sys.modules[module]


class _Loader:
    """typer.rich_utils' own loader, run with the stand-ins in place."""

    def __init__(self, loader: Any):
        self.loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> Any:
        return self.loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        module.__loader__ = self.loader  # source lookups (tracebacks) go to the real loader
        with _stand_ins():
            self.loader.exec_module(module)


class _Finder:
    """Finds typer.rich_utils as the path finder does, with _Loader around its loader; used once."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if fullname != TARGET:
            return None
        uninstall()
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return None  # something unusual: let the other finders import it as usual
        spec.loader = _Loader(spec.loader)
        return spec


_finder = _Finder()


def install() -> None:
    """Defer the two imports when typer first imports typer.rich_utils in this process."""
    if TARGET not in sys.modules and _finder not in sys.meta_path:
        sys.meta_path.insert(0, _finder)


def uninstall() -> None:
    if _finder in sys.meta_path:
        sys.meta_path.remove(_finder)
