"""Flux.1's ``layerprune export`` round trip in a fresh stock process, at the one width diffusers 0.42.1 reads back.

diffusers' Flux converter splits each single block's fused projection at Flux.1's widths (3 x 3072 + 12288 rows)
whatever the config says, so the tiny Flux of the other export tests cannot be read back; this test builds the
smallest model the converter reads: 3072 wide (24 heads x 128), one double and two single blocks, one single block
pruned (both stacks must keep a block: the converter counts them from the keys). bfloat16 keeps each copy near 1 GB.
"""

import gc
import json
import shutil

import pytest

from diffusers_layerprune.cli import main as cli
from diffusers_layerprune.modeling import prune_pipeline, save_pruned_pipeline
from diffusers_layerprune.testing import FLUX_FILE_LOAD_SCRIPT, build_real_width_flux_pipeline

from helpers import run_stock


@pytest.mark.slow  # ~1 GB files: export, then three loads of the transformer in a fresh process
def test_flux1_single_file_and_gguf_load_in_fresh_stock_process_and_generate_the_folders_images(tmp_path):
    folder = save_pruned_pipeline(
        prune_pipeline(build_real_width_flux_pipeline(), pruned_layers=[2]), tmp_path / "pruned"
    )
    gc.collect()
    single, gguf_file = tmp_path / "transformer.safetensors", tmp_path / "transformer-Q8_0.gguf"
    assert cli(["export", str(folder), "--format", "single-file", "--output", str(single)]) == 0
    assert cli(["export", str(folder), "--format", "gguf", "--quant", "Q8_0", "--output", str(gguf_file)]) == 0
    try:
        result = run_stock(FLUX_FILE_LOAD_SCRIPT, args=[folder, single, gguf_file], cwd=tmp_path)
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
