"""What the rehearsal measures: a stage's wall time, peak resident memory of its process tree and bytes written; one
forward of the transformer and the text encoder; FLOPs of each real-size component (meta device)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

PROMPTS = [
    "a photo of an astronaut riding a horse on the moon, detailed, dramatic light",
    "a watercolor painting of a small red fox in a snowy forest at dawn",
    "a bowl of ramen on a wooden table, studio photo, shallow depth of field",
    "an isometric illustration of a tiny island city with bridges and lanterns",
    "portrait of an old fisherman with a grey beard, oil painting, warm colours",
    "a cyberpunk street at night in the rain, neon signs reflected in puddles",
    "a cute robot reading a book in a library, 3d render, soft light",
    "a field of sunflowers under a blue sky with white clouds, wide angle photo",
]


def words_of(prompts) -> list[str]:
    return sorted({w.strip(",.").lower() for p in prompts for w in p.split()})


def process_tree_rss(pid: int) -> int:
    """Resident bytes of ``pid`` and all its descendants (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        todo += children.get(current, [])
        try:
            with open(f"/proc/{current}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


def folder_bytes(path: Path) -> int:
    if not path.exists():
        return 0
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def run_stage(name: str, cmd: list[str], outputs: list[Path], env: dict, log: Path) -> dict:
    before = sum(folder_bytes(p) for p in outputs)
    start = time.perf_counter()
    with log.open("a") as out:
        out.write(f"\n$ {' '.join(cmd)}\n")
        out.flush()
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
        peak = 0
        while proc.poll() is None:
            peak = max(peak, process_tree_rss(proc.pid))
            time.sleep(0.1)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        tail = log.read_text().splitlines()[-15:]
        raise SystemExit(f"stage {name} failed ({proc.returncode}); last lines of {log}:\n" + "\n".join(tail))
    written = sum(folder_bytes(p) for p in outputs) - before
    row = {"stage": name, "seconds": round(seconds, 1), "peak_rss_bytes": peak, "bytes_written": written}
    row["load_average_1min_at_end"] = round(os.getloadavg()[0], 2)  # other work on the machine inflates wall times
    print(f"{name:<24} {seconds:>9.1f} s {peak / 2**30:>9.2f} GiB {written / 2**30:>9.2f} GiB", flush=True)
    return row


def measure_forwards(pipe, *, resolution: int, device: str, dtype, repeats: int = 3) -> dict:
    """Seconds of one transformer forward (batch 1 and 2, i.e. with guidance) and one text-encoder call per prompt
    at 300 tokens; FLOPs of one transformer forward at this resolution and at 1024 px (counted on the meta device)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    transformer = pipe.transformer.to(device, dtype)
    config = transformer.config
    latent = resolution // pipe.vae_scale_factor

    def inputs(batch: int, side: int, on: str):
        return dict(
            hidden_states=torch.randn(batch, config.in_channels, side, side, device=on, dtype=dtype),
            encoder_hidden_states=torch.randn(batch, 300, config.caption_channels, device=on, dtype=dtype),
            encoder_attention_mask=torch.ones(batch, 300, device=on),
            timestep=torch.full((batch,), 500, device=on),
            added_cond_kwargs={"resolution": None, "aspect_ratio": None},
        )

    def timed(fn) -> float:
        fn()  # warm-up
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        return sorted(times)[len(times) // 2]

    result = {}
    with torch.no_grad():
        for batch in (1, 2):
            x = inputs(batch, latent, device)
            result[f"transformer_forward_batch{batch}_s"] = timed(lambda x=x: transformer(**x))
        tokens = pipe.tokenizer(["a prompt"] * 2, padding="max_length", max_length=300, return_tensors="pt")
        encoder = pipe.text_encoder.to(device, dtype)
        ids, mask = tokens.input_ids.to(device), tokens.attention_mask.to(device)
        result["text_encoder_per_prompt_s"] = timed(lambda: encoder(ids, attention_mask=mask)) / 2
        result["text_encoder_layers"] = encoder.config.num_layers
        meta = type(transformer)(**{k: v for k, v in config.items() if not k.startswith("_")}).to("meta")
        for side_px in sorted({resolution, 1024}):
            counter = FlopCounterMode(display=False)
            with counter:
                meta(**inputs(1, side_px // pipe.vae_scale_factor, "meta"))
            result[f"transformer_forward_flops_{side_px}px"] = counter.get_total_flops()
        result["blocks"] = config.num_layers
    transformer.to("cpu")
    pipe.text_encoder.to("cpu")
    return result


def count_component_flops() -> dict:
    """FLOPs of one forward of each real-size component, counted on the meta device (no memory, no compute):
    the transformer at 1024 px, the SDXL VAE decoder at 1024 px, the full 24-layer T5-XXL encoder per prompt at 300
    and at 60 tokens, and an HPSv2-sized CLIP image tower (ViT-H-14, 224 px)."""
    import torch
    from diffusers import AutoencoderKL, PixArtTransformer2DModel
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import CLIPModel, T5Config, T5EncoderModel

    from diffusers_layerprune.scorers.tiny import build_clip_tokenizer, tiny_clip_config
    from diffusers_layerprune.testing import PIXART_SIGMA_XL_TRANSFORMER, SDXL_VAE, T5_XXL_ENCODER

    def count(fn) -> int:
        counter = FlopCounterMode(display=False)
        with counter:
            fn()
        return counter.get_total_flops()

    with torch.device("meta"):
        transformer = PixArtTransformer2DModel(**PIXART_SIGMA_XL_TRANSFORMER)
        vae = AutoencoderKL(**SDXL_VAE)
        t5 = T5EncoderModel(T5Config(**T5_XXL_ENCODER))
        clip = CLIPModel(tiny_clip_config(build_clip_tokenizer(), vision_width=1280, vision_layers=32, heads=16,
                                          image_size=224, patch_size=14, text_width=1024, text_layers=24,
                                          projection_dim=1024))  # fmt: skip

    def transformer_inputs(batch: int):
        return dict(
            hidden_states=torch.randn(batch, 4, 128, 128, device="meta"),
            encoder_hidden_states=torch.randn(batch, 300, 4096, device="meta"),
            encoder_attention_mask=torch.ones(batch, 300, device="meta"),
            timestep=torch.full((batch,), 500, device="meta"),
            added_cond_kwargs={"resolution": None, "aspect_ratio": None},
        )

    image = torch.randn(1, 3, 224, 224, device="meta")
    return {
        "transformer_forward_1024px": count(lambda: transformer(**transformer_inputs(1))),
        "transformer_params": sum(p.numel() for p in transformer.parameters()),
        "block_params": sum(p.numel() for p in transformer.transformer_blocks[0].parameters()),
        "vae_decode_1024px": count(lambda: vae.decode(torch.randn(1, 4, 128, 128, device="meta"))),
        "t5_xxl_encode_300_tokens": count(lambda: t5(torch.zeros(1, 300, dtype=torch.long, device="meta"))),
        "t5_xxl_encode_60_tokens": count(lambda: t5(torch.zeros(1, 60, dtype=torch.long, device="meta"))),
        "t5_xxl_params": sum(p.numel() for p in t5.parameters()),
        "vit_h_image_224px": count(lambda: clip.get_image_features(pixel_values=image)),
    }
