import pytest
import torch

from diffusers_layerprune import LayerPruneError, PrunedPixArtTransformer
from diffusers_layerprune.blocks import capture_block_features
from diffusers_layerprune.checkpoints import remove_old_checkpoints
from diffusers_layerprune.distill import (
    KDWeights,
    block_pairs,
    check_student_teacher,
    feature_kd_loss,
    feature_loss,
    kd_losses,
    step_generator,
)
from diffusers_layerprune.testing import build_tiny_transformer


def test_pairs_follow_kept_layers(tiny_transformer):
    student = PrunedPixArtTransformer.from_transformer(tiny_transformer, kept_layers=[0, 2, 5])
    assert block_pairs(student, tiny_transformer) == [(0, 0), (1, 2), (2, 5)]


def test_paired_features_match_exactly_before_training(tiny_transformer, transformer_inputs):
    """Right after pruning, student block i reproduces teacher block kept_layers[i] on the same input."""
    student = PrunedPixArtTransformer.from_transformer(tiny_transformer, kept_layers=[0, 1, 4])
    pairs = block_pairs(student, tiny_transformer)
    with torch.no_grad(), capture_block_features(student) as s, capture_block_features(tiny_transformer) as t:
        student(**transformer_inputs)
        tiny_transformer(**transformer_inputs)
    # blocks 0 and 1 see identical inputs in both models, so their outputs agree; block 4 does not (2, 3 removed)
    assert feature_loss(s.outputs[0], t.outputs[0]) == 0 and feature_loss(s.outputs[1], t.outputs[1]) == 0
    assert feature_loss(s.outputs[2], t.outputs[4]) > 0
    assert feature_kd_loss(s.outputs, t.outputs, pairs) == feature_loss(s.outputs[2], t.outputs[4])


def test_normalized_feature_loss_is_scale_invariant():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 16, 8, generator=g), torch.randn(2, 16, 8, generator=g)
    base = feature_loss(s, t, "normalized")
    for scale in (1e-3, 7.0, 1e3):
        torch.testing.assert_close(feature_loss(scale * s, scale * t, "normalized"), base)
    assert not torch.allclose(feature_loss(7.0 * s, 7.0 * t, "mse"), feature_loss(s, t, "mse"))
    torch.testing.assert_close(feature_loss(s, t, "normalized"), ((s - t) ** 2).mean() / (t**2).mean())


def test_kd_losses_terms_and_weights():
    g = torch.Generator().manual_seed(0)
    s_out, t_out, noise = (torch.randn(2, 8, 4, 4, generator=g) for _ in range(3))
    noise = noise[:, :4]
    feats_s, feats_t = {0: torch.randn(2, 4, 3, generator=g)}, {3: torch.randn(2, 4, 3, generator=g)}
    w = KDWeights(task=0.5, output=2.0, variance=0.0, feature=3.0)
    parts = kd_losses(s_out, t_out, noise, feats_s, feats_t, [(0, 3)], w)
    torch.testing.assert_close(parts["task"], ((s_out[:, :4] - noise) ** 2).mean())
    torch.testing.assert_close(parts["output"], ((s_out[:, :4] - t_out[:, :4]) ** 2).mean())
    torch.testing.assert_close(parts["variance"], ((s_out[:, 4:] - t_out[:, 4:]) ** 2).mean())
    torch.testing.assert_close(parts["loss"], 0.5 * parts["task"] + 2.0 * parts["output"] + 3.0 * parts["feature"])
    with pytest.raises(LayerPruneError, match="unknown feature loss"):
        KDWeights(feature_loss="cosine")


@pytest.mark.parametrize("use_lora", [False, True])
def test_loss_decreases_on_a_fixed_batch(tiny_transformer, transformer_inputs, use_lora):
    teacher = tiny_transformer.requires_grad_(False)
    student = PrunedPixArtTransformer.from_transformer(teacher, kept_layers=[0, 3, 5])
    if use_lora:
        from peft import LoraConfig

        student.requires_grad_(False)
        student.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    params = [p for p in student.parameters() if p.requires_grad]
    assert params and (not use_lora or all("lora" in n for n, p in student.named_parameters() if p.requires_grad))
    optimizer = torch.optim.AdamW(params, lr=3e-3 if use_lora else 1e-3)
    pairs = block_pairs(student, teacher)
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    losses = []
    for _ in range(8):
        with torch.no_grad(), capture_block_features(teacher, [t for _, t in pairs], inputs=False) as tf:
            t_out = teacher(**transformer_inputs).sample
        with capture_block_features(student, inputs=False, detach=False) as sf:
            s_out = student(**transformer_inputs).sample
        parts = kd_losses(s_out, t_out, noise, sf.outputs, tf.outputs, pairs, KDWeights(task=0.0))
        assert all(torch.isfinite(v) for v in parts.values())
        optimizer.zero_grad()
        parts["loss"].backward()
        optimizer.step()
        losses.append(parts["loss"].item())
    assert losses[-1] < 0.7 * losses[0], losses


def _config(**overrides):
    base = dict(
        num_layers=6, num_attention_heads=2, attention_head_dim=8, caption_channels=32, in_channels=4, out_channels=8
    )
    return base | overrides


@pytest.mark.parametrize(
    "student, teacher, message",
    [
        (_config(num_layers=3), _config(), "no kept_layers"),
        (_config(num_layers=3, kept_layers=[0, 1, 7], source_num_layers=8), _config(), "8-block model"),
        (_config(num_layers=2, kept_layers=[0, 7]), _config(), "do not fit a teacher of 6 blocks"),
        (
            _config(num_layers=2, kept_layers=[0, 1], source_num_layers=6, attention_head_dim=16),
            _config(),
            "attention_head_dim",
        ),
    ],
)
def test_student_teacher_mismatch_is_refused(student, teacher, message):
    with pytest.raises(LayerPruneError, match=message):
        check_student_teacher(student, teacher)


def test_step_generator_depends_only_on_seed_step_and_process():
    draw = lambda *a: torch.randn(3, generator=step_generator(*a))  # noqa: E731
    assert torch.equal(draw(0, 5, 0), draw(0, 5, 0))
    assert not torch.equal(draw(0, 5, 0), draw(0, 6, 0))
    assert not torch.equal(draw(0, 5, 0), draw(0, 5, 1))
    assert not torch.equal(draw(0, 5, 0), draw(1, 5, 0))


def test_checkpoint_limit_removes_oldest_after_the_new_one_is_complete(tmp_path):
    for step in (10, 2, 30):
        (tmp_path / f"checkpoint-{step}").mkdir()
    removed = remove_old_checkpoints(tmp_path, keep=2)  # called once checkpoint-30 is complete: it counts
    assert [p.name for p in removed] == ["checkpoint-2"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-10", "checkpoint-30"]
    # resumed from checkpoint-10 and saved checkpoint-20: the new one stays, whatever its number
    (tmp_path / "checkpoint-20").mkdir()
    removed = remove_old_checkpoints(tmp_path, keep=1, newest=tmp_path / "checkpoint-20")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-20"]
    assert remove_old_checkpoints(tmp_path, keep=None) == []


def test_unused_teacher_width_is_not_silently_accepted():
    teacher = build_tiny_transformer(6, attention_head_dim=16)
    student = PrunedPixArtTransformer.from_transformer(build_tiny_transformer(6), kept_layers=[0, 1])
    with pytest.raises(LayerPruneError, match="attention_head_dim"):
        block_pairs(student, teacher)


def test_task_target_follows_the_prediction_type():
    from diffusers import DDPMScheduler

    from diffusers_layerprune.distill import task_target

    scheduler = DDPMScheduler()
    g = torch.Generator().manual_seed(0)
    latents, noise = torch.randn(2, 4, 4, 4, generator=g), torch.randn(2, 4, 4, 4, generator=g)
    t = torch.tensor([10, 900])
    assert task_target("epsilon", latents, noise, scheduler, t) is noise
    assert task_target("sample", latents, noise, scheduler, t) is latents
    a = scheduler.alphas_cumprod[t].sqrt().view(-1, 1, 1, 1)
    b = (1 - scheduler.alphas_cumprod[t]).sqrt().view(-1, 1, 1, 1)
    torch.testing.assert_close(task_target("v_prediction", latents, noise, scheduler, t), a * noise - b * latents)
    with pytest.raises(LayerPruneError, match="unsupported prediction_type"):
        task_target("flow", latents, noise, scheduler, t)
