"""A peer's checks on every pruned class, in the manner of diffusers' ``ModelTesterMixin`` and its LoRA model tester
(``tests/models/test_modeling_common.py``; written here for the pruned classes, not copied): save/load round trips
(also a variant and half precision), determinism, output shape, ``from_config``, training, gradient checkpointing,
and LoRA adapters saved, reloaded, fused and unloaded."""

import copy

import pytest
import torch

from diffusers_layerprune.families import FAMILIES, family_of, get_family
from diffusers_layerprune.testing import (
    build_tiny_flux_pipeline,
    build_tiny_sana_pipeline,
    build_tiny_sd3_pipeline,
    build_tiny_transformer,
)

# Families registered later are built by their own tiny pipeline (six blocks).
BUILDERS = {
    "pixart": lambda: build_tiny_transformer(6),
    "sana": lambda: build_tiny_sana_pipeline(6).transformer,
    "sd3": lambda: build_tiny_sd3_pipeline(6, dual_attention_layers=(0, 1)).transformer,
    "flux": lambda: build_tiny_flux_pipeline(2, 4).transformer,
}


@pytest.fixture(scope="module", params=list(FAMILIES))
def model(request):
    """A pruned model of each family: blocks 1 and 5 of 6 removed (SD3: its last, context_pre_only block, and a
    dual-attention one; Flux: double 1 and single 3)."""
    source = BUILDERS.get(request.param, lambda: get_family(request.param).tiny_pipeline().transformer)()
    pruned = get_family(request.param).pruned_class().from_transformer(source, pruned_layers=[1, 5], source_model="m")
    return pruned.eval()


def inputs(model, batch=2, seed=0):
    family = family_of(model)
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(batch, family.latent_channels(model.config), 8, 8, generator=g)
    return latents, torch.linspace(50, 900, batch), family.random_text(model.config, batch, 5, g)


def forward(model, x):
    return family_of(model).forward(model, *x)


def test_output_shape(model):
    x = inputs(model)
    with torch.no_grad():
        out = forward(model, x)
    channels = model.config.get("out_channels") or x[0].shape[1]
    expected_channels = x[0].shape[1] if family_of(model).name == "flux" else channels
    assert out.shape == (2, expected_channels, 8, 8)


def test_determinism(model):
    x = inputs(model)
    with torch.no_grad():
        assert torch.equal(forward(model, x), forward(model, x))


def test_from_save_pretrained(model, tmp_path):
    x = inputs(model)
    model.save_pretrained(tmp_path)
    loaded = type(model).from_pretrained(tmp_path).eval()
    assert loaded.config.kept_layers == model.config.kept_layers
    with torch.no_grad():
        torch.testing.assert_close(forward(loaded, x), forward(model, x), rtol=0, atol=1e-6)


def test_from_save_pretrained_variant(model, tmp_path):
    model.save_pretrained(tmp_path, variant="fp16")
    assert (tmp_path / "diffusion_pytorch_model.fp16.safetensors").is_file()
    with pytest.raises(OSError):  # no default-variant weights in the folder
        type(model).from_pretrained(tmp_path)
    loaded = type(model).from_pretrained(tmp_path, variant="fp16")
    x = inputs(model)
    with torch.no_grad():
        torch.testing.assert_close(forward(loaded, x), forward(model, x), rtol=0, atol=1e-6)


def test_half_precision_save_load(model, tmp_path):
    half = copy.deepcopy(model).to(torch.bfloat16)
    half.save_pretrained(tmp_path)
    loaded = type(model).from_pretrained(tmp_path, torch_dtype=torch.bfloat16)
    assert loaded.dtype == torch.bfloat16
    for (name, a), (_, b) in zip(half.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_from_config_rebuilds_the_same_structure(model):
    rebuilt = type(model).from_config(model.config)
    assert rebuilt.state_dict().keys() == model.state_dict().keys()
    assert all(rebuilt.state_dict()[k].shape == v.shape for k, v in model.state_dict().items())
    assert rebuilt.config.kept_layers == model.config.kept_layers


def unread_in_last_block(name: str) -> set[str]:
    """Parameter names (inside the block) of the unpruned tiny model's last joint block that get no gradient."""
    source = BUILDERS.get(name, lambda: get_family(name).tiny_pipeline().transformer)().train()
    forward(source, inputs(source)).float().pow(2).mean().backward()
    last = f"transformer_blocks.{len(source.transformer_blocks) - 1}."
    return {n[len(last) :] for n, p in source.named_parameters() if p.grad is None and n.startswith(last)}


def test_training_reaches_every_parameter(model):
    trained = copy.deepcopy(model).train()
    out = forward(trained, inputs(trained))
    out.float().pow(2).mean().backward()
    missing = [n for n, p in trained.named_parameters() if p.grad is None]
    # every parameter of every kept block is trained (outside the blocks, PixArt's unused micro-condition embedders
    # get no gradient, as in the stock model; in the last block, what no later block reads gets none in the stock
    # model either: Qwen-Image's last text stream)
    unread = unread_in_last_block(family_of(model).name)
    last = f"transformer_blocks.{len(trained.transformer_blocks) - 1}."
    in_blocks = [n for n in missing if n.startswith(("transformer_blocks.", "single_transformer_blocks."))]
    assert not [n for n in in_blocks if not (n.startswith(last) and n[len(last) :] in unread)], missing
    assert all(p.grad.abs().sum() > 0 for n, p in trained.named_parameters() if n.endswith("to_q.weight"))


def test_gradient_checkpointing_gives_the_same_gradients(model):
    x = inputs(model)
    grads = []
    for checkpointing in (False, True):
        trained = copy.deepcopy(model).train()
        if checkpointing:
            trained.enable_gradient_checkpointing()
            assert trained.is_gradient_checkpointing
        forward(trained, x).pow(2).mean().backward()
        grads.append({n: p.grad.clone() for n, p in trained.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-4, atol=1e-6)


def _lora_config(seed_b: bool):
    from peft import LoraConfig

    # init_lora_weights=False gives B random values, so the adapter changes the output (True starts B at zero)
    return LoraConfig(r=2, lora_alpha=4, target_modules=["to_q", "to_k", "to_v"], init_lora_weights=not seed_b)


def test_lora_adapter_save_load_fuse_unload(model, tmp_path):
    torch.manual_seed(0)
    base = copy.deepcopy(model)
    x = inputs(base)
    with torch.no_grad():
        plain = forward(base, x)
    base.add_adapter(_lora_config(seed_b=True))
    with torch.no_grad():
        adapted = forward(base, x)
    assert not torch.allclose(adapted, plain)

    base.save_lora_adapter(tmp_path)
    fresh = copy.deepcopy(model)
    fresh.load_lora_adapter(tmp_path, weight_name="pytorch_lora_weights.safetensors", prefix=None)
    with torch.no_grad():
        torch.testing.assert_close(forward(fresh, x), adapted, rtol=1e-5, atol=1e-6)

    fresh.fuse_lora()
    with torch.no_grad():
        torch.testing.assert_close(forward(fresh, x), adapted, rtol=1e-4, atol=1e-5)
    base.unload_lora()
    # exactly the plain model again; FLUX.2 within float rounding (measured 1.8e-7)
    tolerance = 1e-6 if family_of(model).name == "flux2" else 0
    with torch.no_grad():
        torch.testing.assert_close(forward(base, x), plain, rtol=0, atol=tolerance)
