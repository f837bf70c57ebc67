"""The method registry: name -> module defining ``METHOD``. Adding a method = one new module + one line.

Modules load on first use, so building the ``layerprune`` parser (which lists the names) imports no torch.
"""

from __future__ import annotations

from importlib import import_module

from ..errors import LayerPruneError

METHOD_MODULES: dict[str, str] = {
    "magnitude": "magnitude",
    "wanda": "wanda",
}


def get_method(name: str):
    """The registered :class:`~diffusers_layerprune.sparsity.base.SparsityMethod` ``name``; raises
    :class:`LayerPruneError` listing the known names."""
    if name not in METHOD_MODULES:
        raise LayerPruneError(f"unknown sparsity method {name!r}; known methods: {', '.join(METHOD_MODULES)}")
    return import_module(f".{METHOD_MODULES[name]}", __package__).METHOD
