"""How sure a block selection is (bootstrap stability, ties at the cut) and the adaptive scan."""

import json
import math
from statistics import NormalDist

import numpy as np
import pytest
import torch

from diffusers_layerprune.blocks import get_blocks
from diffusers_layerprune.errors import LayerPruneError
from diffusers_layerprune.importance import ImportanceScan, LayerImportance, ScanSettings, compute_importance
from diffusers_layerprune.importance.adaptive import adaptive_preference, adaptive_rounds, drops_against_reference
from diffusers_layerprune.importance.runner import progress_files
from diffusers_layerprune.importance.stability import (
    bootstrap_probability,
    rank_agreement,
    selection_stability,
    spearman_rho,
)


def importance_of(per_prompt) -> LayerImportance:
    per_prompt = np.asarray(per_prompt, dtype=np.float64)
    return LayerImportance(
        values=np.nanmean(per_prompt, axis=1), criterion="preference", per_prompt=per_prompt.tolist()
    )


def standardised(n: int, seed: int) -> np.ndarray:
    """``n`` draws rescaled to mean exactly 0 and sample standard deviation exactly 1."""
    x = np.random.default_rng(seed).standard_normal(n)
    return (x - x.mean()) / x.std(ddof=1)


# ----------------------------------------------------------------------------------------------------------------
# Stability: constructed cases with known answers
# ----------------------------------------------------------------------------------------------------------------


def close_pair(n: int, s: float) -> np.ndarray:
    """Block 0 matters a lot; blocks 1 and 2 differ on every prompt by ``d_p``, exactly of mean ``s / sqrt(n)`` and
    standard deviation ``s``, on top of a prompt difficulty shared by all three (it cancels in paired differences)."""
    common = np.random.default_rng(1).normal(0.0, 3.0, n)
    d = s / math.sqrt(n) + s * standardised(n, 2)
    return np.stack([10.0 + common, common, common + d])


def test_bootstrap_probability_of_two_close_blocks_follows_the_normal_theory():
    # Block 0 matters a lot; blocks 1 and 2 differ on every prompt by d_p with mean m = s / sqrt(n): the bootstrap
    # mean of d is ~ N(m, s^2 / n), so block 1 stays the least important in Phi(1) = 84% of resamples, the pair is
    # tied (its 95% interval contains 0), and with M prompts the probability is Phi(sqrt(M / n)): >= 90% from
    # M = 165 on, so the doubling search suggests 200.
    n, s = 100, 1.0
    m = s / math.sqrt(n)
    per_prompt = close_pair(n, s)
    result = selection_stability(importance_of(per_prompt), 1, draws=4000)
    assert result["selection"] == [1]
    assert result["probability"] == pytest.approx(NormalDist().cdf(1.0), abs=0.03)
    assert result["tied"] == [1, 2] and [p[:2] for p in result["tied_pairs"]] == [[1, 2]]
    assert result["tied_pairs"][0][2] == pytest.approx(m) and result["tied_pairs"][0][3] == pytest.approx(s / 10)
    assert not result["stable"] and result["suggested_num_prompts"] == 200
    assert "unstable" in result["message"] and "about 200 prompts" in result["message"]


def test_blocks_far_apart_give_a_stable_selection_without_ties():
    rng = np.random.default_rng(0)
    per_prompt = np.arange(6)[:, None] * 1.0 + rng.normal(0.0, 0.2, (6, 32))
    result = selection_stability(importance_of(per_prompt), 2)
    assert result["selection"] == [0, 1] and result["probability"] == 1.0
    assert result["tied"] == [] and result["stable"] and "suggested_num_prompts" not in result


def test_blocks_with_equal_drops_are_called_interchangeable():
    # Blocks 1 and 2 have exactly the same mean: more prompts never decide between them.
    per_prompt = np.stack([5.0 + standardised(40, 0), standardised(40, 1), standardised(40, 2)])
    result = selection_stability(importance_of(per_prompt), 1)
    assert result["tied"] == [1, 2] and 0.3 < result["probability"] < 0.7
    assert result["suggested_num_prompts"] is None and "interchangeable" in result["message"]


def test_orientation_and_prompts_a_block_was_not_measured_on():
    # Lower = more important: the selection is the blocks with the largest values.
    per_prompt = -(np.arange(4)[:, None] * 1.0 + np.random.default_rng(0).normal(0.0, 0.1, (4, 20)))
    imp = LayerImportance(
        values=per_prompt.mean(1), criterion="x", higher_is_more_important=False, per_prompt=per_prompt.tolist()
    )
    assert selection_stability(imp, 1)["selection"] == [0]
    # NaN = not measured (an adaptive scan): left out of the means, not counted as zero.
    sparse = np.arange(4)[:, None] * 1.0 + np.zeros((4, 20))
    sparse[3, 5:] = np.nan
    assert bootstrap_probability(sparse, [0, 1], draws=200) == 1.0


def test_an_adaptive_scans_unused_budget_is_not_part_of_the_sample():
    # The close pair of the normal-theory case, measured on its 100 prompts of a budget of 400: the 300 prompts never
    # generated change neither the probability nor the suggested count, and the message counts 100 prompts.
    n = 100
    per_prompt = close_pair(n, 1.0)
    budget = np.full((3, 4 * n), np.nan)
    budget[:, :n] = per_prompt
    measured, adaptive = (selection_stability(importance_of(x), 1, draws=2000) for x in (per_prompt, budget))
    assert adaptive["num_prompts"] == n
    assert adaptive["probability"] == measured["probability"]
    assert adaptive["suggested_num_prompts"] == measured["suggested_num_prompts"] == 200
    assert "of the 100 prompts" in adaptive["message"]


def test_stability_needs_per_prompt_values():
    with pytest.raises(LayerPruneError, match="no per-prompt values"):
        selection_stability(LayerImportance([1.0, 2.0, 3.0], "weight_norm"), 1)


def test_rank_correlation_of_a_proxy_scan_against_the_full_one():
    # Known answers: identical order 1, reversed order -1, one adjacent swap of 5 values 1 - 6 * 2 / (5 * 24) = 0.9;
    # ties take their average rank (scipy's convention): [1, 2, 2, 3] vs [1, 2, 3, 4] -> 0.9486833.
    assert spearman_rho([1, 2, 3, 4, 5], [10, 20, 30, 40, 50]) == pytest.approx(1.0)
    assert spearman_rho([1, 2, 3, 4, 5], [5, 4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman_rho([1, 2, 3, 4, 5], [1, 3, 2, 4, 5]) == pytest.approx(0.9)
    assert spearman_rho([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9486833, abs=1e-6)
    assert math.isnan(spearman_rho([1, 1, 1], [1, 2, 3]))
    full = LayerImportance(values=[0.9, 0.1, 0.3, 0.2, 0.8], criterion="preference")
    proxy = LayerImportance(values=[0.7, 0.2, 0.1, 0.3, 0.9], criterion="preference")
    agreement = rank_agreement(proxy, full, k=2)
    assert agreement["selection"] == [1, 2] and agreement["reference_selection"] == [1, 3]
    assert agreement["overlap"] == 1 and not agreement["same"]
    # ranks [4, 0, 2, 1, 3] vs [3, 1, 0, 2, 4]: squared differences sum to 8, rho = 1 - 6 * 8 / (5 * 24) = 0.6
    assert agreement["spearman"] == pytest.approx(0.6)
    with pytest.raises(LayerPruneError, match="different models"):
        rank_agreement(LayerImportance(values=[0.1, 0.2], criterion="preference"), full, k=1)
    with pytest.raises(LayerPruneError, match="finite"):
        spearman_rho([0.1, float("nan")], [0.1, 0.2])


def test_stability_is_saved_and_plotted(tmp_path):
    per_prompt = np.stack([5.0 + standardised(40, 0), standardised(40, 1), standardised(40, 2)])
    imp = importance_of(per_prompt)
    imp.extra["stability"] = selection_stability(imp, 1)
    imp.save(tmp_path / "imp.json")
    again = LayerImportance.load(tmp_path / "imp.json")
    assert again.extra["stability"]["tied"] == [1, 2]
    assert (tmp_path / "imp.png").stat().st_size > 0


# ----------------------------------------------------------------------------------------------------------------
# The adaptive loop on synthetic drops
# ----------------------------------------------------------------------------------------------------------------


def synthetic_measure(means, noise, num_prompts, seed=0):
    """Per-prompt drops ``means[b] + noise * e[b, p]`` (scores ``difficulty(p) - drop``, the full model scoring
    ``difficulty(p)``), with a log of what was measured."""
    rng = np.random.default_rng(seed)
    table = np.asarray(means, dtype=np.float64)[:, None] + noise * rng.standard_normal((len(means), num_prompts))
    difficulty = 10.0 + rng.standard_normal(num_prompts)
    log = []

    def measure(blocks, prompts, reference):
        log.append((list(blocks), prompts, reference))
        span = slice(prompts.start, prompts.stop)
        return (difficulty[span] if reference else None), difficulty[span] - table[blocks][:, span]

    return table, measure, log


def test_adaptive_stops_generating_a_clearly_important_block_early():
    means = [10.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]
    table, measure, log = synthetic_measure(means, 0.3, 64)
    per_prompt, rounds, _ = adaptive_rounds(measure, 8, 3, 64, 8)
    assert rounds[0]["blocks"] == list(range(8)) and len(rounds) > 1
    assert all(0 not in blocks for blocks, _, _ in log[1:])  # block 0 only in the first round
    assert [reference for _, _, reference in log] == [True] + [False] * (len(log) - 1)  # the full model too
    assert np.isfinite(per_prompt[0, :8]).all() and np.isnan(per_prompt[0, 8:]).all()
    assert np.allclose(per_prompt[0, :8], table[0, :8])
    # Where the full model was not generated, the paired differences are exactly the measured ones.
    later = np.isfinite(per_prompt[1]) & np.isfinite(per_prompt[2])
    later[:8] = False
    assert later.any()
    assert np.allclose(per_prompt[2, later] - per_prompt[1, later], table[2, later] - table[1, later])


def test_drops_against_an_estimated_reference_follow_the_prompt_difficulty():
    # Additive scores (difficulty(p) - drop_b) with the full model measured on the first 4 prompts only: the
    # estimated full-model score on the others recovers the difficulty, so the drops are the true ones.
    drop = np.array([3.0, 0.5, 1.0, 2.0])
    difficulty = np.array([5.0, 7.0, 6.0, 9.0, 4.0, 8.0, 5.5, 6.5])
    scores = difficulty[None, :] - drop[:, None]
    scores[0, 4:] = np.nan  # block 0 settled after the first round
    scores[3, 6:] = np.nan
    reference = np.where(np.arange(8) < 4, difficulty, np.nan)
    drops = drops_against_reference(scores, reference)
    expected = np.where(np.isfinite(scores), drop[:, None], np.nan)
    assert np.allclose(drops, expected, equal_nan=True)
    assert np.isnan(drops_against_reference(scores, np.full(8, np.nan))[:, :0]).all()  # nothing to fix: no error


def test_adaptive_gives_the_exhaustive_answer_when_blocks_are_far_apart():
    means = [3.0, 0.0, 2.0, 1.0, 5.0, 4.0, 7.0, 6.0, 9.0, 8.0, 11.0, 10.0]
    for k in (3, 5):
        table, measure, _ = synthetic_measure(means, 0.5, 64, seed=k)
        exhaustive = sorted(np.argsort(table.mean(1), kind="stable")[:k].tolist())
        per_prompt, rounds, settled = adaptive_rounds(measure, 12, k, 64, 8, tolerance=0.0)
        means_seen = [float(np.nanmean(row)) for row in per_prompt]
        assert settled and sorted(np.argsort(means_seen, kind="stable")[:k].tolist()) == exhaustive
        images = sum((r["reference"] + len(r["blocks"])) * (r["prompts"][1] - r["prompts"][0]) for r in rounds)
        assert images <= 13 * 64 / 3


def test_adaptive_spends_the_budget_on_blocks_it_cannot_separate():
    # Blocks 1 and 2 are equal: with no tolerance they stay unresolved until the prompts run out; a tolerance
    # larger than the noise of their difference settles them.
    means = [5.0, 0.0, 0.0, 3.0]
    _, measure, log = synthetic_measure(means, 0.5, 48)
    _, rounds, settled = adaptive_rounds(measure, 4, 1, 48, 8)
    assert not settled and len(rounds) == 6 and rounds[-1]["blocks"] == [1, 2]
    _, measure, _ = synthetic_measure(means, 0.5, 48)
    _, rounds, settled = adaptive_rounds(measure, 4, 1, 48, 8, tolerance=1.0)
    assert settled and len(rounds) < 6


# ----------------------------------------------------------------------------------------------------------------
# The adaptive scan on a tiny pipeline: same units as the exhaustive scan, resumable
# ----------------------------------------------------------------------------------------------------------------

SETTINGS = ScanSettings(
    num_inference_steps=2, guidance_scale=1.0, resolution=16, max_sequence_length=16, batch_size=2, num_timesteps=1
)
PROMPTS = [f"a {c} {s}" for c in ("red", "blue", "green", "white") for s in ("circle", "square", "star", "cross")]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def world():
    """A 6-block tiny pipeline whose blocks 2 and 3 do nothing and whose block 0 is amplified, and a scorer that
    measures how far an image is from the full model's image of the same prompt (full model: 0, drop = distance)."""
    from diffusers_layerprune.testing import build_tiny_pixart_pipeline

    pipe = build_tiny_pixart_pipeline(6)
    blocks = get_blocks(pipe.transformer)
    with torch.no_grad():
        for index in (2, 3):
            for linear in (blocks[index].attn1.to_out[0], blocks[index].attn2.to_out[0], blocks[index].ff.net[2]):
                linear.weight.zero_()
                linear.bias.zero_()
        for linear in (blocks[0].attn1.to_out[0], blocks[0].ff.net[2]):
            linear.weight.mul_(8.0)
    pipe.set_progress_bar_config(disable=True)
    reference_scan = ImportanceScan(pipe, PROMPTS, SETTINGS, show_progress=False)
    reference = {}
    for batch in range(len(reference_scan.batches)):
        images = reference_scan.decode(reference_scan.generate(batch))
        reference.update(zip(reference_scan.prompts_of(batch), images, strict=True))

    def scorer(images, prompts):
        return torch.stack([-(image - reference[p]).abs().mean() for image, p in zip(images, prompts, strict=True)])

    return pipe, scorer


def test_adaptive_scan_on_a_pipeline_resumes_with_identical_numbers(world, tmp_path):
    pipe, scorer = world
    scan = ImportanceScan(pipe, PROMPTS, SETTINGS, scorer=scorer, show_progress=False)
    result = adaptive_preference(scan, 1, round_prompts=4, tolerance=0.0)
    a = result.extra["adaptive"]
    # Blocks 2 and 3 do nothing: tied exactly, so with no tolerance they are generated until the prompts run out.
    assert result.least_important(1) in ([2], [3]) and not a["settled"]
    assert [r["blocks"] for r in a["rounds"]] == [list(range(6)), [2, 3], [2, 3], [2, 3]]
    assert scan.units_computed * SETTINGS.batch_size == a["images"] < a["exhaustive_images"]
    assert a["prompts_per_block"][0] == 4  # the amplified block: one round only
    assert len(a["rounds"]) > 1 and a["reference_prompts"] == 4  # the full model: first round only
    # The units are the exhaustive scan's: it reuses them and agrees where both measured.
    exhaustive = compute_importance("preference", scan)
    assert exhaustive.least_important(2) == [2, 3]
    assert scan.units_computed == 7 * 8
    measured = np.isfinite(np.asarray(result.per_prompt))
    first = np.zeros_like(measured)
    first[:, :4] = True  # the first round, where the full model was generated: the drops are the exhaustive ones
    assert measured[:, :4].all()
    assert np.array_equal(np.asarray(result.per_prompt)[first], np.asarray(exhaustive.per_prompt)[first])
    # Later, paired differences between blocks measured on the same prompt are exactly the exhaustive scan's.
    ours, theirs = np.asarray(result.per_prompt), np.asarray(exhaustive.per_prompt)
    later = [(i, j) for i in range(6) for j in range(i) if (measured[i, 4:] & measured[j, 4:]).any()]
    assert later
    for i, j in later:
        both = measured[i] & measured[j]
        assert np.allclose(ours[i, both] - ours[j, both], theirs[i, both] - theirs[j, both])

    output = tmp_path / "imp.json"
    first = ImportanceScan(pipe, PROMPTS, SETTINGS, scorer=scorer, progress_path=output, show_progress=False)
    adaptive_preference(first, 1, round_prompts=4, tolerance=0.0)
    [progress] = progress_files(output)
    lines = progress.read_text().splitlines()
    kept = len(lines) // 2
    progress.write_text("\n".join(lines[:kept]) + '\n{"key": "')  # killed mid-run, a line cut short
    resumed_scan = ImportanceScan(pipe, PROMPTS, SETTINGS, scorer=scorer, progress_path=output, show_progress=False)
    resumed = adaptive_preference(resumed_scan, 1, round_prompts=4, tolerance=0.0)
    assert resumed_scan.units_computed == len(lines) - kept
    assert json.dumps(resumed.per_prompt) == json.dumps(result.per_prompt)
    assert resumed.values == result.values and resumed.stderr == result.stderr
    assert resumed.extra["adaptive"] == result.extra["adaptive"]


def test_adaptive_scan_refuses_what_it_cannot_do(world):
    pipe, scorer = world
    scan = ImportanceScan(pipe, PROMPTS[:3], SETTINGS, scorer=scorer, show_progress=False)
    with pytest.raises(LayerPruneError, match="smaller than one round"):
        adaptive_preference(scan, 2, round_prompts=4)
    with pytest.raises(LayerPruneError, match="multiple of --batch-size"):
        adaptive_preference(ImportanceScan(pipe, PROMPTS, SETTINGS, scorer=scorer), 2, round_prompts=5)


# ----------------------------------------------------------------------------------------------------------------
# layerprune score: the stability report, --adaptive, and bad input
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    from diffusers_layerprune.scorers.tiny import save_tiny_clip_folder

    root = tmp_path_factory.mktemp("assets")
    (root / "prompts.txt").write_text("\n".join(PROMPTS[:8]) + "\n")
    return {"scorer": save_tiny_clip_folder(root / "tinyclip", seed=3), "prompts": root / "prompts.txt"}


def score(model, assets, output, *extra):
    from diffusers_layerprune.cli import main

    return main(
        ["score", "--model", str(model), "--scorer", str(assets["scorer"]), "--prompts", str(assets["prompts"]),
         "--steps", "2", "--guidance", "1.0", "--batch-size", "2", "--no-progress", "--output", str(output), *extra]
    )  # fmt: skip


def test_score_reports_stability_and_runs_adaptively(tiny_pipeline_dir, assets, tmp_path, capsys):
    output = tmp_path / "imp.json"
    assert score(tiny_pipeline_dir, assets, output, "--remove", "2", "--bootstrap", "200") == 0
    out = capsys.readouterr().out
    stability = LayerImportance.load(output).extra["stability"]
    assert stability["remove"] == 2 and stability["draws"] == 200 and stability["num_prompts"] == 8
    assert stability["message"] in out and "remove " in out

    adaptive = tmp_path / "adaptive.json"
    assert score(tiny_pipeline_dir, assets, adaptive, "--remove", "2", "--adaptive", "--round-prompts", "4") == 0
    out = capsys.readouterr().out
    result = LayerImportance.load(adaptive)
    record = result.extra["adaptive"]
    assert record["remove"] == 2 and record["round_prompts"] == 4 and record["rounds"][0]["prompts"] == [0, 4]
    assert f"adaptive scan: {record['images']} images of the exhaustive {7 * 8}" in out
    assert "stability" in result.extra and sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["imp.json", "imp.png", "adaptive.json", "adaptive.png"]
    )


def test_an_adaptive_scan_settled_on_an_unstable_selection_points_at_the_tolerance():
    from diffusers_layerprune.importance.scoring import _summary

    adaptive = {"settled": True, "tolerance": 0.1, "tolerance_units": 0.088, "images": 104, "exhaustive_images": 416,
                "rounds": [{}], "prompts_per_block": [8, 8, 8]}  # fmt: skip
    for stable, expected in ((False, True), (True, False)):
        imp = LayerImportance([3.0, 1.0, 2.0], "preference", per_prompt=[[3.0, 3.0], [1.0, 1.0], [2.0, 2.0]])
        imp.extra = {"adaptive": adaptive, "stability": {"selection": [1], "tied": [], "stable": stable, "message": ""}}
        lines = []
        _summary(imp, "m", None, lines.append, 1)
        hint = [line for line in lines if line.startswith("settled although unstable")]
        assert bool(hint) == expected
        assert not hint or "--tolerance 0.1 (0.088 in score units)" in hint[0]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--adaptive", "--criterion", "block_influence"], "--adaptive needs a criterion that generates images for "
         "each prompt; block_influence does not (supported: preference)"),
        (["--adaptive", "--num-prompts", "4"], "the prompt budget (4 prompts) is smaller than one round "
         "(--round-prompts 8)"),
        (["--adaptive", "--round-prompts", "10"], "the prompt budget (8 prompts) is smaller than one round"),
        (["--adaptive", "--round-prompts", "3"], "--round-prompts 3 must be a multiple of --batch-size 2"),
        (["--adaptive", "--confidence", "1.5"], "--confidence must be between 0 and 1"),
        (["--adaptive", "--greedy-steps", "1"], "--greedy-steps and --adaptive do not go together"),
        (["--remove", "6"], "--remove (blocks to remove) must be between 1 and 5 for a model of 6 blocks, got 6"),
        (["--tolerance", "0.1"], "--round-prompts, --confidence and --tolerance go with --adaptive"),
    ],
)  # fmt: skip
def test_score_selection_bad_input_one_line_exit_2_nothing_written(
    tiny_pipeline_dir, assets, tmp_path, capsys, extra, message
):
    output = tmp_path / "out" / "imp.json"
    assert score(tiny_pipeline_dir, assets, output, *extra) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_adaptive_scan_split_across_two_accelerate_processes_matches_one(tiny_pipeline_dir, assets, tmp_path):
    # Same environment as tests/test_importance_cli.py's two-process test: one thread, MKL_CBWR=COMPATIBLE.
    import os
    import socket
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "layerprune_main.py"
    script.write_text("import sys\nfrom diffusers_layerprune.cli import main\nsys.exit(main())\n")
    config = tmp_path / "accelerate.yaml"
    config.write_text("compute_environment: LOCAL_MACHINE\ndistributed_type: MULTI_GPU\n")
    worktree = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_CBWR="COMPATIBLE", HF_HUB_OFFLINE="1", PYTHONPATH=worktree)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    results = {}
    for name, launcher, run_env in (
        ("one", [], env),
        ("two", ["-m", "accelerate.commands.launch", "--config_file", str(config), "--multi_gpu", "--num_processes",
                 "2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                 "--main_process_port", port], {**env, "ACCELERATE_USE_CPU": "1"}),
    ):  # fmt: skip
        output = tmp_path / name / "imp.json"
        args = ["score", "--model", str(tiny_pipeline_dir), "--scorer", str(assets["scorer"]), "--prompts",
                str(assets["prompts"]), "--steps", "2", "--guidance", "1.0", "--batch-size", "2", "--no-progress",
                "--remove", "2", "--adaptive", "--round-prompts", "4", "--output", str(output)]  # fmt: skip
        done = subprocess.run(
            [sys.executable, *launcher, str(script), *args], env=run_env, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stderr[-3000:]
        results[name] = LayerImportance.load(output)
    one, two = results["one"], results["two"]
    assert two.metadata["num_processes"] == 2
    assert json.dumps(two.per_prompt) == json.dumps(one.per_prompt) and two.values == one.values
    assert two.extra["adaptive"] == one.extra["adaptive"]


# ----------------------------------------------------------------------------------------------------------------
# learnable (TinyFusion): masks learned with a recovery LoRA
# ----------------------------------------------------------------------------------------------------------------


def test_group_plan_splits_the_removal_over_groups():
    from diffusers_layerprune.importance.learnable import candidate_masks, group_plan

    assert group_plan(12, 3) == (12, 3)  # C(12, 3) = 220 masks: one group
    assert group_plan(28, 7) == (4, 1)  # C(28, 7) is too many: 7 groups of 4, one block each
    assert group_plan(12, 4, 6) == (6, 2)
    with pytest.raises(LayerPruneError, match=r"--group-size 5 does not divide the depth \(12 blocks\); use one of 2"):
        group_plan(12, 3, 5)
    with pytest.raises(LayerPruneError, match="removing 3 blocks does not split evenly over 2 groups of 6"):
        group_plan(12, 3, 6)
    masks = candidate_masks(4, 1)
    assert masks.tolist() == [[0, 1, 1, 1], [1, 0, 1, 1], [1, 1, 0, 1], [1, 1, 1, 0]]


def test_learnable_removes_blocks_that_do_nothing_and_leaves_the_model_untouched():
    from diffusers_layerprune.testing import build_tiny_pixart_pipeline

    pipe = build_tiny_pixart_pipeline(6)
    for index in (2, 3):
        block = get_blocks(pipe.transformer)[index]
        with torch.no_grad():
            for linear in (block.attn1.to_out[0], block.attn2.to_out[0], block.ff.net[2]):
                linear.weight.zero_()
                linear.bias.zero_()
    pipe.set_progress_bar_config(disable=True)
    before = {k: v.clone() for k, v in pipe.transformer.state_dict().items()}
    settings = ScanSettings(**{**SETTINGS.__dict__, "batch_size": 4, "num_timesteps": 4})
    scan = ImportanceScan(pipe, PROMPTS[:8], settings, show_progress=False)
    result = compute_importance("learnable", scan, remove=2, steps=100)
    learned = result.extra["learnable"]
    assert result.criterion == "learnable" and learned["group_size"] == 6 and learned["removed_per_group"] == 2
    assert learned["removed_blocks"] == [2, 3] == result.least_important(2)
    assert learned["loss_last"] < learned["loss_first"]
    # The values: 1 + P(keep) for kept blocks, P(keep) for removed ones.
    assert all(result.values[i] < 1.0 for i in (2, 3)) and all(result.values[i] >= 1.0 for i in (0, 1, 4, 5))
    after = pipe.transformer.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    assert not any(block._forward_hooks for block in get_blocks(pipe.transformer))
    once, twice = (compute_importance("learnable", scan, remove=2, steps=3) for _ in range(2))
    assert once.values == twice.values  # seeded


def test_learnable_micro_batches_and_checkpointing_give_the_same_step(monkeypatch):
    """A step split into micro-batches (gradients accumulated) and recomputed in the backward pass is the step of one
    pass, up to float rounding; the plan follows the activation budget."""
    from diffusers_layerprune.importance import learnable
    from diffusers_layerprune.testing import build_tiny_pixart_pipeline

    # The plan at real sizes: PixArt-Sigma-XL at 1024 px (4096 tokens, width 1152, 28 blocks), 32 samples a step.
    assert learnable.pass_plan(32, 4096, 1152, 28) == (5, True)
    assert learnable.pass_plan(32, 16, 64, 12) == (32, False)  # the toy world: one pass, as before
    assert learnable.pass_plan(32, 4096, 1152, 28, micro_batch=64) == (32, True)
    pipe = build_tiny_pixart_pipeline(6)
    pipe.set_progress_bar_config(disable=True)
    settings = ScanSettings(**{**SETTINGS.__dict__, "batch_size": 4, "num_timesteps": 4})
    scan = ImportanceScan(pipe, PROMPTS[:4], settings, show_progress=False)  # one batch: 16 samples a step
    one = compute_importance("learnable", scan, remove=2, steps=4)
    assert (one.extra["learnable"]["micro_batch"], one.extra["learnable"]["gradient_checkpointing"]) == (16, False)
    split = compute_importance("learnable", scan, remove=2, steps=4, micro_batch=3)
    assert split.extra["learnable"]["micro_batch"] == 3 and split.extra["learnable"]["student_passes"] == 4 * 6
    monkeypatch.setattr(learnable, "ACTIVATION_BUDGET", 1)  # nothing fits: one sample per pass, recomputed blocks
    recomputed = compute_importance("learnable", scan, remove=2, steps=4)
    assert recomputed.extra["learnable"]["micro_batch"] == 1
    assert recomputed.extra["learnable"]["gradient_checkpointing"] is True
    for other in (split, recomputed):
        assert other.least_important(2) == one.least_important(2)
        np.testing.assert_allclose(other.values, one.values, rtol=1e-4, atol=1e-5)
        assert other.extra["learnable"]["loss_first"] == pytest.approx(one.extra["learnable"]["loss_first"], rel=1e-4)
    assert not any(block._forward_hooks for block in get_blocks(pipe.transformer))
    assert not pipe.transformer.is_gradient_checkpointing  # the scanned model is left as it was


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--criterion", "learnable", "--group-size", "4"], "--group-size 4 does not divide the depth (6 blocks); "
         "use one of 2, 3, 6"),
        (["--criterion", "learnable", "--group-size", "3", "--remove", "1"], "removing 1 blocks does not split "
         "evenly over 2 groups of 3"),
        (["--criterion", "preference", "--group-size", "3"], "--group-size goes with a learned selection "
         "(--criterion learnable)"),
        (["--criterion", "block_influence", "--learn-micro-batch", "4"], "--learn-micro-batch goes with a learned "
         "selection (--criterion learnable)"),
    ],
)  # fmt: skip
def test_learnable_bad_input_one_line_exit_2_nothing_written(
    tiny_pipeline_dir, assets, tmp_path, capsys, extra, message
):
    output = tmp_path / "out" / "imp.json"
    assert score(tiny_pipeline_dir, assets, output, *extra) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_score_learnable_through_the_cli(tiny_pipeline_dir, assets, tmp_path, capsys):
    output = tmp_path / "learned.json"
    assert (
        score(tiny_pipeline_dir, assets, output, "--criterion", "learnable", "--remove", "2", "--learn-steps", "4") == 0
    )
    result = LayerImportance.load(output)
    assert result.extra["learnable"]["steps"] == 4 and len(result.extra["learnable"]["removed_blocks"]) == 2
    assert "learned selection: remove" in capsys.readouterr().out
