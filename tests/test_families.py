"""Every registered family next to PixArt-Sigma: pruning, persistence, stock loading, block numbering.

The per-family tests are parametrised over the registry (``families.FAMILIES``): registering a family runs them."""

import json
import shutil
import textwrap

import numpy as np
import pytest
import torch
from torch import nn

from diffusers_layerprune import LayerPruneError
from diffusers_layerprune.blocks import block_names, capture_block_features, get_blocks, num_blocks, skip_blocks
from diffusers_layerprune.config_record import expose_record
from diffusers_layerprune.families import DEFAULT_FAMILY, FAMILIES, family_of, get_family
from diffusers_layerprune.modeling import (
    PrunedFluxTransformer,
    PrunedSanaTransformer,
    PrunedSD3Transformer,
    load_pipeline,
    load_transformer,
    prune_pipeline,
    read_transformer_config,
    save_pruned_pipeline,
)
from diffusers_layerprune.testing import TINY_RESOLUTION, tiny_call_kwargs

from helpers import run_stock

PROMPT = "a small red circle at the top left"
FAMILY_NAMES = [name for name in FAMILIES if name != DEFAULT_FAMILY]  # PixArt-Sigma's own tests cover the first
PRUNED = {name: get_family(name).pruned_class() for name in FAMILIES}
STOCK_FAMILIES = list(FAMILIES)  # stock loading is checked for every family, PixArt included


def tiny_transformer(family: str, **kwargs):
    return get_family(family).tiny_pipeline(**kwargs).transformer


def inputs_for(transformer, batch=2):
    """(latents, timestep, text) for one forward of a tiny transformer of any family."""
    family = family_of(transformer)
    g = torch.Generator().manual_seed(0)
    size = 8
    latents = torch.randn(batch, family.latent_channels(transformer.config), size, size, generator=g)
    text = family.random_text(transformer.config, batch, 5, g)
    return latents, torch.tensor([10.0, 700.0][:batch]), text


def run(transformer, inputs):
    with torch.no_grad():
        return family_of(transformer).forward(transformer, *inputs)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_pruned_model_computes_what_the_source_computes_without_those_blocks(family):
    source = tiny_transformer(family)
    inputs = inputs_for(source)
    depth = num_blocks(source)
    dropped = [1, depth - 1]  # a middle block and the last one (SD3: the context_pre_only block)
    student = PRUNED[family].from_transformer(source, pruned_layers=dropped, source_model="org/m")
    assert type(student) is PRUNED[family]
    assert student.config.kept_layers == [i for i in range(depth) if i not in dropped]
    assert student.config.source_num_layers == depth and student.pruned_layers == dropped
    with skip_blocks(source, dropped):
        expected = run(source, inputs)
    torch.testing.assert_close(run(student, inputs), expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(run(source, inputs), expected)  # the removed blocks did matter


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_round_trip_ours_and_stock_without_missing_or_unexpected_keys(family, tmp_path):
    import diffusers

    source = tiny_transformer(family)
    inputs = inputs_for(source)
    student = PRUNED[family].from_transformer(source, pruned_layers=[0, 3], source_model="org/m")
    expected = run(student, inputs)
    student.save_pretrained(tmp_path)
    stock_name = get_family(family).transformer_class
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["_class_name"] == stock_name
    # the record is stored under underscore names, which stock loaders pass over without a warning
    assert config["_kept_layers"] == student.config.kept_layers and "kept_layers" not in config

    ours, info = PRUNED[family].from_pretrained(tmp_path, output_loading_info=True)
    assert type(ours) is PRUNED[family]
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert ours.config.kept_layers == student.config.kept_layers and ours.config.source_model == "org/m"
    assert torch.equal(run(ours, inputs), expected)

    stock, info = getattr(diffusers, stock_name).from_pretrained(tmp_path, output_loading_info=True)
    assert type(stock) is getattr(diffusers, stock_name)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert torch.equal(run(stock, inputs), expected)


@pytest.fixture(scope="module")
def stock_process(tmp_path_factory):
    """Prune and save the tiny pipeline of every family, then load and run all of them in ONE fresh stock-diffusers
    process (one interpreter start instead of one per family). Returns, per family, what the test checks."""
    root = tmp_path_factory.mktemp("stock")
    runs = {}
    for family in STOCK_FAMILIES:
        pipe = load_pipeline(f"tiny-random-{family}")
        pipe.set_progress_bar_config(disable=True)
        depth = num_blocks(pipe.transformer)
        pruned = prune_pipeline(pipe, pruned_layers=[1, depth - 1])
        runs[family] = dict(
            depth=depth,
            pruned_type=type(pruned.transformer),
            source_depth_after=num_blocks(pipe.transformer),
            expected=pruned(prompt=PROMPT, **tiny_call_kwargs(pruned)).images.numpy(),
            out=save_pruned_pipeline(pruned, root / family / "pruned"),
        )
    script = textwrap.dedent(
        f"""
        import logging, sys, numpy as np, torch
        from diffusers import DiffusionPipeline
        warned = []  # every warning diffusers logs while loading (e.g. "config attributes ... will be ignored")
        handler = logging.Handler(logging.WARNING)
        handler.emit = lambda record: warned.append(record.getMessage().replace("\\n", " "))
        logging.getLogger("diffusers").addHandler(handler)
        for family, folder, size, extra in {[(f, str(r["out"]), TINY_RESOLUTION[f], dict(get_family(f).tiny_call_args)) for f, r in runs.items()]!r}:
            warned.clear()
            pipe = DiffusionPipeline.from_pretrained(folder)
            loading_warnings = list(warned)
            pipe.set_progress_bar_config(disable=True)
            # Weights read from safetensors can sit at addresses that are not 64-byte aligned, and CPU matmul
            # kernels then round differently (measured: 2e-7 on Flux's images); copies are aligned as the in-memory
            # model's are.
            for p in pipe.transformer.parameters():
                p.data = p.data.clone()
            images = pipe(prompt={PROMPT!r}, num_inference_steps=2, height=size, width=size, max_sequence_length=16,
                          output_type="pt", generator=torch.Generator().manual_seed(0), **extra).images
            np.save(f"{root}/{{family}}.npy", images.numpy())
            print(family, type(pipe.transformer).__name__, pipe.transformer.config._kept_layers, loading_warnings)
        assert "diffusers_layerprune" not in sys.modules, "plugin was imported"
        """
    )
    result = run_stock(script, cwd=root)
    printed = {line.split(" ", 1)[0]: line.split(" ", 1)[1] for line in result.stdout.strip().splitlines()}
    for family, run in runs.items():
        run.update(result=result, printed=printed.get(family), stock=root / f"{family}.npy")
    return runs


@pytest.mark.parametrize("family", STOCK_FAMILIES)
def test_folders_of_earlier_versions_with_plain_record_keys_still_load(family, stock_process, tmp_path):
    """Before the record was stored under ``_`` names, config.json held ``kept_layers`` etc. plainly."""
    run = stock_process[family]
    old = tmp_path / "old"
    shutil.copytree(run["out"], old)
    config_path = old / "transformer" / "config.json"
    config = json.loads(config_path.read_text())
    assert "_kept_layers" in config
    config_path.write_text(json.dumps(expose_record(config)))
    kept = [i for i in range(run["depth"]) if i not in (1, run["depth"] - 1)]
    assert load_pipeline(old).transformer.config.kept_layers == kept
    transformer = load_transformer(old)
    assert type(transformer) is PRUNED[family] and transformer.config.kept_layers == kept
    assert read_transformer_config(old)["kept_layers"] == kept


@pytest.mark.parametrize("family", STOCK_FAMILIES)
def test_pruned_pipeline_loads_in_fresh_stock_diffusers_process(family, stock_process):
    run = stock_process[family]
    depth, out = run["depth"], run["out"]
    assert run["pruned_type"] is PRUNED[family]
    assert run["source_depth_after"] == depth  # the source pipeline is untouched
    stock_name = get_family(family).transformer_class
    index = json.loads((out / "model_index.json").read_text())
    assert index["transformer"] == ["diffusers", stock_name]

    result = run["result"]
    assert result.returncode == 0, result.stderr[-2000:]
    kept = [i for i in range(depth) if i not in (1, depth - 1)]
    # the kept-block record is in the stock model's config, and loading printed no warning
    assert run["printed"] == f"{stock_name} {kept} []"
    np.testing.assert_array_equal(np.load(run["stock"]), run["expected"])


def test_sd3_new_last_block_takes_the_context_pre_only_structure():
    source = tiny_transformer("sd3")
    assert [b.context_pre_only for b in source.transformer_blocks] == [False] * 5 + [True]
    student = PrunedSD3Transformer.from_transformer(source, pruned_layers=[5])
    assert [b.context_pre_only for b in student.transformer_blocks] == [False] * 4 + [True]
    last = student.transformer_blocks[-1]
    assert last.ff_context is None and getattr(last.attn, "to_add_out", None) is None
    # the kept last block is untouched when the source's last block stays
    kept_last = PrunedSD3Transformer.from_transformer(source, pruned_layers=[2])
    assert torch.equal(kept_last.transformer_blocks[-1].norm1_context.linear.weight, last_weight(source))


def last_weight(model):
    return model.transformer_blocks[-1].norm1_context.linear.weight


def test_sd35_dual_attention_layers_are_renumbered():
    source = tiny_transformer("sd3", dual_attention_layers=(0, 1, 2))
    inputs = inputs_for(source)
    student = PrunedSD3Transformer.from_transformer(source, pruned_layers=[1, 4])
    assert list(student.config.dual_attention_layers) == [0, 1]  # source blocks 0 and 2 are now 0 and 1
    assert [b.attn2 is not None for b in student.transformer_blocks] == [True, True, False, False]
    with skip_blocks(source, [1, 4]):
        expected = run(source, inputs)
    torch.testing.assert_close(run(student, inputs), expected, rtol=1e-5, atol=1e-6)


def test_flux_blocks_are_numbered_globally_doubles_first():
    source = tiny_transformer("flux")  # 2 double + 4 single blocks
    assert num_blocks(source) == 6
    assert block_names(source) == ["double 0", "double 1", "single 0", "single 1", "single 2", "single 3"]
    assert get_blocks(source)[2] is source.single_transformer_blocks[0]
    student = PrunedFluxTransformer.from_transformer(source, pruned_layers=[1, 2, 5])
    assert student.config.num_layers == 1 and student.config.num_single_layers == 2
    assert student.config.kept_layers == [0, 3, 4] and student.config.source_stack_depths == [2, 4]
    assert student.config.source_num_layers == 6
    # re-pruning keeps the source's global numbering
    again = PrunedFluxTransformer.from_transformer(student, pruned_layers=[1])
    assert again.config.kept_layers == [0, 4] and again.config.source_stack_depths == [2, 4]


def test_flux_capture_and_skip_use_global_indices():
    source = tiny_transformer("flux")
    inputs = inputs_for(source)
    with capture_block_features(source) as features:
        run(source, inputs)
    assert sorted(features.outputs) == list(range(6))
    # a block's output is the next block's input, across the double -> single boundary too
    torch.testing.assert_close(features.outputs[1], features.inputs[2])
    before = run(source, inputs)
    with skip_blocks(source, [0, 3]):
        assert len(source.transformer_blocks) == 1 and len(source.single_transformer_blocks) == 3
        skipped = run(source, inputs)
    assert len(source.transformer_blocks) == 2 and len(source.single_transformer_blocks) == 4
    assert not torch.equal(before, skipped) and torch.equal(run(source, inputs), before)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(pruned_layers=[0, 1]), r"every double block would be removed .*double blocks are global indices 0\.\.1"),
        (dict(kept_layers=[0, 1]), r"every single block would be removed"),
        (dict(pruned_layers=[6]), r"out of range: the model has 6 blocks, indices 0\.\.5"),
    ],
)
def test_flux_refuses_emptying_a_stack_and_out_of_range_indices(kwargs, message):
    with pytest.raises(LayerPruneError, match=message):
        PrunedFluxTransformer.from_transformer(tiny_transformer("flux"), **kwargs)


def test_pruned_class_of_another_family_is_refused():
    with pytest.raises(LayerPruneError, match="is a Flux.1 transformer, not Sana; use PrunedFluxTransformer"):
        PrunedSanaTransformer.from_transformer(tiny_transformer("flux"), kept_layers=[0, 2])
    with pytest.raises(LayerPruneError, match=r"not a supported diffusion transformer \(supported: PixArt-Sigma"):
        PrunedSD3Transformer.from_transformer(nn.Linear(2, 2), kept_layers=[0])


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_lora_adapter_on_each_pruned_class(family):
    from peft import LoraConfig

    student = PRUNED[family].from_transformer(tiny_transformer(family), pruned_layers=[1])
    inputs = inputs_for(student)
    before = run(student, inputs)
    student.add_adapter(LoraConfig(r=2, lora_alpha=2, target_modules=["to_q", "to_v"], init_lora_weights=True))
    assert any("lora_A" in n for n, _ in student.named_parameters())
    # LoRA B starts at zero (FLUX.2 differs in float rounding only: 1e-7)
    torch.testing.assert_close(run(student, inputs), before, rtol=0, atol=1e-6)


def test_every_registered_family_has_a_consistent_record():
    assert list(FAMILIES)[:4] == ["pixart", "sana", "sd3", "flux"]
    for name in FAMILIES:
        family = get_family(name)
        assert family.name == name and family.stacks
        assert family.pruned_class().family == name
        assert {"max_sequence_length", "num_inference_steps", "guidance_scale", "dtype"} <= set(family.defaults)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_generation_from_cached_conditioning_equals_the_pipelines_own_call(family):
    """The family's encode + call arguments reproduce ``pipe(prompt)`` exactly, classifier-free guidance included
    (the scan, evaluation and teacher caches generate from cached conditioning)."""
    from diffusers_layerprune.families import encode_text
    from diffusers_layerprune.modeling import generate_from_conditioning

    pipe = load_pipeline(f"tiny-random-{family}")
    pipe.set_progress_bar_config(disable=True)
    size, guidance = TINY_RESOLUTION[family], 3.0
    text = encode_text(pipe, [PROMPT], max_sequence_length=16)
    negative = encode_text(pipe, [""], max_sequence_length=16)
    ours = generate_from_conditioning(
        pipe, text, negative, seeds=[7], num_inference_steps=2, guidance_scale=guidance, resolution=size,
        max_sequence_length=16,
    )  # fmt: skip
    extra = {"sana": dict(complex_human_instruction=None, use_resolution_binning=False)}.get(family, {})
    guidance_args = get_family(family).guidance_kwargs(guidance, pipe.transformer.config)
    if "true_cfg_scale" in guidance_args:  # classifier-free guidance only with a negative prompt given
        extra["negative_prompt"] = ""
    stock = pipe(
        prompt=PROMPT, num_inference_steps=2, **guidance_args, height=size, width=size, max_sequence_length=16,
        output_type="pt", generator=torch.Generator().manual_seed(7), **extra,
    ).images  # fmt: skip
    torch.testing.assert_close(ours, stock.float().clamp(0, 1), rtol=0, atol=1e-6)
