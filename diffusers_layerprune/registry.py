"""Name -> module registries (importance criteria, sparsity methods): a registered object lives in its own module,
imported on first use, so that listing the names (the ``layerprune`` parser) imports no torch."""

from __future__ import annotations

from importlib import import_module

from .errors import LayerPruneError


def load_registered(modules: dict[str, str], name: str, package: str, attr: str, what: str, known: str):
    """``attr`` of the module ``modules[name]`` of ``package``; an unknown ``name`` raises :class:`LayerPruneError`
    "unknown WHAT 'name'; known KNOWN: a, b, ..."."""
    if name not in modules:
        raise LayerPruneError(f"unknown {what} {name!r}; known {known}: {', '.join(modules)}")
    return getattr(import_module(f".{modules[name]}", package), attr)
