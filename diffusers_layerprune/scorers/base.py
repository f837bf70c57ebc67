"""The scorer every preference model here shares: a transformers ``CLIPModel``, a tokenizer, an image transform.

HPSv2, PickScore, CLIP score and the toy scorer differ only in three choices, which are plain arguments:
how images are preprocessed (letterbox or crop), how prompts are cleaned, and how the cosine similarity of the
normalised embeddings becomes a score (``SCORE_KINDS``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ..errors import LayerPruneError
from .preprocess import ImageTransform, pil_to_tensor

SCORE_KINDS: dict[str, str] = {
    "cosine": "cos(image, text) of the normalised embeddings, in [-1, 1] (HPSv2, toy)",
    "logit": "logit_scale.exp() * cos, the CLIP logit (PickScore)",
    "clipscore": "100 * max(cos, 0) (CLIPScore, Hessel et al. 2021, with torchmetrics' weight 100)",
}

ImagesLike = torch.Tensor | Sequence


def check_score_kind(score: str) -> str:
    if score not in SCORE_KINDS:
        raise LayerPruneError(f"unknown score kind {score!r}; use one of {', '.join(SCORE_KINDS)}")
    return score


def as_image_batch(images: ImagesLike) -> torch.Tensor | list[torch.Tensor]:
    """Validate ``images`` and return a ``[B, 3, H, W]`` tensor, or a list of ``[1, 3, H, W]`` for PIL input.

    Raises:
        LayerPruneError: not a 4-d float tensor or a list of PIL images, not 3 channels, values outside [0, 1].
    """
    if isinstance(images, torch.Tensor):
        if images.ndim != 4:
            raise LayerPruneError(
                f"images must be a [B, 3, H, W] tensor, got shape {tuple(images.shape)}; add a batch dimension with "
                "images.unsqueeze(0) for a single image"
            )
        if images.shape[1] != 3:
            raise LayerPruneError(
                f"images must have 3 (RGB) channels in dim 1, got shape {tuple(images.shape)}; "
                "convert channels-last tensors with images.permute(0, 3, 1, 2)"
            )
        if not images.is_floating_point():
            raise LayerPruneError(f"images must be a float tensor in [0, 1], got {images.dtype}; divide uint8 by 255")
        if images.numel():
            lo, hi = images.min().item(), images.max().item()
            if not (lo >= 0.0 and hi <= 1.0):  # written this way so NaN fails too
                raise LayerPruneError(
                    f"image values must lie in [0, 1], got min {lo:.4g} max {hi:.4g}; a VAE decode in [-1, 1] "
                    "needs (x / 2 + 0.5).clamp(0, 1)"
                )
        return images
    if isinstance(images, (list, tuple)) and images:
        from PIL import Image

        if all(isinstance(im, Image.Image) for im in images):
            return [pil_to_tensor(im).unsqueeze(0) for im in images]
    raise LayerPruneError(
        f"images must be a float tensor [B, 3, H, W] in [0, 1] or a non-empty list of PIL images, got "
        f"{type(images).__name__}"
    )


def check_prompts(prompts: Sequence[str], num_images: int) -> list[str]:
    if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
        raise LayerPruneError("prompts must be a list of strings, one per image")
    if len(prompts) != num_images:
        raise LayerPruneError(
            f"got {num_images} images but {len(prompts)} prompts; pass exactly one prompt per image "
            "(repeat a prompt for several images of it)"
        )
    return list(prompts)


class CLIPScorer:
    """Scores (image, prompt) pairs with a transformers ``CLIPModel``.

    Call it as ``scorer(images, prompts) -> FloatTensor[B]``. The score of pair ``i`` depends only on image ``i`` and
    prompt ``i`` (no softmax across the batch).

    Args:
        model: a ``CLIPModel`` (or any model with ``get_image_features``/``get_text_features`` returning outputs
            whose ``pooler_output`` is the projected embedding, and a ``logit_scale``), already on its device.
        tokenizer: the model's tokenizer (a transformers tokenizer; called with padding and truncation).
        transform: how images become ``pixel_values``.
        score: one of ``SCORE_KINDS``.
        clean_text: applied to every prompt before tokenising (e.g. HPSv2's cleaning); ``None`` leaves prompts as is.
        max_length: token limit including start/end tokens; defaults to the model's ``max_position_embeddings``.
        batch_size: pairs per forward pass; bounds memory, does not change scores.
        name: for messages and reports.
    """

    def __init__(
        self,
        model,
        tokenizer,
        transform: ImageTransform,
        *,
        score: str = "cosine",
        clean_text: Callable[[str], str] | None = None,
        max_length: int | None = None,
        batch_size: int = 32,
        name: str = "clip",
    ) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.transform = transform
        self.score_kind = check_score_kind(score)
        self.clean_text = clean_text
        self.max_length = max_length or model.config.text_config.max_position_embeddings
        self.batch_size = batch_size
        self.name = name

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, score={self.score_kind!r}, preprocess={self.transform.kind!r}, "
            f"size={self.transform.output_size}, device={self.device}, dtype={self.dtype})"
        )

    def pixel_values(self, images: ImagesLike) -> torch.Tensor:
        """Images -> normalised ``pixel_values`` ``[B, 3, S, S]`` float32 on the model's device.

        Tensors are preprocessed on their own device, batched; PIL images one by one (their sizes may differ).
        """
        batch = as_image_batch(images)
        if isinstance(batch, torch.Tensor):
            return self.transform(batch).to(self.device)
        return torch.cat([self.transform(im) for im in batch]).to(self.device)

    def input_ids(self, prompts: Sequence[str]) -> torch.Tensor:
        """Prompts -> token ids ``[B, L]`` on the model's device (cleaned, truncated to ``max_length``)."""
        texts = [self.clean_text(p) for p in prompts] if self.clean_text else list(prompts)
        tokens = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        return tokens["input_ids"].to(self.device)

    @torch.no_grad()
    def embed_pixels(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``pixel_values [B, 3, S, S]`` -> unit-norm image embeddings ``[B, D]`` float32."""
        out = self.model.get_image_features(pixel_values=pixel_values.to(self.device, self.dtype))
        return torch.nn.functional.normalize(out.pooler_output.float(), dim=-1)

    @torch.no_grad()
    def embed_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        """``input_ids [B, L]`` -> unit-norm text embeddings ``[B, D]`` float32.

        No attention mask is passed: the text tower is causal and pools at the end-of-text token, so padding after
        it cannot change the embedding (this is also how open_clip runs it).
        """
        out = self.model.get_text_features(input_ids=input_ids.to(self.device))
        return torch.nn.functional.normalize(out.pooler_output.float(), dim=-1)

    def embed_images(self, images: ImagesLike) -> torch.Tensor:
        """Images (as for ``__call__``) -> unit-norm embeddings ``[B, D]`` float32 on the model's device."""
        pixels = self.pixel_values(images)
        return torch.cat([self.embed_pixels(c) for c in pixels.split(self.batch_size)])

    def embed_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        """Prompts -> unit-norm embeddings ``[B, D]`` float32 on the model's device."""
        prompts = list(prompts)
        chunks = [prompts[i : i + self.batch_size] for i in range(0, len(prompts), self.batch_size)]
        return torch.cat([self.embed_ids(self.input_ids(c)) for c in chunks])

    def score_embeddings(self, image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
        """Row-wise score of unit-norm embeddings ``[B, D]`` x ``[B, D]`` -> ``[B]`` float32."""
        cos = (image_embeds.float() * text_embeds.float()).sum(-1)
        if self.score_kind == "logit":
            return self.model.logit_scale.detach().float().exp() * cos
        if self.score_kind == "clipscore":
            return 100.0 * cos.clamp(min=0.0)
        return cos

    @torch.no_grad()
    def __call__(self, images: ImagesLike, prompts: Sequence[str]) -> torch.Tensor:
        """Score each image against its prompt.

        Args:
            images: float tensor ``[B, 3, H, W]`` with values in [0, 1] on any device (e.g. straight from a VAE
                decode), or a list of ``B`` PIL images of any sizes.
            prompts: ``B`` strings; ``prompts[i]`` describes ``images[i]``.

        Returns:
            ``FloatTensor[B]`` (float32, on the scorer's device), in the unit of ``score_kind``: a cosine for HPSv2
            and toy (HPS tables report it x100), a logit for PickScore, 0-100 for CLIP score.
        """
        batch = as_image_batch(images)
        num = batch.shape[0] if isinstance(batch, torch.Tensor) else len(batch)
        prompts = check_prompts(prompts, num)
        scores = []
        for start in range(0, num, self.batch_size):
            stop = start + self.batch_size
            if isinstance(batch, torch.Tensor):
                pixels = self.transform(batch[start:stop])
            else:
                pixels = torch.cat([self.transform(im) for im in batch[start:stop]])
            image_embeds = self.embed_pixels(pixels.to(self.device))
            text_embeds = self.embed_ids(self.input_ids(prompts[start:stop]))
            scores.append(self.score_embeddings(image_embeds, text_embeds))
        return torch.cat(scores)
