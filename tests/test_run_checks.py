"""`layerprune run` checks every recipe value, prompt set, cache folder and training argument before its first stage:
one line naming the value, exit 2, and nothing created (no run folder, no run.json, no cache), in well under a second
of work per case (each case fails before scanning would start)."""

import json
import os
from pathlib import Path

import pytest
from test_bad_input import snapshot

from diffusers_layerprune.cli import main as cli

# recipe YAML (placeholders filled from the workspace), extra CLI flags, fragment of the one-line message
CASES = {
    # types and unknown keys
    "type_bool": ("use_lora: 3\n", [], "use_lora must be bool, got 3"),
    "type_list": ("extra_train_args: --seed\n", [], "extra_train_args must be list"),
    "unknown_key": ("learning_rat: 0.1\n", [], "unknown field(s) ['learning_rat']"),
    "empty_value": ("model:\n", [], "model cannot be empty"),
    # names
    "criterion_unknown": ("criterion: nope\n", [], "unknown criterion 'nope'"),
    "scorer_unknown": ("scorer: nope\n", [], "unknown scorer 'nope'"),
    "plan_unknown": ("plan: nope\n", [], "unknown plan 'nope'"),
    "dtype_unknown": ("dtype: float64\n", [], "unknown dtype 'float64'"),
    # ranges
    "num_prompts_0": ("num_prompts: 0\n", [], "num_prompts must be at least 1, got 0"),
    "eval_num_prompts_negative": ("eval_num_prompts: -3\n", [], "eval_num_prompts must be at least 1, got -3"),
    "scan_steps_0": ("scan_steps: 0\n", [], "scan_steps must be at least 1"),
    "learning_rate_0": ("learning_rate: 0\n", [], "learning_rate must be a number greater than 0, got 0"),
    "learning_rate_negative": ("learning_rate: -2e-4\n", [], "greater than 0, got -0.0002"),
    "learning_rate_nan": ("learning_rate: .nan\n", [], "greater than 0, got nan"),
    "rank_0": ("use_lora: true\nrank: 0\n", [], "rank must be at least 1, got 0"),
    "seed_negative": ("seed: -1\n", [], "seed must be between 0 and 4294967295"),
    "seed_too_big": ("seed: 4294967296\n", [], "seed must be between 0 and 4294967295"),
    "ratio_all": ("ratio: 1.0\n", [], "--ratio must be between 0 and 1"),
    "batch_0": ("distill_batch_size: 0\n", [], "distill_batch_size must be at least 1"),
    # flags the recipe would ignore
    "rank_without_lora": ("rank: 8\n", [], "rank applies only with use_lora"),
    "private_without_push": ("private: true\n", [], "private applies only with push"),
    # missing files and prompt sets
    "prompts_missing": ("prompts: {ws}/none.txt\n", [], "prompt file {ws}/none.txt does not exist"),
    "train_prompts_missing": ("train_prompts: {ws}/none.txt\n", [], "none.txt does not exist"),
    "eval_prompts_unknown": ("eval_prompts: nonsense\n", [], "unknown prompt set 'nonsense'"),
    "prompt_cells_not_text": ("train_prompts: {ws}/cells.json\n", [], "prompt cells are not text"),
    "score_prompts_all_held_out": (
        "prompts: {ws}/heldout.txt\neval_prompts: {ws}/heldout.txt\n",
        [],
        "is empty once",
    ),
    "accelerate_config_missing": ("accelerate_config: {ws}/none.yaml\n", [], "accelerate config file"),
    "recipe_missing": (None, [], "does not exist"),
    # training arguments passed through
    "extra_train_args_unknown": ("extra_train_args: [--nope]\n", [], "extra_train_args ['--nope']: unrecognized"),
    "extra_train_args_bad_value": ("extra_train_args: [--lambda_out, x]\n", [], "argument --lambda_out"),
    "extra_train_args_sets_a_recipe_field": (
        "extra_train_args: [--learning_rate, '1e-3']\n",
        [],
        "extra_train_args sets --learning_rate, which the recipe sets itself from learning_rate",
    ),
    "extra_train_args_ignored_flag": ("extra_train_args: [--ema_decay, '0.9']\n", [], "--ema_decay applies only"),
    # elastic depths (the toy teacher has 12 blocks)
    "elastic_out_of_range": ("elastic_depths: [13, 9]\n", [], "elastic_depths [13] out of range"),
    "elastic_not_descending": ("", ["--elastic-depths", "7,9"], "must be in descending order"),
    "elastic_duplicated": ("elastic_depths: [9, 9, 7]\n", [], "lists depth 9 more than once"),
    "elastic_one_depth": ("elastic_depths: [9]\n", [], "needs two or more depths"),
    "elastic_not_a_list": ("elastic_depths: 9\n", [], "elastic_depths must be list"),
    "elastic_conflicting_num_layers": (
        "elastic_depths: [9, 7]\nnum_layers: 8\nratio: null\n",
        [],
        "num_layers 8 keeps 8 blocks but elastic_depths starts with 9",
    ),
    "elastic_conflicting_flag": ("elastic_depths: [10, 8]\n", ["--ratio", "0.25"], "ratio 0.25 keeps 9 blocks"),
    "elastic_transformer_only": (
        "elastic_depths: [9, 7]\ntransformer_only: true\n",
        [],
        "does not support transformer_only",
    ),
    "elastic_without_distillation": ("elastic_depths: [9, 7]\ndistill_steps: 0\n", [], "give distill_steps > 0"),
    "elastic_importance_in_extra_args": (
        "elastic_depths: [9, 7]\nextra_train_args: [--importance, x.json]\n",
        [],
        "extra_train_args sets --importance",
    ),
    "elastic_flag_without_depths": (
        "extra_train_args: [--elastic_feature_kd, all]\n",
        [],
        "--elastic_feature_kd applies only with --elastic_depths",
    ),
    # cache folders and outputs
    "cache_dir_is_a_file": ("extra_train_args: [--cache_dir, '{ws}/a_file']\n", [], "is a file; give a folder"),
    "cache_dir_inside_the_model": (
        "model: {ws}/model\nextra_train_args: [--cache_dir, '{ws}/model/cache']\n",
        [],
        "is inside the input",
    ),
    "run_folder_of_another_model": ("model: toy\n", ["--output", "{ws}/other_run"], "holds a run of"),
    "output_inside_the_model": ("model: {ws}/model\n", ["--output", "{ws}/model/run"], "is inside the input"),
}


@pytest.fixture(scope="module")
def ws(tmp_path_factory, tiny_pipeline_dir):
    import shutil

    from diffusers_layerprune.outputs import write_marker

    root = tmp_path_factory.mktemp("runchecks")
    shutil.copytree(tiny_pipeline_dir, root / "model")
    (root / "a_file").write_text("not a folder")
    (root / "heldout.txt").write_text("a red circle\na blue square\n")
    (root / "cells.json").write_text(json.dumps([{"prompt": "a red circle"}, {"prompt": 5}]))
    (root / "other_run").mkdir()
    write_marker(root / "other_run", "run", entries=())
    settings = {"model": str(root / "model"), "criterion": "preference"}
    record = {"stages": {"score": {"settings": settings, "seconds": 1.0}}, "attempts": {"score": settings}}
    (root / "other_run" / "run.json").write_text(json.dumps(record))
    return root


@pytest.mark.parametrize("case", sorted(CASES))
def test_run_refuses_before_the_first_stage(ws, case, capsys, monkeypatch, tmp_path):
    text, flags, fragment = CASES[case]
    monkeypatch.setenv("LAYERPRUNE_CACHE", str(tmp_path / "cache"))
    recipe = tmp_path / "recipe.yaml"
    if text is not None:
        recipe.write_text(text.format(ws=ws))
    out = tmp_path / "out"
    flags = [f.format(ws=ws) for f in flags]
    argv = ["run", "--recipe", str(recipe), *(flags if "--output" in flags else [*flags, "--output", str(out)])]
    before, tmp_before = snapshot(ws), sorted(os.listdir(tmp_path))
    capsys.readouterr()
    assert cli(argv) == 2, argv
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("layerprune run: error:") and "Traceback" not in err, err
    assert fragment.format(ws=ws) in err, err
    assert snapshot(ws) == before and sorted(os.listdir(tmp_path)) == tmp_before  # nothing created or changed
    assert not Path(tmp_path / "cache").exists()


def test_yaml_numbers_without_a_dot_are_numbers(tmp_path):
    """`learning_rate: 2e-4` is text to YAML 1.1; the recipe reads it as the number it is written as."""
    from diffusers_layerprune.recipe import Recipe

    path = tmp_path / "recipe.yaml"
    path.write_text("learning_rate: 2e-4\nratio: 5e-1\n")
    recipe = Recipe.from_yaml(path)
    assert recipe.learning_rate == 2e-4 and recipe.ratio == 0.5


@pytest.mark.parametrize("flag", ["--learning-rate", "--finetune-learning-rate"])
@pytest.mark.parametrize("value", ["0", "-1e-3", "nan"])
def test_route_learning_rates_must_be_positive(flag, value, capsys, tmp_path):
    capsys.readouterr()
    assert cli(["route", f"{flag}={value}", "--output", str(tmp_path / "routed")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"argument {flag}: must be" in err, err
    assert list(tmp_path.iterdir()) == []
