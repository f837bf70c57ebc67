"""Short model names (``toy``, ``toy-flux``, ``tiny-random``, ``tiny-random-flux``), resolved before Hub ids and paths.

Each name maps to the function that builds its pipeline; names whose pipeline is a folder on disk also map to that
folder (:data:`ALIAS_FOLDERS`), so its config can be read without building anything. The builders live in modules
that load models (``testing``, ``toy``); they are imported by name when a pipeline is first built, so that the
modules which only need to *recognise* a short name (provenance, validation of outputs) import nothing heavy.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module
from pathlib import Path


def _imported(module: str, name: str) -> Callable:
    """``module.name(**kwargs)``, importing ``module`` (relative to this package) on the first call."""

    def call(**kwargs):
        return getattr(import_module(module, __package__), name)(**kwargs)

    call.__name__ = name
    return call


# Short model names -> pipeline builders. ``tiny-random`` is a tiny random PixArt-Sigma; each other family has its own.
MODEL_ALIASES: dict[str, Callable] = {
    "tiny-random": _imported(".testing", "build_tiny_pixart_pipeline"),
    "tiny-random-sana": _imported(".testing", "build_tiny_sana_pipeline"),
    "tiny-random-sd3": _imported(".testing", "build_tiny_sd3_pipeline"),
    "tiny-random-flux": _imported(".testing", "build_tiny_flux_pipeline"),
    "toy": _imported(".toy", "load_toy_pipeline"),
    "toy-flux": _imported(".toy", "load_toy_flux_pipeline"),
}

# Short names whose pipeline is a folder on disk: their config can be read without building the pipeline.
ALIAS_FOLDERS: dict[str, Callable[[], Path]] = {
    "toy": _imported(".toy", "toy_pipeline_path"),
    "toy-flux": _imported(".toy", "toy_flux_pipeline_path"),
}
