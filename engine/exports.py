"""A domain's entry points, declared in its ``__init__``: which names the faces (app, cli) may use and
the module each lives in. A name's module is imported on first use, so building the command line's
parser or opening the window imports no torch."""
from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, modules: Mapping[str, str]) -> tuple[Callable[[str], Any], list[str]]:
    """(``__getattr__``, ``__all__``) for ``package``'s ``__init__``: ``modules`` maps each exported
    name to its module, relative to ``package`` (e.g. ``{"Synthesizer": "pipeline"}``)."""
    def __getattr__(name: str) -> Any:
        if name in modules:
            return getattr(importlib.import_module(f"{package}.{modules[name]}"), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")
    return __getattr__, sorted(modules)
