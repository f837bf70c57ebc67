"""Flux round trip through ``layerprune export`` at Flux.1's real width (3072), where diffusers 0.42's converter
works (it splits single blocks at Flux.1's widths, so the tiny test models cannot be read back).

A pruned Flux of the real block widths (24 heads x 128; 1 double + 2 single source blocks, 1 + 1 kept; tiny text
widths so the tiny pipeline's encoders and VAE fit) is saved, exported as a single file and as GGUF Q8_0, and both are
loaded in a fresh process without this package by ``FluxTransformer2DModel.from_single_file`` and compared with the
folder's images. bfloat16 keeps it near 1 GB per copy; CPU, 2 steps, 16 px.

    python benchmarks/export_flux_real_width.py   # ~2-4 minutes and ~6 GB of memory on a 2-core CPU

Writes benchmarks/results/export_flux_real_width.json.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "benchmarks" / "results" / "export_flux_real_width.json"


def main() -> None:
    from diffusers import FluxTransformer2DModel

    from diffusers_layerprune.cli import main as cli
    from diffusers_layerprune.modeling import prune_pipeline, save_pruned_pipeline
    from diffusers_layerprune.testing import FLUX_FILE_LOAD_SCRIPT, build_real_width_flux_pipeline

    start = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="flux-real-width-"))
    pipe = build_real_width_flux_pipeline(init_dtype=torch.float32)  # the weights this result was measured with
    folder = save_pruned_pipeline(prune_pipeline(pipe, pruned_layers=[1]), work / "pruned")
    del pipe
    files = {"single": work / "transformer.safetensors", "gguf": work / "transformer-Q8_0.gguf"}
    assert cli(["export", str(folder), "--format", "single-file", "--output", str(files["single"])]) == 0
    assert cli(["export", str(folder), "--format", "gguf", "--output", str(files["gguf"])]) == 0
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-c", FLUX_FILE_LOAD_SCRIPT, str(folder), str(files["single"]), str(files["gguf"])]
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    sizes = {name: round(path.stat().st_size / 1e6, 1) for name, path in files.items()}
    with torch.device("meta"):  # the pruned transformer's parameters, without reading its weights
        pruned_config = FluxTransformer2DModel.load_config(folder, subfolder="transformer")
        parameters = sum(p.numel() for p in FluxTransformer2DModel.from_config(pruned_config).parameters())
    shutil.rmtree(work, ignore_errors=True)  # ~3 GB of copies
    if result.returncode != 0:
        sys.exit(result.stderr[-3000:])
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    measured = dict(
        single_file_max_diff=loaded["single"],
        gguf_q8_0_max_diff=loaded["gguf"],
        gguf_quant_types_loaded=loaded["quantized"],
        original_block_keys=loaded["blocks"],
        transformer_parameters=parameters,
        file_mb=sizes,
        dtype="bfloat16",
        seconds=round(time.perf_counter() - start, 1),
        note="CPU, 2 steps, 16 px; max |difference| of images in [0, 1] against the folder loaded by "
        "FluxPipeline.from_pretrained in the same fresh process",
    )
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(measured, indent=2) + "\n")
    print(json.dumps(measured, indent=2))


if __name__ == "__main__":
    main()
