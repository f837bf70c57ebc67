"""The method registry: name -> module defining ``METHOD``. Adding a method = one new module + one line.

Modules load on first use, so building the ``layerprune`` parser (which lists the names) imports no torch.
"""

from __future__ import annotations

from ..registry import load_registered

METHOD_MODULES: dict[str, str] = {
    "magnitude": "magnitude",
    "wanda": "wanda",
}


def get_method(name: str):
    """The registered :class:`~diffusers_layerprune.sparsity.base.SparsityMethod` ``name``; raises
    :class:`LayerPruneError` listing the known names."""
    return load_registered(METHOD_MODULES, name, __package__, "METHOD", "sparsity method", "methods")
