"""Short model names (``toy``, ``toy-flux``, ``tiny-random``, ``tiny-random-<family>``), resolved before Hub ids and
paths.

Each name maps to the function that builds its pipeline; names whose pipeline is a folder on disk also map to that
folder (:data:`ALIAS_FOLDERS`), so its config can be read without building anything. The builders live in modules
that load models (``testing``, ``toy``); they are imported by name when a pipeline is first built, so that the
modules which only need to *recognise* a short name (provenance, validation of outputs) import nothing heavy.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module
from pathlib import Path

from .families import tiny_names


def _imported(module: str, name: str) -> Callable:
    """``module.name(**kwargs)``, importing ``module`` (relative to this package) on the first call."""

    def call(**kwargs):
        return getattr(import_module(module, __package__), name)(**kwargs)

    call.__name__ = name
    return call


def _tiny(family: str) -> Callable:
    """The builder of ``family``'s tiny random pipeline, importing the family's module on the first call."""

    def call(**kwargs):
        from .families import build_tiny_pipeline

        return build_tiny_pipeline(family, **kwargs)

    call.__name__ = f"build_tiny_{family}_pipeline"
    return call


# Short model names -> pipeline builders: each registered family's ``tiny-random-<family>`` (``tiny-random`` is the
# first family's), and the toy world.
MODEL_ALIASES: dict[str, Callable] = {
    **{name: _tiny(family) for name, family in tiny_names().items()},
    "toy": _imported(".toy", "load_toy_pipeline"),
    "toy-flux": _imported(".toy", "load_toy_flux_pipeline"),
}

# Short names whose pipeline is a folder on disk: their config can be read without building the pipeline.
ALIAS_FOLDERS: dict[str, Callable[[], Path]] = {
    "toy": _imported(".toy", "toy_pipeline_path"),
    "toy-flux": _imported(".toy", "toy_flux_pipeline_path"),
}
