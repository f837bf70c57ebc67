"""The embedded toy world: a tiny but trained text-to-image world that ships inside the package.

- :mod:`.world`: the deterministic renderer of captions and 32x32 images of one coloured shape, with a held-out
  caption split.
- :mod:`.judge`: checks an image against its caption's colour, position, shape and size.
- ``assets/pipeline``: a ``PixArtSigmaPipeline`` (tiny T5, tiny ``AutoencoderKL``, 12-block
  ``PixArtTransformer2DModel``) trained on the world; ``load_pipeline("toy")`` loads it. Its transformer predicts
  the clean latent, not epsilon (``pipe.scheduler.config.prediction_type == "sample"``): code that needs epsilon
  must convert by that config.
- ``assets/pipeline_flux``: ``toy-flux``, a ``FluxPipeline`` (CLIP + T5 text encoders, the same VAE, a
  ``FluxTransformer2DModel`` with 4 double-stream and 8 single-stream blocks) trained on the same world with the
  rectified-flow objective; ``load_pipeline("toy-flux")`` loads it.
- ``assets/scorer``: a tiny ``CLIPModel`` preference scorer (score = cosine of normalised embeddings, like HPS).
- ``train_judge``, ``train_vae``, ``train_teacher``, ``train_scorer``: the scripts that made the assets;
  ``evaluate``: the numbers in ``docs/toy_world.md``.

Call the pipeline with :func:`toy_generation_kwargs` (32x32, ``max_sequence_length=16``, no resolution binning).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .paths import assets_dir

IMAGE_SIZE = 32
"""Generated and rendered images are ``IMAGE_SIZE`` pixels square."""
MAX_SEQUENCE_LENGTH = 16
"""The ``max_sequence_length`` the toy pipeline must be called with (captions are at most 13 T5 tokens)."""
DEFAULT_NUM_INFERENCE_STEPS = 20
"""DPM-Solver++ steps the toy numbers are measured with."""
DEFAULT_GUIDANCE_SCALE = 4.5
"""Classifier-free guidance scale the toy numbers are measured with."""


def toy_pipeline_path() -> Path:
    """Folder of the shipped toy pipeline (``PixArtSigmaPipeline.from_pretrained`` loads it)."""
    return assets_dir() / "pipeline"


def toy_flux_pipeline_path() -> Path:
    """Folder of the shipped ``toy-flux`` pipeline (``FluxPipeline.from_pretrained`` loads it)."""
    return assets_dir() / "pipeline_flux"


def toy_scorer_path() -> Path:
    """Folder of the shipped toy scorer: ``CLIPModel`` + ``AutoTokenizer`` + ``CLIPImageProcessor`` files."""
    return assets_dir() / "scorer"


def load_toy_pipeline(torch_dtype=None):
    """The shipped toy ``PixArtSigmaPipeline``, loaded offline from :func:`toy_pipeline_path`."""
    from diffusers import PixArtSigmaPipeline

    kwargs = {} if torch_dtype is None else {"torch_dtype": torch_dtype}
    return PixArtSigmaPipeline.from_pretrained(str(toy_pipeline_path()), local_files_only=True, **kwargs)


def load_toy_flux_pipeline(torch_dtype=None):
    """The shipped ``toy-flux`` ``FluxPipeline`` (4 double-stream + 8 single-stream blocks, rectified flow), loaded
    offline from :func:`toy_flux_pipeline_path`."""
    from diffusers import FluxPipeline

    kwargs = {} if torch_dtype is None else {"torch_dtype": torch_dtype}
    return FluxPipeline.from_pretrained(str(toy_flux_pipeline_path()), local_files_only=True, **kwargs)


def toy_generation_kwargs(
    seeds: int | Sequence[int] = 0,
    *,
    num_inference_steps: int = DEFAULT_NUM_INFERENCE_STEPS,
    guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
    output_type: str = "pt",
    pipe=None,
) -> dict:
    """Keyword arguments for calling the toy pipeline the way its numbers were measured.

    ``seeds``: one seed, or one per prompt of the batch (each image's initial noise then depends on its own seed
    only, so results do not change with the batch size). ``output_type="pt"`` gives ``[B, 3, 32, 32]`` in [0, 1].
    ``pipe``: drop the arguments its ``__call__`` does not take (``FluxPipeline`` of ``toy-flux`` has no
    resolution binning or caption cleaning), and pass ``guidance_scale`` as the pipeline's family takes it
    (``toy-flux``: ``true_cfg_scale`` with ``negative_prompt=""``, FluxPipeline's classifier-free guidance).
    """
    import inspect

    import torch

    if isinstance(seeds, int):
        generator = torch.Generator().manual_seed(seeds)
    else:
        generator = [torch.Generator().manual_seed(int(s)) for s in seeds]
    kwargs = dict(
        num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale,
        height=IMAGE_SIZE,
        width=IMAGE_SIZE,
        use_resolution_binning=False,
        max_sequence_length=MAX_SEQUENCE_LENGTH,
        clean_caption=False,
        output_type=output_type,
        generator=generator,
    )
    if pipe is not None:
        from ..families import family_of_pipeline

        accepted = inspect.signature(pipe.__call__).parameters
        kwargs = {key: value for key, value in kwargs.items() if key in accepted}
        guidance = family_of_pipeline(pipe).guidance_kwargs(guidance_scale, pipe.transformer.config)
        if "true_cfg_scale" in guidance:  # toy-flux: true CFG against the empty prompt it was trained to know
            kwargs.pop("guidance_scale", None)
            kwargs.update(guidance, negative_prompt="")
    return kwargs


__all__ = [
    "IMAGE_SIZE",
    "MAX_SEQUENCE_LENGTH",
    "DEFAULT_NUM_INFERENCE_STEPS",
    "DEFAULT_GUIDANCE_SCALE",
    "toy_pipeline_path",
    "toy_flux_pipeline_path",
    "toy_scorer_path",
    "load_toy_pipeline",
    "load_toy_flux_pipeline",
    "toy_generation_kwargs",
]
