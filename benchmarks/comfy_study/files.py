"""What benchmarks/comfy_check.py gives ComfyUI to read: tiny pruned models of each exportable family exported with
the CLI (and Flux.1 at its real width), and the exported keys and shapes of published configs at a pruned depth."""

from __future__ import annotations

from pathlib import Path

DROPPED = [1, 3]  # of 4 source blocks: a middle one and the last


def published_shapes() -> dict:
    """Published configs at a pruned depth -> the exported file's ``{key: shape}`` (meta tensors: no weights)."""
    import diffusers
    from accelerate import init_empty_weights

    from diffusers_layerprune.export import original_state_dict
    from diffusers_layerprune.families import get_family
    from diffusers_layerprune.families.flux import FLUX1_DEV_TRANSFORMER
    from diffusers_layerprune.families.flux2 import FLUX2_DEV_TRANSFORMER
    from diffusers_layerprune.families.qwenimage import QWEN_IMAGE_TRANSFORMER
    from diffusers_layerprune.families.sana import SANA_1600M_TRANSFORMER
    from diffusers_layerprune.families.sd3 import SD35_MEDIUM_TRANSFORMER

    published = {
        "flux (FLUX.1-dev)": ("flux", {**FLUX1_DEV_TRANSFORMER, "num_layers": 14, "num_single_layers": 28}),
        "sd3 (SD3.5-Medium)": ("sd3", {**SD35_MEDIUM_TRANSFORMER, "num_layers": 18}),
        "sana (Sana-1600M)": ("sana", {**SANA_1600M_TRANSFORMER, "num_layers": 14}),
        "flux2 (FLUX.2-dev)": ("flux2", {**FLUX2_DEV_TRANSFORMER, "num_layers": 6, "num_single_layers": 36}),
        "qwenimage (Qwen-Image)": ("qwenimage", {**QWEN_IMAGE_TRANSFORMER, "num_layers": 45}),
    }
    out = {}
    for label, (name, config) in published.items():
        family = get_family(name)
        with init_empty_weights():
            model = getattr(diffusers, family.transformer_class)(**config)
        shapes = {k: list(v.shape) for k, v in original_state_dict(family, model.config, model.state_dict())}
        blocks = block_counts(name, shapes)
        out[label] = dict(shapes=shapes, blocks=blocks, family=name)
    return out


def block_prefixes(name: str) -> list[str]:
    from diffusers_layerprune.families import get_family

    return {"flux": ["double_blocks", "single_blocks"], "flux2": ["double_blocks", "single_blocks"],
            "sd3": ["joint_blocks"], "sana": ["blocks"], "qwenimage": ["transformer_blocks"]}[get_family(name).name]  # fmt: skip


def block_counts(name: str, keys) -> dict[str, int]:
    return {p: len({k.split(".")[1] for k in keys if k.startswith(p + ".")}) for p in block_prefixes(name)}


def tiny_files(work: Path, with_flux: bool) -> dict:
    """Prune tiny models of each exportable family (4 blocks, 2 kept) and export them with the CLI."""
    import torch

    from diffusers_layerprune.cli import main as cli
    from diffusers_layerprune.families import get_family
    from diffusers_layerprune.modeling import prune_pipeline, save_pruned_pipeline
    from diffusers_layerprune.testing import build_real_width_flux_pipeline

    def widened(pipe, **overrides):  # wide enough (64) for GGUF's 32-value blocks to quantize the Linear weights
        torch.manual_seed(3)
        pipe.transformer = type(pipe.transformer).from_config({**pipe.transformer.config, **overrides}).eval()
        return pipe

    builds = {
        "sd3": (
            "sd3",
            lambda: widened(get_family("sd3").tiny_pipeline(4), attention_head_dim=32, caption_projection_dim=64),
            DROPPED,
        ),  # fmt: skip
        "sd35": (
            "sd3",
            lambda: widened(
                get_family("sd3").tiny_pipeline(4, dual_attention_layers=(0, 1)),
                attention_head_dim=32,
                caption_projection_dim=64,
            ),
            DROPPED,
        ),  # fmt: skip
        "sana": (
            "sana",
            lambda: widened(
                get_family("sana").tiny_pipeline(4),
                attention_head_dim=32,
                cross_attention_head_dim=32,
                cross_attention_dim=64,
            ),
            DROPPED,
        ),  # fmt: skip
        "flux2": (
            "flux2",
            lambda: widened(get_family("flux2").tiny_pipeline(2, 2), attention_head_dim=32, axes_dims_rope=(8,) * 4),
            DROPPED,
        ),  # fmt: skip
        "qwenimage": (
            "qwenimage",
            lambda: widened(get_family("qwenimage").tiny_pipeline(4), attention_head_dim=32, axes_dims_rope=(16, 8, 8)),
            DROPPED,
        ),  # fmt: skip
    }
    if with_flux:

        def real_width_flux():  # Flux.1's widths (diffusers' converter reads no other): 1 double + 2 single blocks
            # with the text and latent widths ComfyUI 0.3.64 assumes for Flux, so that its model takes every tensor
            # (the tiny pipeline's encoders no longer fit: the pipeline is only saved and exported, never run)
            return build_real_width_flux_pipeline(joint_attention_dim=4096, pooled_projection_dim=768, in_channels=64)

        builds["flux"] = ("flux", real_width_flux, [2])
    files = {}
    for name, (family, build, dropped) in builds.items():
        folder = save_pruned_pipeline(prune_pipeline(build(), pruned_layers=dropped), work / name / "pruned")
        single, gguf_file = work / name / "transformer.safetensors", work / name / "transformer-Q8_0.gguf"
        for fmt, path in (("single-file", single), ("gguf", gguf_file)):
            assert cli(["export", str(folder), "--format", fmt, "--output", str(path)]) == 0
        from safetensors import safe_open

        with safe_open(single, framework="pt") as f:
            expected = block_counts(family, list(f.keys()))
        files[name] = dict(single=str(single), gguf=str(gguf_file), prefixes=block_prefixes(family), blocks=expected)
        if name == "flux":  # ComfyUI's Flux model loads the file and computes what diffusers' model computes
            files[name]["forward"] = dict(folder=str(folder), stock_class="FluxTransformer2DModel")
    return files
