"""Example atlases shipped inside the package, so the quickstart runs from any folder.

Find one where it is installed, or copy it somewhere to edit::

    import cra_agents as cra
    from cra_agents.examples import atlas_path, copy_atlas

    cra.configure(atlases=[atlas_path("github-ops")])  # read in place
    copy_atlas("github-ops", "my-atlas")  # to edit (cra atlas init my-atlas --example github-ops)
"""

from __future__ import annotations

import shutil
from pathlib import Path

from cra_agents._exceptions import AtlasError

__all__ = ["atlas_names", "atlas_path", "copy_atlas"]

_HOME = Path(__file__).resolve().parent / "atlases"


def atlas_names() -> list[str]:
    """The names of the example atlases, sorted (e.g. ``["github-ops"]``)."""
    return sorted(p.name for p in _HOME.iterdir() if (p / "atlas.json").is_file())


def atlas_path(name: str = "github-ops") -> Path:
    """The directory of the example atlas ``name``, where the package is installed.

    Args:
        name: One of :func:`atlas_names`.

    Returns:
        An absolute path to pass to ``atlases=[...]``, ``load_atlas`` or ``cra ... --atlas``.

    Raises:
        AtlasError: ``reason="unknown_example"`` when there is no example of that name.
    """
    names = atlas_names()
    if name not in names:
        raise AtlasError(
            f"there is no example atlas {name!r}; the examples are: {', '.join(names)}",
            reason="unknown_example",
            source=name,
        )
    return _HOME / name


def copy_atlas(name: str, destination: str | Path, *, overwrite: bool = False) -> Path:
    """Copy the example atlas ``name`` to ``destination`` (a new directory) to edit it.

    Args:
        name: One of :func:`atlas_names`.
        destination: The directory to create.
        overwrite: Replace the example's files in an existing ``destination`` (other files
            there are left alone). Without it an existing ``atlas.json`` there is an error.

    Returns:
        ``destination`` as a ``Path``.

    Raises:
        AtlasError: ``reason="unknown_example"``, or ``reason="exists"`` when ``destination``
            already holds an ``atlas.json`` and ``overwrite`` is false.
    """
    source = atlas_path(name)
    target = Path(destination)
    if (target / "atlas.json").exists() and not overwrite:
        raise AtlasError(
            f"{target / 'atlas.json'} already exists",
            reason="exists",
            source=str(target),
        )
    shutil.copytree(source, target, dirs_exist_ok=True)
    return target
