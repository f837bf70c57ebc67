"""Registry of the supported diffusion-transformer families: one module each, imported on first use.

Adding a family: write ``families/<name>.py`` defining ``FAMILY = ModelFamily(...)`` (its classes, blocks, forward,
text encoding, tiny test pipeline, published config, hub tag) and its pruned class, then add one line to
:data:`FAMILIES` (docs/families.md shows a whole addition). Nothing else in the package names a family.

This module imports nothing heavy (no torch): short model names (``tiny-random-<family>``) are recognised through it
before any model is loaded.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib import import_module
from typing import TYPE_CHECKING

from ..errors import LayerPruneError

if TYPE_CHECKING:
    from .base import ModelFamily

# name -> module (relative to this package) defining FAMILY.
FAMILIES: dict[str, str] = {
    "pixart": ".pixart",
    "sana": ".sana",
    "sd3": ".sd3",
    "flux": ".flux",
    "flux2": ".flux2",
    "qwenimage": ".qwenimage",
}

# The family of ``tiny-random`` and of configs without a class name (layerprune's first family).
DEFAULT_FAMILY = next(iter(FAMILIES))

_loaded: dict[str, ModelFamily] = {}
_BASE_NAMES = ("BlockLayout", "BlockStack", "ModelFamily", "TextConditioning")


def __getattr__(name: str):
    # The record types live in .base (which imports torch); imported on first use, so this module stays light.
    if name in _BASE_NAMES:
        return getattr(import_module(".base", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def tiny_names() -> dict[str, str]:
    """Short name -> family of each family's tiny random pipeline: ``tiny-random-<family>``, and ``tiny-random`` for
    :data:`DEFAULT_FAMILY`. Imports no family module."""
    return {"tiny-random": DEFAULT_FAMILY, **{f"tiny-random-{name}": name for name in FAMILIES}}


def build_tiny_pipeline(family: str, **kwargs):
    """The tiny random pipeline of ``family`` (its ``ModelFamily.tiny_pipeline``)."""
    return get_family(family).tiny_pipeline(**kwargs)


def exported(name: str):
    """A public name defined by a family module (``PrunedFluxTransformer``), looked up in every registered family's
    ``__all__``; ``None`` when no family defines it. Lets modules outside ``families/`` re-export them by name."""
    if name == "FAMILY" or name.startswith("_"):  # dunders: the import machinery probes modules for them
        return None
    for family in FAMILIES:
        module = import_module(FAMILIES[family], __name__)
        if name in getattr(module, "__all__", ()):
            return getattr(module, name)
    return None


def get_family(name: str) -> ModelFamily:
    """The :class:`ModelFamily` registered as ``name``."""
    if name not in FAMILIES:
        raise LayerPruneError(f"unknown model family {name!r}; supported: {', '.join(FAMILIES)}")
    if name not in _loaded:
        _loaded[name] = import_module(FAMILIES[name], __name__).FAMILY
    return _loaded[name]


def all_families() -> list[ModelFamily]:
    return [get_family(name) for name in FAMILIES]


def supported_text() -> str:
    """``PixArt-Sigma (PixArtTransformer2DModel), Sana (SanaTransformer2DModel), ...`` for error messages."""
    return ", ".join(f"{f.title} ({f.transformer_class})" for f in all_families())


def family_by_class_name(class_name: str) -> ModelFamily | None:
    for family in all_families():
        if family.transformer_class == class_name:
            return family
    return None


def find_family(model) -> ModelFamily | None:
    """The family of a transformer instance (matched along its MRO, so pruned subclasses match), or ``None``."""
    for klass in type(model).__mro__:
        family = family_by_class_name(klass.__name__)
        if family is not None:
            return family
    return None


def family_of(model) -> ModelFamily:
    """The family of a transformer instance, or a :class:`LayerPruneError` listing the supported ones."""
    family = find_family(model)
    if family is None:
        raise LayerPruneError(
            f"{type(model).__name__} is not a supported diffusion transformer (supported: {supported_text()})"
        )
    return family


def family_of_config(config: Mapping, where: str = "the model") -> ModelFamily:
    """The family of a transformer ``config.json`` (its ``_class_name``), or one line listing the supported ones."""
    found = config.get("_class_name") if isinstance(config, Mapping) else type(config).__name__
    family = family_by_class_name(str(found)) if found else None
    if family is None:
        raise LayerPruneError(f"{where} holds a {found}; layerprune supports {supported_text()}")
    return family


def family_of_pipeline(pipe, where: str | None = None) -> ModelFamily:
    """The family of a pipeline's transformer, or one line naming what it holds and the supported families."""
    transformer = getattr(pipe, "transformer", None)
    family = find_family(transformer) if transformer is not None else None
    if family is None:
        found = (
            type(transformer).__name__ if transformer is not None else f"{type(pipe).__name__} without a transformer"
        )
        raise LayerPruneError(f"{where or type(pipe).__name__} holds a {found}; layerprune supports {supported_text()}")
    return family


def encode_text(pipe, prompts, *, max_sequence_length: int, batch_size: int = 32, device=None) -> dict:
    """Encode ``prompts`` exactly as ``pipe`` does for generation (its family's ``encode``), in batches.

    Returns the family's text conditioning for all prompts (``prompt_embeds [N, L, D]`` and a mask ``[N, L]`` or
    pooled embeddings ``[N, P]``) on the CPU."""
    import torch

    family = family_of_pipeline(pipe)
    device = device or pipe.text_encoder.device
    parts = []
    with torch.inference_mode():
        for start in range(0, len(prompts), batch_size):
            parts.append(family.encode(pipe, list(prompts[start : start + batch_size]), max_sequence_length, device))
    return {key: torch.cat([part[key] for part in parts]) for key in parts[0]}


__all__ = [
    "DEFAULT_FAMILY",
    "build_tiny_pipeline",
    "exported",
    "tiny_names",
    "encode_text",
    "BlockLayout",
    "BlockStack",
    "FAMILIES",
    "ModelFamily",
    "TextConditioning",
    "all_families",
    "family_of",
    "family_of_config",
    "family_of_pipeline",
    "find_family",
    "get_family",
    "supported_text",
]
