"""Flux.1's ``layerprune export`` round trip in a fresh stock process, at the one width diffusers 0.42.1 reads back.

diffusers' Flux converter splits each single block's fused projection at Flux.1's widths (3 x 3072 + 12288 rows)
whatever the config says, so the tiny Flux of the other export tests cannot be read back; this test builds the
smallest model the converter reads: 3072 wide (24 heads x 128), one double and two single blocks, one single block
pruned (both stacks must keep a block: the converter counts them from the keys). bfloat16 keeps each copy near 1 GB.
"""

import gc
import json
import shutil
import textwrap

import pytest
import torch

from diffusers_layerprune.cli import main as cli
from diffusers_layerprune.modeling import prune_pipeline, save_pruned_pipeline
from diffusers_layerprune.testing import build_tiny_flux_pipeline

from helpers import run_stock


def real_width_flux_pipeline():
    """The tiny Flux pipeline (tiny text encoders and VAE) with a transformer of Flux.1's block widths, bfloat16."""
    pipe = build_tiny_flux_pipeline(1, 2)
    config = {**pipe.transformer.config, "num_attention_heads": 24, "attention_head_dim": 128}
    config["axes_dims_rope"] = (16, 56, 56)  # sums to the head width, as Flux.1's
    torch.manual_seed(0)
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # initialised in bfloat16: no float32 copy of 0.7 B parameters
    try:
        pipe.transformer = type(pipe.transformer).from_config(config).eval()
    finally:
        torch.set_default_dtype(before)
    return pipe.to(torch.bfloat16)


@pytest.mark.slow  # ~1 GB files: export, then three loads of the transformer in a fresh process
def test_flux1_single_file_and_gguf_load_in_fresh_stock_process_and_generate_the_folders_images(tmp_path):
    folder = save_pruned_pipeline(prune_pipeline(real_width_flux_pipeline(), pruned_layers=[2]), tmp_path / "pruned")
    gc.collect()
    single, gguf_file = tmp_path / "transformer.safetensors", tmp_path / "transformer-Q8_0.gguf"
    assert cli(["export", str(folder), "--format", "single-file", "--output", str(single)]) == 0
    assert cli(["export", str(folder), "--format", "gguf", "--quant", "Q8_0", "--output", str(gguf_file)]) == 0
    script = textwrap.dedent(
        f"""
        import json, sys, torch
        from diffusers import FluxPipeline, FluxTransformer2DModel, GGUFQuantizationConfig
        from safetensors import safe_open

        folder = {str(folder)!r}
        pipe = FluxPipeline.from_pretrained(folder, torch_dtype=torch.bfloat16)
        pipe.set_progress_bar_config(disable=True)

        def generate():
            return pipe("a red circle", num_inference_steps=2, height=16, width=16, max_sequence_length=16,
                        output_type="pt", generator=torch.Generator().manual_seed(0)).images.float()

        def aligned(transformer):
            # memory-mapped safetensors weights can sit at unaligned addresses where CPU matmuls round differently
            for p in transformer.parameters():
                p.data = p.data.clone()
            return transformer

        aligned(pipe.transformer)
        reference = generate()
        with safe_open({str(single)!r}, framework="pt") as f:
            blocks = sorted({{".".join(k.split(".")[:2]) for k in f.keys() if "blocks." in k}})
        pipe.transformer = None
        pipe.transformer = aligned(FluxTransformer2DModel.from_single_file(
            {str(single)!r}, config=folder, subfolder="transformer", torch_dtype=torch.bfloat16))
        single = generate()
        pipe.transformer = None
        pipe.transformer = FluxTransformer2DModel.from_single_file(
            {str(gguf_file)!r}, config=folder, subfolder="transformer",
            quantization_config=GGUFQuantizationConfig(compute_dtype=torch.bfloat16))
        quantized = sorted({{int(getattr(p, "quant_type", -1)) for p in pipe.transformer.parameters()}} - {{-1}})
        gguf = generate()
        assert "diffusers_layerprune" not in sys.modules, "plugin was imported"
        print(json.dumps(dict(single=(single - reference).abs().max().item(), gguf=(gguf - reference).abs().max().item(),
                              finite=bool(torch.isfinite(gguf).all()), quantized=quantized, blocks=blocks)))
        """
    )
    try:
        result = run_stock(script, cwd=tmp_path)
    finally:  # ~3 GB of copies: not kept in pytest's temporary folders for later sessions
        shutil.rmtree(folder, ignore_errors=True)
        single.unlink(missing_ok=True)
        gguf_file.unlink(missing_ok=True)
    assert result.returncode == 0, result.stderr[-3000:]
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    assert measured["blocks"] == ["double_blocks.0", "single_blocks.0"]  # the original layout, renumbered
    assert measured["single"] <= 1e-5, measured
    assert measured["finite"] and measured["gguf"] <= 0.05, measured
    assert measured["quantized"] == [8], measured  # GGMLQuantizationType.Q8_0: the Linears stayed quantized
