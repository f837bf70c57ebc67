import pytest
import torch
from torch import nn

from diffusers_layerprune import LayerPruneError
from diffusers_layerprune.blocks import (
    block_layout,
    capture_block_features,
    get_blocks,
    resolve_kept_layers,
    skip_blocks,
)


def run(model, inputs):
    with torch.no_grad():
        return model(**inputs).sample


def test_layout_found_for_pixart_and_refused_for_other_models(tiny_transformer):
    assert block_layout(tiny_transformer).attr == "transformer_blocks"
    assert len(get_blocks(tiny_transformer)) == 6
    with pytest.raises(LayerPruneError, match="not a supported diffusion transformer"):
        block_layout(nn.Linear(2, 2))


def test_resolve_kept_layers_keep_and_drop_agree():
    assert resolve_kept_layers(6, kept_layers=[5, 0, 3]) == [0, 3, 5]
    assert resolve_kept_layers(6, pruned_layers=[1, 2, 4]) == [0, 3, 5]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(kept_layers=[0, 6]), r"out of range: the model has 6 blocks, indices 0\.\.5"),
        (dict(pruned_layers=[-1]), "out of range"),
        (dict(kept_layers=[1, 1, 2]), "more than once"),
        (dict(kept_layers=[]), "no block would be kept"),
        (dict(pruned_layers=[0, 1, 2, 3, 4, 5]), "no block would be kept"),
        (dict(kept_layers=[0, 1, 2, 3, 4, 5]), "nothing to prune"),
        (dict(kept_layers=[0], pruned_layers=[1]), "exactly one"),
        (dict(), "exactly one"),
        (dict(kept_layers=[0, "1"]), "must hold integers"),
    ],
)
def test_resolve_kept_layers_rejects_bad_input(kwargs, message):
    with pytest.raises(LayerPruneError, match=message):
        resolve_kept_layers(6, **kwargs)


def test_skip_blocks_changes_output_then_restores_exactly(tiny_transformer, transformer_inputs):
    blocks = tiny_transformer.transformer_blocks
    before = run(tiny_transformer, transformer_inputs)
    with skip_blocks(tiny_transformer, [2, 4]) as model:
        assert [id(b) for b in model.transformer_blocks] == [id(blocks[i]) for i in (0, 1, 3, 5)]  # no copies
        skipped = run(model, transformer_inputs)
    assert not torch.allclose(skipped, before)
    assert tiny_transformer.transformer_blocks is blocks
    assert torch.equal(run(tiny_transformer, transformer_inputs), before)


def test_skip_blocks_restores_on_exception(tiny_transformer):
    blocks = tiny_transformer.transformer_blocks
    with pytest.raises(RuntimeError, match="boom"):
        with skip_blocks(tiny_transformer, [0]):
            assert len(tiny_transformer.transformer_blocks) == 5
            raise RuntimeError("boom")
    assert tiny_transformer.transformer_blocks is blocks and len(blocks) == 6


def test_skip_blocks_rejects_bad_index(tiny_transformer):
    with pytest.raises(LayerPruneError, match="out of range"):
        with skip_blocks(tiny_transformer, [6]):
            pass
    assert len(tiny_transformer.transformer_blocks) == 6


def test_capture_chains_block_outputs_to_next_inputs(tiny_transformer, transformer_inputs):
    with capture_block_features(tiny_transformer) as features:
        out = run(tiny_transformer, transformer_inputs)
    assert sorted(features.inputs) == sorted(features.outputs) == list(range(6))
    for i in range(5):
        assert torch.equal(features.outputs[i], features.inputs[i + 1])
    assert features.outputs[0].shape == (2, 16, 16)  # [B, tokens = (8/2)^2, width = 2 heads x 8]
    assert not features.outputs[0].requires_grad
    # hooks are gone: another pass records nothing and gives the same result
    features.clear()
    assert torch.equal(run(tiny_transformer, transformer_inputs), out) and not features.outputs


def test_capture_keeps_graph_when_not_detached(tiny_transformer, transformer_inputs):
    with capture_block_features(tiny_transformer, [1, 3], inputs=False, detach=False) as features:
        tiny_transformer(**transformer_inputs)
    assert sorted(features.outputs) == [1, 3] and not features.inputs
    features.outputs[3].pow(2).mean().backward()
    assert tiny_transformer.transformer_blocks[1].ff.net[2].weight.grad is not None
    assert tiny_transformer.transformer_blocks[5].ff.net[2].weight.grad is None  # after block 3: not in the graph


def test_capture_inside_skip_keys_by_original_index(tiny_transformer, transformer_inputs):
    with capture_block_features(tiny_transformer, inputs=False) as features:
        with skip_blocks(tiny_transformer, [2]):
            run(tiny_transformer, transformer_inputs)
    assert sorted(features.outputs) == [0, 1, 3, 4, 5]
