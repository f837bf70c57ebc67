"""The cached tensors built from prompt sets (text embeddings, teacher latents; image latents of image-caption data
are built on the same cache in ``image_data``); the prompt sets themselves are read in ``prompts``.

Data flows one way: prompts -> embeddings (cached) -> latents / generations. Everything cached is keyed by a
fingerprint of what produced it, so a changed prompt list, model or setting never reuses stale tensors.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import LayerPruneError
from .prompts import (  # noqa: F401 (imported from here by the training script, routing and the benchmarks)
    PromptSet,
    PromptSpec,
    check_prompt_cells,
    encode_prompts,
    load_hf_dataset,
    load_prompts,
    parse_prompt_spec,
)
from .records import Record, read_json
from .validation import CACHE_DTYPE_NAMES

logger = logging.getLogger(__name__)


def cache_key(**parts) -> str:
    """A stable hash of JSON-serialisable settings: the name of a cache entry."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


def default_cache_dir() -> Path:
    base = os.environ.get("LAYERPRUNE_CACHE") or os.path.join(
        os.environ.get("HF_HOME", os.path.expanduser("~/.cache/huggingface")), "layerprune"
    )
    return Path(base)


def _prompts_hash(prompts: Sequence[str]) -> str:
    # JSON, not "\n".join: a prompt that contains a newline must not collide with two prompts.
    return hashlib.sha256(json.dumps(list(prompts)).encode()).hexdigest()


# ----------------------------------------------------------------------------------------------------------------
# Trimmed text embeddings: encode at the batch's longest caption, keep each caption's real tokens only
# ----------------------------------------------------------------------------------------------------------------


def iter_prompt_embeddings(
    pipe,
    prompts: Sequence[str],
    *,
    max_sequence_length: int,
    batch_size: int = 32,
    dtype: torch.dtype | None = None,
    sort_by_length: bool = True,
    progress: Callable[[int], object] | None = None,
) -> Iterator[torch.Tensor]:
    """Yield each prompt's text embedding trimmed to its tokens, ``[len_i, D]`` on the CPU, in input order.

    The tokens are the pipeline's (same lower-casing, no caption cleaning, truncation to ``max_sequence_length``,
    end-of-sequence token included), so ``len_i`` is the attention-mask length :func:`encode_prompts` reports. Unlike
    the pipeline, each batch is padded only to its longest caption, not to ``max_sequence_length``: T5 masks padded
    keys and its position bias is relative, so the real tokens' embeddings are the same up to float rounding (max
    |diff| against the 300-token path: 1e-6 on the tiny T5 in the tests, measured at T5-XXL width by
    ``benchmarks/bench_cache.py``), and encoding costs ``len_i`` instead of ``max_sequence_length`` tokens. With ``sort_by_length``, prompts
    are batched by length inside windows of ``8 * batch_size`` so that little padding is computed; only a window is
    held in memory (``dtype``, default the encoder's), whatever the number of prompts. ``progress(n)`` is called
    after each encoded batch of ``n`` prompts.
    """
    tokenizer, encoder = getattr(pipe, "tokenizer", None), getattr(pipe, "text_encoder", None)
    if tokenizer is None or encoder is None:
        raise LayerPruneError("the pipeline has no tokenizer/text encoder to encode the prompts with")
    from .families import find_family

    family = find_family(getattr(pipe, "transformer", None))
    if family is not None and not family.encode_by_tokens:
        yield from _encoded_embeddings(pipe, prompts, max_sequence_length, batch_size, dtype, progress)
        return
    # The pipeline's own preprocessing (PixArt: lower-case and strip) keeps the tokens identical to encode_prompt's.
    preprocess = getattr(pipe, "_text_preprocessing", None)
    window = batch_size * 8 if sort_by_length else batch_size
    truncated = 0
    for start in range(0, len(prompts), window):
        texts = [str(p) for p in prompts[start : start + window]]
        if preprocess is not None:
            texts = preprocess(texts, clean_caption=False)
        # Tokenizing to max_sequence_length + 1 tells which captions the pipeline would truncate.
        ids = tokenizer(texts, truncation=True, max_length=max_sequence_length + 1)["input_ids"]
        truncated += sum(len(x) > max_sequence_length for x in ids)
        order = list(range(len(texts)))
        if sort_by_length:
            order.sort(key=lambda i: -len(ids[i]))  # longest first: an out-of-memory shows up at once
        out: list[torch.Tensor | None] = [None] * len(texts)
        for b in range(0, len(order), batch_size):
            rows = order[b : b + batch_size]
            tokens = tokenizer(
                [texts[i] for i in rows],
                padding="longest",
                truncation=True,
                max_length=max_sequence_length,
                add_special_tokens=True,
                return_tensors="pt",
            )
            mask = tokens.attention_mask
            # no_grad, not inference_mode, and never held across a yield: a grad mode entered in a generator
            # would leak into the caller's code between items.
            with torch.no_grad():
                hidden = encoder(tokens.input_ids.to(encoder.device), attention_mask=mask.to(encoder.device))[0]
                hidden = hidden.to("cpu", dtype or hidden.dtype)
                for j, i in enumerate(rows):
                    out[i] = hidden[j][mask[j].bool()]  # boolean indexing copies: the batch tensor can go
            del hidden
            if progress is not None:
                progress(len(rows))
        yield from out
    if truncated:
        logger.warning(
            "%d of %d prompts were longer than %d tokens and were truncated (as the pipeline does)",
            truncated,
            len(prompts),
            max_sequence_length,
        )


def _encoded_embeddings(pipe, prompts, max_sequence_length: int, batch_size: int, dtype, progress):
    """:func:`iter_prompt_embeddings` for families whose text encoding is more than a tokenizer and one encoder
    output (chat templates, dropped prefixes, stacked layers): the family's own ``encode``, each prompt's embedding
    kept where its mask is set (all of it where the transformer reads every token)."""
    from .families import encode_text

    for start in range(0, len(prompts), batch_size):
        batch = [str(p) for p in prompts[start : start + batch_size]]
        text = encode_text(pipe, batch, max_sequence_length=max_sequence_length, batch_size=batch_size)
        embeds, mask = text["prompt_embeds"], text.get("prompt_attention_mask")
        for j in range(len(batch)):
            row = embeds[j] if mask is None else embeds[j][mask[j].bool()]
            yield row.to(dtype or row.dtype)
        if progress is not None:
            progress(len(batch))


def negative_embeddings(pipe, max_sequence_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The empty prompt's ``(prompt_embeds [1, L, D], prompt_attention_mask [1, L])`` as the pipeline encodes it
    (a mask of ones where the family's transformer reads every token)."""
    from .families import encode_text, find_family

    family = find_family(getattr(pipe, "transformer", None))
    if family is None or family.encode_by_tokens:
        return encode_prompts(pipe, [""], max_sequence_length=max_sequence_length)
    text = encode_text(pipe, [""], max_sequence_length=max_sequence_length)
    embeds = text["prompt_embeds"]
    return embeds, text.get("prompt_attention_mask", torch.ones(embeds.shape[:2], dtype=torch.long))


def pad_embeddings(
    embeds: Sequence[torch.Tensor], length: int | None = None, *, dtype: torch.dtype | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad trimmed embeddings ``[len_i, D]`` with zeros into ``([B, L, D], attention mask [B, L] int64)``.

    ``L`` is ``length`` or, when ``None``, the longest ``len_i``. Padded positions are masked; their values never
    reach a PixArt output (the mask adds -10000 to their attention logits, whose exponentials underflow to exactly 0).
    """
    longest = max(e.shape[0] for e in embeds)
    length = longest if length is None else length
    if longest > length:
        raise LayerPruneError(
            f"a cached embedding has {longest} tokens, more than max_sequence_length={length}; "
            "rebuild the cache with this max_sequence_length"
        )
    dtype = dtype or embeds[0].dtype
    out = torch.zeros(len(embeds), length, embeds[0].shape[-1], dtype=dtype)
    mask = torch.zeros(len(embeds), length, dtype=torch.int64)
    for i, e in enumerate(embeds):
        out[i, : e.shape[0]] = e
        mask[i, : e.shape[0]] = 1
    return out, mask


# ----------------------------------------------------------------------------------------------------------------
# Caches on disk: text embeddings, optionally with KD latents, streamed batch by batch into one Arrow file
# ----------------------------------------------------------------------------------------------------------------
#
# A cache folder is a `datasets.save_to_disk` folder (`datasets.load_from_disk` reads it, memory-mapped):
#   data-00000-of-00001.arrow        rows appended while encoding; no list of all embeddings is ever in memory
#   state.json, dataset_info.json    what load_from_disk reads
#   layerprune_cache.json            format version, cache key and settings
# It is built in a temporary folder beside its final name and renamed when complete (outputs.atomic_output_dir):
# a build that fails or is killed never leaves a folder under the name a later run looks up.
# Rows: prompt (string), prompt_embeds [len_i, D] (the caption's real tokens only), latents [C, h, w] (KD caches).
# Arrow has no bfloat16: bfloat16 values are stored as their 16 raw bits in int16 columns (lossless, 2 bytes, read
# back with a zero-copy Tensor.view(torch.bfloat16)). float16 and float32 are native Arrow types. bfloat16 is the
# default because it keeps float32's exponent range (T5 v1.1 activations are known to overflow float16);
# float16 keeps 3 more mantissa bits for in-range values; float32 stores exactly what the encoder produced.

CACHE_FORMAT_VERSION = 2
CACHE_DTYPES: dict[str, torch.dtype] = {name: getattr(torch, name) for name in CACHE_DTYPE_NAMES}
_ARROW_TYPES = {"bfloat16": "int16", "float16": "float16", "float32": "float32"}
# what rows come back as (datasets' torch format otherwise widens int16 to int64 and float16 to float32)
_READ_DTYPES = {"int16": torch.int16, "float16": torch.float16, "float32": torch.float32}
_ARROW_FILE = "data-00000-of-00001.arrow"
_MANIFEST = "layerprune_cache.json"


def _check_cache_dtype(name: str) -> str:
    if name not in CACHE_DTYPES:
        raise LayerPruneError(f"unknown cache dtype {name!r}; choose from {', '.join(CACHE_DTYPES)}")
    return name


def _to_storage(tensor: torch.Tensor, cache_dtype: str):
    """A tensor as the numpy array stored in the cache (bfloat16 as its int16 bits)."""
    tensor = tensor.detach().to("cpu", CACHE_DTYPES[cache_dtype]).contiguous()
    return (tensor.view(torch.int16) if cache_dtype == "bfloat16" else tensor).numpy()


def decode_cached(tensor: torch.Tensor) -> torch.Tensor:
    """A ``prompt_embeds`` or ``latents`` value read from a cache, as the floating tensor that was stored.

    Rows of the datasets returned here come back in their storage type: bfloat16 as ``int16`` bits (decoded with a
    zero-copy view), float16 and float32 as themselves.
    """
    tensor = torch.as_tensor(tensor)
    if tensor.dtype == torch.int16:
        return tensor.view(torch.bfloat16)
    if tensor.dtype in (torch.bfloat16, torch.float16, torch.float32):
        return tensor
    raise LayerPruneError(
        f"cached values came back as {tensor.dtype}; read the cache with data.with_cache_format(dataset) "
        "(datasets' default torch format widens the stored 16-bit values)"
    )


def with_cache_format(dataset):
    """``dataset`` formatted as the cache builders return it: torch tensors in their storage type.

    For a cache folder opened with ``datasets.load_from_disk``: ``prompt_embeds`` and ``latents`` come back as
    stored (decode with :func:`decode_cached` or collate with :class:`CacheCollator`), ``prompt`` as a string.
    """
    stored = dataset.features["prompt_embeds"].dtype
    columns = [c for c in ("prompt_embeds", "pooled_prompt_embeds", "latents") if c in dataset.column_names]
    return dataset.with_format("torch", columns=columns, dtype=_READ_DTYPES[stored], output_all_columns=True)


@dataclass(frozen=True)
class CacheCollator:
    """``collate_fn`` for a ``DataLoader`` over a cache: re-pads the trimmed embeddings into training tensors.

    Attributes:
        max_sequence_length: pad every batch to this many tokens, as the uncached pipeline path does: the
            transformer then sees tensors of the same shapes, and its output is bit-identical to the uncached path
            for the same embedding values (tested). ``None`` pads to the batch's longest caption, which saves
            cross-attention work; the masked result is the same up to float rounding of the shorter reductions
            (bit-identical in the tests, not guaranteed by every attention kernel).
        dtype: floating dtype of the returned ``prompt_embeds`` and ``latents``.

    Returns ``{"prompt_embeds": [B, L, D], "prompt_attention_mask": [B, L] int64, "latents": [B, C, h, w]}`` on the
    CPU; ``latents`` only for KD caches. Rows are independent of how a batch is split across processes.
    """

    max_sequence_length: int | None
    dtype: torch.dtype = torch.float32

    def __call__(self, rows: Sequence[dict]) -> dict[str, torch.Tensor]:
        embeds = [decode_cached(row["prompt_embeds"]) for row in rows]
        if "pooled_prompt_embeds" in rows[0]:  # SD3 / Flux: every token attended, stored untrimmed; no mask
            return {
                "prompt_embeds": torch.stack(embeds).to(self.dtype),
                "pooled_prompt_embeds": torch.stack([decode_cached(r["pooled_prompt_embeds"])[0] for r in rows]).to(
                    self.dtype
                ),
                **({"latents": _stacked_latents(rows, self.dtype)} if "latents" in rows[0] else {}),
            }
        prompt_embeds, mask = pad_embeddings(embeds, self.max_sequence_length, dtype=self.dtype)
        batch = {"prompt_embeds": prompt_embeds, "prompt_attention_mask": mask}
        if "latents" in rows[0]:
            batch["latents"] = torch.stack([decode_cached(row["latents"]).to(self.dtype) for row in rows])
        return batch


def _stacked_latents(rows: Sequence[dict], dtype: torch.dtype) -> torch.Tensor:
    return torch.stack([decode_cached(row["latents"]).to(dtype) for row in rows])


class _ArrowSink:
    """Appends rows to one Arrow file; the schema is fixed by the first batch (its embedding width, latent shape)."""

    def __init__(self, folder: Path, cache_dtype: str):
        self.file = folder / _ARROW_FILE
        self.cache_dtype = cache_dtype
        self.rows = 0
        self._writer = None

    def _features(self, columns: dict):
        from datasets import Array2D, Array3D, Features, Value

        value = _ARROW_TYPES[self.cache_dtype]
        features = {"prompt": Value("string")}
        features["prompt_embeds"] = Array2D(shape=(None, columns["prompt_embeds"][0].shape[-1]), dtype=value)
        if "pooled_prompt_embeds" in columns:  # [1, P] per row (SD3, Flux)
            width = columns["pooled_prompt_embeds"][0].shape[-1]
            features["pooled_prompt_embeds"] = Array2D(shape=(1, width), dtype=value)
        if "latents" in columns:
            features["latents"] = Array3D(shape=tuple(columns["latents"][0].shape), dtype=value)
        return Features(features)

    def write(self, columns: dict) -> None:
        """``columns``: ``prompt`` (list of str), ``prompt_embeds`` (list of ``[len_i, D]`` tensors) and optionally
        ``latents`` (list of ``[C, h, w]`` tensors), converted to the cache dtype here."""
        from datasets.arrow_writer import ArrowWriter

        columns = {
            name: values if name == "prompt" else [_to_storage(v, self.cache_dtype) for v in values]
            for name, values in columns.items()
        }
        if self._writer is None:
            self._writer = ArrowWriter(features=self._features(columns), path=str(self.file))
        self._writer.write_batch(columns)
        self.rows += len(columns["prompt"])

    def finish(self, folder: Path, manifest: dict) -> None:
        """Close the Arrow file and write the metadata that makes ``folder`` a loadable dataset."""
        from dataclasses import asdict

        from datasets import Dataset

        self._writer.finalize()
        info = asdict(Dataset.from_file(str(self.file), in_memory=False).info)
        state = {
            "_data_files": [{"filename": _ARROW_FILE}],
            "_fingerprint": manifest["key"],
            "_format_columns": None,
            "_format_kwargs": {},
            "_format_type": None,
            "_output_all_columns": False,
            "_split": None,
        }
        (folder / "state.json").write_text(json.dumps(state, indent=2, sort_keys=True))
        (folder / "dataset_info.json").write_text(json.dumps({k: info[k] for k in sorted(info)}, indent=2))
        CacheManifest(**manifest, rows=self.rows).save(folder / _MANIFEST)

    def close(self) -> None:
        if self._writer is not None and self._writer.pa_writer is not None:
            self._writer.close()


@dataclass
class CacheManifest(Record):
    """``layerprune_cache.json``: what a cache folder holds (``key``: the fingerprint of everything that shaped it;
    ``settings``: those inputs in words; ``rows``: samples) -- written last, so a folder without it is incomplete."""

    KIND = "cache-manifest"
    SCHEMA_VERSION = CACHE_FORMAT_VERSION
    WRITES_FORMAT_VERSION = True
    SORT_KEYS = True
    WHAT = "cache manifest"
    FIX = "delete the cache folder to rebuild it"
    REQUIRED = {"key": str, "cache_dtype": str, "settings": dict, "rows": int}

    key: str
    cache_dtype: str
    settings: dict
    rows: int


@contextmanager
def _building(path: Path, key: str, cache_dtype: str, settings: dict) -> Iterator[_ArrowSink]:
    """Stream rows into a new cache at ``path``; the folder appears, complete, only if the block succeeds."""
    from .outputs import atomic_output_dir

    with atomic_output_dir(path, overwrite=True) as tmp:
        sink = _ArrowSink(tmp, cache_dtype)
        try:
            yield sink
            if sink.rows == 0:
                raise LayerPruneError("nothing to cache: no prompts")
            sink.finish(tmp, {"key": key, "cache_dtype": cache_dtype, "settings": settings})
        finally:
            sink.close()


def _load_cache(path: Path, key: str):
    """The cache at ``path`` if it is complete and was built with ``key``; otherwise ``None``."""
    from datasets import load_from_disk

    try:
        data = read_json(path / _MANIFEST)
        if not isinstance(data, dict) or data.get("format_version") != CACHE_FORMAT_VERSION:
            return None  # another layout: rebuilt
        manifest = CacheManifest.from_dict(data, str(path / _MANIFEST))
    except LayerPruneError:  # missing or damaged: rebuilt
        return None
    if manifest.key != key:
        return None
    return with_cache_format(load_from_disk(str(path)))


def _encoder_settings(pipe, model_id: str, prompts: Sequence[str], max_sequence_length: int, cache_dtype: str):
    return dict(
        model=str(model_id),
        prompts=_prompts_hash(prompts),
        n=len(prompts),
        length=max_sequence_length,
        text_encoder_dtype=str(pipe.text_encoder.dtype) if getattr(pipe, "text_encoder", None) is not None else None,
        cache_dtype=cache_dtype,
    )


def text_embeddings_dataset(
    pipe,
    prompts: Sequence[str],
    *,
    cache_dir: str | os.PathLike,
    model_id: str,
    max_sequence_length: int,
    cache_dtype: str = "bfloat16",
    batch_size: int = 32,
    progress: bool = True,
):
    """Cache the text embeddings of ``prompts`` on disk, each trimmed to its caption's tokens.

    Embeddings are computed by :func:`iter_prompt_embeddings` (the pipeline's tokens, batches padded to their
    longest caption) and written batch by batch, so memory does not grow with the number of prompts. Stored in
    ``cache_dtype`` (``bfloat16`` default, ``float16``, or ``float32`` for exact results); on disk about
    ``len_i * D * 2`` bytes per caption in 16 bits (PixArt-Sigma: ~0.25 MB for a 30-token caption against 4.9 MB
    padded to 300 tokens in float32). The folder is ``cache_dir/text-embeddings-<key>``, keyed by the model, the
    prompts, ``max_sequence_length``, the encoder dtype and ``cache_dtype``; later calls with the same settings
    reuse it. Returns a memory-mapped ``datasets.Dataset`` with columns ``prompt`` and ``prompt_embeds``
    (``[len_i, D]``, in the storage type: collate with :class:`CacheCollator`, or :func:`decode_cached` one row).
    """
    from tqdm.auto import tqdm

    prompts = [str(p) for p in prompts]
    if not prompts:
        raise LayerPruneError("no prompts to encode")
    cache_dtype = _check_cache_dtype(cache_dtype)
    settings = dict(
        kind="text-embeddings", **_encoder_settings(pipe, model_id, prompts, max_sequence_length, cache_dtype)
    )
    key = cache_key(version=CACHE_FORMAT_VERSION, **settings)
    path = Path(cache_dir) / f"text-embeddings-{key}"
    cached = _load_cache(path, key)
    if cached is not None:
        return cached
    with (
        tqdm(total=len(prompts), desc="text embeddings", unit="prompt", disable=not progress) as bar,
        _building(path, key, cache_dtype, settings) as sink,
    ):
        stream = iter_prompt_embeddings(
            pipe,
            prompts,
            max_sequence_length=max_sequence_length,
            batch_size=batch_size,
            dtype=CACHE_DTYPES[cache_dtype],
            progress=bar.update,
        )
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start : start + batch_size]
            sink.write({"prompt": chunk, "prompt_embeds": list(itertools.islice(stream, len(chunk)))})
    return _load_cache(path, key)


# ----------------------------------------------------------------------------------------------------------------
# Distillation datasets: (prompt, prompt_embeds, latents) caches; CacheCollator adds prompt_attention_mask
# ----------------------------------------------------------------------------------------------------------------


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
    cache_dtype: str = "bfloat16",
    progress: bool = True,
):
    """Data-free KD data: the teacher pipeline generates the clean latents of each prompt once, cached on disk.

    Prompt ``i`` is generated from seed ``seed + i`` (independent of batch size), conditioned on its embedding as
    stored in the cache (rounded to ``cache_dtype``, re-padded to ``max_sequence_length``), so the latents are what
    the teacher makes of exactly the embeddings training reads. Prompts are encoded, generated and written
    ``batch_size`` at a time: memory does not grow with the number of prompts. The folder
    ``cache_dir/teacher-latents-<key>`` is keyed by every setting (model, prompts, resolution, steps, guidance,
    sequence length, seed, scheduler, dtypes) and reused by later runs and processes; see
    :func:`text_embeddings_dataset` for the storage. Returns a memory-mapped ``datasets.Dataset`` with columns
    ``prompt``, ``prompt_embeds`` ``[len_i, D]`` and ``latents`` ``[C, R/8, R/8]`` in the storage type: collate
    with :class:`CacheCollator`.
    """
    from tqdm.auto import tqdm

    from .generation import generate_from_embeddings

    prompts = [str(p) for p in prompts]
    if not prompts:
        raise LayerPruneError("no prompts to generate teacher latents for")
    cache_dtype = _check_cache_dtype(cache_dtype)
    settings = dict(
        kind="teacher-latents",
        **_encoder_settings(pipe, model_id, prompts, max_sequence_length, cache_dtype),
        resolution=resolution,
        steps=num_inference_steps,
        guidance=guidance_scale,
        seed=seed,
        dtype=str(pipe.transformer.dtype),
        scheduler=type(pipe.scheduler).__name__,
        scheduler_config=cache_key(**dict(pipe.scheduler.config)),
    )
    key = cache_key(version=CACHE_FORMAT_VERSION, **settings)
    path = Path(cache_dir) / f"teacher-latents-{key}"
    cached = _load_cache(path, key)
    if cached is not None:
        return cached

    from .families import family_of_pipeline

    family = family_of_pipeline(pipe)
    if "pooled_prompt_embeds" in family.text_keys:
        return _pooled_teacher_latents(
            pipe, family, prompts, path, key, settings, cache_dtype, batch_size, progress,
            dict(
                seed=seed, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                resolution=resolution, max_sequence_length=max_sequence_length,
            ),
        )  # fmt: skip
    negative = negative_embeddings(pipe, max_sequence_length) if guidance_scale > 1 else None
    stream = iter_prompt_embeddings(
        pipe, prompts, max_sequence_length=max_sequence_length, dtype=CACHE_DTYPES[cache_dtype]
    )
    with (
        tqdm(total=len(prompts), desc="teacher latents", unit="prompt", disable=not progress) as bar,
        _building(path, key, cache_dtype, settings) as sink,
    ):
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start : start + batch_size]
            embeds = list(itertools.islice(stream, len(chunk)))
            padded, mask = pad_embeddings(embeds, max_sequence_length)
            latents = generate_from_embeddings(
                pipe,
                padded,
                mask,
                negative,
                seeds=[seed + start + i for i in range(len(chunk))],
                num_inference_steps=num_inference_steps,
                guidance_scale=guidance_scale,
                resolution=resolution,
                max_sequence_length=max_sequence_length,
                batch_size=len(chunk),
                output_type="latent",
            )
            latents = family.unpack_latents(latents, resolution, pipe.vae_scale_factor)  # packed tokens -> grid
            sink.write({"prompt": chunk, "prompt_embeds": embeds, "latents": list(latents)})
            bar.update(len(chunk))
    return _load_cache(path, key)


def _pooled_teacher_latents(pipe, family, prompts, path, key, settings, cache_dtype, batch_size, progress, gen):
    """:func:`teacher_latents_dataset` for families conditioned on every token plus pooled embeddings (SD3, Flux):
    rows hold the untrimmed ``prompt_embeds`` ``[L, D]`` and ``pooled_prompt_embeds`` ``[1, P]``; the teacher
    generates from them as stored (rounded to ``cache_dtype``)."""
    from tqdm.auto import tqdm

    from .families import encode_text
    from .generation import generate_from_conditioning

    length, storage = gen["max_sequence_length"], CACHE_DTYPES[cache_dtype]
    negative = encode_text(pipe, [""], max_sequence_length=length) if gen["guidance_scale"] > 1 else None
    if negative is not None:
        negative = {k: v.to(storage) for k, v in negative.items()}
    with (
        tqdm(total=len(prompts), desc="teacher latents", unit="prompt", disable=not progress) as bar,
        _building(path, key, cache_dtype, settings) as sink,
    ):
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start : start + batch_size]
            text = {k: v.to(storage) for k, v in encode_text(pipe, chunk, max_sequence_length=length).items()}
            latents = generate_from_conditioning(
                pipe,
                text,
                negative,
                seeds=[gen["seed"] + start + i for i in range(len(chunk))],
                num_inference_steps=gen["num_inference_steps"],
                guidance_scale=gen["guidance_scale"],
                resolution=gen["resolution"],
                max_sequence_length=length,
                batch_size=len(chunk),
                output_type="latent",
            )
            latents = family.unpack_latents(latents, gen["resolution"], pipe.vae_scale_factor)
            sink.write(
                {
                    "prompt": chunk,
                    "prompt_embeds": list(text["prompt_embeds"]),
                    "pooled_prompt_embeds": [p[None] for p in text["pooled_prompt_embeds"]],
                    "latents": list(latents),
                }
            )
            bar.update(len(chunk))
    return _load_cache(path, key)
