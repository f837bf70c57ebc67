"""Caption dropout in train_distill (``--proportion_empty_prompts``, diffusers' train_text_to_image name): the rows it
drops and how the empty prompt replaces a row of masked (PixArt, Sana) and pooled (SD3, Flux) conditioning. End to
end on tiny PixArt and Flux pipelines (teacher and student both get the empty prompt on the dropped rows):
test_flow_objective.py, which has those pipelines built."""


import pytest
import torch

from diffusers_layerprune.distill import empty_prompt_rows, step_noise, with_empty_prompts


def test_rows_do_not_depend_on_how_the_global_batch_is_split():
    whole = empty_prompt_rows(3, 7, 0.5, global_batch_size=8, offset=0, batch=8)
    halves = [empty_prompt_rows(3, 7, 0.5, global_batch_size=8, offset=o, batch=4) for o in (0, 4)]
    assert torch.equal(whole, torch.cat(halves))
    assert not torch.equal(whole, empty_prompt_rows(3, 8, 0.5, global_batch_size=8, offset=0, batch=8))
    many = empty_prompt_rows(0, 0, 0.1, global_batch_size=20_000, offset=0, batch=20_000)
    assert 0.09 < many.float().mean() < 0.11
    assert not empty_prompt_rows(0, 0, 0.0, global_batch_size=64, offset=0, batch=64).any()


def test_the_noise_and_timesteps_are_those_drawn_without_it():
    """The rows come from their own RNG: a run with caption dropout noises each sample as one without it does."""
    before = step_noise(0, 5, (4, 2, 3, 3), global_batch_size=4, offset=0, num_train_timesteps=1000)
    empty_prompt_rows(0, 5, 0.5, global_batch_size=4, offset=0, batch=4)
    after = step_noise(0, 5, (4, 2, 3, 3), global_batch_size=4, offset=0, num_train_timesteps=1000)
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))


def test_masked_conditioning_gets_the_empty_prompts_tokens_first_and_the_rest_masked():
    g = torch.Generator().manual_seed(0)
    text = {
        "prompt_embeds": torch.randn(3, 2, 4, generator=g),
        "prompt_attention_mask": torch.ones(3, 2, dtype=torch.long),
    }
    empty = {
        "prompt_embeds": torch.randn(1, 6, 4, generator=g),
        "prompt_attention_mask": torch.tensor([[1, 1, 1, 0, 0, 0]]),
    }
    rows = torch.tensor([False, True, False])
    out = with_empty_prompts(text, empty, rows)
    # the batch is padded to the empty prompt's 3 attended tokens; kept rows keep their values, masked beyond them
    assert out["prompt_embeds"].shape == (3, 3, 4)
    assert torch.equal(out["prompt_embeds"][1], empty["prompt_embeds"][0, :3])
    assert out["prompt_attention_mask"][1].tolist() == [1, 1, 1]
    for i in (0, 2):
        assert torch.equal(out["prompt_embeds"][i, :2], text["prompt_embeds"][i])
        assert out["prompt_attention_mask"][i].tolist() == [1, 1, 0]
    assert torch.equal(text["prompt_attention_mask"], torch.ones(3, 2, dtype=torch.long))  # the input is not changed
    assert with_empty_prompts(text, empty, torch.zeros(3, dtype=torch.bool)) is text


def test_pooled_conditioning_rows_become_the_empty_prompts():
    text = {"prompt_embeds": torch.randn(2, 5, 4), "pooled_prompt_embeds": torch.randn(2, 3)}
    empty = {"prompt_embeds": torch.randn(1, 5, 4), "pooled_prompt_embeds": torch.randn(1, 3)}
    out = with_empty_prompts(text, empty, torch.tensor([True, False]))
    for key in text:
        assert torch.equal(out[key][0], empty[key][0]) and torch.equal(out[key][1], text[key][1])
    with pytest.raises(ValueError, match="empty prompt's prompt_embeds"):
        with_empty_prompts(text, {**empty, "prompt_embeds": torch.randn(1, 7, 4)}, torch.tensor([True, False]))


def test_without_it_nothing_is_recorded(tmp_path):
    """At the default (0) the settings hold no key, so checkpoints of earlier versions resume."""
    from diffusers_layerprune.train_distill import parse_args, run_settings

    args = parse_args(["--student_model", "s", "--output_dir", str(tmp_path / "o")])
    assert args.proportion_empty_prompts == 0 and "proportion_empty_prompts" not in run_settings(args)


def test_a_share_of_one_or_more_is_refused_by_the_parser(capsys, tmp_path):
    from diffusers_layerprune.train_distill import parse_args

    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--student_model", "s", "--output_dir", str(tmp_path / "o"), "--proportion_empty_prompts", "1"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "must be in [0, 1)" in err, err
