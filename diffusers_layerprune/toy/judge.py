"""The judge: checks an image against the attributes its caption names. Deterministic, no learned CLIP.

- **colour**: the mean RGB of the shape's core pixels, divided by its brightest channel (so a dim shape reads the
  same), nearest to a palette colour divided likewise.
- **position**: the intensity-weighted centroid of the foreground, binned into the 3x3 grid.
- **shape** and **size**: a tiny CNN (:class:`ShapeClassifier`, trained on renders by ``train_judge.py`` and shipped
  in ``assets/judge``) reads a 16x16 crop of the foreground intensity centred on the centroid.

The foreground is every pixel whose brightest channel exceeds :data:`FOREGROUND_THRESHOLD` (the background is
black). An image with no foreground pixel fails every attribute.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .world import COLOURS, IMAGE_SIZE, POSITIONS, SHAPES, SIZES, Attributes

FOREGROUND_THRESHOLD = 0.25
CROP = 16
ATTRIBUTE_NAMES = ("colour", "position", "shape", "size")

_PALETTE_NAMES = list(COLOURS)
_PALETTE = torch.tensor([COLOURS[c] for c in _PALETTE_NAMES])
_PALETTE_NORM = _PALETTE / _PALETTE.max(dim=1, keepdim=True).values


class ShapeClassifier(nn.Module):
    """Reads shape (4 classes) and size (2 classes) from a ``[B, 1, 16, 16]`` foreground-intensity crop."""

    def __init__(self, width: int = 16):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(2 * width * (CROP // 4) ** 2, 64),
            nn.ReLU(),
            nn.Linear(64, len(SHAPES) + len(SIZES)),
        )

    def forward(self, crops: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (shape logits ``[B, 4]``, size logits ``[B, 2]``)."""
        logits = self.net(crops)
        return logits[:, : len(SHAPES)], logits[:, len(SHAPES) :]


def default_classifier_path() -> Path:
    return Path(__file__).parent / "assets" / "judge" / "model.safetensors"


@lru_cache(maxsize=4)
def load_classifier(path: str | None = None) -> ShapeClassifier:
    """The shipped shape/size classifier (or the one at ``path``), in eval mode."""
    from safetensors.torch import load_file

    model = ShapeClassifier()
    model.load_state_dict(load_file(str(path or default_classifier_path())))
    return model.eval()


def foreground_intensity(images: torch.Tensor) -> torch.Tensor:
    """``[B, 3, H, W]`` images in [0, 1] -> ``[B, H, W]`` intensity above the threshold, rescaled to [0, 1]."""
    bright = images.clamp(0, 1).amax(dim=1)
    return ((bright - FOREGROUND_THRESHOLD) / (1 - FOREGROUND_THRESHOLD)).clamp(min=0)


def centroids(weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Weighted centroid ``(x, y)`` in pixels of ``[B, H, W]`` weights, and whether any weight is positive."""
    _, h, w = weights.shape
    total = weights.sum(dim=(1, 2))
    ys = torch.arange(h, dtype=weights.dtype) + 0.5
    xs = torch.arange(w, dtype=weights.dtype) + 0.5
    safe = total.clamp(min=1e-8)
    cx = (weights.sum(dim=1) * xs).sum(dim=1) / safe
    cy = (weights.sum(dim=2) * ys).sum(dim=1) / safe
    return cx, cy, total > 0


def crops_at(intensity: torch.Tensor, cx: torch.Tensor, cy: torch.Tensor) -> torch.Tensor:
    """``[B, 1, 16, 16]`` crops of ``[B, H, W]`` intensity centred on the pixel holding each centroid, normalised
    to a peak of 1 (size is read from extent, not brightness)."""
    b, h, w = intensity.shape
    half = CROP // 2
    padded = torch.nn.functional.pad(intensity, (half, half, half, half))
    out = torch.empty(b, 1, CROP, CROP, dtype=intensity.dtype)
    for i in range(b):
        x0 = int(torch.clamp(cx[i].floor(), 0, w - 1))
        y0 = int(torch.clamp(cy[i].floor(), 0, h - 1))
        out[i, 0] = padded[i, y0 : y0 + CROP, x0 : x0 + CROP]
    peak = out.amax(dim=(1, 2, 3), keepdim=True).clamp(min=1e-6)
    return out / peak


@dataclass
class Reading:
    """What the judge sees in one image (``None`` everywhere when it finds no shape)."""

    colour: str | None
    shape: str | None
    size: str | None
    row: int | None
    column: int | None

    def matches(self, attributes: Attributes) -> dict[str, bool]:
        """Per-attribute correctness against a caption's attributes."""
        return {
            "colour": self.colour == attributes.colour,
            "position": (self.row, self.column) == (attributes.row, attributes.column),
            "shape": self.shape == attributes.shape,
            "size": self.size == attributes.size,
        }


@torch.no_grad()
def read_images(images: torch.Tensor | Sequence, classifier: ShapeClassifier | None = None) -> list[Reading]:
    """Read colour, position, shape and size from ``[B, 3, 32, 32]`` float images in [0, 1] (or PIL images)."""
    images = as_tensor(images)
    classifier = classifier or load_classifier()
    intensity = foreground_intensity(images)
    cx, cy, found = centroids(intensity)

    # Colour from the shape's core (>= half its peak intensity): anti-aliased edges are darker mixes with black.
    peak = intensity.amax(dim=(1, 2), keepdim=True)
    core = (intensity >= 0.5 * peak) & (intensity > 0)
    mean_rgb = (images.clamp(0, 1) * core[:, None]).sum(dim=(2, 3)) / core.sum(dim=(1, 2)).clamp(min=1)[:, None]
    normalised = mean_rgb / mean_rgb.amax(dim=1, keepdim=True).clamp(min=1e-6)
    colour_index = torch.cdist(normalised, _PALETTE_NORM).argmin(dim=1)

    cell = images.shape[-1] / 3
    columns = (cx / cell).floor().clamp(0, 2).long()
    rows = (cy / cell).floor().clamp(0, 2).long()

    shape_logits, size_logits = classifier(crops_at(intensity, cx, cy))
    shape_index, size_index = shape_logits.argmax(dim=1), size_logits.argmax(dim=1)

    readings = []
    size_names = list(SIZES)
    for i in range(images.shape[0]):
        if not found[i]:
            readings.append(Reading(None, None, None, None, None))
            continue
        readings.append(
            Reading(
                colour=_PALETTE_NAMES[int(colour_index[i])],
                shape=SHAPES[int(shape_index[i])],
                size=size_names[int(size_index[i])],
                row=int(rows[i]),
                column=int(columns[i]),
            )
        )
    return readings


@dataclass
class JudgeReport:
    """Accuracy in [0, 1] per attribute (``colour``, ``position``, ``shape``, ``size``) and ``overall`` (all four
    right), over ``n`` images; ``correct`` holds the per-image booleans in input order."""

    n: int
    accuracy: dict[str, float]
    correct: dict[str, list[bool]] = field(repr=False)

    @property
    def overall(self) -> float:
        return self.accuracy["overall"]

    def to_dict(self) -> dict:
        return {"n": self.n, "accuracy": self.accuracy}


def judge(
    images: torch.Tensor | Sequence,
    attributes: Sequence[Attributes | str],
    classifier: ShapeClassifier | None = None,
) -> JudgeReport:
    """Check each image against its caption (an :class:`Attributes` or a caption string of the world)."""
    from .world import parse_caption

    attrs = [parse_caption(a) if isinstance(a, str) else a for a in attributes]
    readings = read_images(images, classifier)
    if len(readings) != len(attrs):
        raise ValueError(f"{len(readings)} images but {len(attrs)} captions")
    correct: dict[str, list[bool]] = {name: [] for name in (*ATTRIBUTE_NAMES, "overall")}
    for reading, a in zip(readings, attrs, strict=True):
        ok = reading.matches(a)
        for name in ATTRIBUTE_NAMES:
            correct[name].append(ok[name])
        correct["overall"].append(all(ok.values()))
    n = len(attrs)
    accuracy = {name: (sum(values) / n if n else float("nan")) for name, values in correct.items()}
    return JudgeReport(n=n, accuracy=accuracy, correct=correct)


def as_tensor(images: torch.Tensor | Sequence) -> torch.Tensor:
    """``[B, 3, H, W]`` float tensor in [0, 1] from a tensor (``[3, H, W]`` or batched), numpy arrays
    (``[B, H, W, 3]``, floats in [0, 1] as diffusers' ``output_type="np"`` gives) or PIL images."""
    if isinstance(images, torch.Tensor):
        out = images if images.dim() == 4 else images[None]
        return out.float()
    if isinstance(images, np.ndarray):
        array = images if images.ndim == 4 else images[None]
        return torch.from_numpy(np.ascontiguousarray(array)).permute(0, 3, 1, 2).float()
    tensors = []
    for image in images:
        array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
        tensors.append(torch.from_numpy(array).permute(2, 0, 1))
    return torch.stack(tensors)


def position_name(row: int, column: int) -> str:
    return POSITIONS[(row, column)]


__all__ = ["judge", "read_images", "JudgeReport", "Reading", "ShapeClassifier", "load_classifier", "IMAGE_SIZE"]
