"""Train the toy world's tiny ``AutoencoderKL``: 32x32 RGB <-> 16x16x4 latents (downsampling 2).

Reconstruction loss (MSE + L1) with a small KL weight; afterwards ``scaling_factor`` is set to 1 / std of the
latents of fresh renders, as Stable Diffusion does, so the diffusion model sees unit-variance latents.

    python -m diffusers_layerprune.toy.train_vae                        # writes assets/pipeline/vae
    python -m diffusers_layerprune.toy.train_vae --smoke --output_dir /tmp/vae
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F

from . import world
from .paths import assets_dir
from .training import parse_training_args, training_parser


def build_vae(seed: int = 0, block_out_channels: tuple[int, ...] = (16, 32)):
    """The architecture of the toy VAE (random weights); downsampling is ``2 ** (len(block_out_channels) - 1)``."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * len(block_out_channels),
        up_block_types=("UpDecoderBlock2D",) * len(block_out_channels),
        block_out_channels=block_out_channels,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=world.IMAGE_SIZE,
    )


def render_step(step: int, size: int, seed: int) -> torch.Tensor:
    """``[B, 3, 32, 32]`` renders of random captions of the whole world (a VAE reads no text), in [0, 1]."""
    attrs = world.all_attributes()
    rng = np.random.default_rng([seed, step])
    picks = rng.integers(0, len(attrs), size=size)
    seeds = rng.integers(0, 2**31 - 1, size=size)
    return world.render_batch([attrs[int(i)] for i in picks], [int(s) for s in seeds])


def main(argv: list[str] | None = None) -> dict:
    output_dir = str(assets_dir() / "pipeline" / "vae")
    parser = training_parser(__doc__, output_dir=output_dir, max_steps=300, batch_size=24)
    parser.add_argument("--foreground_weight", type=float, default=10.0)
    parser.add_argument("--block_out_channels", type=int, nargs="+", default=[16, 32])
    parser.add_argument("--kl_weight", type=float, default=1e-6)
    args = parse_training_args(parser, argv, smoke=(2, 4))

    vae = build_vae(args.seed, tuple(args.block_out_channels)).train()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=args.learning_rate, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, args.learning_rate, total_steps=args.max_steps)
    torch.manual_seed(args.seed)
    start, losses = time.time(), []
    for step in range(args.max_steps):
        images = render_step(step, args.batch_size, args.seed) * 2 - 1
        posterior = vae.encode(images).latent_dist
        recon = vae.decode(posterior.sample()).sample
        kl = posterior.kl().mean() / images[0].numel()
        # The shape covers ~5% of the pixels: weight it up, or the loss is all black background and colours drift.
        weight = 1 + args.foreground_weight * (images.amax(dim=1, keepdim=True) > -0.9).float()
        error = recon - images
        loss = (weight * (error**2 + 0.5 * error.abs())).mean() + args.kl_weight * kl
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if step % 50 == 0 or step == args.max_steps - 1:
            print(f"step {step} loss {np.mean(losses[-50:]):.5f} {time.time() - start:.0f}s", flush=True)

    vae.eval()
    with torch.no_grad():
        images = render_step(10**6, 16 if args.smoke else 512, args.seed + 1) * 2 - 1
        latents = vae.encode(images).latent_dist.mode()
        scaling = float(1.0 / latents.std())
        shift_free_mse = F.mse_loss(vae.decode(latents).sample, images).item()
    vae.register_to_config(scaling_factor=scaling)
    vae.save_pretrained(args.output_dir, safe_serialization=True)
    result = {
        "steps": args.max_steps,
        "final_loss": float(np.mean(losses[-50:])),
        "reconstruction_mse": shift_free_mse,
        "scaling_factor": scaling,
        "seconds": time.time() - start,
    }
    print(result)
    return result


if __name__ == "__main__":
    main()
