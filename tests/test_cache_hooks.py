"""diffusers' cache hooks (``diffusers.hooks``) on stock-loaded pruned transformers of every family.

Each (family, hook) pair is run as docs/stacking.md tells users to run it, in one fresh process that never imports
this package: the documented call must run and give finite images that the cache changed (so it really skipped work);
pairs the table marks as failing must still fail (so the table is re-checked when diffusers changes).
"""

import json
import textwrap

import pytest

from diffusers_layerprune.families import get_family
from diffusers_layerprune.modeling import prune_pipeline, save_pruned_pipeline
from diffusers_layerprune.testing import TINY_BUILDERS, TINY_RESOLUTION

from helpers import run_stock

HOOKS = ["first_block", "taylorseer", "mag", "faster", "pab"]
# (family, hook) pairs that fail in diffusers 0.42.1, with the error's words (docs/stacking.md's table says why).
FAILS = {
    ("sd3", "first_block"): "unsupported operand type(s) for -: 'NoneType' and 'Tensor'",
    # Flux2Pipeline calls its transformer without naming a cache context, and FasterCache indexes a Qwen-Image
    # block's output out of range: both fail on the unpruned tiny pipelines too (checked)
    ("flux2", "first_block"): "No cache context is set",
    ("flux2", "taylorseer"): "No cache context is set",
    ("qwenimage", "faster"): "IndexError: tuple index out of range",
}
STEPS = 4  # enough steps for every cache to compute, then reuse


@pytest.fixture(scope="module")
def cached(tmp_path_factory):
    root = tmp_path_factory.mktemp("caches")
    folders = {
        f: save_pruned_pipeline(prune_pipeline(b(), pruned_layers=[1]), root / f) for f, b in TINY_BUILDERS.items()
    }
    jobs = [(f, str(p), TINY_RESOLUTION[f], dict(get_family(f).tiny_call_args)) for f, p in folders.items()]
    script = textwrap.dedent(
        f"""
        import contextlib, json, sys, torch
        from diffusers import DiffusionPipeline
        from diffusers.hooks import (
            FasterCacheConfig, FirstBlockCacheConfig, MagCacheConfig, PyramidAttentionBroadcastConfig,
            TaylorSeerCacheConfig, apply_faster_cache, apply_first_block_cache, apply_mag_cache,
            apply_pyramid_attention_broadcast, apply_taylorseer_cache)
        from diffusers.hooks._helpers import TransformerBlockMetadata, TransformerBlockRegistry
        from diffusers.models.cache_utils import CacheMixin
        from diffusers.models.transformers.sana_transformer import SanaTransformerBlock

        STEPS = {STEPS}

        def apply(pipe, hook):
            now = lambda: int(pipe.scheduler.timesteps[pipe.scheduler.step_index or 0])
            if hook == "first_block":  # thresholds far above tiny models' changes: every later step reuses
                function, config = apply_first_block_cache, FirstBlockCacheConfig(threshold=10.0)
            elif hook == "taylorseer":
                # the default identifiers fullmatch `attn` only: PixArt's and Sana's attn1 / attn2 need naming
                function, config = apply_taylorseer_cache, TaylorSeerCacheConfig(
                    cache_interval=2, disable_cache_before_step=1, taylor_factors_dtype=torch.float32,
                    cache_identifiers=[r"(single_)?transformer_blocks\\.\\d+\\.attn\\d?"])
            elif hook == "mag":  # ratios are model-specific (calibrate=True prints them); flat ones for the test
                function, config = apply_mag_cache, MagCacheConfig(
                    threshold=10.0, max_skip_steps=2, retention_ratio=0.0, num_inference_steps=STEPS,
                    mag_ratios=[1.0] * STEPS)
            elif hook == "faster":  # the first step must lie outside the skip range: nothing is cached before it
                function, config = apply_faster_cache, FasterCacheConfig(
                    spatial_attention_block_skip_range=2, spatial_attention_timestep_skip_range=(-1, 800),
                    current_timestep_callback=now, attention_weight_callback=lambda _: 0.5, tensor_format="BCHW",
                    is_guidance_distilled=bool(pipe.transformer.config.get("guidance_embeds")))
            elif hook == "pab":
                function, config = apply_pyramid_attention_broadcast, PyramidAttentionBroadcastConfig(
                    spatial_attention_block_skip_range=2, spatial_attention_timestep_skip_range=(-1, 1001),
                    current_timestep_callback=now)
            if isinstance(pipe.transformer, CacheMixin):
                pipe.transformer.enable_cache(config)  # Flux: the model's own switch
            else:
                function(pipe.transformer, config)  # no enable_cache: the hook itself

        def generate(pipe, family, size, extra):
            pipe.set_progress_bar_config(disable=True)
            # Only CacheMixin models' pipelines (Flux) name the cache context of each denoiser call; for the others
            # one context around the whole call does (classifier-free guidance runs both halves in one batch).
            context = (contextlib.nullcontext() if isinstance(pipe.transformer, CacheMixin)
                       else CacheMixin.cache_context(pipe.transformer, "cond"))
            with context:
                return pipe(prompt="a red circle", num_inference_steps=STEPS, height=size, width=size,
                            max_sequence_length=16, output_type="pt", generator=torch.Generator().manual_seed(0),
                            **extra).images

        # Sana's block is not in diffusers' block registry (FirstBlockCache and MagCache read it): register it
        TransformerBlockRegistry.register(SanaTransformerBlock, TransformerBlockMetadata(
            return_hidden_states_index=0, return_encoder_hidden_states_index=None))

        out = {{}}
        for family, folder, size, extra in {jobs!r}:
            reference = generate(DiffusionPipeline.from_pretrained(folder), family, size, extra)
            for hook in {HOOKS!r}:
                pipe = DiffusionPipeline.from_pretrained(folder)
                try:
                    apply(pipe, hook)
                    images = generate(pipe, family, size, extra)
                    out[f"{{family}}/{{hook}}"] = dict(
                        finite=bool(torch.isfinite(images).all()), diff=(images - reference).abs().max().item())
                except Exception as error:
                    out[f"{{family}}/{{hook}}"] = dict(error=f"{{type(error).__name__}}: {{error}}")
            out[f"{{family}}/cache_mixin"] = isinstance(pipe.transformer, CacheMixin)
        assert "diffusers_layerprune" not in sys.modules, "plugin was imported"
        print(json.dumps(out))
        """
    )
    result = run_stock(script, cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("hook", HOOKS)
@pytest.mark.parametrize("family", list(TINY_BUILDERS))
def test_cache_hook_on_stock_loaded_pruned_transformer(cached, family, hook):
    run = cached[f"{family}/{hook}"]
    if (family, hook) in FAILS:
        assert FAILS[family, hook] in run.get("error", ""), run
        return
    assert "error" not in run, run
    assert run["finite"], run
    assert run["diff"] > 0, run  # the cache reused something: the images are not the uncached ones


def test_only_flux_transformer_is_a_cache_mixin(cached):
    assert {f: cached[f"{f}/cache_mixin"] for f in TINY_BUILDERS} == {
        "pixart": False,
        "sana": False,
        "sd3": False,
        "flux": True,
        "flux2": True,
        "qwenimage": True,
    }
