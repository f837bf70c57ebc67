"""Image-caption distillation data (``--dataset_name`` / ``--train_data_dir``): each image VAE-encoded once with
its family's VAE and cached with its caption's text conditioning, in the same cache layout as prompt-only data
(``data``); and the check of an image folder before anything is loaded."""

from __future__ import annotations

import itertools
import json
import logging
import os
from pathlib import Path

import torch

from .data import (
    CACHE_DTYPES,
    CACHE_FORMAT_VERSION,
    _building,
    _check_cache_dtype,
    _encoder_settings,
    _load_cache,
    cache_key,
    iter_prompt_embeddings,
)
from .errors import LayerPruneError

logger = logging.getLogger(__name__)


def _image_to_tensor(image, resolution: int) -> torch.Tensor:
    """PIL image -> ``[3, R, R]`` in [-1, 1]: shortest side resized to R (bicubic), centre crop. No torchvision."""
    import numpy as np
    from PIL import Image

    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # transparent pixels on white, not on whatever colour they happen to hold
        rgba = image.convert("RGBA")
        image = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image.alpha_composite(rgba)
    image = image.convert("RGB")
    scale = resolution / min(image.size)
    size = (max(resolution, round(image.width * scale)), max(resolution, round(image.height * scale)))
    image = image.resize(size, Image.BICUBIC)
    left, top = (size[0] - resolution) // 2, (size[1] - resolution) // 2
    image = image.crop((left, top, left + resolution, top + resolution))
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)


def image_latents_dataset(
    pipe,
    dataset,
    *,
    image_column: str,
    caption_column: str,
    cache_dir: str | os.PathLike,
    model_id: str,
    dataset_id: str,
    resolution: int,
    max_sequence_length: int,
    batch_size: int = 8,
    cache_dtype: str = "bfloat16",
    progress: bool = True,
):
    """Image-caption KD data: VAE-encode each image once (:func:`vae_latents`) and cache it with its caption's text
    conditioning, for every family: the family's VAE and its scaling / shift factors, the family's text encoders
    (trimmed embeddings and a mask, or untrimmed and pooled embeddings for SD3 / Flux), latents stored unpacked
    ``[C, h, w]`` (Flux's forward packs them 2x2, as for teacher latents).

    ``dataset`` is a ``datasets.Dataset`` with a PIL image column and a caption column. Images that are not RGB or not
    ``resolution`` square are converted (transparency on white) and resized / centre-cropped, and a warning says how
    many. Captions and images are encoded and written ``batch_size`` rows at a time. Same output columns, storage and
    caching as :func:`teacher_latents_dataset` (keyed by the dataset's fingerprint and size, the model, resolution,
    sequence length and dtypes).
    """
    from tqdm.auto import tqdm

    for column in (image_column, caption_column):
        if column not in dataset.column_names:
            raise LayerPruneError(
                f"dataset has no column {column!r}; its columns are {', '.join(dataset.column_names)}"
            )
    if len(dataset) == 0:
        raise LayerPruneError("the training dataset is empty")
    cache_dtype = _check_cache_dtype(cache_dtype)
    captions = [str(c) for c in dataset[caption_column]]
    settings = dict(
        kind="image-latents",
        **_encoder_settings(pipe, model_id, captions, max_sequence_length, cache_dtype),
        data=str(dataset_id),
        fingerprint=getattr(dataset, "_fingerprint", None),
        resolution=resolution,
        vae_dtype=str(pipe.vae.dtype),
    )
    key = cache_key(version=CACHE_FORMAT_VERSION, **settings)
    path = Path(cache_dir) / f"image-latents-{key}"
    cached = _load_cache(path, key)
    if cached is not None:
        return cached

    from .families import encode_text, family_of_pipeline

    vae, storage = pipe.vae, CACHE_DTYPES[cache_dtype]
    pooled = "pooled_prompt_embeds" in family_of_pipeline(pipe).text_keys
    stream = None
    if not pooled:
        stream = iter_prompt_embeddings(pipe, captions, max_sequence_length=max_sequence_length, dtype=storage)
    converted = {"mode": 0, "size": 0}
    with (
        torch.no_grad(),
        tqdm(total=len(captions), desc="encode images", unit="image", disable=not progress) as bar,
        _building(path, key, cache_dtype, settings) as sink,
    ):
        for start in range(0, len(captions), batch_size):
            chunk = captions[start : start + batch_size]
            pixels = []
            for i in range(start, start + len(chunk)):
                image = _dataset_image(dataset, i, image_column, dataset_id)
                converted["mode"] += image.mode != "RGB"
                converted["size"] += image.size != (resolution, resolution)
                pixels.append(_image_to_tensor(image, resolution))
            latents = vae_latents(vae, torch.stack(pixels).to(vae.device, vae.dtype)).float().cpu()
            if pooled:  # SD3 / Flux: every token and the pooled embedding, as prompt-only caches store them
                text = encode_text(pipe, chunk, max_sequence_length=max_sequence_length)
                row = {
                    "prompt_embeds": list(text["prompt_embeds"].to(storage)),
                    "pooled_prompt_embeds": [p[None] for p in text["pooled_prompt_embeds"].to(storage)],
                }
            else:
                row = {"prompt_embeds": list(itertools.islice(stream, len(chunk)))}
            sink.write({"prompt": chunk, **row, "latents": list(latents)})
            bar.update(len(chunk))
    for what, done in (
        ("not RGB (converted to RGB)", converted["mode"]),
        (f"not {resolution}x{resolution} (resized and centre-cropped)", converted["size"]),
    ):
        if done:
            logger.warning("%d of %d training images were %s", done, len(captions), what)
    return _load_cache(path, key)


def vae_latents(vae, pixels: torch.Tensor) -> torch.Tensor:
    """Latents of images ``[B, 3, H, W]`` in [-1, 1] as the model denoises them: the VAE's posterior mean
    (``AutoencoderKL``) or its latent (``AutoencoderDC``: Sana), minus the VAE config's ``shift_factor`` (SD3, Flux;
    none for PixArt and Sana), times its ``scaling_factor``: the inverse of what the pipelines do before decoding."""
    encoded = vae.encode(pixels)
    latents = encoded.latent_dist.mean if hasattr(encoded, "latent_dist") else encoded.latent
    shift = getattr(vae.config, "shift_factor", None)
    if shift is not None:
        latents = latents - shift
    return latents * vae.config.scaling_factor


def _dataset_image(dataset, index: int, image_column: str, dataset_id: str):
    """Row ``index``'s image, decoded; one line naming the file (or row) that cannot be read."""
    try:
        image = dataset[index][image_column]
        image.load()
    except Exception as error:  # PIL raises many types for a damaged or foreign file
        raise LayerPruneError(
            f"training image {index} of {dataset_id} cannot be read ({type(error).__name__}: {error}); remove or "
            "replace it"
        ) from error
    if not hasattr(image, "convert"):
        raise LayerPruneError(f"row {index} of {dataset_id} holds no image in its {image_column!r} column")
    return image


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
METADATA_FILES = ("metadata.jsonl", "metadata.csv")


def check_image_folder(folder: str | os.PathLike, caption_column: str = "text") -> int:
    """Check an image-caption folder (``datasets``' imagefolder layout: images plus ``metadata.jsonl`` or
    ``metadata.csv`` rows ``{"file_name": ..., "<caption_column>": ...}``) before any model is loaded: every image
    has a non-empty caption, every listed file exists and opens as an image. Raises :class:`LayerPruneError` naming
    the first bad file; returns the number of images."""
    import csv

    from PIL import Image

    root = Path(folder).expanduser()
    if not root.is_dir():
        raise LayerPruneError(f"--train_data_dir {folder} is not a folder")
    captions: dict[Path, object] = {}
    metadata = sorted(p for name in METADATA_FILES for p in root.rglob(name))
    if not metadata:
        raise LayerPruneError(
            f"{folder} has no metadata.jsonl: write one line per image, "
            f'{{"file_name": "0.png", "{caption_column}": "a caption"}}'
        )
    for meta in metadata:
        try:
            if meta.suffix == ".jsonl":
                rows = [json.loads(line) for line in meta.read_text().splitlines() if line.strip()]
            else:
                with meta.open(newline="") as f:
                    rows = list(csv.DictReader(f))
        except (OSError, UnicodeDecodeError, ValueError) as error:
            raise LayerPruneError(f"{meta} cannot be read ({error})") from error
        for n, row in enumerate(rows, 1):
            if not isinstance(row, dict) or not isinstance(row.get("file_name"), str):
                raise LayerPruneError(f"{meta} line {n} has no file_name")
            captions[(meta.parent / row["file_name"]).resolve()] = row.get(caption_column)
    images = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    for image in images:
        caption = captions.get(image.resolve())
        if not isinstance(caption, str) or not caption.strip():
            where = "no row in metadata" if image.resolve() not in captions else f"an empty {caption_column!r}"
            raise LayerPruneError(f"training image {image} has no caption ({where}); add it or remove the image")
    for path in sorted(captions):
        if not path.is_file():
            raise LayerPruneError(f"training image {path} is listed in the metadata but does not exist")
        try:
            with Image.open(path) as im:
                im.verify()
        except Exception as error:  # PIL raises many types for a damaged or foreign file
            raise LayerPruneError(
                f"training image {path} cannot be read ({type(error).__name__}: {error}); remove or replace it"
            ) from error
    if not captions:
        raise LayerPruneError(f"{folder} lists no images in its metadata")
    return len(captions)
