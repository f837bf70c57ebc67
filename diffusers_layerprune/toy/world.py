"""The toy world: captions and 32x32 RGB renders of one coloured shape on a black background.

Every caption names four attributes, for example ``"a small red circle at the top left on a black background"``:

- colour: 8 (:data:`COLOURS`), shape: 4 (:data:`SHAPES`), size: 2 (:data:`SIZES`),
- position: a 3x3 grid (:data:`POSITIONS`), the cell that holds the shape's centre.

That gives 576 captions. The held-out split (:func:`captions`, ``split="heldout"``) keeps, for every
(colour, position) pair, 3 of its 8 (shape, size) combinations out of training: 216 captions whose every word and
every (colour, position) pairing was seen in training, but never the whole caption.

Renders are deterministic: the same attributes and seed give the same image. The seed jitters the centre inside its
cell and the radius a little, so one caption has many images. Edges are anti-aliased by 4x supersampling.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass
from functools import cache, lru_cache

import numpy as np
import torch

IMAGE_SIZE = 32
"""Side of a render in pixels."""

# RGB in [0, 1]. Neighbours differ by >= 0.45 in at least one channel after normalising by the brightest channel,
# which is what the judge compares (see judge.py), so a dim or slightly washed-out colour is still read correctly.
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (1.0, 0.1, 0.1),
    "orange": (1.0, 0.55, 0.05),
    "yellow": (1.0, 1.0, 0.1),
    "green": (0.1, 0.9, 0.1),
    "cyan": (0.1, 0.9, 1.0),
    "blue": (0.15, 0.25, 1.0),
    "purple": (0.65, 0.15, 1.0),
    "white": (1.0, 1.0, 1.0),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
# Radius in pixels (half the bounding box of every shape); the seed adds up to +-RADIUS_JITTER.
SIZES: dict[str, float] = {"small": 3.0, "large": 4.8}
RADIUS_JITTER = 0.3
# (row, column) of the 3x3 grid -> the words the caption uses.
POSITIONS: dict[tuple[int, int], str] = {
    (0, 0): "at the top left",
    (0, 1): "at the top",
    (0, 2): "at the top right",
    (1, 0): "at the left",
    (1, 1): "in the center",
    (1, 2): "at the right",
    (2, 0): "at the bottom left",
    (2, 1): "at the bottom",
    (2, 2): "at the bottom right",
}
# The centre moves up to this many pixels from its cell's centre (cells are 32/3 = 10.7 px wide).
CENTRE_JITTER = 0.8
BACKGROUND = "black"

_SUPERSAMPLE = 4

OMITTABLE: tuple[str, ...] = ("size", "colour", "position")
"""Attributes a partial caption may leave out (the shape, the noun, always stays)."""


def omissions() -> list[tuple[str, ...]]:
    """Every non-empty subset of :data:`OMITTABLE`, smallest first: what a partial caption may leave out."""
    return [o for k in range(1, len(OMITTABLE) + 1) for o in itertools.combinations(OMITTABLE, k)]


@dataclass(frozen=True)
class Attributes:
    """What a caption says about its image."""

    colour: str
    shape: str
    size: str
    row: int
    column: int

    @property
    def position(self) -> str:
        """Position words, e.g. ``"top left"``; ``"center"`` for the middle cell."""
        return POSITIONS[(self.row, self.column)].split(" ", 2)[2]

    def caption(self, omit: tuple[str, ...] = ()) -> str:
        """The caption; ``omit`` leaves out any of ``"size"``, ``"colour"``, ``"position"`` (a partial caption, still
        true of the image: what training with ``--partial_captions`` pairs renders with)."""
        unknown = set(omit) - set(OMITTABLE)
        if unknown:
            raise ValueError(f"cannot omit {sorted(unknown)} from a caption; omittable: {', '.join(OMITTABLE)}")
        words = [
            "a",
            "" if "size" in omit else self.size,
            "" if "colour" in omit else self.colour,
            self.shape,
            "" if "position" in omit else POSITIONS[(self.row, self.column)],
            f"on a {BACKGROUND} background",
        ]
        return " ".join(w for w in words if w)

    def to_dict(self) -> dict:
        return {**asdict(self), "position": self.position}


@dataclass(frozen=True)
class Example:
    """One render: ``image`` is a float32 ``[3, 32, 32]`` tensor in [0, 1]."""

    image: torch.Tensor
    caption: str
    attributes: Attributes
    seed: int


def all_attributes() -> list[Attributes]:
    """Every caption's attributes, in a fixed order (colour, position, shape, size)."""
    return [
        Attributes(colour, shape, size, row, column)
        for colour in COLOURS
        for (row, column) in POSITIONS
        for shape in SHAPES
        for size in SIZES
    ]


@cache
def _split() -> tuple[tuple[Attributes, ...], tuple[Attributes, ...]]:
    # For each (colour, position) pair hold out 3 of its 8 (shape, size) combinations, chosen by a fixed seed, so
    # every attribute value and every colour-position pairing still appears in training.
    rng = np.random.default_rng(20240603)
    train, heldout = [], []
    attrs = all_attributes()
    per_pair = len(SHAPES) * len(SIZES)
    for start in range(0, len(attrs), per_pair):
        group = attrs[start : start + per_pair]
        held = set(rng.choice(per_pair, size=3, replace=False).tolist())
        for i, a in enumerate(group):
            (heldout if i in held else train).append(a)
    return tuple(train), tuple(heldout)


def split_attributes(split: str) -> list[Attributes]:
    """Attributes of the ``"train"`` (360), ``"heldout"`` (216) or ``"all"`` (576) captions."""
    train, heldout = _split()
    if split == "train":
        return list(train)
    if split == "heldout":
        return list(heldout)
    if split == "all":
        return all_attributes()
    raise ValueError(f"unknown split {split!r}; use 'train', 'heldout' or 'all'")


def captions(split: str = "all") -> list[str]:
    """Caption strings of a split, in a fixed order."""
    return [a.caption() for a in split_attributes(split)]


def parse_caption(caption: str) -> Attributes:
    """The attributes a caption names; raises ``ValueError`` for a caption outside the world."""
    lookup = _caption_lookup()
    key = " ".join(caption.lower().split())
    if key not in lookup:
        raise ValueError(f"not a toy-world caption: {caption!r}")
    return lookup[key]


@lru_cache(maxsize=1)
def _caption_lookup() -> dict[str, Attributes]:
    return {a.caption(): a for a in all_attributes()}


def vocabulary() -> list[str]:
    """Every word a caption can use, in first-use order (the tokenizers' vocabulary)."""
    words: dict[str, None] = {}
    for a in all_attributes():
        words.update(dict.fromkeys(a.caption().split()))
    return list(words)


def _shape_mask(shape: str, cx: float, cy: float, r: float, coords: np.ndarray) -> np.ndarray:
    x, y = coords[0] - cx, coords[1] - cy
    if shape == "circle":
        return x * x + y * y <= r * r
    if shape == "square":
        h = 0.82 * r  # about the area of the circle of the same radius, so size is judged alike
        return (np.abs(x) <= h) & (np.abs(y) <= h)
    if shape == "triangle":
        # Apex up, base at the bottom of the bounding box: |x| <= r * (y + r) / (2r).
        return (y <= r) & (y >= -r) & (np.abs(x) <= (y + r) / 2)
    if shape == "cross":
        arm = 0.36 * r
        return ((np.abs(x) <= r) & (np.abs(y) <= arm)) | ((np.abs(y) <= r) & (np.abs(x) <= arm))
    raise ValueError(f"unknown shape {shape!r}")


@lru_cache(maxsize=1)
def _coords() -> np.ndarray:
    n = IMAGE_SIZE * _SUPERSAMPLE
    centres = (np.arange(n, dtype=np.float32) + 0.5) / _SUPERSAMPLE
    ys, xs = np.meshgrid(centres, centres, indexing="ij")
    return np.stack([xs, ys])


def render(attributes: Attributes, seed: int = 0) -> torch.Tensor:
    """Render ``attributes`` deterministically: a float32 ``[3, 32, 32]`` tensor in [0, 1]."""
    rng = np.random.default_rng([seed, hash_attributes(attributes)])
    cell = IMAGE_SIZE / 3
    cx = (attributes.column + 0.5) * cell + rng.uniform(-CENTRE_JITTER, CENTRE_JITTER)
    cy = (attributes.row + 0.5) * cell + rng.uniform(-CENTRE_JITTER, CENTRE_JITTER)
    r = SIZES[attributes.size] + rng.uniform(-RADIUS_JITTER, RADIUS_JITTER)
    mask = _shape_mask(attributes.shape, cx, cy, r, _coords()).astype(np.float32)
    coverage = mask.reshape(IMAGE_SIZE, _SUPERSAMPLE, IMAGE_SIZE, _SUPERSAMPLE).mean(axis=(1, 3))
    colour = np.asarray(COLOURS[attributes.colour], dtype=np.float32)[:, None, None]
    return torch.from_numpy(colour * coverage[None])


def hash_attributes(attributes: Attributes) -> int:
    """A stable integer for the attributes (Python's ``hash`` of strings changes between runs)."""
    a = attributes
    return (
        list(COLOURS).index(a.colour) * 1000
        + SHAPES.index(a.shape) * 100
        + list(SIZES).index(a.size) * 10
        + (a.row * 3 + a.column)
    )


def example(attributes: Attributes, seed: int = 0) -> Example:
    return Example(render(attributes, seed), attributes.caption(), attributes, seed)


def sample(split: str, n: int, seed: int = 0) -> list[Example]:
    """``n`` renders of captions drawn uniformly (with replacement) from ``split``, deterministic in ``seed``."""
    attrs = split_attributes(split)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(attrs), size=n)
    seeds = rng.integers(0, 2**31 - 1, size=n)
    return [example(attrs[int(i)], int(s)) for i, s in zip(picks, seeds, strict=True)]


def render_batch(attrs: list[Attributes], seeds: list[int]) -> torch.Tensor:
    """Renders of ``attrs[i]`` with ``seeds[i]`` stacked into a ``[B, 3, 32, 32]`` tensor."""
    return torch.stack([render(a, s) for a, s in zip(attrs, seeds, strict=True)])


def evaluation_set(n_seeds: int = 1, split: str = "heldout") -> list[tuple[Attributes, int]]:
    """The fixed (attributes, seed) pairs every toy evaluation uses: each caption of ``split`` with seeds
    ``0..n_seeds-1``, ordered caption-major."""
    return [(a, s) for a in split_attributes(split) for s in range(n_seeds)]
