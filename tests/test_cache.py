"""Text-embedding and KD caches: trimmed encoding matches the pipeline's padded encoding, re-collated embeddings give
the transformer output of the uncached path, caches are keyed by everything that changes them, and a failed build
leaves nothing a later run trusts."""

import json
import pickle
import shutil

import pytest
import torch
from datasets import load_from_disk

from diffusers_layerprune import LayerPruneError
from diffusers_layerprune import data as cache
from diffusers_layerprune.testing import build_tiny_pixart_pipeline

# Lengths 2..26 tokens with the end-of-sequence token; upper case checks the pipeline's lower-casing is reproduced.
PROMPTS = [
    "a small red circle",
    "A Large Blue Square at the top left",
    "star",
    "a white cross in the middle of a black background with a tiny green triangle at the bottom right and a "
    "big yellow star at the top left of the photo",
    "",
    "a green star",
    "an orange circle at the bottom",
    "a purple square on a white background",
    "a painting of a red cross",
]
LENGTH = 300  # PixArt-Sigma's max_sequence_length
ADDED_COND = {"resolution": None, "aspect_ratio": None}


@pytest.fixture(scope="module")
def pipe():
    return build_tiny_pixart_pipeline(4)


def transformer_output(pipe, embeds, mask):
    g = torch.Generator().manual_seed(0)
    n = embeds.shape[0]
    latents = torch.randn(n, 4, 8, 8, generator=g)
    timesteps = torch.linspace(1, 999, n).long()
    with torch.no_grad():
        return pipe.transformer(
            latents,
            encoder_hidden_states=embeds,
            encoder_attention_mask=mask,
            timestep=timesteps,
            added_cond_kwargs=ADDED_COND,
        ).sample


def build(pipe, tmp_path, prompts=PROMPTS, **kwargs):
    settings = dict(cache_dir=tmp_path, model_id="tiny", max_sequence_length=LENGTH, batch_size=2, progress=False)
    return cache.text_embeddings_dataset(pipe, prompts, **{**settings, **kwargs})


def collate(dataset, length=LENGTH):
    return cache.CacheCollator(length)(dataset.__getitems__(list(range(len(dataset)))))


def test_trimmed_encoding_equals_the_pipelines_padded_encoding(pipe):
    """Encoding each batch padded to its longest caption (sorted by length, batches of 2) gives the real tokens the
    embeddings of encode_prompt's 300-token padding, up to float32 rounding: measured max |diff| 9.5e-7 on values up
    to 3.3 (a few ulps; a batch whose captions have equal lengths needs no mask and runs another attention kernel).
    Padded to 16 instead of 300 it was bit-identical."""
    padded, mask = cache.encode_prompts(pipe, PROMPTS, max_sequence_length=LENGTH)
    trimmed = list(cache.iter_prompt_embeddings(pipe, PROMPTS, max_sequence_length=LENGTH, batch_size=2))
    assert [t.shape[0] for t in trimmed] == mask.sum(1).tolist()  # the mask lengths, in input order
    for row, t in enumerate(trimmed):
        torch.testing.assert_close(t, padded[row, : t.shape[0]], atol=1e-5, rtol=1e-5)
    # truncation as the pipeline does it: the first tokens plus end-of-sequence
    short, short_mask = cache.encode_prompts(pipe, PROMPTS[3:4], max_sequence_length=8)
    (cut,) = cache.iter_prompt_embeddings(pipe, PROMPTS[3:4], max_sequence_length=8)
    assert cut.shape[0] == 8 == int(short_mask.sum())
    torch.testing.assert_close(cut, short[0], atol=1e-5, rtol=1e-5)


def test_float32_cache_gives_the_uncached_transformer_output(pipe, tmp_path):
    padded, mask = cache.encode_prompts(pipe, PROMPTS, max_sequence_length=LENGTH)
    batch = collate(build(pipe, tmp_path, cache_dtype="float32"))
    assert batch["prompt_embeds"].shape == padded.shape and batch["prompt_embeds"].dtype == torch.float32
    assert torch.equal(batch["prompt_attention_mask"], mask.long())
    uncached = transformer_output(pipe, padded, mask)
    # End to end (trimmed encoding + float32 storage + zero re-padding): measured max |diff| 4.8e-7 (outputs up to
    # 2.3), the encoder's float32 rounding carried through.
    torch.testing.assert_close(transformer_output(pipe, batch["prompt_embeds"], mask), uncached, atol=1e-5, rtol=0)

    # The re-padding itself is exact by construction: with the same real-token values, zeros in the masked
    # positions (instead of T5's outputs for pad tokens) give a bit-identical output, because masked logits get
    # -10000 and their exponentials underflow to exactly 0.
    same_values = padded.clone()
    same_values[mask.bool()] = batch["prompt_embeds"][mask.bool()]
    assert torch.equal(
        transformer_output(pipe, batch["prompt_embeds"], mask), transformer_output(pipe, same_values, mask)
    )
    # Padding to the batch's longest caption instead of 300: the same output up to float rounding (measured: 0).
    longest = collate(build(pipe, tmp_path, cache_dtype="float32"), length=None)
    assert longest["prompt_embeds"].shape[1] == int(mask.sum(1).max())
    torch.testing.assert_close(
        transformer_output(pipe, longest["prompt_embeds"], longest["prompt_attention_mask"]),
        transformer_output(pipe, batch["prompt_embeds"], mask),
        atol=1e-6,
        rtol=0,
    )


# unit roundoff (8 and 11 significant bits) and the output tolerance: ~5x the measured max |diff| / max |output|,
# 1.8e-4 (bfloat16) and 1.9e-5 (float16)
ROUNDING = {"bfloat16": (2**-8, 1e-3), "float16": (2**-11, 1e-4)}


@pytest.mark.parametrize("cache_dtype", ["bfloat16", "float16"])
def test_16_bit_cache_differs_from_the_uncached_path_by_rounding_only(pipe, tmp_path, cache_dtype):
    padded, mask = cache.encode_prompts(pipe, PROMPTS, max_sequence_length=LENGTH)
    dataset = build(pipe, tmp_path, cache_dtype=cache_dtype)
    assert dataset.features["prompt_embeds"].dtype == {"bfloat16": "int16", "float16": "float16"}[cache_dtype]
    batch = collate(dataset)
    roundoff, tolerance = ROUNDING[cache_dtype]
    real = mask.bool()
    # every stored value is the uncached one rounded to the cache dtype (plus the encoder's ~1e-6 float32 noise)
    error = (batch["prompt_embeds"][real] - padded[real]).abs()
    assert (error <= roundoff * padded[real].abs() + 1e-5).all()
    cached, uncached = transformer_output(pipe, batch["prompt_embeds"], mask), transformer_output(pipe, padded, mask)
    relative = ((cached - uncached).abs().max() / uncached.abs().max()).item()
    assert relative < tolerance, relative


def test_cache_rows_are_trimmed_in_order_on_disk_and_loadable_with_datasets(pipe, tmp_path):
    dataset = build(pipe, tmp_path)
    (folder,) = tmp_path.iterdir()
    assert folder.name.startswith("text-embeddings-")
    manifest = json.loads((folder / "layerprune_cache.json").read_text())
    assert manifest["cache_dtype"] == "bfloat16" and manifest["rows"] == len(PROMPTS)
    assert dataset.cache_files and dataset.cache_files[0]["filename"].startswith(str(folder))  # memory-mapped

    _, mask = cache.encode_prompts(pipe, PROMPTS, max_sequence_length=LENGTH)
    assert list(dataset["prompt"]) == PROMPTS
    lengths = [dataset[i]["prompt_embeds"].shape[0] for i in range(len(PROMPTS))]
    assert lengths == mask.sum(1).tolist()
    assert dataset[0]["prompt_embeds"].dtype == torch.int16  # bfloat16 bits: Arrow has no bfloat16
    arrow_bytes = (folder / "data-00000-of-00001.arrow").stat().st_size
    payload = sum(lengths) * 32 * 2
    assert payload < arrow_bytes < payload + 8192  # trimmed 16-bit rows plus a little Arrow overhead

    # The folder is a plain datasets folder; with_cache_format gives the rows the collator reads.
    plain = load_from_disk(str(folder))
    assert plain.column_names == ["prompt", "prompt_embeds"]
    torch.testing.assert_close(collate(cache.with_cache_format(plain)), collate(dataset), atol=0, rtol=0)
    with pytest.raises(LayerPruneError, match="with_cache_format"):  # datasets' own torch format widens to int64
        cache.CacheCollator(LENGTH)([plain.with_format("torch")[0]])
    pickle.dumps(cache.CacheCollator(LENGTH))  # DataLoader workers receive the collator pickled


def test_cache_is_reused_only_for_the_same_settings(pipe, tmp_path, monkeypatch):
    build(pipe, tmp_path)
    calls = {"n": 0}
    real = pipe.text_encoder.forward

    def counting(*args, **kwargs):
        calls["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(pipe.text_encoder, "forward", counting)
    build(pipe, tmp_path, batch_size=4)  # the batch size changes nothing stored: reused
    assert calls["n"] == 0 and len(list(tmp_path.iterdir())) == 1
    variants = [
        dict(cache_dtype="float16"),
        dict(cache_dtype="float32"),
        dict(prompts=PROMPTS[::-1]),
        dict(prompts=PROMPTS[:-1] + ["a painting of a blue cross"]),
        dict(max_sequence_length=8),
        dict(model_id="other"),
    ]
    for i, variant in enumerate(variants, start=2):
        before = calls["n"]
        build(pipe, tmp_path, **variant)
        assert calls["n"] > before, variant  # encoded again, not read from another cache
        assert len(list(tmp_path.iterdir())) == i
    with pytest.raises(LayerPruneError, match="unknown cache dtype 'int8'"):
        build(pipe, tmp_path, cache_dtype="int8")
    with pytest.raises(LayerPruneError, match="more than max_sequence_length=4"):
        collate(build(pipe, tmp_path), length=4)


def test_a_build_that_dies_midway_leaves_nothing_that_is_reused(pipe, tmp_path, monkeypatch):
    real = pipe.text_encoder.forward
    calls = {"n": 0}

    def dies_on_third_batch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(pipe.text_encoder, "forward", dies_on_third_batch)
    with pytest.raises(RuntimeError, match="killed"):
        build(pipe, tmp_path)
    assert list(tmp_path.iterdir()) == []  # the temporary folder is gone too

    # A process killed by a signal cannot clean up: its temporary folder stays, complete-looking or not.
    monkeypatch.setattr(pipe.text_encoder, "forward", real)
    reference = build(pipe, tmp_path / "reference")
    (folder,) = (tmp_path / "reference").iterdir()
    leftover = tmp_path / f".{folder.name}.tmp-killed"
    leftover.mkdir()
    (leftover / "data-00000-of-00001.arrow").write_bytes(b"half an arrow file")
    (leftover / "layerprune_cache.json").write_text((folder / "layerprune_cache.json").read_text())
    # and a datasets folder under the final name without the manifest (an older format, a copy) is not trusted
    stale = tmp_path / folder.name
    shutil.copytree(folder, stale)
    (stale / "layerprune_cache.json").unlink()
    (stale / "data-00000-of-00001.arrow").write_bytes(b"truncated")
    encoded = []
    monkeypatch.setattr(pipe.text_encoder, "forward", lambda *a, **k: encoded.append(1) or real(*a, **k))
    rebuilt = build(pipe, tmp_path)
    assert encoded  # encoded again, nothing was taken from the leftovers
    torch.testing.assert_close(collate(rebuilt), collate(reference), atol=0, rtol=0)
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == sorted(
        [folder.name, "reference"]
    )


def test_teacher_latents_cache_streams_keys_and_survives_a_failed_build(pipe, tmp_path, monkeypatch):
    from diffusers_layerprune import generation  # where the cache generates from (data imports it there)

    settings = dict(
        cache_dir=tmp_path,
        model_id="tiny",
        resolution=16,
        num_inference_steps=2,
        guidance_scale=4.5,
        max_sequence_length=LENGTH,
        batch_size=2,
        progress=False,
    )
    real = generation.generate_from_embeddings
    seen = []

    def fails_on_second_batch(pipe_, embeds, masks, *args, **kwargs):
        seen.append((embeds.shape[0], kwargs["seeds"]))
        if len(seen) == 2:
            raise RuntimeError("killed")
        return real(pipe_, embeds, masks, *args, **kwargs)

    monkeypatch.setattr(generation, "generate_from_embeddings", fails_on_second_batch)
    with pytest.raises(RuntimeError, match="killed"):
        cache.teacher_latents_dataset(pipe, PROMPTS[:5], **settings)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(generation, "generate_from_embeddings", real)

    dataset = cache.teacher_latents_dataset(pipe, PROMPTS[:5], **settings)
    assert dataset.column_names == ["prompt", "prompt_embeds", "latents"] and len(dataset) == 5
    batch = collate(dataset)
    assert batch["latents"].shape == (5, 4, 8, 8) and batch["latents"].dtype == torch.float32
    # Prompt i uses seed i whatever the batch: the latents match one uncached generation of all five prompts
    # from the cached (bf16) embeddings.
    expected = real(
        pipe,
        batch["prompt_embeds"],
        batch["prompt_attention_mask"],
        cache.encode_prompts(pipe, [""], max_sequence_length=LENGTH),
        seeds=list(range(5)),
        num_inference_steps=2,
        guidance_scale=4.5,
        resolution=16,
        max_sequence_length=LENGTH,
        batch_size=5,
        output_type="latent",
    )
    torch.testing.assert_close(batch["latents"], expected.bfloat16().float(), atol=1e-6, rtol=0)
    assert [s for _, s in seen] == [[0, 1], [2, 3]]

    again = cache.teacher_latents_dataset(pipe, PROMPTS[:5], **{**settings, "batch_size": 5})
    assert again.cache_files == dataset.cache_files  # batch size is not part of the key
    other = cache.teacher_latents_dataset(pipe, PROMPTS[:5], **{**settings, "cache_dtype": "float32", "seed": 1})
    assert other.features["latents"].dtype == "float32" and len(list(tmp_path.iterdir())) == 2
