"""layerprune run: the whole recipe on the bundled toy world (tiny settings), stage reuse, and the model card of the
resulting pruned + distilled + evaluated toy folder."""

import json

import pytest
from huggingface_hub import ModelCard

from diffusers_layerprune import LayerPruneError
from diffusers_layerprune.recipe import Recipe, run_recipe

from helpers import ROOT, read_config, train_in_this_process


@pytest.fixture
def subprocess_sees_this_checkout(monkeypatch):
    # the distillation stage runs training/train_distill.py in a new process: make it import this checkout
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.mark.slow
def test_run_chains_stages_and_reuses_them(tmp_path, subprocess_sees_this_checkout, capfd, monkeypatch):
    import diffusers_layerprune.evaluation as evaluation

    measured = []  # every latency measurement: the names of the models it timed
    timer = evaluation.transformer_latency
    monkeypatch.setattr(
        evaluation, "transformer_latency", lambda models, **kw: measured.append(list(models)) or timer(models, **kw)
    )
    recipe = Recipe(
        model="toy",
        num_prompts=2,
        scan_steps=2,  # the toy's 20 sampling steps are not needed to rank blocks here
        ratio=0.25,
        distill_steps=2,
        distill_batch_size=2,
        eval_num_prompts=3,
        output=str(tmp_path / "run"),
        extra_train_args=["--max_train_samples", "4", "--teacher_inference_steps", "2"],
    )
    logs = []
    rows = run_recipe(recipe, log=logs.append)
    run = tmp_path / "run"
    state = json.loads((run / "run.json").read_text())["stages"]
    assert list(state) == ["score", "prune", "distill", "eval_pruned", "eval_distilled"]
    drop = state["prune"]["settings"]["drop"]
    assert len(drop) == 3 and (run / "importance.png").is_file()
    kept = read_config(run / "distilled" / "transformer" / "config.json")["kept_layers"]
    assert kept == [i for i in range(12) if i not in drop]
    assert [r["model"] for r in rows] == ["teacher", "pruned", "pruned + distilled"]
    assert [r["blocks"] for r in rows] == [12, 9, 9]
    assert {"score:toy", "judge:judge_overall", "judge:judge_colour"} <= set(rows[0])
    # the teacher is evaluated once: the second evaluation takes its images and scores from the cache
    first, second = (json.loads((run / f / "report.json").read_text()) for f in ("pruned", "distilled"))
    assert first["settings"]["teacher_cache"]["reused"] is False and second["settings"]["teacher_cache"]["reused"]
    assert first["models"]["teacher"]["scores"] == second["models"]["teacher"]["scores"]
    assert state["eval_distilled"]["teacher_seconds_saved"] > 0
    # one latency measurement covers the teacher and both students; the two 9-block models share one latency
    assert measured == [["teacher", "pruned", "distilled"]]
    assert first["settings"]["latency_models"] == second["settings"]["latency_models"] == ["teacher", "pruned",
                                                                                            "distilled"]  # fmt: skip
    assert first["models"]["student"]["latency"] == second["models"]["student"]["latency"]  # end-to-end s too
    assert first["models"]["student"]["latency"]["shared_with"] == ["pruned", "distilled"]
    assert rows[1]["speedup"] == rows[2]["speedup"] and rows[1]["speedup_iqr"] == rows[2]["speedup_iqr"]
    assert all(state[stage]["seconds"] > 0 for stage in state)  # each stage's wall time
    # quiet output: stage lines, one bar per stage, the summary tables; no INFO lines, loading bars or tracebacks
    printed = capfd.readouterr()
    text = printed.out + printed.err
    for noise in ("INFO", "Loading pipeline components", "Loading weights", "Writing model shards", "Traceback"):
        assert noise not in text, noise
    assert "distill:" in text and "generate:" in text
    assert any(line.startswith("stage") for line in logs) and any("teacher cache" in line for line in logs)

    # the model card of the pruned + distilled + evaluated toy folder
    card_text = (run / "distilled" / "README.md").read_text()
    meta = ModelCard(card_text).data.to_dict()
    assert meta["library_name"] == "diffusers" and meta["pipeline_tag"] == "text-to-image"
    assert {"pruned", "layer-pruning", "knowledge-distillation"} <= set(meta["tags"])
    assert "How the blocks were chosen" in card_text and "(importance.png)" in card_text
    assert "criterion: `preference`" in card_text and "scorer: `toy`" in card_text
    report = json.loads((run / "distilled" / "report.json").read_text())
    student = report["models"]["student"]
    assert f"{100 * student['checks']['judge_overall']['mean']:.1f}%" in card_text
    assert f"{student['scores']['toy']['mean']:.4f} ± {student['scores']['toy']['sem']:.4f}" in card_text
    assert f"Removed source blocks (3): `{drop}`" in card_text

    # same settings: every stage is reused
    logs.clear()
    run_recipe(recipe, log=logs.append)
    assert sum("reusing" in line for line in logs) == 5
    # more distillation steps, and LoRA added to the finished run: distill and the evaluations after it run again,
    # scoring and pruning do not
    logs.clear()
    recipe.distill_steps, recipe.use_lora, recipe.rank = 3, True, 4
    trained = train_in_this_process(monkeypatch)  # the launch was checked above; spare two more processes
    run_recipe(recipe, log=logs.append)
    assert len(trained) == 1 and "--use_lora" in trained[0]
    assert [line.split()[0] for line in logs if "reusing" in line] == ["[1/5]", "[2/5]", "[4/5]"]
    # the reused pruned report takes the new measurement too: both still show one speed-up
    assert len(measured) == 2
    first, second = (json.loads((run / f / "report.json").read_text()) for f in ("pruned", "distilled"))
    assert first["models"]["student"]["latency"] == second["models"]["student"]["latency"]
    assert first["models"]["teacher"]["latency"] == second["models"]["teacher"]["latency"]
    config = json.loads((run / "distilled" / "distill_config.json").read_text())
    assert config["steps"] == 3 and config["lora"] is True and config["rank"] == 4
    assert (run / "distilled" / "lora").is_dir()


def test_recipe_yaml_and_errors(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text("model: tiny-random\nnum_layers: 2\nratio: null\ndistill_steps: 0\n")
    recipe = Recipe.from_yaml(path, seed=3)
    assert (recipe.model, recipe.num_layers, recipe.ratio, recipe.seed) == ("tiny-random", 2, None, 3)
    path.write_text("modle: toy\n")
    with pytest.raises(LayerPruneError, match="unknown field"):
        Recipe.from_yaml(path)
    with pytest.raises(LayerPruneError, match="exactly one of num_layers"):
        run_recipe(Recipe(num_layers=2, ratio=0.5, output=str(tmp_path / "x")))
    with pytest.raises(LayerPruneError, match="push needs repo_id"):
        run_recipe(Recipe(push=True, output=str(tmp_path / "x")))
    # a depth that keeps every block (or none) of the 12-block toy is refused before anything is written
    for depth in (dict(num_layers=12, ratio=None), dict(remove=12, ratio=None), dict(num_layers=0, ratio=None)):
        with pytest.raises(LayerPruneError, match="must be between 1 and 11 for a model of 12 blocks"):
            run_recipe(Recipe(**depth, output=str(tmp_path / "x")))
    assert not (tmp_path / "x").exists()


def test_run_num_layers_is_the_pruned_depth(tmp_path, capsys):
    from diffusers_layerprune.cli import main

    assert main(["run", "--num-layers", "12", "--output", str(tmp_path / "r")]) == 2
    assert "--num-layers (blocks to keep) must be between 1 and 11" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_run_on_two_processes_from_the_command_line(tmp_path, subprocess_sees_this_checkout, capfd):
    """`layerprune run --num-processes 2 --accelerate-config FILE`: the scan and the distillation each run as two
    gloo processes under accelerate launch; the global batch is split over them. The recipe is also
    transformer-only: every stage writes and reads transformer folders (one recipe run checks both, each run
    starts several processes)."""
    from diffusers_layerprune.cli import main

    from helpers import write_accelerate_config

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "model: tiny-random\nnum_prompts: 4\nscan_steps: 2\nnum_layers: 4\nratio: null\ndistill_steps: 2\n"
        "distill_batch_size: 4\neval_num_prompts: 2\ntransformer_only: true\n"
        "extra_train_args: [--max_train_samples, '4', --teacher_inference_steps, '2']\n"
    )
    config = write_accelerate_config(tmp_path)
    out = tmp_path / "run"
    argv = ["run", "--recipe", recipe, "--num-processes", "2", "--accelerate-config", config, "--output", out]
    assert main([str(a) for a in argv]) == 0
    importance = json.loads((out / "importance.json").read_text())
    assert importance["metadata"]["num_processes"] == 2
    record = json.loads((out / "distilled" / "distill_config.json").read_text())
    assert (record["num_processes"], record["train_batch_size"], record["steps"]) == (2, 2, 2)
    settings = json.loads((out / "run.json").read_text())["stages"]["distill"]["settings"]
    assert settings["num_processes"] == 2 and settings["accelerate_config"] == str(config)
    printed = capfd.readouterr()
    assert "on 2 processes" in printed.out and "Traceback" not in printed.out + printed.err
    assert "INFO" not in printed.out + printed.err

    # transformer-only: the pruned and the distilled folders hold only the transformer, and are evaluated
    rows = json.loads((out / "summary.json").read_text())["rows"]
    assert [r["blocks"] for r in rows] == [6, 4, 4]
    for stage in ("pruned", "distilled"):
        folder = out / stage
        assert (folder / "config.json").is_file() and not (folder / "model_index.json").exists()
        assert not (folder / "text_encoder").exists() and (folder / "report.json").is_file()
    card = (out / "distilled" / "README.md").read_text()
    assert "PixArtTransformer2DModel.from_pretrained(" in card and "model-index" in card
    assert record["transformer_only"] is True


def test_learnable_is_scored_for_the_count_the_recipe_removes(tmp_path, monkeypatch):
    """A learnable selection is trained for one removal count: the recipe's, not the criterion's 25% default."""
    import diffusers_layerprune.importance as importance
    from diffusers_layerprune import recipe as recipe_module
    from diffusers_layerprune.launch import LaunchSettings

    assert recipe_module._removal_count(Recipe(model="toy", ratio=0.4)) == 5
    assert recipe_module._removal_count(Recipe(model="toy", ratio=None, num_layers=10)) == 2
    seen = {}

    def fake_score_blocks(model, criterion, output, **kwargs):
        seen.update(criterion=criterion, **kwargs)

    monkeypatch.setattr(importance, "score_blocks", fake_score_blocks)
    recipe = Recipe(model="toy", criterion="learnable", ratio=0.4, output=str(tmp_path / "r"))
    remove = recipe_module._removal_count(recipe)
    recipe_module._score(recipe, tmp_path / "imp.json", "toy:train", "toy:heldout", LaunchSettings(), print, remove)
    assert seen["criterion"] == "learnable" and seen["remove"] == 5
