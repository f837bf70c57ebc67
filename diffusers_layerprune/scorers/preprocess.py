"""Image preprocessing for CLIP-style scorers, in torch, batched, on the images' device (no PIL round trip).

Two recipes cover the scorers here:

* ``letterbox`` (HPSv2, open_clip's ``ResizeMaxSize``): resize the longest side to ``size`` and pad the short side
  with black so the square holds the whole image.
* ``crop`` (PickScore, OpenAI CLIP, ``CLIPImageProcessor``): resize the shortest side to ``size`` and take the
  centre ``crop_size`` square.

Both resample with antialiased bicubic interpolation (torch's antialiased kernel is the one PIL uses) and normalise
with a per-channel mean/std afterwards.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import LayerPruneError

OPENAI_CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
PREPROCESS_KINDS = ("letterbox", "crop")


def _resize(images: torch.Tensor, height: int, width: int) -> torch.Tensor:
    if images.shape[-2:] == (height, width):
        return images
    out = F.interpolate(images, size=(height, width), mode="bicubic", antialias=True, align_corners=False)
    # Bicubic overshoots at edges; PIL resizes uint8 images, which clips to the valid range.
    return out.clamp_(0.0, 1.0)


def letterbox(images: torch.Tensor, size: int = 224) -> torch.Tensor:
    """Resize so the longest side is ``size``, then pad with 0 to ``size x size``.

    Args:
        images: ``[B, 3, H, W]`` float in [0, 1].
        size: side of the square output, in pixels.

    Returns:
        ``[B, 3, size, size]``. Left and top get ``pad // 2`` pixels of padding, right and bottom the rest, as
        open_clip's ``ResizeMaxSize`` does. New side lengths are ``round(side * size / max(H, W))``.
    """
    height, width = images.shape[-2:]
    scale = size / max(height, width)
    new_h, new_w = round(height * scale), round(width * scale)
    images = _resize(images, new_h, new_w)
    pad_h, pad_w = size - new_h, size - new_w
    # F.pad order for the last two dims: (left, right, top, bottom).
    return F.pad(images, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2), value=0.0)


def resize_shortest_center_crop(images: torch.Tensor, size: int = 224, crop_size: int | None = None) -> torch.Tensor:
    """Resize so the shortest side is ``size`` (the longer one to ``int(size * long / short)``), then centre-crop.

    Args:
        images: ``[B, 3, H, W]`` float in [0, 1].
        size: target length of the shortest side, in pixels.
        crop_size: side of the square crop; defaults to ``size``.

    Returns:
        ``[B, 3, crop_size, crop_size]``, the crop's top-left corner at ``((h - crop) // 2, (w - crop) // 2)``
        like ``CLIPImageProcessor``.
    """
    crop_size = size if crop_size is None else crop_size
    height, width = images.shape[-2:]
    if height <= width:
        new_h, new_w = size, int(size * width / height)
    else:
        new_h, new_w = int(size * height / width), size
    images = _resize(images, new_h, new_w)
    if new_h < crop_size or new_w < crop_size:
        # CLIPImageProcessor pads with zeros when the crop is larger than the image; keep that behaviour.
        pad_h, pad_w = max(crop_size - new_h, 0), max(crop_size - new_w, 0)
        images = F.pad(images, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
        new_h, new_w = images.shape[-2:]
    top, left = (new_h - crop_size) // 2, (new_w - crop_size) // 2
    return images[..., top : top + crop_size, left : left + crop_size]


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``(images - mean) / std`` per channel; ``images`` is ``[B, 3, H, W]``."""
    mean_t = torch.tensor(mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return (images - mean_t) / std_t


@dataclass
class ImageTransform:
    """How a scorer turns ``[B, 3, H, W]`` images in [0, 1] into its model's ``pixel_values``."""

    kind: str = field(default="crop", metadata={"help": "'letterbox' (HPSv2) or 'crop' (CLIP/PickScore)."})
    size: int = field(default=224, metadata={"help": "Longest side (letterbox) or shortest side (crop), pixels."})
    crop_size: int | None = field(default=None, metadata={"help": "Centre-crop side for 'crop'; defaults to size."})
    mean: tuple[float, ...] = field(default=OPENAI_CLIP_MEAN, metadata={"help": "Per-channel mean (RGB)."})
    std: tuple[float, ...] = field(default=OPENAI_CLIP_STD, metadata={"help": "Per-channel std (RGB)."})

    def __post_init__(self) -> None:
        if self.kind not in PREPROCESS_KINDS:
            raise LayerPruneError(f"unknown preprocessing {self.kind!r}; use one of {', '.join(PREPROCESS_KINDS)}")
        self.mean, self.std = tuple(self.mean), tuple(self.std)

    @property
    def output_size(self) -> int:
        """Side of the square ``pixel_values`` this transform produces."""
        if self.kind == "letterbox" or self.crop_size is None:
            return self.size
        return self.crop_size

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` in [0, 1] -> ``[B, 3, S, S]`` normalised, float32, on the same device."""
        images = images.float()
        if self.kind == "letterbox":
            images = letterbox(images, self.size)
        else:
            images = resize_shortest_center_crop(images, self.size, self.crop_size)
        return normalize(images, self.mean, self.std)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_preprocessor_config(cls, path: str | os.PathLike, kind: str = "crop") -> ImageTransform:
        """Read size, crop, mean and std from a ``preprocessor_config.json`` (a file or the folder holding it).

        Only plain JSON is read, so no image-processor class (and no torchvision) is needed. ``size`` may be an
        int, ``{"shortest_edge": n}`` or ``{"height": h, "width": w}`` (square only).
        """
        path = Path(path)
        if path.is_dir():
            path = path / "preprocessor_config.json"
        if not path.is_file():
            raise LayerPruneError(f"no preprocessor_config.json at {path}; a CLIP scorer folder needs one")
        cfg = json.loads(path.read_text())
        size = _side(cfg.get("size", 224), path, "size")
        crop = cfg.get("crop_size")
        crop_size = _side(crop, path, "crop_size") if crop is not None and cfg.get("do_center_crop", True) else None
        return cls(
            kind=kind,
            size=size,
            crop_size=crop_size,
            mean=tuple(cfg.get("image_mean", OPENAI_CLIP_MEAN)),
            std=tuple(cfg.get("image_std", OPENAI_CLIP_STD)),
        )


def _side(value, path: Path, key: str) -> int:
    if isinstance(value, int):
        return value
    if isinstance(value, dict):
        if "shortest_edge" in value:
            return int(value["shortest_edge"])
        if "height" in value and value.get("height") == value.get("width"):
            return int(value["height"])
    raise LayerPruneError(
        f"{path}: cannot read {key}={value!r}; expected an int, shortest_edge, or square height/width"
    )


def pil_to_tensor(image) -> torch.Tensor:
    """A PIL image -> ``[3, H, W]`` float32 in [0, 1] (converted to RGB first, as open_clip and CLIP do)."""
    import numpy as np

    array = np.asarray(image.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)
