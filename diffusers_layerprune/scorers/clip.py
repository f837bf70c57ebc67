"""CLIP-format scorers loaded with ``CLIPModel.from_pretrained``: PickScore, CLIP score, and any local CLIP folder.

* PickScore (Kirstain et al. 2023, "Pick-a-Pic"): ``yuvalkirstain/PickScore_v1``, a fine-tuned ViT-H-14 CLIP whose
  preprocessing and tokenizer come from ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``; score = ``logit_scale.exp() * cos``.
* CLIP score (Hessel et al. 2021, "CLIPScore"): ``100 * max(cos, 0)`` with ``openai/clip-vit-large-patch14``.
* A local folder holding a ``CLIPModel`` (``config.json`` + weights), a tokenizer ``AutoTokenizer`` can load and a
  ``preprocessor_config.json`` (only ``size``/``crop_size``/``image_mean``/``image_std`` are read, as JSON). An
  optional ``scorer_config.json`` (``{"score": "cosine", "preprocess": "crop"}``) sets the defaults for that folder.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import torch

from ..errors import LayerPruneError
from .base import CLIPScorer, check_score_kind
from .preprocess import ImageTransform

PICKSCORE_MODEL = "yuvalkirstain/PickScore_v1"
PICKSCORE_PROCESSOR = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
CLIP_SCORE_MODEL = "openai/clip-vit-large-patch14"
SCORER_CONFIG_NAME = "scorer_config.json"


def _fetch(source: str, filename: str) -> Path:
    local = Path(source).expanduser()
    if local.is_dir():
        path = local / filename
        if not path.is_file():
            raise LayerPruneError(f"{local} has no {filename}; a CLIP scorer folder needs it")
        return path
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(source, filename))
    except Exception as err:  # offline, missing repo or file: the fix is the same
        raise LayerPruneError(
            f"cannot get {filename} of {source!r} ({err.__class__.__name__}); connect once to download it, or pass a "
            "local folder"
        ) from err


def load_clip_pretrained(
    model: str | os.PathLike,
    *,
    score: str = "cosine",
    preprocess: str = "crop",
    processor: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    batch_size: int = 32,
    name: str | None = None,
) -> CLIPScorer:
    """A :class:`CLIPScorer` from a ``CLIPModel`` hub id or local folder.

    Args:
        model: hub id or folder of the ``CLIPModel``.
        score: one of ``SCORE_KINDS`` (``"cosine"``, ``"logit"``, ``"clipscore"``).
        preprocess: ``"crop"`` (shortest-edge resize + centre crop) or ``"letterbox"`` (HPS-style padding).
        processor: hub id or folder holding the tokenizer and ``preprocessor_config.json``; default ``model``.
    """
    from transformers import AutoTokenizer, CLIPModel

    check_score_kind(score)
    source, processor = str(model), str(processor or model)
    transform = ImageTransform.from_preprocessor_config(_fetch(processor, "preprocessor_config.json"), kind=preprocess)
    try:
        tokenizer = AutoTokenizer.from_pretrained(processor)
        clip = CLIPModel.from_pretrained(source, dtype=dtype)
    except OSError as err:
        raise LayerPruneError(
            f"cannot load CLIP scorer {source!r} ({err.__class__.__name__}: {err}); connect once to download it, or "
            "pass a local folder with config.json, weights and tokenizer files"
        ) from err
    return CLIPScorer(
        clip.to(device).eval(), tokenizer, transform, score=score, batch_size=batch_size, name=name or source
    )


def load_pickscore(*, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, **kwargs) -> CLIPScorer:
    """PickScore v1: ``logit_scale.exp() * cos`` (about 20-23 for typical generations)."""
    kwargs.setdefault("model", PICKSCORE_MODEL)
    kwargs.setdefault("processor", PICKSCORE_PROCESSOR)
    return load_clip_pretrained(score="logit", device=device, dtype=dtype, name="pickscore", **kwargs)


def load_clip_score(*, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, **kwargs) -> CLIPScorer:
    """CLIP score: ``100 * max(cos, 0)`` with ``openai/clip-vit-large-patch14`` unless ``model=`` says otherwise."""
    kwargs.setdefault("model", CLIP_SCORE_MODEL)
    return load_clip_pretrained(score="clipscore", device=device, dtype=dtype, name="clip", **kwargs)


def load_clip_folder(
    path: str | os.PathLike,
    *,
    score: str | None = None,
    preprocess: str | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    **kwargs,
) -> CLIPScorer:
    """A local ``CLIPModel`` folder as a scorer.

    ``score`` and ``preprocess`` default to the folder's ``scorer_config.json`` if present, else ``"cosine"`` and
    ``"crop"``.
    """
    folder = Path(path).expanduser()
    if not (folder / "config.json").is_file():
        raise LayerPruneError(f"{folder} is not a CLIPModel folder (no config.json)")
    defaults = {"score": "cosine", "preprocess": "crop"}
    if (folder / SCORER_CONFIG_NAME).is_file():
        defaults.update(json.loads((folder / SCORER_CONFIG_NAME).read_text()))
    return load_clip_pretrained(
        folder,
        score=score or defaults["score"],
        preprocess=preprocess or defaults["preprocess"],
        device=device,
        dtype=dtype,
        name=kwargs.pop("name", folder.name),
        **kwargs,
    )


def folder_scorer(location: str | os.PathLike, resource: str | None = None, **defaults) -> Callable[..., CLIPScorer]:
    """A registry loader for a CLIP folder, resolved when the scorer is loaded (not at import).

    ``folder_scorer("/abs/path", score="cosine")`` or, for a folder shipped inside a package,
    ``folder_scorer("some.package", "assets/scorer", score="cosine")``.
    """

    def load(**kwargs) -> CLIPScorer:
        if resource is None:
            path = Path(location)
        else:
            from importlib.resources import files

            path = Path(str(files(str(location)) / resource))
        return load_clip_folder(path, **{**defaults, **kwargs})

    return load
