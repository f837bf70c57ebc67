"""`layerprune run --elastic-depths`: one elastic distillation trains every depth (the score stage's importance file
orders the nested depths), every smaller depth is extracted into OUTPUT/depth-N, every depth is evaluated and carded,
and a second run reuses every stage. On the tiny random pipeline (6 blocks), the training in this process."""

from __future__ import annotations

import json

import pytest

from diffusers_layerprune.cli import main as cli

from helpers import read_config, run_stock, train_in_this_process


@pytest.mark.slow
def test_run_elastic_depths_trains_once_extracts_and_evaluates_every_depth(tmp_path, monkeypatch, capsys):
    trained = train_in_this_process(monkeypatch)
    out = tmp_path / "run"
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(  # no num_layers / ratio: the pruned depth is the largest elastic depth
        "model: tiny-random\nnum_prompts: 4\nscan_steps: 2\ndistill_steps: 2\ndistill_batch_size: 2\n"
        "eval_num_prompts: 2\nextra_train_args: [--max_train_samples, '4', --teacher_inference_steps, '2']\n"
    )
    argv = ["run", "--recipe", str(recipe), "--elastic-depths", "5,3", "--output", str(out)]
    assert cli(argv) == 0
    # one distillation, with the run's importance file ordering the depths
    assert len(trained) == 1
    args = trained[0]
    assert args[args.index("--elastic_depths") + 1] == "5,3"
    assert args[args.index("--importance") + 1] == str((out / "importance.json").resolve())
    state = json.loads((out / "run.json").read_text())["stages"]
    assert list(state) == ["score", "prune", "distill", "extract", "eval_pruned", "eval_distilled"]
    record = json.loads((out / "distilled" / "elastic.json").read_text())
    assert record["depths"] == [5, 3]
    # the largest depth is the distilled folder itself; depth 3 is an ordinary pruned folder holding record's blocks
    assert read_config(out / "distilled" / "transformer" / "config.json")["kept_layers"] == record["kept_layers"]["5"]
    assert read_config(out / "depth-3" / "transformer" / "config.json")["kept_layers"] == record["kept_layers"]["3"]
    assert not (out / "depth-5").exists()
    # every depth evaluated in one go, each report beside its model, the summary table one row per depth
    summary = json.loads((out / "summary.json").read_text())
    assert [r["model"] for r in summary["rows"]] == ["teacher", "pruned", "elastic, 5 blocks", "elastic, 3 blocks"]
    assert [r["blocks"] for r in summary["rows"]] == [6, 5, 5, 3]
    assert summary["final_model"] == str(out / "distilled")
    assert summary["depth_models"] == {"5": str(out / "distilled"), "3": str(out / "depth-3")}
    assert (out / "distilled" / "report-depths.png").is_file()
    for folder, depth in ((out / "distilled", 5), (out / "depth-3", 3)):
        report = json.loads((folder / "report.json").read_text())
        assert report["models"]["student"]["num_layers"] == depth
        assert (folder / "README.md").is_file()
    assert "extracted at depth 3 from an elastic run" in (out / "depth-3" / "README.md").read_text()
    # the extracted depth loads with stock diffusers alone (a fresh process without this package)
    script = (
        "import sys; from diffusers import DiffusionPipeline; "
        f"p = DiffusionPipeline.from_pretrained({str(out / 'depth-3')!r}); "
        "assert 'diffusers_layerprune' not in sys.modules; print(len(p.transformer.transformer_blocks))"
    )
    done = run_stock(script, cwd=tmp_path)
    assert done.returncode == 0 and done.stdout.split()[-1] == "3", done.stderr[-1000:]

    # the same command again: every stage reused, nothing trained
    capsys.readouterr()
    assert cli(argv) == 0
    printed = capsys.readouterr().out
    assert len(trained) == 1 and printed.count("reusing") == 6, printed

    # other depths: trained again, the new smaller depth extracted, the old one's folder removed
    assert cli([*argv[:3], "--elastic-depths", "5,4", *argv[5:]]) == 0
    assert len(trained) == 2 and (out / "depth-4").is_dir() and not (out / "depth-3").exists()
    assert json.loads((out / "distilled" / "elastic.json").read_text())["depths"] == [5, 4]
