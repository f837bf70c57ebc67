"""Human-preference and image-text scorers behind one call: ``load_scorer(name)(images, prompts) -> FloatTensor[B]``.

Every scorer is a transformers ``CLIPModel`` with its own preprocessing, prompt cleaning and score formula (see
``docs/scorers.md``). Names are looked up in :data:`SCORERS`, the one place that lists them: adding a scorer is one
registry line.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch

from ..errors import LayerPruneError
from .base import SCORE_KINDS, CLIPScorer
from .clip import folder_scorer, load_clip_folder, load_clip_pretrained, load_clip_score, load_pickscore
from .hps import HPSv2Scorer, load_hpsv2
from .openclip_convert import convert_open_clip_state_dict, vit_h_14_config
from .preprocess import ImageTransform, letterbox, resize_shortest_center_crop
from .text import clean_prompt_hpsv2

# name -> loader(device=..., dtype=..., **options) -> scorer
SCORERS: dict[str, Callable[..., CLIPScorer]] = {
    "hpsv2": partial(load_hpsv2, "hpsv2"),
    "hpsv2.1": partial(load_hpsv2, "hpsv2.1"),
    "pickscore": load_pickscore,
    "clip": load_clip_score,
    # the bundled toy world's CLIP scorer: cosine of normalised embeddings, like HPS
    "toy": folder_scorer("diffusers_layerprune.toy", "assets/scorer", score="cosine"),
}

_CHECKPOINT_SUFFIXES = (".pt", ".pth")


def load_scorer(
    name_or_path: str | os.PathLike,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    **options,
) -> CLIPScorer:
    """Load a scorer by registered name or local path.

    Args:
        name_or_path: a name in :data:`SCORERS` (``"hpsv2"``, ``"hpsv2.1"``, ``"pickscore"``, ``"clip"``); a folder
            holding a ``CLIPModel`` + tokenizer + ``preprocessor_config.json`` (options ``score=`` ``"cosine"`` |
            ``"logit"`` | ``"clipscore"`` and ``preprocess=`` ``"crop"`` | ``"letterbox"``); or an open_clip
            checkpoint ``.pt`` scored as HPSv2 (ViT-H-14 unless ``clip_config=`` says otherwise).
        device: where the model runs; images may come from any device.
        dtype: model precision (e.g. ``torch.float16`` on GPU); scores are returned in float32.
        **options: passed to the loader (e.g. ``checkpoint=``, ``cache_dir=``, ``backend="reference"`` for HPSv2).

    Returns:
        A callable ``scorer(images, prompts) -> FloatTensor[B]``; ``images`` is a float tensor ``[B, 3, H, W]`` in
        [0, 1] or a list of PIL images, ``prompts`` a list of ``B`` strings.

    Raises:
        LayerPruneError: unknown name, or a path that does not exist.
    """
    key = str(name_or_path)
    if key in SCORERS:
        return SCORERS[key](device=device, dtype=dtype, **options)
    path = Path(key).expanduser()
    if path.is_dir():
        return load_clip_folder(path, device=device, dtype=dtype, **options)
    if path.is_file() and path.suffix in _CHECKPOINT_SUFFIXES:
        return HPSv2Scorer.from_checkpoint(path, device=device, dtype=dtype, **options)
    known = ", ".join(sorted(SCORERS))
    if path.suffix in _CHECKPOINT_SUFFIXES or os.sep in key or key.startswith((".", "~")):
        raise LayerPruneError(
            f"scorer path {key!r} does not exist; give a CLIPModel folder, an open_clip .pt checkpoint, or a name "
            f"({known})"
        )
    raise LayerPruneError(f"unknown scorer {key!r}; known scorers: {known}, or a path to a CLIPModel folder")


__all__ = [
    "SCORERS",
    "SCORE_KINDS",
    "CLIPScorer",
    "HPSv2Scorer",
    "ImageTransform",
    "clean_prompt_hpsv2",
    "convert_open_clip_state_dict",
    "folder_scorer",
    "letterbox",
    "load_clip_folder",
    "load_clip_pretrained",
    "load_clip_score",
    "load_hpsv2",
    "load_pickscore",
    "load_scorer",
    "resize_shortest_center_crop",
    "vit_h_14_config",
]
