import json

import pytest
import torch
from diffusers import PixArtTransformer2DModel
from safetensors.torch import load_file, save_file
from torch import nn

from diffusers_layerprune import LayerPruneError, PrunedPixArtTransformer
from diffusers_layerprune.blocks import capture_block_features, skip_blocks


def run(model, inputs):
    with torch.no_grad():
        return model(**inputs).sample


def test_from_transformer_records_provenance_and_renumbers(tiny_transformer):
    student = PrunedPixArtTransformer.from_transformer(tiny_transformer, kept_layers=[0, 1, 3, 5], source_model="org/m")
    cfg = student.config
    assert (cfg.kept_layers, cfg.source_num_layers, cfg.source_model, cfg.num_layers) == ([0, 1, 3, 5], 6, "org/m", 4)
    assert len(student.transformer_blocks) == 4
    assert student.pruned_layers == [2, 4]
    block_ids = {k.split(".")[1] for k in student.state_dict() if k.startswith("transformer_blocks.")}
    assert block_ids == {"0", "1", "2", "3"}
    assert tiny_transformer.config.num_layers == 6 and len(tiny_transformer.transformer_blocks) == 6


def test_drop_list_equals_keep_list(tiny_transformer, transformer_inputs):
    a = PrunedPixArtTransformer.from_transformer(tiny_transformer, kept_layers=[0, 1, 3, 5])
    b = PrunedPixArtTransformer.from_transformer(tiny_transformer, pruned_layers=[2, 4])
    assert a.config.kept_layers == b.config.kept_layers
    assert torch.equal(run(a, transformer_inputs), run(b, transformer_inputs))


def test_kept_blocks_compute_exactly_what_they_did(tiny_transformer, transformer_inputs):
    kept = [0, 2, 3]
    student = PrunedPixArtTransformer.from_transformer(tiny_transformer, kept_layers=kept)
    with capture_block_features(tiny_transformer) as t_feat, skip_blocks(tiny_transformer, [1, 4, 5]):
        teacher_out = run(tiny_transformer, transformer_inputs)
    with capture_block_features(student) as s_feat:
        student_out = run(student, transformer_inputs)
    assert torch.equal(student_out, teacher_out)
    for i, source in enumerate(kept):
        assert torch.equal(s_feat.inputs[i], t_feat.inputs[source])
        assert torch.equal(s_feat.outputs[i], t_feat.outputs[source])
    for name, tensor in student.transformer_blocks[1].state_dict().items():
        assert torch.equal(tensor, tiny_transformer.transformer_blocks[2].state_dict()[name])


def test_copied_weights_are_independent_shared_weights_are_not(tiny_transformer):
    copied = PrunedPixArtTransformer.from_transformer(tiny_transformer, kept_layers=[0, 1])
    shared = PrunedPixArtTransformer.from_transformer(tiny_transformer, kept_layers=[0, 1], copy_weights=False)
    source = tiny_transformer.transformer_blocks[1].attn1.to_q.weight
    before = source.detach().clone()
    with torch.no_grad():
        copied.transformer_blocks[1].attn1.to_q.weight.add_(1.0)
    assert torch.equal(source, before)
    assert shared.transformer_blocks[1].attn1.to_q.weight.data_ptr() == source.data_ptr()
    assert copied.pos_embed.pos_embed.data_ptr() != tiny_transformer.pos_embed.pos_embed.data_ptr()
    assert torch.equal(copied.pos_embed.pos_embed, tiny_transformer.pos_embed.pos_embed)


def test_pruning_a_pruned_model_keeps_source_numbering(tiny_transformer):
    first = PrunedPixArtTransformer.from_transformer(tiny_transformer, kept_layers=[0, 2, 3, 5], source_model="org/m")
    second = PrunedPixArtTransformer.from_transformer(first, pruned_layers=[1])
    assert second.config.kept_layers == [0, 3, 5]
    assert second.config.source_num_layers == 6 and second.config.source_model == "org/m"


def test_from_transformer_refuses_other_models():
    with pytest.raises(LayerPruneError, match="not a supported diffusion transformer"):
        PrunedPixArtTransformer.from_transformer(nn.Linear(2, 2), kept_layers=[0])


def test_config_rejects_inconsistent_kept_layers():
    with pytest.raises(LayerPruneError, match="num_layers is 2"):
        PrunedPixArtTransformer(
            num_layers=2, kept_layers=[0, 1, 2], sample_size=8, num_attention_heads=1, attention_head_dim=8
        )
    with pytest.raises(LayerPruneError, match="strictly increasing"):
        PrunedPixArtTransformer(
            num_layers=2, kept_layers=[3, 1], sample_size=8, num_attention_heads=1, attention_head_dim=8
        )


def test_save_load_round_trip_ours_and_stock(tiny_transformer, transformer_inputs, tmp_path):
    student = PrunedPixArtTransformer.from_transformer(tiny_transformer, pruned_layers=[1, 4], source_model="org/m")
    expected = run(student, transformer_inputs)
    student.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["_class_name"] == "PixArtTransformer2DModel"  # stock loaders find the class in diffusers
    assert config["_kept_layers"] == [0, 2, 3, 5] and config["num_layers"] == 4
    assert not {"kept_layers", "source_num_layers", "source_model"} & set(config)  # quiet for stock loaders

    ours, info = PrunedPixArtTransformer.from_pretrained(tmp_path, output_loading_info=True)
    assert type(ours) is PrunedPixArtTransformer
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert ours.config.kept_layers == [0, 2, 3, 5] and ours.config.source_model == "org/m"
    assert torch.equal(run(ours, transformer_inputs), expected)

    stock, info = PixArtTransformer2DModel.from_pretrained(tmp_path, output_loading_info=True)
    assert type(stock) is PixArtTransformer2DModel
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert stock.config._kept_layers == [0, 2, 3, 5]  # stock diffusers keeps the record (under its stored name)
    assert torch.equal(run(stock, transformer_inputs), expected)


def test_checkpoint_with_gap_in_block_numbering_is_refused(tiny_transformer, tmp_path):
    student = PrunedPixArtTransformer.from_transformer(tiny_transformer, kept_layers=[0, 1, 2])
    student.save_pretrained(tmp_path)
    weights = tmp_path / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    # what a naive pruner writes: source numbering kept, so block 2 is missing and block 5 unexpected
    state = {k.replace("transformer_blocks.2.", "transformer_blocks.5."): v for k, v in state.items()}
    save_file(state, weights)
    with pytest.raises(LayerPruneError, match=r"does not match its config.*missing_keys.*transformer_blocks\.2\."):
        PrunedPixArtTransformer.from_pretrained(tmp_path)


def test_lora_adapter_can_be_added(tiny_transformer, transformer_inputs):
    from peft import LoraConfig

    student = PrunedPixArtTransformer.from_transformer(tiny_transformer, kept_layers=[0, 3])
    before = run(student, transformer_inputs)
    student.add_adapter(LoraConfig(r=2, lora_alpha=2, target_modules=["to_q", "to_v"], init_lora_weights=True))
    trainable = [n for n, p in student.named_parameters() if "lora" in n]
    assert trainable and len(trainable) == 2 * 2 * 2 * 2  # 2 blocks x (attn1, attn2) x (to_q, to_v) x (A, B)
    assert torch.equal(run(student, transformer_inputs), before)  # LoRA B starts at zero


@pytest.mark.parametrize(
    "name_or_path, expected",
    [
        (
            "/cache/hub/models--PixArt-alpha--PixArt-Sigma-XL-2-1024-MS/snapshots/abc123/transformer",
            "PixArt-alpha/PixArt-Sigma-XL-2-1024-MS",
        ),
        ("/data/my-pipeline/transformer", "/data/my-pipeline"),
        ("org/name", "org/name"),
        (None, None),
    ],
)
def test_source_model_defaults_to_where_the_transformer_came_from(tiny_transformer, name_or_path, expected):
    from diffusers_layerprune.modeling import source_id

    assert source_id(name_or_path) == expected
    if name_or_path:
        tiny_transformer.register_to_config(_name_or_path=name_or_path)
        student = PrunedPixArtTransformer.from_transformer(tiny_transformer, kept_layers=[0])
        assert student.config.source_model == expected
