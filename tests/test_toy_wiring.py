"""The toy world is reachable by short name wherever a prompt set, scorer or image check is accepted."""

import pytest
import torch

from diffusers_layerprune import LayerPruneError
from diffusers_layerprune.data import load_prompts
from diffusers_layerprune.evaluation import IMAGE_CHECKS
from diffusers_layerprune.scorers import load_scorer
from diffusers_layerprune.toy.world import sample


def test_toy_prompt_sets():
    heldout, train = load_prompts("toy"), load_prompts("toy:train")
    assert heldout.source == "toy:heldout" and len(heldout) >= 200
    assert not set(heldout.prompts) & set(train.prompts)
    assert load_prompts("toy:heldout", limit=5).prompts == heldout.prompts[:5]
    with pytest.raises(LayerPruneError, match="unknown toy split"):
        load_prompts("toy:test")


def test_toy_scorer_prefers_the_matching_caption_and_judge_reads_renders():
    examples = sample("heldout", 12, seed=3)
    images = torch.stack([e.image for e in examples])
    captions = [e.caption for e in examples]
    scorer = load_scorer("toy")
    matching = scorer(images, captions)
    shuffled = scorer(images, captions[1:] + captions[:1])
    assert (matching > shuffled).float().mean() >= 0.9
    checks = IMAGE_CHECKS["toy"](images, captions)
    assert set(checks) == {"judge_colour", "judge_position", "judge_shape", "judge_size", "judge_overall"}
    assert checks["judge_overall"].mean() >= 0.98
