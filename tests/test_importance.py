"""Layer importance: the result type, every criterion, plans, and the scan runner (shared work, resume)."""

import json
import math

import numpy as np
import pytest
import torch

from diffusers_layerprune.blocks import get_blocks, skip_blocks
from diffusers_layerprune.errors import LayerPruneError
from diffusers_layerprune.importance import (
    CRITERIA_MODULES,
    ImportanceScan,
    LayerImportance,
    ScanSettings,
    all_criteria,
    compute_importance,
    get_criterion,
    greedy_order,
    num_to_remove,
    plan_blocks,
)
from diffusers_layerprune.importance.output_loss import additivity_check
from diffusers_layerprune.importance.runner import progress_files

PROMPTS = ["a red circle", "a blue square at the top left", "a green star", "a small yellow cross", "a white cross"]
IDENTITY_BLOCKS = (2, 3)  # consecutive, so the span plan can find them too
SETTINGS = ScanSettings(
    num_inference_steps=2, guidance_scale=2.0, resolution=16, max_sequence_length=16, batch_size=2, num_timesteps=2
)


def make_identity(block) -> None:
    """Zero every residual branch's output projection: the block then returns its input unchanged."""
    with torch.no_grad():
        for linear in (block.attn1.to_out[0], block.attn2.to_out[0], block.ff.net[2]):
            linear.weight.zero_()
            linear.bias.zero_()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Tiny models gain nothing from threads, and on a loaded 2-core machine two threads spin against each other.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def pipe():
    from diffusers_layerprune.testing import build_tiny_pixart_pipeline

    pipe = build_tiny_pixart_pipeline(6)
    for index in IDENTITY_BLOCKS:
        make_identity(get_blocks(pipe.transformer)[index])
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def scorer(tmp_path_factory):
    from diffusers_layerprune.scorers import load_scorer
    from diffusers_layerprune.scorers.tiny import save_tiny_clip_folder

    return load_scorer(save_tiny_clip_folder(tmp_path_factory.mktemp("scorer") / "tinyclip", seed=3))


@pytest.fixture(scope="module")
def results(pipe, scorer):
    """Every criterion on one scan of the tiny pipeline (whose blocks 2 and 3 are identities)."""
    scan = ImportanceScan(pipe, PROMPTS, SETTINGS, scorer=scorer, model_id="tiny", show_progress=False)
    # learnable trains masks and a LoRA: tested on its own in tests/test_selection.py.
    return scan, {name: compute_importance(name, scan) for name in CRITERIA_MODULES if name != "learnable"}


def direct_generation(pipe, prompts, skipped, seed0=0, guidance=2.0):
    """What a user would run by hand: the pipeline with prompt strings, one generator per prompt."""
    generators = [torch.Generator().manual_seed(seed0 + i) for i in range(len(prompts))]
    with torch.no_grad(), skip_blocks(pipe.transformer, skipped):
        return pipe(
            list(prompts),
            num_inference_steps=2,
            guidance_scale=guidance,
            height=16,
            width=16,
            generator=generators,
            output_type="latent",
            use_resolution_binning=False,
            max_sequence_length=16,
            clean_caption=False,
        ).images


# ----------------------------------------------------------------------------------------------------------------
# Criteria
# ----------------------------------------------------------------------------------------------------------------


def test_registry_lists_every_criterion_and_rejects_unknown_names():
    assert set(CRITERIA_MODULES) == {
        "preference",
        "block_influence",
        "angular_distance",
        "output_loss",
        "latent",
        "weight_norm",
        "random",
        "learnable",
    }
    assert all(c.name == name for name, c in all_criteria().items())
    with pytest.raises(LayerPruneError, match="unknown criterion 'nope'; known criteria: preference, block_influence"):
        get_criterion("nope")


@pytest.mark.parametrize("name", ["preference", "block_influence", "angular_distance", "output_loss", "latent"])
def test_a_block_that_does_nothing_is_least_important(results, name):
    _, by_name = results
    importance = by_name[name]
    assert importance.num_layers == 6 and importance.criterion == name and importance.higher_is_more_important
    for index in IDENTITY_BLOCKS:
        assert importance.values[index] == pytest.approx(0.0, abs=1e-6)
    others = [v for i, v in enumerate(importance.values) if i not in IDENTITY_BLOCKS]
    if name == "preference":
        # Skipping a random block can raise a random scorer's score: drops have both signs, only 0 is certain.
        assert all(abs(v) > 1e-6 for v in others)
        return
    assert importance.least_important(2) == list(IDENTITY_BLOCKS)
    assert min(others) > 1e-5


def test_preference_is_the_mean_score_drop_of_same_seed_generations(results, pipe, scorer):
    scan, by_name = results
    importance = by_name["preference"]
    # Independent of the runner: prompt strings through the pipeline (its own text encoding), by hand.
    full = scorer(scan.decode(direct_generation(pipe, PROMPTS, [])), PROMPTS)
    without_4 = scorer(scan.decode(direct_generation(pipe, PROMPTS, [4])), PROMPTS)
    drop = (full - without_4).double().numpy()
    np.testing.assert_allclose(importance.per_prompt[4], drop, rtol=1e-4, atol=1e-6)
    assert importance.values[4] == pytest.approx(drop.mean(), abs=1e-6)
    assert importance.stderr[4] == pytest.approx(drop.std(ddof=1) / math.sqrt(len(PROMPTS)), rel=1e-4)
    assert importance.metadata["scorer"] == "tinyclip" and importance.metadata["prompts"]["count"] == 5
    assert importance.extra["full_model_score"] == pytest.approx(full.mean().item(), abs=1e-6)


def test_latent_is_the_ld_pruner_distance_of_mean_and_std(results, pipe):
    _, by_name = results
    full = direct_generation(pipe, PROMPTS, []).double()
    pruned = direct_generation(pipe, PROMPTS, [0]).double()
    expected = torch.linalg.norm(full.mean(0) - pruned.mean(0)) + torch.linalg.norm(
        full.std(0, unbiased=False) - pruned.std(0, unbiased=False)
    )
    assert by_name["latent"].values[0] == pytest.approx(expected.item(), rel=1e-4)


def test_block_influence_and_angular_distance_agree_with_their_formulas(results):
    scan, by_name = results
    # One block, one batch, recomputed from the captured hidden states.
    steps = scan.hidden_states(0)  # per probe timestep: (executed blocks, [input of each block, last output])
    assert len(steps) == SETTINGS.num_timesteps and steps[0][0] == list(range(6))
    influence = by_name["block_influence"]
    # 1 - cos(input of block 1, input of block 2 = output of block 1), mean over tokens, then over timesteps.
    per_step = [1 - torch.nn.functional.cosine_similarity(s[1][1], s[1][2], dim=-1).mean(-1) for s in steps]
    np.testing.assert_allclose(influence.per_prompt[1][:2], torch.stack(per_step).mean(0).numpy(), rtol=1e-4)
    assert influence.values[1] == pytest.approx(np.mean(influence.per_prompt[1]))

    angular = by_name["angular_distance"]
    spans = angular.extra["span_distance"]
    assert set(spans) == {"1", "2", "3", "4", "5"} and len(spans["2"]) == 5
    assert spans["1"] == angular.values
    assert 0.0 <= min(spans["5"]) and max(spans["5"]) <= 1.0
    assert spans["2"][IDENTITY_BLOCKS[0]] == pytest.approx(0.0, abs=1e-6)
    assert angular.extra["best_span"]["2"] == IDENTITY_BLOCKS[0]


def test_output_loss_additivity_check(results):
    scan, by_name = results
    importance = by_name["output_loss"]
    check = importance.extra["additivity"]
    assert check["blocks"] == importance.least_important(2)
    assert check["sum_of_single_losses"] == pytest.approx(sum(importance.values[b] for b in check["blocks"]))
    # A set of one block: the measured loss is its single-block loss, so the ratio is exactly 1.
    single = additivity_check(scan, importance, [5])
    assert single["measured_loss"] == pytest.approx(importance.values[5], rel=1e-12)
    assert single["ratio"] == pytest.approx(1.0)
    pair = additivity_check(scan, importance, [0, 5])
    assert pair["measured_loss"] > 0 and pair["ratio"] != pytest.approx(1.0, abs=1e-6)


def test_weight_norm_and_random(results, pipe):
    scan, by_name = results
    norms = by_name["weight_norm"].values
    block = get_blocks(pipe.transformer)[1]
    expected = torch.sqrt(sum((p.double() ** 2).sum() for p in block.parameters())).item()
    assert norms[1] == pytest.approx(expected)
    assert by_name["weight_norm"].metadata["model"] == "tiny"

    first = by_name["random"]
    again = compute_importance("random", ImportanceScan(pipe, None, SETTINGS, show_progress=False))
    other = compute_importance(
        "random", ImportanceScan(pipe, None, ScanSettings(seed=1, resolution=16), show_progress=False)
    )
    assert first.values == again.values and first.values != other.values
    assert sorted(first.ranking()) == list(range(6))


def test_greedy_order_rescoring_with_blocks_removed(results):
    scan, _ = results
    order = greedy_order(scan, "output_loss", 3)
    assert sorted(order[:2]) == list(IDENTITY_BLOCKS) and order[2] not in IDENTITY_BLOCKS
    with pytest.raises(LayerPruneError, match="greedy re-scoring is not defined for angular_distance"):
        greedy_order(scan, "angular_distance", 2)


# ----------------------------------------------------------------------------------------------------------------
# The runner: shared work, no copies, resumable
# ----------------------------------------------------------------------------------------------------------------


def test_prompts_are_encoded_once_and_the_text_encoder_can_be_freed(scorer):
    from diffusers_layerprune.testing import build_tiny_pixart_pipeline

    pipe = build_tiny_pixart_pipeline(4)
    blocks_before = list(get_blocks(pipe.transformer))
    calls = []
    encode = pipe.encode_prompt

    def counting(prompt, *args, **kwargs):
        calls.append(list(prompt) if prompt is not None else None)
        return encode(prompt, *args, **kwargs)

    pipe.encode_prompt = counting
    scan = ImportanceScan(pipe, PROMPTS[:3], SETTINGS, scorer=scorer, free_text_encoder=True, show_progress=False)
    importance = compute_importance("preference", scan)
    # Five variants x two batches of generations, but the text encoder ran for the prompts and "" only.
    text_encoder_calls = [c for c in calls if c is not None]
    assert text_encoder_calls == [PROMPTS[:3], [""]]
    assert pipe.text_encoder is None and scan.units_computed == 5 * 2
    assert list(get_blocks(pipe.transformer)) == blocks_before  # same block objects: no copies, all restored
    assert len(importance.values) == 4


def test_a_killed_scan_resumes_with_identical_numbers(pipe, scorer, tmp_path):
    reference = compute_importance(
        "preference", ImportanceScan(pipe, PROMPTS, SETTINGS, scorer=scorer, show_progress=False)
    )
    output = tmp_path / "imp.json"
    scan = ImportanceScan(pipe, PROMPTS, SETTINGS, scorer=scorer, progress_path=output, show_progress=False)
    generate, count = scan.generate, []

    def dies_after_eight(*args, **kwargs):
        if len(count) == 8:
            raise KeyboardInterrupt  # what Ctrl-C (or a kill between two units) leaves behind
        count.append(1)
        return generate(*args, **kwargs)

    scan.generate = dies_after_eight
    with pytest.raises(KeyboardInterrupt):
        compute_importance("preference", scan)
    [progress] = progress_files(output)
    assert len(progress.read_text().splitlines()) == 8
    with open(progress, "a") as f:  # and a line cut short by the kill
        f.write('{"key": "')

    resumed_scan = ImportanceScan(pipe, PROMPTS, SETTINGS, scorer=scorer, progress_path=output, show_progress=False)
    resumed = compute_importance("preference", resumed_scan)
    total_units = 7 * 3  # (full + 6 variants) x 3 prompt batches
    assert resumed_scan.units_computed == total_units - 8
    assert resumed.values == reference.values and resumed.per_prompt == reference.per_prompt

    # A scan with other settings ignores these records.
    other = ImportanceScan(
        pipe,
        PROMPTS,
        ScanSettings(**{**SETTINGS.__dict__, "seed": 7}),
        scorer=scorer,
        progress_path=output,
        show_progress=False,
    )
    compute_importance("preference", other)
    assert other.units_computed == total_units
    resumed_scan.remove_progress()
    assert progress_files(output) == []


def test_empty_prompt_set_is_refused(pipe):
    with pytest.raises(LayerPruneError, match="prompt set is empty"):
        ImportanceScan(pipe, [], SETTINGS)


# ----------------------------------------------------------------------------------------------------------------
# Result type and plans
# ----------------------------------------------------------------------------------------------------------------


def test_result_round_trip_plot_and_ranking(results, tmp_path):
    _, by_name = results
    importance = by_name["preference"]
    path = importance.save(tmp_path / "imp.json")
    loaded = LayerImportance.load(path)
    assert loaded.values == importance.values and loaded.stderr == importance.stderr
    assert loaded.per_prompt == importance.per_prompt and loaded.metadata == importance.metadata
    for key in ("model", "criterion", "scorer", "prompts", "seed", "num_inference_steps", "guidance_scale"):
        assert key in loaded.metadata
    assert loaded.metadata["resolution"] == 16 and loaded.metadata["package_version"]
    assert (tmp_path / "imp.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads(path.read_text())
    assert data["ranking"] == importance.ranking() and data["higher_is_more_important"] is True

    ties = LayerImportance(values=[1.0, 0.5, 0.5, float("nan"), 2.0], criterion="x")
    assert ties.ranking() == [1, 2, 0, 4, 3]  # ties by index; an unmeasured (NaN) block is never dropped first
    assert ties.least_important(2) == [1, 2] and ties.most_important(1) == [3]
    assert ties.kept_layers(2) == [0, 3, 4]
    lower_better = LayerImportance(values=[1.0, 3.0, 2.0], criterion="x", higher_is_more_important=False)
    assert lower_better.least_important(1) == [1]


def test_loading_a_foreign_or_broken_file_is_a_clear_error(tmp_path):
    (tmp_path / "a.json").write_text('{"values": [1, 2]}')
    with pytest.raises(LayerPruneError, match="is not a layer-importance file"):
        LayerImportance.load(tmp_path / "a.json")
    (tmp_path / "b.json").write_text("{not json")
    with pytest.raises(LayerPruneError, match="is not valid JSON"):
        LayerImportance.load(tmp_path / "b.json")
    with pytest.raises(LayerPruneError, match="does not exist"):
        LayerImportance.load(tmp_path / "missing.json")


def test_plans(results):
    _, by_name = results
    # num_layers is the pruned depth (blocks kept), as in diffusers' config; remove counts removed blocks
    assert num_to_remove(8, ratio=0.25) == 2 and num_to_remove(8, num_layers=3) == 5 and num_to_remove(8, remove=3) == 3
    bads = (
        dict(num_layers=8),
        dict(num_layers=0),
        dict(num_layers=-1),
        dict(remove=8),
        dict(remove=0),
        dict(ratio=1.0),
    )
    for bad in (*bads, dict(ratio=0.01), dict(num_layers=4, remove=4), {}):
        with pytest.raises(LayerPruneError):
            num_to_remove(8, **bad)
    assert plan_blocks(by_name["latent"], 2, "one_shot") == list(IDENTITY_BLOCKS)
    assert plan_blocks(by_name["angular_distance"], 2, "span") == list(IDENTITY_BLOCKS)
    with pytest.raises(LayerPruneError, match="span plan needs an angular_distance"):
        plan_blocks(by_name["latent"], 2, "span")
    with pytest.raises(LayerPruneError, match="no greedy order"):
        plan_blocks(by_name["latent"], 2, "greedy")
    with_order = LayerImportance(values=[1.0] * 6, criterion="x", extra={"greedy_order": [4, 1, 2]})
    assert plan_blocks(with_order, 2, "greedy") == [1, 4]
    with pytest.raises(LayerPruneError, match="re-score with --greedy-steps 4"):
        plan_blocks(with_order, 4, "greedy")
    with pytest.raises(LayerPruneError, match="unknown plan"):
        plan_blocks(with_order, 1, "best")
