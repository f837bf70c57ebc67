"""The ``reference`` HPSv2 backend: scores through the ``hpsv2`` package itself (``pip install .[hpsv2]``).

For cross-checking this package's transformers implementation on a machine where open_clip and torchvision work.
It is slow by design: ``hpsv2.score`` reloads the checkpoint on every call, so images are grouped by prompt to call
it once per distinct prompt.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch

from ..errors import LayerPruneError
from .base import ImagesLike, as_image_batch, check_prompts

_VERSIONS = {"hpsv2": "v2.0", "hpsv2.1": "v2.1"}


class HPSv2ReferenceScorer:
    """``scorer(images, prompts) -> FloatTensor[B]`` computed by ``hpsv2.score`` (cosine, as that returns it)."""

    def __init__(self, version: str, *, checkpoint: str | os.PathLike, device: str | torch.device = "cpu") -> None:
        try:
            import hpsv2  # noqa: F401  (import only here: it pulls open_clip and torchvision)
        except Exception as err:
            raise LayerPruneError(
                f"the reference HPSv2 backend needs the hpsv2 package ({err.__class__.__name__}: {err}); install it "
                "with pip install 'diffusers-layerprune[hpsv2]' on a machine with a working torchvision"
            ) from err
        self.version = version
        self.checkpoint = str(checkpoint)
        self.device = torch.device(device)  # hpsv2 picks cuda itself when available; kept for the result

    def __call__(self, images: ImagesLike, prompts: Sequence[str]) -> torch.Tensor:
        import hpsv2
        from PIL import Image

        batch = as_image_batch(images)
        if isinstance(batch, torch.Tensor):
            batch = list(batch.unsqueeze(1))
        prompts = check_prompts(prompts, len(batch))
        pil = [
            Image.fromarray(im[0].mul(255).round().clamp(0, 255).byte().permute(1, 2, 0).cpu().numpy()) for im in batch
        ]
        scores = torch.empty(len(pil), dtype=torch.float32)
        for prompt in dict.fromkeys(prompts):
            idx = [i for i, p in enumerate(prompts) if p == prompt]
            values = hpsv2.score([pil[i] for i in idx], prompt, cp=self.checkpoint, hps_version=_VERSIONS[self.version])
            scores[idx] = torch.tensor([float(v) for v in values])
        return scores.to(self.device)
