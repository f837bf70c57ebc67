"""HPSv2 / HPSv2.1 (Wu et al. 2023, "Human Preference Score v2") on transformers, without open_clip.

The official checkpoints hold an open_clip ViT-H-14 state dict. It is converted to a ``CLIPModel`` once and the
result is cached as safetensors, so later loads are a plain ``CLIPModel.from_pretrained`` of the cached folder.
Score = cosine of the normalised image and text embeddings, as ``hpsv2.score`` returns it.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch

from ..errors import LayerPruneError
from . import openclip_convert
from .base import CLIPScorer
from .preprocess import ImageTransform
from .text import clean_prompt_hpsv2

HPS_REPO = "xswu/HPSv2"
HPS_FILES = {"hpsv2": "HPS_v2_compressed.pt", "hpsv2.1": "HPS_v2.1_compressed.pt"}
HPS_TOKENIZER = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"


def default_cache_dir() -> Path:
    """Where converted checkpoints live: ``$HF_HOME/diffusers_layerprune/converted`` (beside the hub cache)."""
    from huggingface_hub import constants

    return Path(constants.HF_HOME) / "diffusers_layerprune" / "converted"


def _cache_key(checkpoint: Path, clip_config) -> str:
    # Keyed on the file's identity, not its bytes: hashing a 2 GB checkpoint costs more than converting it. Hub
    # downloads resolve to blobs named by their content hash, so the real path already identifies the content.
    stat = checkpoint.stat()
    ident = {
        "path": str(checkpoint.resolve()),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "config": clip_config.to_dict(),
    }
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _write_converted(checkpoint: Path, clip_config, folder: Path) -> None:
    from safetensors.torch import save_file

    payload = torch.load(checkpoint, map_location="cpu", weights_only=True)
    state_dict = payload.get("state_dict", payload) if isinstance(payload, dict) else None
    if not isinstance(state_dict, dict):
        raise LayerPruneError(f"{checkpoint} does not hold a state dict (expected {{'state_dict': ...}})")
    converted = openclip_convert.convert_open_clip_state_dict(state_dict, clip_config)
    save_file(converted, str(folder / "model.safetensors"), metadata={"format": "pt"})
    clip_config.save_pretrained(folder)


def converted_checkpoint_dir(checkpoint: str | os.PathLike, clip_config, cache_dir: str | os.PathLike) -> Path:
    """The ``CLIPModel`` folder converted from an open_clip ``checkpoint``, converting it on the first call only.

    The folder is ``cache_dir / f"{stem}-{key}"`` where ``key`` hashes the checkpoint's path, size, mtime and the
    config; it appears atomically, so an interrupted conversion leaves nothing behind.
    """
    from ..outputs import atomic_output_dir

    checkpoint = Path(checkpoint).expanduser()
    folder = Path(cache_dir).expanduser() / f"{checkpoint.stem}-{_cache_key(checkpoint, clip_config)}"
    if (folder / "model.safetensors").is_file() and (folder / "config.json").is_file():
        return folder
    with atomic_output_dir(folder, overwrite=True) as tmp:
        _write_converted(checkpoint, clip_config, tmp)
    return folder


def load_clip_model(
    folder: str | os.PathLike, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
):
    """``CLIPModel.from_pretrained(folder)`` in eval mode on ``device``; fails loudly on missing or extra weights."""
    from transformers import CLIPModel

    model, info = CLIPModel.from_pretrained(str(folder), dtype=dtype, output_loading_info=True)
    problems = {k: v for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
    if problems:
        raise LayerPruneError(f"{folder} does not load cleanly into CLIPModel: {problems}")
    return model.to(device).eval()


class HPSv2Scorer(CLIPScorer):
    """HPSv2 score: cosine of CLIP embeddings, letterboxed images, open_clip-cleaned prompts.

    Use :func:`~diffusers_layerprune.scorers.load_scorer` (``"hpsv2"``, ``"hpsv2.1"``) for the official
    checkpoints, or :meth:`from_checkpoint` for any open_clip ViT CLIP checkpoint.
    """

    def __init__(self, model, tokenizer, *, batch_size: int = 32, name: str = "hpsv2") -> None:
        transform = ImageTransform(kind="letterbox", size=model.config.vision_config.image_size)
        super().__init__(
            model,
            tokenizer,
            transform,
            score="cosine",
            clean_text=clean_prompt_hpsv2,
            batch_size=batch_size,
            name=name,
        )

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: str | os.PathLike,
        *,
        clip_config=None,
        tokenizer=None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        cache_dir: str | os.PathLike | None = None,
        cache: bool = True,
        name: str | None = None,
    ) -> HPSv2Scorer:
        """Build a scorer from an open_clip checkpoint ``.pt`` (``{"state_dict": ...}`` or a bare state dict).

        Args:
            checkpoint: path to the ``.pt`` file, loaded with ``torch.load(..., weights_only=True)``.
            clip_config: ``CLIPConfig`` of the checkpoint's architecture; default ViT-H-14 (:func:`vit_h_14_config`).
            tokenizer: a tokenizer, or a hub id / folder for ``AutoTokenizer``; default the laion ViT-H-14 one.
            device, dtype: where and in which precision the model runs (scores are always float32).
            cache_dir: where the converted ``CLIPModel`` is kept; default :func:`default_cache_dir`.
            cache: ``False`` converts into a temporary folder that is deleted after loading.
        """
        from transformers import AutoTokenizer

        checkpoint = Path(checkpoint).expanduser()
        if not checkpoint.is_file():
            raise LayerPruneError(f"HPSv2 checkpoint {checkpoint} not found; pass the path of an existing .pt file")
        clip_config = clip_config if clip_config is not None else openclip_convert.vit_h_14_config()
        if tokenizer is None or isinstance(tokenizer, (str, os.PathLike)):
            tokenizer = _load_tokenizer(AutoTokenizer, str(tokenizer or HPS_TOKENIZER))
        if cache:
            folder = converted_checkpoint_dir(checkpoint, clip_config, cache_dir or default_cache_dir())
            model = load_clip_model(folder, device=device, dtype=dtype)
        else:
            with tempfile.TemporaryDirectory(prefix="hps-convert-") as tmp:
                _write_converted(checkpoint, clip_config, Path(tmp))
                model = load_clip_model(tmp, device=device, dtype=dtype)
                # Materialise weights before the temporary safetensors file (possibly memory-mapped) goes away.
                for p in model.parameters():
                    p.data = p.data.clone()
        return cls(model, tokenizer, name=name or checkpoint.stem)


def _load_tokenizer(auto_cls, source: str):
    try:
        return auto_cls.from_pretrained(source)
    except OSError as err:
        raise LayerPruneError(
            f"cannot load tokenizer {source!r} ({err.__class__.__name__}); download it once with network access "
            "or pass tokenizer=<local folder>"
        ) from err


def hpsv2_checkpoint_path(version: str, *, cache_dir: str | os.PathLike | None = None) -> Path:
    """Download (or find in the hub cache) the official checkpoint for ``"hpsv2"`` or ``"hpsv2.1"``."""
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(HPS_REPO, HPS_FILES[version], cache_dir=cache_dir))
    except Exception as err:  # offline, gated, or no such file: all mean the same fix for the user
        raise LayerPruneError(
            f"cannot get {HPS_FILES[version]} from the {HPS_REPO} Hub repo ({err.__class__.__name__}); connect once "
            "to download it, or pass checkpoint=<path to the .pt file>"
        ) from err


def load_hpsv2(
    version: str = "hpsv2.1",
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    checkpoint: str | os.PathLike | None = None,
    tokenizer=None,
    cache_dir: str | os.PathLike | None = None,
    backend: str = "transformers",
    batch_size: int = 32,
):
    """The official HPSv2 (``"hpsv2"``) or HPSv2.1 (``"hpsv2.1"``) scorer.

    Args:
        checkpoint: a local ``.pt`` instead of the Hub download.
        cache_dir: where converted weights are cached (default :func:`default_cache_dir`).
        backend: ``"transformers"`` (this package) or ``"reference"`` (the ``hpsv2`` package itself, installed with
            the ``[hpsv2]`` extra; needs open_clip and torchvision).
    """
    if version not in HPS_FILES:
        raise LayerPruneError(f"unknown HPS version {version!r}; use one of {', '.join(HPS_FILES)}")
    path = Path(checkpoint).expanduser() if checkpoint is not None else None
    if path is not None and not path.is_file():
        raise LayerPruneError(f"HPSv2 checkpoint {path} not found; pass the path of an existing .pt file")
    if backend == "reference":
        from .reference import HPSv2ReferenceScorer

        return HPSv2ReferenceScorer(version, checkpoint=path or hpsv2_checkpoint_path(version), device=device)
    if backend != "transformers":
        raise LayerPruneError(f"unknown HPSv2 backend {backend!r}; use 'transformers' or 'reference'")
    scorer = HPSv2Scorer.from_checkpoint(
        path or hpsv2_checkpoint_path(version),
        tokenizer=tokenizer,
        device=device,
        dtype=dtype,
        cache_dir=cache_dir,
        name=version,
    )
    scorer.batch_size = batch_size
    return scorer
