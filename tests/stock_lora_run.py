"""Run by test_lora.py in a fresh interpreter that imports only torch, diffusers and peft (never diffusers_layerprune):
each job loads a pipeline folder with stock ``DiffusionPipeline.from_pretrained``, applies a LoRA as a user would
(``pipe.load_lora_weights(folder)``, or for PixArt ``PeftModel.from_pretrained(pipe.transformer, folder)``), generates
and saves the images. Prints one JSON line per job with the adapters the pipeline lists."""

import json
import sys

import numpy as np
import torch
from diffusers import DiffusionPipeline

for job in json.loads(open(sys.argv[1]).read()):
    pipe = DiffusionPipeline.from_pretrained(job["pipeline"])
    pipe.set_progress_bar_config(disable=True)
    adapters = None
    if job.get("lora") and job["format"] == "peft":
        from peft import PeftModel

        adapters = {"transformer": sorted(PeftModel.from_pretrained(pipe.transformer, job["lora"]).peft_config)}
    elif job.get("lora"):
        pipe.load_lora_weights(job["lora"])
        adapters = pipe.get_list_adapters()
    # Weights read from safetensors can sit at addresses that are not 64-byte aligned, and CPU matmul kernels then
    # round differently; copies are aligned as an in-memory model's are.
    for p in pipe.transformer.parameters():
        p.data = p.data.clone()
    images = pipe(
        prompt=job["prompt"], generator=torch.Generator().manual_seed(0), output_type="pt", **job["call"]
    ).images
    np.save(job["out"], images.numpy())
    print(json.dumps({"name": job["name"], "adapters": adapters}))
assert "diffusers_layerprune" not in sys.modules, "the plugin was imported"
