"""Train the judge's shape/size classifier on renders of the whole world (the judge is not a generator, so it
may see every caption). Writes ``model.safetensors`` into ``--output_dir``.

    python -m diffusers_layerprune.toy.train_judge                      # ~1 min on 2 CPU cores
    python -m diffusers_layerprune.toy.train_judge --smoke --output_dir /tmp/judge
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import world
from .judge import ShapeClassifier, centroids, crops_at, foreground_intensity
from .training import optimizer_step, parse_training_args, training_parser


def degrade(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random dimming, blur and noise, so the classifier also reads imperfect generated shapes."""
    b = images.shape[0]
    scale = 0.6 + 0.4 * torch.rand(b, 1, 1, 1, generator=generator)
    out = images * scale
    kernel = torch.tensor([0.25, 0.5, 0.25])
    kernel = (kernel[:, None] * kernel[None, :]).expand(3, 1, 3, 3)
    blurred = F.conv2d(out, kernel, padding=1, groups=3)
    use_blur = (torch.rand(b, 1, 1, 1, generator=generator) < 0.5).float()
    out = use_blur * blurred + (1 - use_blur) * out
    noise = 0.04 * torch.rand(b, 1, 1, 1, generator=generator) * torch.randn(out.shape, generator=generator)
    return (out + noise).clamp(0, 1)


def batch(step: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Renders with random attributes: ``(images [B,3,32,32], shape ids [B], size ids [B])``."""
    attrs = world.all_attributes()
    rng = np.random.default_rng([seed, step])
    picks = rng.integers(0, len(attrs), size=size)
    seeds = rng.integers(0, 2**31 - 1, size=size)
    chosen = [attrs[int(i)] for i in picks]
    images = world.render_batch(chosen, [int(s) for s in seeds])
    shapes = torch.tensor([world.SHAPES.index(a.shape) for a in chosen])
    sizes = torch.tensor([list(world.SIZES).index(a.size) for a in chosen])
    return images, shapes, sizes


def to_crops(images: torch.Tensor) -> torch.Tensor:
    intensity = foreground_intensity(images)
    cx, cy, _ = centroids(intensity)
    return crops_at(intensity, cx, cy)


def main(argv: list[str] | None = None) -> dict:
    output_dir = str(Path(__file__).parent / "assets" / "judge")
    parser = training_parser(__doc__, output_dir=output_dir, max_steps=1500, batch_size=128)
    args = parse_training_args(parser, argv, smoke=(3, 16))

    torch.manual_seed(args.seed)
    model = ShapeClassifier()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, args.learning_rate, total_steps=args.max_steps)
    generator = torch.Generator().manual_seed(args.seed)
    start = time.time()
    losses = []
    for step in range(args.max_steps):
        images, shapes, sizes = batch(step, args.batch_size, args.seed)
        crops = to_crops(degrade(images, generator))
        shape_logits, size_logits = model(crops)
        loss = F.cross_entropy(shape_logits, shapes) + F.cross_entropy(size_logits, sizes)
        optimizer_step(loss, optimizer, schedule, losses, step, args.max_steps, start)

    from safetensors.torch import save_file

    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "model.safetensors"))
    result = {"steps": args.max_steps, "final_loss": float(np.mean(losses[-50:])), "seconds": time.time() - start}
    print(result)
    return result


if __name__ == "__main__":
    main()
