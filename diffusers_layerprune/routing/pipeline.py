"""``RoutedPixArtSigmaPipeline``: a stock ``PixArtSigmaPipeline`` (the shared, full-depth weights) plus a prompt
router and its codes. Each prompt of a batch is routed to a code; the prompts sharing a code run as one batch with
that code's blocks skipped, and the images come back in the order of the prompts.

    routed = RoutedPixArtSigmaPipeline.from_pretrained("runs/routed")
    out = routed(["a small red circle ...", "a large blue square ..."], generator=[torch.Generator().manual_seed(i)
                 for i in range(2)])
    out.images, out.codes            # images in input order, the code each prompt ran with
    routed(prompts, code=0)          # force one code for every prompt
    routed.save_pretrained("runs/routed-copy")

The saved folder is an ordinary pipeline folder (``DiffusionPipeline.from_pretrained`` loads it as the full-depth
model, without this package) with ``routing.json`` and ``router.safetensors`` beside it, and
``pipeline_routed_pixart.py``: a self-contained copy of the routed generation for diffusers' loader,
``DiffusionPipeline.from_pretrained(folder, custom_pipeline="pipeline_routed_pixart", trust_remote_code=True)``
(which executes that file).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import LayerPruneError
from .pipeline_routed_pixart import run_routed
from .record import Routing, load_routing
from .router import pooled_text_embedding

CUSTOM_PIPELINE = "pipeline_routed_pixart"
"""Name of the ``custom_pipeline`` file written into every routed folder (a copy of this package's
``routing/pipeline_routed_pixart.py``)."""


@dataclass
class RoutedPipelineOutput:
    """``images``: what the stock pipeline returns for ``output_type``, in the order of the prompts; ``codes``: the
    code each prompt ran with."""

    images: list | np.ndarray | torch.Tensor
    codes: list[int]


class RoutedPixArtSigmaPipeline:
    """A PixArt-Sigma pipeline whose depth is chosen per prompt by a router (see the module docstring).

    Attributes:
        pipeline: the wrapped stock pipeline (the shared weights, full depth).
        routing: the router and its codes (:class:`~diffusers_layerprune.routing.record.Routing`).
    """

    def __init__(self, pipeline, routing: Routing) -> None:
        from .record import check_routing_matches

        check_routing_matches(routing.record, pipeline.transformer, "the routing")
        self.pipeline = pipeline
        self.routing = routing

    # -- persistence ------------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        pretrained: str | os.PathLike,
        *,
        routing: str | os.PathLike | None = None,
        torch_dtype: torch.dtype | None = None,
        device: str | None = None,
        **kwargs,
    ) -> RoutedPixArtSigmaPipeline:
        """Load the shared-weight pipeline from ``pretrained`` (a local folder or Hub id) and its router and codes
        from ``routing`` (default: the same folder; a Hub id is downloaded). Raises :class:`LayerPruneError` for a
        folder without routing files or a router fitted to another model."""
        from ..modeling import load_pipeline

        pipe = load_pipeline(pretrained, torch_dtype=torch_dtype, device=device, **kwargs)
        where = Path(routing or pretrained).expanduser()
        if not where.is_dir():
            where = _download_routing(str(routing or pretrained))
        return cls(pipe, load_routing(where, pipe.transformer, device=device))

    def save_pretrained(self, output_dir: str | os.PathLike, *, overwrite: bool = False, inputs: Sequence = ()) -> Path:
        """Save the shared-weight pipeline (stock classes in ``model_index.json``), the routing files and the
        ``custom_pipeline`` file (:data:`CUSTOM_PIPELINE`); the folder appears complete or not at all (see
        ``outputs.atomic_output_dir``)."""
        import json

        from ..families import family_of
        from ..outputs import atomic_output_dir
        from ..provenance import publish_configs
        from ..pruned import PrunedTransformerMixin

        pipe = self.pipeline
        source = pipe.transformer.config.get("source_model")
        local = {"source_model": source} if source else None
        with atomic_output_dir(output_dir, overwrite=overwrite, inputs=inputs, kind="pipeline", local=local) as tmp:
            pipe.save_pretrained(tmp, safe_serialization=True)
            index_path = tmp / "model_index.json"
            index = json.loads(index_path.read_text())
            if isinstance(pipe.transformer, PrunedTransformerMixin):
                index["transformer"] = ["diffusers", family_of(pipe.transformer).transformer_class]
                index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
            self.routing.save(tmp)
            import shutil

            shutil.copyfile(Path(__file__).with_name(f"{CUSTOM_PIPELINE}.py"), tmp / f"{CUSTOM_PIPELINE}.py")
            publish_configs(tmp)
        return Path(output_dir)

    # -- generation -------------------------------------------------------------------------------------------
    def __getattr__(self, name: str):
        # transformer, vae, scheduler, device, ... of the wrapped pipeline
        if name in ("pipeline", "routing"):
            raise AttributeError(name)
        return getattr(self.pipeline, name)

    def to(self, *args, **kwargs) -> RoutedPixArtSigmaPipeline:
        self.pipeline.to(*args, **kwargs)
        device = self.pipeline.transformer.device
        self.routing.router.to(device)
        return self

    @property
    def num_codes(self) -> int:
        return self.routing.record.num_codes

    def encode(self, prompts: Sequence[str], *, max_sequence_length: int = 300) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompt embeddings ``[B, L, D]`` and masks ``[B, L]`` as the pipeline computes them for generation."""
        embeds, mask, _, _ = self.pipeline.encode_prompt(
            list(prompts),
            do_classifier_free_guidance=False,
            device=self.pipeline.transformer.device,
            clean_caption=False,
            max_sequence_length=max_sequence_length,
        )
        return embeds, mask

    @torch.no_grad()
    def route(
        self,
        prompts: Sequence[str] | None = None,
        *,
        prompt_embeds: torch.Tensor | None = None,
        prompt_attention_mask: torch.Tensor | None = None,
        max_sequence_length: int = 300,
        enforce_budget: bool | float = False,
    ) -> list[int]:
        """The code of each prompt (from the prompts, or from their embeddings and masks); ``enforce_budget``: see
        :meth:`Routing.route <diffusers_layerprune.routing.record.Routing.route>`."""
        if prompt_embeds is None:
            prompt_embeds, prompt_attention_mask = self.encode(prompts, max_sequence_length=max_sequence_length)
        pooled = pooled_text_embedding(prompt_embeds, prompt_attention_mask)
        return self._route(pooled, enforce_budget).tolist()

    def _route(self, pooled: torch.Tensor, enforce_budget: bool | float) -> torch.Tensor:
        if enforce_budget is False or enforce_budget is None:
            return self.routing.route(pooled)  # the one-argument call (tests substitute a fixed assignment)
        return self.routing.route(pooled, enforce_budget=enforce_budget)

    def skipped_layers(self, code: int) -> list[int]:
        return self.routing.record.skipped_layers(code)

    def _check_code(self, code: int) -> int:
        if isinstance(code, bool) or not isinstance(code, int) or not 0 <= code < self.num_codes:
            raise LayerPruneError(f"code {code!r} does not exist: this router has codes 0..{self.num_codes - 1}")
        return code

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | Sequence[str],
        *,
        code: int | None = None,
        enforce_budget: bool | float = False,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        height: int | None = None,
        width: int | None = None,
        max_sequence_length: int = 300,
        output_type: str = "pil",
        **kwargs,
    ) -> RoutedPipelineOutput:
        """Route every prompt (or use ``code`` for all), run each group of prompts sharing a code as one batch of
        the stock pipeline with the code's blocks skipped, and return the images in the order of ``prompt``.
        ``enforce_budget=True`` (or a mean block count) makes this batch's mean depth meet the router's budget (see
        :meth:`Routing.route <diffusers_layerprune.routing.record.Routing.route>`); by default each prompt is routed
        on its own, and unseen prompts can run a little over the budget on average.

        The initial noise of the whole batch is drawn first, in input order, exactly as the stock pipeline draws it
        (``generator``: one, or one per prompt), so an image does not depend on which prompts share its group; with
        one generator per prompt an image is the one its prompt gets alone with the same code and seed. Other
        keyword arguments (``num_inference_steps``, ``guidance_scale``, ``negative_prompt`` as one string, ...)
        go to the stock pipeline; ``num_images_per_prompt`` is not supported (repeat the prompt instead).
        """
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts:
            raise LayerPruneError("no prompts to generate")
        if kwargs.get("num_images_per_prompt", 1) != 1:
            raise LayerPruneError("num_images_per_prompt is not supported by the routed pipeline; repeat the prompt")
        if isinstance(generator, list) and len(generator) != len(prompts):
            raise LayerPruneError(f"{len(generator)} generators for {len(prompts)} prompts: give one per prompt")
        for name in ("prompt_embeds", "prompt_attention_mask", "negative_prompt_embeds"):
            if name in kwargs:
                raise LayerPruneError(f"{name} is not supported by the routed pipeline; pass prompts")
        pipe = self.pipeline
        embeds, mask = self.encode(prompts, max_sequence_length=max_sequence_length)
        if code is None:
            codes = self._route(pooled_text_embedding(embeds, mask), enforce_budget).tolist()
        else:
            if enforce_budget is not False and enforce_budget is not None:
                raise LayerPruneError("give either code= or enforce_budget=, not both")
            codes = [self._check_code(code)] * len(prompts)
        if latents is not None and latents.shape[0] != len(prompts):
            raise LayerPruneError(f"latents hold {latents.shape[0]} samples for {len(prompts)} prompts")
        images = run_routed(
            pipe,
            pipe,
            embeds,
            mask,
            codes,
            [c.kept_layers for c in self.routing.record.codes],
            generator=generator,
            latents=latents,
            height=height,
            width=width,
            max_sequence_length=max_sequence_length,
            output_type=output_type,
            **kwargs,
        )
        return RoutedPipelineOutput(images=images, codes=codes)


def _download_routing(repo_id: str) -> Path:
    from huggingface_hub import hf_hub_download

    from .record import FILE_NAME, ROUTER_FILE

    try:
        path = Path(hf_hub_download(repo_id, FILE_NAME))
        hf_hub_download(repo_id, ROUTER_FILE)
    except Exception as error:
        raise LayerPruneError(f"could not fetch the routing files of {repo_id!r}: {error}") from None
    return path.parent
