"""Preference scorers: open_clip -> CLIPModel conversion checked against an independent open_clip forward,
preprocessing and prompt cleaning on hand-computed examples, caching, the generic CLIP folder, and bad input."""

from __future__ import annotations

import importlib.util
import math
import os

import pytest
import torch
import torch.nn.functional as F

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from diffusers_layerprune.errors import LayerPruneError  # noqa: E402
from diffusers_layerprune.scorers import (  # noqa: E402
    SCORERS,
    HPSv2Scorer,
    ImageTransform,
    clean_prompt_hpsv2,
    folder_scorer,
    letterbox,
    load_hpsv2,
    load_scorer,
    resize_shortest_center_crop,
)
from diffusers_layerprune.scorers import hps as hps_module  # noqa: E402
from diffusers_layerprune.scorers.tiny import build_clip_tokenizer, save_tiny_clip_folder, tiny_clip_config  # noqa: E402

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)
WIDTH_V, WIDTH_T, LAYERS_V, LAYERS_T, HEADS, PATCH, IMAGE, EMBED, CONTEXT = 32, 24, 2, 3, 4, 8, 32, 16, 77

PROMPTS = [
    "A red circle on the left",
    "  a   BLUE square &amp;amp; a “tiny” star ",
    "photo",
    " ".join(["green triangle"] * 60),  # longer than 77 tokens: truncated, end-of-text kept last
]


# ---------------------------------------------------------------------------------------------------------------
# A tiny open_clip-format checkpoint and an independent open_clip forward written from its state dict.


def _open_clip_state_dict(vocab_size: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, std=None):
        std = std if std is not None else 1.0 / math.sqrt(shape[-1])
        return torch.randn(*shape, generator=g) * std

    def norm(prefix, width):
        return {f"{prefix}.weight": 1.0 + 0.1 * rand(width, std=1.0), f"{prefix}.bias": 0.1 * rand(width, std=1.0)}

    def tower(prefix, width, layers):
        sd = {}
        for i in range(layers):
            p = f"{prefix}resblocks.{i}."
            sd |= norm(p + "ln_1", width) | norm(p + "ln_2", width)
            sd[p + "attn.in_proj_weight"] = rand(3 * width, width, std=2.0 / math.sqrt(width))
            sd[p + "attn.in_proj_bias"] = rand(3 * width, std=0.1)
            sd[p + "attn.out_proj.weight"] = rand(width, width)
            sd[p + "attn.out_proj.bias"] = rand(width, std=0.1)
            sd[p + "mlp.c_fc.weight"] = rand(4 * width, width)
            sd[p + "mlp.c_fc.bias"] = rand(4 * width, std=0.1)
            sd[p + "mlp.c_proj.weight"] = rand(width, 4 * width)
            sd[p + "mlp.c_proj.bias"] = rand(width, std=0.1)
        return sd

    grid = IMAGE // PATCH
    sd = {
        "visual.conv1.weight": rand(WIDTH_V, 3, PATCH, PATCH, std=1.0 / PATCH),
        "visual.class_embedding": rand(WIDTH_V, std=1.0),
        "visual.positional_embedding": rand(grid * grid + 1, WIDTH_V, std=0.5),
        "visual.proj": rand(WIDTH_V, EMBED),
        "token_embedding.weight": rand(vocab_size, WIDTH_T, std=1.0),
        "positional_embedding": rand(CONTEXT, WIDTH_T, std=0.5),
        "text_projection": rand(WIDTH_T, EMBED),
        "logit_scale": torch.tensor(math.log(100.0)),
        # open_clip versions that saved the causal mask as a buffer: the converter must ignore it.
        "attn_mask": torch.full((CONTEXT, CONTEXT), float("-inf")).triu(1),
    }
    sd |= norm("visual.ln_pre", WIDTH_V) | norm("visual.ln_post", WIDTH_V) | norm("ln_final", WIDTH_T)
    sd |= tower("visual.transformer.", WIDTH_V, LAYERS_V) | tower("transformer.", WIDTH_T, LAYERS_T)
    return sd


def _ln(x, sd, prefix):
    return F.layer_norm(x, (x.shape[-1],), sd[prefix + ".weight"], sd[prefix + ".bias"], eps=1e-5)


def _resblock(x, sd, p, mask=None):
    b, n, w = x.shape
    h = _ln(x, sd, p + "ln_1")
    q, k, v = (h @ sd[p + "attn.in_proj_weight"].T + sd[p + "attn.in_proj_bias"]).chunk(3, dim=-1)
    q, k, v = (t.reshape(b, n, HEADS, w // HEADS).transpose(1, 2) for t in (q, k, v))
    logits = q @ k.transpose(-1, -2) / math.sqrt(w // HEADS)
    if mask is not None:
        logits = logits + mask
    attn = (logits.softmax(-1) @ v).transpose(1, 2).reshape(b, n, w)
    x = x + attn @ sd[p + "attn.out_proj.weight"].T + sd[p + "attn.out_proj.bias"]
    h = _ln(x, sd, p + "ln_2")
    h = F.gelu(h @ sd[p + "mlp.c_fc.weight"].T + sd[p + "mlp.c_fc.bias"])
    return x + h @ sd[p + "mlp.c_proj.weight"].T + sd[p + "mlp.c_proj.bias"]


def _ref_encode_image(sd, pixels):
    x = F.conv2d(pixels, sd["visual.conv1.weight"], stride=PATCH).flatten(2).transpose(1, 2)
    cls = sd["visual.class_embedding"].expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1) + sd["visual.positional_embedding"]
    x = _ln(x, sd, "visual.ln_pre")
    for i in range(LAYERS_V):
        x = _resblock(x, sd, f"visual.transformer.resblocks.{i}.")
    return _ln(x[:, 0], sd, "visual.ln_post") @ sd["visual.proj"]


def _ref_encode_text(sd, ids):
    x = sd["token_embedding.weight"][ids] + sd["positional_embedding"]
    mask = torch.full((CONTEXT, CONTEXT), float("-inf")).triu(1)
    for i in range(LAYERS_T):
        x = _resblock(x, sd, f"transformer.resblocks.{i}.", mask)
    x = _ln(x, sd, "ln_final")
    return x[torch.arange(ids.shape[0]), ids.argmax(dim=-1)] @ sd["text_projection"]


def _ref_tokenize(tokenizer, prompts):
    """open_clip's tokenize: [sot] + bpe + [eot], cut to 77 with eot last, zero padded."""
    rows = []
    for prompt in prompts:
        body = tokenizer(clean_prompt_hpsv2(prompt), add_special_tokens=False)["input_ids"]
        ids = [tokenizer.bos_token_id, *body, tokenizer.eos_token_id][:CONTEXT]
        ids[-1] = tokenizer.eos_token_id
        rows.append(ids + [0] * (CONTEXT - len(ids)))
    return torch.tensor(rows)


def _ref_letterbox(images, size):
    b, c, h, w = images.shape
    nh, nw = round(h * size / max(h, w)), round(w * size / max(h, w))
    resized = F.interpolate(images, size=(nh, nw), mode="bicubic", antialias=True).clamp(0, 1)
    canvas = torch.zeros(b, c, size, size)
    top, left = (size - nh) // 2, (size - nw) // 2
    canvas[:, :, top : top + nh, left : left + nw] = resized
    return (canvas - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def _ref_hps(sd, tokenizer, images, prompts):
    img = F.normalize(_ref_encode_image(sd, _ref_letterbox(images, IMAGE)), dim=-1)
    txt = F.normalize(_ref_encode_text(sd, _ref_tokenize(tokenizer, prompts)), dim=-1)
    return (img * txt).sum(-1)


@pytest.fixture(scope="module")
def tokenizer():
    return build_clip_tokenizer()


@pytest.fixture(scope="module")
def clip_config(tokenizer):
    return tiny_clip_config(
        tokenizer,
        vision_width=WIDTH_V,
        vision_layers=LAYERS_V,
        text_width=WIDTH_T,
        text_layers=LAYERS_T,
        heads=HEADS,
        image_size=IMAGE,
        patch_size=PATCH,
        projection_dim=EMBED,
        max_length=CONTEXT,
    )


@pytest.fixture(scope="module")
def open_clip_sd(tokenizer):
    return _open_clip_state_dict(len(tokenizer))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, open_clip_sd):
    path = tmp_path_factory.mktemp("ckpt") / "tiny_hps.pt"
    torch.save({"state_dict": open_clip_sd}, path)
    return path


@pytest.fixture(scope="module")
def hps(checkpoint, clip_config, tokenizer, tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    return HPSv2Scorer.from_checkpoint(checkpoint, clip_config=clip_config, tokenizer=tokenizer, cache_dir=cache)


def _images(b=4, h=40, w=24, seed=1):
    return torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------------------------
# HPSv2 conversion and scores


def test_hps_scores_match_independent_open_clip_forward(hps, open_clip_sd, tokenizer):
    images = _images()
    scores = hps(images, PROMPTS)
    expected = _ref_hps(open_clip_sd, tokenizer, images, PROMPTS)
    assert scores.shape == (4,) and scores.dtype == torch.float32
    assert scores.std() > 1e-2  # the pairs differ, so agreement below is not agreement of constants
    torch.testing.assert_close(scores, expected, atol=1e-5, rtol=0)


def test_hps_square_and_landscape_images_match_reference(hps, open_clip_sd, tokenizer):
    for h, w in ((64, 64), (20, 50), (IMAGE, IMAGE)):
        images = _images(2, h, w, seed=h + w)
        prompts = PROMPTS[:2]
        torch.testing.assert_close(
            hps(images, prompts), _ref_hps(open_clip_sd, tokenizer, images, prompts), atol=1e-5, rtol=0
        )


def test_text_pooling_matches_open_clip_argmax(hps, tokenizer):
    # transformers pools at the first eos id; open_clip at argmax(ids). With end-of-text the highest id they agree.
    assert tokenizer.eos_token_id == len(tokenizer) - 1
    assert hps.model.config.text_config.eos_token_id == tokenizer.eos_token_id
    ids = hps.input_ids(PROMPTS)
    assert (ids[-1, -1] == tokenizer.eos_token_id) and ids.shape[1] == CONTEXT


def test_converted_checkpoint_is_cached(checkpoint, clip_config, tokenizer, tmp_path, monkeypatch):
    first = HPSv2Scorer.from_checkpoint(checkpoint, clip_config=clip_config, tokenizer=tokenizer, cache_dir=tmp_path)
    folders = [p for p in tmp_path.iterdir() if not p.name.startswith(".")]
    assert len(folders) == 1 and (folders[0] / "model.safetensors").is_file()

    def fail(*args, **kwargs):
        raise AssertionError("conversion ran again")

    monkeypatch.setattr(hps_module.openclip_convert, "convert_open_clip_state_dict", fail)
    monkeypatch.setattr(hps_module.torch, "load", fail)
    second = HPSv2Scorer.from_checkpoint(checkpoint, clip_config=clip_config, tokenizer=tokenizer, cache_dir=tmp_path)
    images = _images(2)
    torch.testing.assert_close(second(images, PROMPTS[:2]), first(images, PROMPTS[:2]), atol=0, rtol=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in folders)


def test_from_checkpoint_without_cache_leaves_nothing(checkpoint, clip_config, tokenizer, hps):
    scorer = HPSv2Scorer.from_checkpoint(checkpoint, clip_config=clip_config, tokenizer=tokenizer, cache=False)
    images = _images(2)
    torch.testing.assert_close(scorer(images, PROMPTS[:2]), hps(images, PROMPTS[:2]), atol=1e-6, rtol=0)


def test_load_scorer_accepts_open_clip_checkpoint_path(checkpoint, clip_config, tokenizer, tmp_path, hps):
    scorer = load_scorer(str(checkpoint), clip_config=clip_config, tokenizer=tokenizer, cache_dir=tmp_path)
    images = _images(2)
    torch.testing.assert_close(scorer(images, PROMPTS[:2]), hps(images, PROMPTS[:2]), atol=1e-6, rtol=0)


def test_mismatched_config_is_a_clear_error(checkpoint, clip_config, tokenizer, tmp_path):
    wrong = clip_config.__class__.from_dict(clip_config.to_dict())
    wrong.vision_config.num_hidden_layers = LAYERS_V + 1
    with pytest.raises(LayerPruneError, match="vision tower has 2 blocks"):
        HPSv2Scorer.from_checkpoint(checkpoint, clip_config=wrong, tokenizer=tokenizer, cache_dir=tmp_path)
    assert not [p for p in tmp_path.iterdir() if (p / "model.safetensors").exists()]


def test_hps_cleans_prompts(hps):
    images = _images(2)
    messy = hps(images, ["  A  RED\tcircle &amp;amp; ", "“Tiny”   STAR"])
    clean = hps(images, ["a red circle &", '"tiny" star'])
    torch.testing.assert_close(messy, clean, atol=0, rtol=0)


def test_pil_and_tensor_inputs_agree(hps):
    from PIL import Image

    images = torch.randint(0, 256, (3, 3, 30, 44), generator=torch.Generator().manual_seed(3)).float() / 255
    pil = [Image.fromarray((im * 255).round().byte().permute(1, 2, 0).numpy()) for im in images]
    torch.testing.assert_close(hps(pil, PROMPTS[:3]), hps(images, PROMPTS[:3]), atol=1e-6, rtol=0)


def test_batch_size_does_not_change_scores(hps):
    images = _images()
    full = hps(images, PROMPTS)
    hps.batch_size = 3
    try:
        torch.testing.assert_close(hps(images, PROMPTS), full, atol=1e-6, rtol=0)
    finally:
        hps.batch_size = 32


# ---------------------------------------------------------------------------------------------------------------
# Preprocessing and text cleaning, hand-computed


def test_letterbox_pads_short_side_left_top_half():
    image = torch.arange(8, dtype=torch.float32).view(1, 1, 2, 4).expand(1, 3, 2, 4) / 10
    out = letterbox(image, size=4)  # already 4 wide: no resize, 2 rows of padding, 1 on top, 1 below
    expected = torch.zeros(1, 3, 4, 4)
    expected[:, :, 1:3, :] = image
    assert torch.equal(out, expected)

    tall = torch.full((1, 3, 4, 1), 0.5)  # pad 3 columns: 1 left, 2 right
    expected = torch.zeros(1, 3, 4, 4)
    expected[..., 1] = 0.5
    assert torch.equal(letterbox(tall, size=4), expected)


def test_letterbox_resizes_longest_side_then_normalizes_padding():
    image = torch.full((1, 3, 4, 8), 0.25)  # -> 2 x 4 of 0.25 (antialiased bicubic keeps constants), pad 1 + 1 rows
    out = ImageTransform(kind="letterbox", size=4)(image)
    for c in range(3):
        pad, inside = -MEAN[c] / STD[c], (0.25 - MEAN[c]) / STD[c]
        col = torch.tensor([pad, inside, inside, pad])
        torch.testing.assert_close(out[0, c], col.view(4, 1).expand(4, 4), atol=1e-6, rtol=0)


def test_shortest_edge_center_crop():
    image = torch.arange(24, dtype=torch.float32).view(1, 1, 4, 6).expand(1, 3, 4, 6) / 24
    out = resize_shortest_center_crop(image, size=4)  # shortest side already 4: crop columns (6 - 4) // 2 = 1 .. 4
    assert torch.equal(out, image[..., :, 1:5])
    tall = torch.arange(28, dtype=torch.float32).view(1, 1, 7, 4).expand(1, 3, 7, 4) / 28
    assert torch.equal(resize_shortest_center_crop(tall, size=4), tall[..., 1:5, :])
    big = torch.rand(2, 3, 64, 96)
    assert resize_shortest_center_crop(big, size=16).shape == (2, 3, 16, 16)


def test_clean_prompt_hpsv2():
    assert clean_prompt_hpsv2("  A “Curly”   CAT &amp;amp; Dog\n") == 'a "curly" cat & dog'
    assert clean_prompt_hpsv2("It‘s &amp; THAT’s\t\tIT") == "it's & that's it"
    assert clean_prompt_hpsv2("fish &amp;amp; chips") == "fish & chips"


# ---------------------------------------------------------------------------------------------------------------
# Generic CLIP folders and the registry


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    return save_tiny_clip_folder(tmp_path_factory.mktemp("toy") / "scorer", seed=5)


def _hf_logits(folder, images, prompts):
    """CLIPModel's own forward (with attention masks) on the folder's crop preprocessing: logit_scale.exp() * cos."""
    from transformers import AutoTokenizer, CLIPModel

    model, tok = CLIPModel.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)
    pixels = resize_shortest_center_crop(images, model.config.vision_config.image_size)
    pixels = (pixels - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    with torch.no_grad():
        out = model(**tok(prompts, padding=True, return_tensors="pt"), pixel_values=pixels)
    return out.logits_per_image.diagonal(), model.logit_scale.exp().item()


def test_clip_folder_score_kinds(clip_folder):
    images, prompts = _images(3, 48, 40), PROMPTS[:3]
    logits, scale = _hf_logits(clip_folder, images, prompts)
    cosine = load_scorer(clip_folder)(images, prompts)
    torch.testing.assert_close(cosine, logits / scale, atol=1e-5, rtol=0)
    torch.testing.assert_close(load_scorer(clip_folder, score="logit")(images, prompts), logits, atol=1e-4, rtol=0)
    clipscore = load_scorer(clip_folder, score="clipscore")(images, prompts)
    torch.testing.assert_close(clipscore, 100 * (logits / scale).clamp(min=0), atol=1e-3, rtol=0)


def test_scorer_config_json_sets_folder_defaults(tmp_path):
    folder = save_tiny_clip_folder(tmp_path / "s", seed=5, scorer_config={"score": "logit", "preprocess": "letterbox"})
    scorer = load_scorer(folder)
    assert scorer.score_kind == "logit" and scorer.transform.kind == "letterbox"
    assert load_scorer(folder, score="cosine").score_kind == "cosine"


def test_registering_a_folder_is_one_line(clip_folder, tmp_path, monkeypatch):
    # The shape the toy world's registry line takes: a package resource resolved when the scorer is loaded.
    pkg = tmp_path / "fake_toy_pkg"
    (pkg / "assets").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "assets" / "scorer").symlink_to(clip_folder, target_is_directory=True)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(SCORERS, "toy", folder_scorer("fake_toy_pkg", "assets/scorer", score="cosine"))
    images = _images(2)
    torch.testing.assert_close(
        load_scorer("toy")(images, PROMPTS[:2]), load_scorer(clip_folder)(images, PROMPTS[:2]), atol=0, rtol=0
    )


# ---------------------------------------------------------------------------------------------------------------
# Bad input: one clear error each


@pytest.mark.parametrize(
    ("images", "prompts", "match"),
    [
        (torch.rand(2, 3, 8, 8), ["one"], "2 images but 1 prompts"),
        (torch.rand(2, 3, 8, 8) * 2, ["a", "b"], r"in \[0, 1\]"),
        (torch.rand(2, 3, 8, 8) - 0.5, ["a", "b"], r"in \[0, 1\]"),
        (torch.full((1, 3, 8, 8), float("nan")), ["a"], r"in \[0, 1\]"),
        (torch.rand(2, 1, 8, 8), ["a", "b"], "3 \\(RGB\\) channels"),
        (torch.rand(2, 8, 8, 3), ["a", "b"], "3 \\(RGB\\) channels"),
        (torch.rand(3, 8, 8), ["a"], r"\[B, 3, H, W\]"),
        (torch.randint(0, 255, (1, 3, 8, 8)), ["a"], "float tensor"),
        ("image.png", ["a"], "PIL images"),
        (torch.rand(1, 3, 8, 8), "a prompt", "list of strings"),
    ],
)
def test_bad_inputs_raise(hps, images, prompts, match):
    with pytest.raises(LayerPruneError, match=match):
        hps(images, prompts)


def test_unknown_scorer_lists_known_names():
    with pytest.raises(LayerPruneError, match="unknown scorer 'hpsv3'.*clip, hpsv2, hpsv2.1, pickscore"):
        load_scorer("hpsv3")


def test_missing_checkpoint_is_a_clear_error(tmp_path, clip_config, tokenizer):
    missing = tmp_path / "HPS_v2.1_compressed.pt"
    with pytest.raises(LayerPruneError, match="does not exist"):
        load_scorer(str(missing))
    with pytest.raises(LayerPruneError, match="not found"):
        HPSv2Scorer.from_checkpoint(missing, clip_config=clip_config, tokenizer=tokenizer)
    with pytest.raises(LayerPruneError, match="not found"):
        load_hpsv2("hpsv2.1", checkpoint=missing)


def test_bad_score_kind_and_folder(clip_folder, tmp_path):
    with pytest.raises(LayerPruneError, match="unknown score kind"):
        load_scorer(clip_folder, score="softmax")
    (tmp_path / "empty").mkdir()
    with pytest.raises(LayerPruneError, match="not a CLIPModel folder"):
        load_scorer(tmp_path / "empty")


@pytest.mark.skipif(importlib.util.find_spec("hpsv2") is not None, reason="hpsv2 installed: error path not reachable")
def test_reference_backend_without_hpsv2_says_how_to_install(checkpoint):
    with pytest.raises(LayerPruneError, match=r"diffusers-layerprune\[hpsv2\]"):
        load_hpsv2("hpsv2.1", checkpoint=checkpoint, backend="reference")


def test_half_precision_model_scores_in_float32(clip_folder):
    images, prompts = _images(2), PROMPTS[:2]
    full = load_scorer(clip_folder)(images, prompts)
    half = load_scorer(clip_folder, dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16
    scores = half(images, prompts)
    assert scores.dtype == torch.float32
    torch.testing.assert_close(scores, full, atol=3e-2, rtol=0)


def test_vit_h_14_config_fits_open_clip_layout():
    # Shapes of open_clip's ViT-H-14 state dict (the HPSv2 checkpoints), on the meta device: no memory, no download.
    from diffusers_layerprune.scorers import convert_open_clip_state_dict, vit_h_14_config

    def t(*shape):
        return torch.empty(shape, device="meta")

    def tower(prefix, width, layers):
        sd = {}
        for i in range(layers):
            p = f"{prefix}resblocks.{i}."
            for name in ("ln_1", "ln_2"):
                sd |= {p + name + ".weight": t(width), p + name + ".bias": t(width)}
            sd |= {p + "attn.in_proj_weight": t(3 * width, width), p + "attn.in_proj_bias": t(3 * width)}
            sd |= {p + "attn.out_proj.weight": t(width, width), p + "attn.out_proj.bias": t(width)}
            sd |= {p + "mlp.c_fc.weight": t(4 * width, width), p + "mlp.c_fc.bias": t(4 * width)}
            sd |= {p + "mlp.c_proj.weight": t(width, 4 * width), p + "mlp.c_proj.bias": t(width)}
        return sd

    sd = {
        "visual.conv1.weight": t(1280, 3, 14, 14),
        "visual.class_embedding": t(1280),
        "visual.positional_embedding": t(257, 1280),
        "visual.proj": t(1280, 1024),
        "token_embedding.weight": t(49408, 1024),
        "positional_embedding": t(77, 1024),
        "text_projection": t(1024, 1024),
        "logit_scale": t(),
    }
    for name, width in (("visual.ln_pre", 1280), ("visual.ln_post", 1280), ("ln_final", 1024)):
        sd |= {name + ".weight": t(width), name + ".bias": t(width)}
    sd |= tower("visual.transformer.", 1280, 32) | tower("transformer.", 1024, 24)
    config = vit_h_14_config()
    converted = convert_open_clip_state_dict(sd, config)  # raises on any missing key or shape mismatch
    assert converted["visual_projection.weight"].shape == (1024, 1280)
    assert converted["vision_model.encoder.layers.31.self_attn.v_proj.weight"].shape == (1280, 1280)
    assert config.vision_config.hidden_act == config.text_config.hidden_act == "gelu"
    del sd["visual.transformer.resblocks.31.mlp.c_fc.bias"]
    with pytest.raises(LayerPruneError, match="resblocks.31.mlp.c_fc.bias"):
        convert_open_clip_state_dict(sd, config)
