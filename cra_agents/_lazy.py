"""Lazy re-exports for package ``__init__`` modules (PEP 562).

A name listed here is imported from its home module on first access, so ``import cra_agents``
does not pay for modules most programs never use::

    __getattr__, __dir__ = lazy_exports(__name__, {"lint_atlas": "cra_agents.tools"})

Declare the same names under ``if typing.TYPE_CHECKING:`` for type checkers.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping

__all__ = ["lazy_exports"]


def lazy_exports(
    package: str, homes: Mapping[str, str], *, listed: bool = True
) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """The ``__getattr__`` and ``__dir__`` of ``package``, resolving ``homes`` lazily.

    Args:
        package: The package's ``__name__``.
        homes: Attribute name to the module that defines it.
        listed: Whether the names are part of the package's API: listed by ``dir()`` and kept
            in its namespace after the first lookup. ``False`` serves names that moved away
            (still importable from here, but neither listed nor cached).

    Returns:
        ``(__getattr__, __dir__)`` to assign in the package.
    """
    names = dict(homes)

    def getattr_(name: str) -> object:
        home = names.get(name)
        if home is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(home), name)
        if listed:
            setattr(sys.modules[package], name, value)  # later lookups skip this hook
        return value

    def dir_() -> list[str]:
        own = vars(sys.modules[package])
        return sorted(own.keys() | names.keys()) if listed else sorted(own)

    return getattr_, dir_
