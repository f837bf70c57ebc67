"""Prompt sets and the cached tensors built from them (text embeddings, teacher latents).

Data flows one way: prompts -> embeddings (cached) -> latents / generations. Everything cached is keyed by a
fingerprint of what produced it, so a changed prompt list, model or setting never reuses stale tensors.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import LayerPruneError

HPDV2_STYLES = ("anime", "concept-art", "paintings", "photo")
PROMPT_COLUMNS = ("prompt", "text", "caption", "prompts", "captions")


@dataclass
class PromptSet:
    """An ordered list of prompts with where it came from; ``groups`` labels each prompt (e.g. HPDv2 style)."""

    prompts: list[str]
    source: str
    groups: list[str] | None = None
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.prompts)

    def fingerprint(self) -> str:
        """A short hash of the prompts (order matters)."""
        return hashlib.sha256("\n".join(self.prompts).encode()).hexdigest()[:16]

    def head(self, n: int | None) -> PromptSet:
        if n is None or n >= len(self.prompts):
            return self
        groups = self.groups[:n] if self.groups is not None else None
        return PromptSet(self.prompts[:n], self.source, groups, dict(self.meta, limit=n))


# name -> loader(split) for built-in prompt sets; the toy world registers "toy" here.
PROMPT_SETS: dict[str, Callable[[str | None], PromptSet]] = {}


def _hpdv2(style: str | None) -> PromptSet:
    """HPDv2 benchmark prompts (Wu et al., 2023): 800 per style, from the ``zhwang/HPDv2`` Hub dataset."""
    from huggingface_hub import hf_hub_download

    styles = HPDV2_STYLES if style in (None, "all") else (style,)
    unknown = [s for s in styles if s not in HPDV2_STYLES]
    if unknown:
        raise LayerPruneError(f"unknown HPDv2 style {unknown[0]!r}; choose from {', '.join(HPDV2_STYLES)} or all")
    prompts, groups = [], []
    for s in styles:
        try:
            path = hf_hub_download("zhwang/HPDv2", f"{s}.json", subfolder="benchmark", repo_type="dataset")
        except Exception as error:
            raise LayerPruneError(f"could not download the HPDv2 {s} prompts: {str(error).splitlines()[0]}") from error
        loaded = json.loads(Path(path).read_text())
        prompts += loaded
        groups += [s] * len(loaded)
    return PromptSet(prompts, "hpdv2" if style in (None, "all") else f"hpdv2:{style}", groups)


PROMPT_SETS["hpdv2"] = _hpdv2


def _pick_column(columns: Sequence[str], column: str | None, source: str) -> str:
    if column is not None:
        if column not in columns:
            raise LayerPruneError(f"{source} has no column {column!r}; its columns are {', '.join(columns)}")
        return column
    for name in PROMPT_COLUMNS:
        if name in columns:
            return name
    raise LayerPruneError(f"{source}: say which column holds the prompts (columns: {', '.join(columns)})")


def _from_records(records: list, column: str | None, source: str) -> list[str]:
    if all(isinstance(r, str) for r in records):
        return records
    if all(isinstance(r, dict) for r in records):
        name = _pick_column(list(records[0]) if records else [], column, source)
        return [r[name] for r in records]
    raise LayerPruneError(f"{source}: expected a list of strings or of objects with a prompt field")


def _from_file(path: Path, column: str | None) -> list[str]:
    suffix = path.suffix.lower()
    if suffix == ".txt":
        return [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if suffix == ".json":
        data = json.loads(path.read_text())
        if isinstance(data, dict):
            key = _pick_column(list(data), column, str(path))
            data = data[key]
        return _from_records(data, column, str(path))
    if suffix in (".jsonl", ".csv", ".parquet"):
        ds = load_hf_dataset(path)
        return list(ds[_pick_column(ds.column_names, column, str(path))])
    raise LayerPruneError(
        f"{path}: unsupported prompt file type {suffix!r} (use .txt, .json, .jsonl, .csv or .parquet)"
    )


DATA_FILE_BUILDERS = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet", ".txt": "text"}


def load_hf_dataset(name: str | os.PathLike, config: str | None = None, split: str | None = None):
    """``datasets.load_dataset`` for a Hub name, a local data file (csv/json/jsonl/parquet/txt) or a local folder.

    Errors (missing file, unknown dataset, no network) become one :class:`LayerPruneError` line.
    """
    from datasets import load_dataset

    text = str(name)
    path = Path(text).expanduser()
    try:
        if path.is_file():
            builder = DATA_FILE_BUILDERS.get(path.suffix.lower())
            if builder is None:
                raise LayerPruneError(f"{text}: unsupported data file type {path.suffix!r}")
            return load_dataset(builder, data_files=str(path), split=split or "train")
        if path.is_dir():
            return load_dataset(str(path), config, split=split or "train")
        if text.startswith((".", "/", "~")) or path.suffix.lower() in DATA_FILE_BUILDERS:
            raise LayerPruneError(f"dataset {text} does not exist")
        return load_dataset(text, config, split=split or "train")
    except LayerPruneError:
        raise
    except Exception as error:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise LayerPruneError(f"could not load dataset {text!r}: {first}") from error


def load_prompts(
    source: str, *, column: str | None = None, split: str | None = None, limit: int | None = None
) -> PromptSet:
    """Load a prompt set.

    ``source`` is one of: a built-in name (``toy``, ``hpdv2``; ``name:part`` picks a split or style, e.g.
    ``toy:heldout``, ``hpdv2:photo``), a local ``.txt`` (one prompt per line) / ``.json`` / ``.jsonl`` / ``.csv`` /
    ``.parquet`` file, or a ``datasets`` Hub name (``column`` picks the text column; default: the first of
    ``prompt, text, caption``; ``split`` defaults to ``train``). ``limit`` keeps the first prompts.
    """
    name, _, part = source.partition(":")
    if name in PROMPT_SETS:
        prompt_set = PROMPT_SETS[name](part or split)
    else:
        path = Path(source).expanduser()
        if path.exists():
            if path.is_dir():
                raise LayerPruneError(f"{source} is a folder; pass a prompt file or a datasets name")
            prompts = _from_file(path, column)
        elif path.suffix.lower() in (".txt", ".json", ".jsonl", ".csv", ".parquet") or source.startswith(
            (".", "/", "~")
        ):
            raise LayerPruneError(f"prompt file {source} does not exist")
        else:
            ds = load_hf_dataset(source, split=split)
            prompts = list(ds[_pick_column(ds.column_names, column, source)])
        prompt_set = PromptSet([str(p) for p in prompts], source)
    prompt_set = prompt_set.head(limit)
    if not prompt_set.prompts:
        raise LayerPruneError(f"prompt set {source!r} is empty")
    return prompt_set


# ----------------------------------------------------------------------------------------------------------------
# Text embeddings
# ----------------------------------------------------------------------------------------------------------------


def encode_prompts(
    pipe, prompts: Sequence[str], *, max_sequence_length: int, batch_size: int = 32, device=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode prompts exactly as the pipeline does for generation (``pipe.encode_prompt``, no caption cleaning).

    Returns ``(prompt_embeds [N, L, D], prompt_attention_mask [N, L])`` on the CPU, L = ``max_sequence_length``.
    """
    device = device or pipe.text_encoder.device
    embeds, masks = [], []
    with torch.inference_mode():
        for start in range(0, len(prompts), batch_size):
            batch = list(prompts[start : start + batch_size])
            e, m, _, _ = pipe.encode_prompt(
                batch,
                do_classifier_free_guidance=False,
                device=device,
                clean_caption=False,
                max_sequence_length=max_sequence_length,
            )
            embeds.append(e.cpu())
            masks.append(m.cpu())
    return torch.cat(embeds), torch.cat(masks)


def cache_key(**parts) -> str:
    """A stable hash of JSON-serialisable settings: the name of a cache entry."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


def default_cache_dir() -> Path:
    base = os.environ.get("LAYERPRUNE_CACHE") or os.path.join(
        os.environ.get("HF_HOME", os.path.expanduser("~/.cache/huggingface")), "layerprune"
    )
    return Path(base)


# ----------------------------------------------------------------------------------------------------------------
# Distillation datasets: (prompt, prompt_embeds, prompt_attention_mask, latents), saved with datasets.save_to_disk
# ----------------------------------------------------------------------------------------------------------------


def _latent_features(latent_shape: Sequence[int], embed_shape: Sequence[int]):
    from datasets import Array2D, Array3D, Features, List, Value

    return Features(
        {
            "prompt": Value("string"),
            "prompt_embeds": Array2D(shape=tuple(embed_shape), dtype="float32"),
            "prompt_attention_mask": List(Value("int64"), length=embed_shape[0]),
            "latents": Array3D(shape=tuple(latent_shape), dtype="float32"),
        }
    )


def _save_dataset_atomically(columns: dict, features, path: Path):
    from datasets import Dataset, load_from_disk

    from .outputs import atomic_output_dir

    dataset = Dataset.from_dict(columns, features=features)
    with atomic_output_dir(path, overwrite=True) as tmp:
        dataset.save_to_disk(str(tmp))
    return load_from_disk(str(path))


def teacher_latents_dataset(
    pipe,
    prompts: Sequence[str],
    *,
    cache_dir: str | os.PathLike,
    model_id: str,
    resolution: int,
    num_inference_steps: int,
    guidance_scale: float,
    max_sequence_length: int,
    seed: int = 0,
    batch_size: int = 8,
    progress: bool = True,
):
    """Data-free KD data: the teacher pipeline generates the clean latents of each prompt once.

    Prompt ``i`` is generated from seed ``seed + i`` (independent of batch size). The result is saved with
    ``datasets.save_to_disk`` under ``cache_dir`` keyed by every setting, and reloaded by later runs and processes.
    Returns a ``datasets.Dataset`` with columns ``prompt, prompt_embeds, prompt_attention_mask, latents``.
    """
    from datasets import load_from_disk
    from tqdm.auto import tqdm

    prompts = list(prompts)
    key = cache_key(
        kind="teacher-latents",
        model=model_id,
        prompts=hashlib.sha256("\n".join(prompts).encode()).hexdigest(),
        resolution=resolution,
        steps=num_inference_steps,
        guidance=guidance_scale,
        length=max_sequence_length,
        seed=seed,
        dtype=str(pipe.transformer.dtype),
    )
    path = Path(cache_dir) / f"teacher-latents-{key}"
    if (path / "dataset_info.json").is_file():
        return load_from_disk(str(path))

    from .modeling import generate_from_embeddings

    embeds, masks = encode_prompts(pipe, prompts, max_sequence_length=max_sequence_length)
    negative = encode_prompts(pipe, [""], max_sequence_length=max_sequence_length) if guidance_scale > 1 else None
    with tqdm(total=len(prompts), desc="teacher latents", disable=not progress) as bar:
        latents = generate_from_embeddings(
            pipe,
            embeds,
            masks,
            negative,
            seeds=[seed + i for i in range(len(prompts))],
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            resolution=resolution,
            max_sequence_length=max_sequence_length,
            batch_size=batch_size,
            output_type="latent",
            progress=bar.update,
        )
    columns = {
        "prompt": prompts,
        "prompt_embeds": embeds.float().numpy(),
        "prompt_attention_mask": masks.long().numpy(),
        "latents": latents.numpy(),
    }
    return _save_dataset_atomically(columns, _latent_features(latents.shape[1:], embeds.shape[1:]), path)


def _image_to_tensor(image, resolution: int) -> torch.Tensor:
    """PIL image -> ``[3, R, R]`` in [-1, 1]: shortest side resized to R (bicubic), centre crop. No torchvision."""
    import numpy as np
    from PIL import Image

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
    progress: bool = True,
):
    """Image-caption KD data: VAE-encode each image (posterior mean x scaling factor) once and cache it.

    ``dataset`` is a ``datasets.Dataset`` with a PIL image column and a caption column. Same output columns and
    caching as :func:`teacher_latents_dataset`.
    """
    from datasets import load_from_disk
    from tqdm.auto import tqdm

    for column in (image_column, caption_column):
        if column not in dataset.column_names:
            raise LayerPruneError(
                f"dataset has no column {column!r}; its columns are {', '.join(dataset.column_names)}"
            )
    if len(dataset) == 0:
        raise LayerPruneError("the training dataset is empty")
    captions = [str(c) for c in dataset[caption_column]]
    key = cache_key(
        kind="image-latents",
        model=model_id,
        data=dataset_id,
        fingerprint=getattr(dataset, "_fingerprint", None),
        n=len(dataset),
        resolution=resolution,
        length=max_sequence_length,
    )
    path = Path(cache_dir) / f"image-latents-{key}"
    if (path / "dataset_info.json").is_file():
        return load_from_disk(str(path))

    embeds, masks = encode_prompts(pipe, captions, max_sequence_length=max_sequence_length)
    vae = pipe.vae
    latents = []
    with torch.inference_mode():
        for start in tqdm(range(0, len(dataset), batch_size), desc="encode images", disable=not progress):
            rows = dataset[start : start + batch_size][image_column]
            pixels = torch.stack([_image_to_tensor(im, resolution) for im in rows]).to(vae.device, vae.dtype)
            latents.append((vae.encode(pixels).latent_dist.mean * vae.config.scaling_factor).float().cpu())
    latents = torch.cat(latents)
    columns = {
        "prompt": captions,
        "prompt_embeds": embeds.float().numpy(),
        "prompt_attention_mask": masks.long().numpy(),
        "latents": latents.numpy(),
    }
    return _save_dataset_atomically(columns, _latent_features(latents.shape[1:], embeds.shape[1:]), path)
