"""benchmarks/reproduce_paper.py (the package benchmarks/paper/): the claim checks on known numbers, and a tiny end-to-end run on the toy world."""

import contextlib
import json
import sys

import pytest

from helpers import load_benchmark


@pytest.fixture(scope="module")
def rp():
    return load_benchmark("reproduce_paper")


def _markdown(claims: list[dict]) -> str:
    from paper.report import _claims_markdown  # the package reproduce_paper.py puts on the path

    return "\n".join(_claims_markdown({"claims": claims, "num_layers": 12}))


def _cell(overall: float, score: float | None = None) -> dict:
    attrs = {m: overall for m in ("overall", "colour", "position", "shape", "size")}
    return {"accuracy": attrs, "toy_score": overall if score is None else score}


def _per_seed(pruned: dict, distilled: dict | None = None) -> dict:
    """``{stage: {ratio: {criterion: [overall per seed]}}}`` -> the script's per-seed layout."""
    out = {}
    for stage, table in (("pruned", pruned), ("distilled", distilled or {})):
        for ratio, by_criterion in table.items():
            for criterion, values in by_criterion.items():
                cells = {seed: _cell(v) for seed, v in enumerate(values)}
                out.setdefault(stage, {}).setdefault(ratio, {})[criterion] = cells
    return out


def test_aggregate_mean_and_sample_std(rp):
    table = rp.aggregate(_per_seed({"0.25": {"preference": [0.4, 0.5, 0.6]}}))
    row = table["pruned"]["0.25"]["preference"]["overall"]
    assert row["mean"] == pytest.approx(0.5)
    assert row["std"] == pytest.approx(0.1)  # sample std of 0.4, 0.5, 0.6
    assert (row["min"], row["max"], row["n"]) == (0.4, 0.6, 3)


def test_claims_hold_when_preference_wins_everywhere(rp):
    pruned = {
        r: {
            "preference": [0.5, 0.5, 0.4],
            "block_influence": [0.3, 0.2, 0.3],
            "latent": [0.4, 0.3, 0.3],
            "random": [0.1, 0.2, 0.2],
        }  # noqa: E501
        for r in ("0.15", "0.25", "0.40")
    }
    distilled = {r: {"preference": [0.55, 0.55, 0.5], "random": [0.5, 0.45, 0.5]} for r in pruned}
    claims = {c["id"]: c for c in rp.check_claims(_per_seed(pruned, distilled), {"overall": 0.6, "toy_score": 0.6})}
    similarity = claims["preference_beats_similarity"]
    assert similarity["verdict"] == "holds"
    assert (similarity["won"], similarity["total"]) == (6, 6)  # 3 ratios x 2 similarity criteria present
    assert (similarity["seed_won"], similarity["seed_total"]) == (18, 18)
    assert claims["preference_beats_random"]["verdict"] == "holds"
    restore = claims["distillation_restores"]
    assert (restore["won"], restore["total"]) == (6, 6)
    # preference 0.4667 -> 0.5333 of a 0.6 teacher: half the gap; random 0.1667 -> 0.4833: 73% of the gap
    assert restore["mean_gap_closed"] == pytest.approx((0.5 + (0.31666 / 0.43333)) / 2, abs=1e-3)
    assert restore["verdict"] == "holds"
    assert claims["preference_after_distillation"]["verdict"] == "holds"


def test_claims_report_where_they_fail(rp):
    pruned = {
        "0.15": {"preference": [0.5, 0.5, 0.5], "latent": [0.4, 0.4, 0.4]},
        "0.25": {"preference": [0.4, 0.4, 0.4], "latent": [0.3, 0.3, 0.3]},
        "0.40": {"preference": [0.2, 0.3, 0.2], "latent": [0.3, 0.35, 0.3]},
    }
    distilled = {"0.40": {"preference": [0.25, 0.3, 0.25]}}  # better, but far from the 0.6 teacher
    claims = {c["id"]: c for c in rp.check_claims(_per_seed(pruned, distilled), {"overall": 0.6, "toy_score": 0.6})}
    similarity = claims["preference_beats_similarity"]
    assert similarity["verdict"] == "partly"
    assert [(c["ratio"], c["other"]) for c in similarity["comparisons"] if not c["wins"]] == [("0.40", "latent")]
    assert (similarity["seed_won"], similarity["seed_total"]) == (6, 9)
    assert claims["preference_beats_random"]["verdict"] == "not measured"
    restore = claims["distillation_restores"]
    assert (restore["won"], restore["total"]) == (1, 1)
    assert restore["verdict"] == "partly"  # improves every cell but closes < half the gap
    markdown = _markdown(list(claims.values()))
    assert "Where preference loses: latent at 40% (5 of 12) (31.7% vs 23.3%)." in markdown
    assert "**Partly holds**" in markdown


def _train_in_this_process(monkeypatch) -> list[list[str]]:
    """paper/distil.py runs ``python training/train_distill.py ...`` in a new process; run that script's ``main`` here
    instead (a fresh process costs ~13 CPU-seconds of imports; the command line it builds is still what runs)."""
    import subprocess
    import types

    import paper.distil
    import torch

    from helpers import run_train_distill

    calls = []

    def run(cmd, stdout=None, stderr=None, env=None):
        assert cmd[:2] == [sys.executable, str(paper.distil.TRAIN_SCRIPT)], cmd
        calls.append(cmd[2:])
        # a new process starts with autograd on; the benchmark calls distil() inside torch.no_grad()
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stdout), torch.enable_grad():
            run_train_distill(cmd[2:])
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(paper.distil, "subprocess", types.SimpleNamespace(run=run, STDOUT=subprocess.STDOUT))
    return calls


@pytest.mark.slow
def test_tiny_run_writes_doc_json_plot_and_reuses_cells(rp, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LAYERPRUNE_CACHE", str(tmp_path / "cache"))  # the training's teacher latents
    trained = _train_in_this_process(monkeypatch)
    out = tmp_path / "out"
    args = [
        "--seeds", "0,1",
        "--ratios", "0.2",
        "--criteria", "preference,block_influence,weight_norm,random,learnable",
        "--distill-criteria", "random",
        "--score-prompts", "2",
        "--eval-prompts", "4",
        "--num-inference-steps", "2",
        "--distill-steps", "1",
        "--distill-batch-size", "2",
        "--distill-samples", "2",
        "--learn-steps", "2",
        "--learn-batch-size", "2",
        "--budget-steps", "2",
        "--budget-ratios", "0.2",
        "--ablations", "no_feature",
        "--output", str(out),
        "--results", str(tmp_path / "results.json"),
        "--doc", str(tmp_path / "docs" / "results.md"),
    ]  # fmt: skip
    rp.main(args)
    first = capsys.readouterr().out
    lines = (out / "cells.jsonl").read_text().splitlines()
    stages = [json.loads(line)["stage"] for line in lines]
    # per seed: 4 importance timings + 1 learnable training, the teacher, one cell per distinct pruned set (<= 5),
    # 1 distilled cell, 1 longer distillation of the best distilled criterion (the budget curve) and 1 without the
    # feature loss (the ablation)
    assert stages.count("score") == 10 and stages.count("teacher") == 2 and stages.count("distilled") == 6
    assert len(trained) == 6 and all("--resume_from_checkpoint" not in args for args in trained)
    assert sum(args[-2:] == ["--lambda_feat", "0"] for args in trained) == 2  # the ablation's command line
    assert 2 <= stages.count("pruned") <= 10
    assert f"{len(lines)} cells computed" in first
    result = json.loads((tmp_path / "results.json").read_text())
    assert result["seeds"] == [0, 1] and result["num_layers"] == 12 and result["eval_prompts"] == 4
    assert set(result["table"]["pruned"]["0.20"]) == {
        "preference",
        "block_influence",
        "weight_norm",
        "random",
        "learnable",
    }
    assert set(result["table"]["distilled"]["0.20"]) == {"random"}
    assert result["table"]["pruned"]["0.20"]["random"]["overall"]["n"] == 2
    assert all(len(result["plans"][c]["0.20"]["0"]) == 2 for c in ("preference", "random", "learnable"))  # 20% of 12
    # the budget curve: the only distilled criterion, after 1 and 2 steps, both seeds; what each selection cost
    budget = result["budget"]["0.20"]
    assert budget["criterion"] == "random" and sorted(budget["steps"]) == ["1", "2"]
    assert budget["steps"]["2"]["seeds"] == [0, 1] and budget["steps"]["2"]["overall"]["n"] == 2
    # the longer runs are also judged on training captions, against the teacher there (is it the data that limits?)
    assert budget["steps"]["2"]["train_overall"]["n"] == 2 and "train_overall" not in budget["steps"]["1"]
    assert result["teacher_train"]["n"] == 2 and stages.count("teacher_train") == 2
    ablation = budget["ablations"]["no_feature"]
    assert ablation["seeds"] == [0, 1] and ablation["label"] == "without the feature loss"
    keys = [json.loads(line)["key"] for line in lines]
    assert sum("-no_feature]|" in k for k in keys) == 2  # its own slot: never mixed with the full-loss cells
    assert (
        result["selection_cost"]["learnable-k2"]["remove"] == 2
        and result["selection_cost"]["preference"]["seconds"] > 0
    )
    assert {c["id"] for c in result["claims"]} >= {"preference_beats_similarity", "distillation_restores"}
    assert not list(out.glob("seed-*/models/*/*"))  # distilled models are removed once judged
    doc = (tmp_path / "docs" / "results.md").read_text()
    assert "--distill-criteria random" in doc and "## Before distillation" in doc and "| random |" in doc
    assert (tmp_path / "docs" / "results.png").stat().st_size > 10_000
    assert "## Distillation budget" in doc and "| 20% (2 of 12) | random |" in doc and "learnable (remove 2)" in doc
    assert "| without the feature loss |" in doc
    assert (tmp_path / "docs" / "results_budget.png").stat().st_size > 10_000

    rp.main(args)  # everything is reused
    assert "0 cells computed" in capsys.readouterr().out
    assert (out / "cells.jsonl").read_text().splitlines() == lines

    (tmp_path / "docs" / "results.md").unlink()
    rp.main([*args, "--report-only"])
    assert (tmp_path / "docs" / "results.md").read_text() == doc
    # the section benchmarks/capacity_toy.py writes into the page survives this script's rewrite of it
    start = "<!-- capacity_toy:start -->\n"
    (tmp_path / "docs" / "results.md").write_text(doc.replace(start, start + "kept capacity table\n"))
    rp.main([*args, "--report-only"])
    assert "kept capacity table" in (tmp_path / "docs" / "results.md").read_text()

    # another distillation budget in the same folder uses its own slot: the 2-step cells the budget curve made are
    # what a --distill-steps 2 run reads, so nothing is computed again
    rp.main([*args, "--distill-steps", "2", "--budget-steps", "", "--ablations", ""])  # argparse keeps the last
    assert "0 cells computed" in capsys.readouterr().out
    result = json.loads((tmp_path / "results.json").read_text())
    assert result["settings"]["distill_steps"] == 2 and "budget" not in result
    assert (
        result["table"]["distilled"]["0.20"]["random"]["overall"]["values"] == budget["steps"]["2"]["overall"]["values"]
    )
    assert "--distill-steps 2" in (tmp_path / "docs" / "results.md").read_text()

    # cells judged with other settings are never mixed in: a clear error, nothing written
    before = (out / "cells.jsonl").read_text()
    with pytest.raises(SystemExit) as exit_info:
        rp.main([*args, "--eval-prompts", "5"])
    assert exit_info.value.code == 2
    assert "eval_prompts 4 -> 5" in capsys.readouterr().err
    assert (out / "cells.jsonl").read_text() == before


def test_bad_arguments_exit_2_and_write_nothing(rp, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        rp.main(["--criteria", "preference,nope", "--output", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert "unknown criterion 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        rp.main(["--distill-criteria", "latent", "--criteria", "preference", "--output", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert not (tmp_path / "out").exists()
    for bad, message in (
        (["--budget-ratios", "0.3"], "--budget-ratios 0.3 are not among --ratios"),
        (["--budget-steps", "many"], "--budget-steps takes step counts"),
        (["--budget-steps", "0"], "--budget-steps must be positive"),
        (["--learn-steps", "0"], "--learn-steps must be at least 1"),
        (
            ["--ablations", "no_task"],
            "unknown --ablations no_task; choose among no_feature, output_only, lr_x4, lr_quarter",
        ),
    ):
        with pytest.raises(SystemExit) as exit_info:
            rp.main([*bad, "--output", str(tmp_path / "out")])
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_ties_do_not_count_as_losses(rp):
    # Both criteria choose the same blocks at 15% (identical cells), preference is better at 25%.
    pruned = {
        "0.15": {"preference": [0.5, 0.4], "latent": [0.5, 0.4]},
        "0.25": {"preference": [0.4, 0.4], "latent": [0.3, 0.4]},
    }  # noqa: E501
    claims = {c["id"]: c for c in rp.check_claims(_per_seed(pruned), {"overall": 0.6, "toy_score": 0.6})}
    similarity = claims["preference_beats_similarity"]
    assert (similarity["won"], similarity["tied"], similarity["lost"]) == (1, 1, 0)
    assert (similarity["seed_won"], similarity["seed_tied"], similarity["seed_total"]) == (1, 3, 4)
    assert similarity["verdict"] == "holds"
    markdown = _markdown([similarity])
    assert "Ties (equal mean accuracy): latent at 15% (2 of 12) (45.0% vs 45.0%)." in markdown
    # with the blocks recorded (as in real cells), a tie from identical choices says so
    per_seed = _per_seed(pruned)
    for criterion in ("preference", "latent"):
        for cell in per_seed["pruned"]["0.15"][criterion].values():
            cell["dropped"] = [6, 7]
    similarity = rp.check_claims(per_seed, {"overall": 0.6, "toy_score": 0.6})[0]
    markdown = _markdown([similarity])
    assert "latent at 15% (2 of 12) (45.0% vs 45.0%, the same blocks in every seed)." in markdown
    assert "loses" not in markdown


def test_budget_section_compares_fewer_seeds_on_the_same_seeds(rp):
    from paper.report import _budget_section

    def row(seeds, values, train=None):
        out = {"seeds": seeds, "overall": rp.mean_std(values)}
        if train is not None:
            out["train_overall"], out["train_seeds"] = rp.mean_std(train), seeds
        return out

    result = {
        "num_layers": 12,
        "settings": {"distill_steps": 400},
        "seeds": [0, 1, 2],
        "teacher": {"overall": {"mean": 0.5, "values": [0.5, 0.48, 0.52]}},
        "teacher_train": {**rp.mean_std([0.6]), "seeds": [0]},
        "budget": {
            "0.25": {"criterion": "learnable", "steps": {"400": row([0, 1, 2], [0.40, 0.44, 0.48]), "1600": row([0], [0.49], [0.58])}},
            "0.40": {"criterion": "learnable", "steps": {"400": row([0, 1, 2], [0.30, 0.31, 0.32])}},
        },
    }  # fmt: skip
    text = _budget_section(result)
    # 1600 steps on seed 0 only: next to it, 400 steps on seed 0 (40.0), not the 3-seed mean (44.0)
    assert "49.0 ± 0.0 (n=1; 98%); 400 steps on the same seed: 40.0" in text
    assert "the goal (97% of the teacher) is reached after 1600 steps (98%, n=1)" in text  # vs seed 0's teacher
    assert "the goal (90% of the teacher) is not reached by 400 steps; the best budget keeps 62% (400 steps)" in text
    assert "train 58.0 (97%), held-out 49.0 (98%), n=1" in text


def test_stack_plans_prune_each_stack_or_both_by_importance():
    from diffusers_layerprune.importance import LayerImportance

    load_benchmark("reproduce_paper")  # puts the paper package on the path
    from paper.stacks import stack_plans, wilson

    stacks = {"double": [0, 1, 2, 3], "single": list(range(4, 12))}
    # double 2 and single 1, 5 are the least important blocks overall
    values = [5, 4, 0.1, 6, 3, 0.2, 7, 8, 9, 0.3, 2, 1]
    plans = stack_plans(LayerImportance(values, "preference"), 3, stacks)
    assert plans == {"mixed": [2, 5, 9], "double only": [0, 1, 2], "single only": [5, 9, 11]}
    # a stack that would lose every block gets no plan of its own
    assert set(stack_plans(LayerImportance(values, "preference"), 5, stacks)) == {"mixed", "single only"}
    low, high = wilson(54, 100)
    assert low < 0.54 < high and high - low == pytest.approx(0.19, abs=0.01)


@pytest.mark.slow
def test_tiny_toy_flux_run_writes_the_stack_page(rp, tmp_path, monkeypatch):
    monkeypatch.setenv("LAYERPRUNE_CACHE", str(tmp_path / "cache"))
    trained = _train_in_this_process(monkeypatch)
    args = [
        "--model", "toy-flux", "--seeds", "0", "--ratios", "0.25", "--criteria", "block_influence,judge",
        "--distill-plans", "block_influence:single only", "--skip-table", "--score-prompts", "2",
        "--eval-prompts", "2", "--num-inference-steps", "2", "--distill-steps", "1", "--distill-batch-size", "2",
        "--distill-samples", "2", "--output", str(tmp_path / "out"), "--results", str(tmp_path / "r.json"),
        "--doc", str(tmp_path / "results_flux.md"),
    ]  # fmt: skip
    rp.main(args)
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["stacks"] == {"double": [0, 1, 2, 3], "single": list(range(4, 12))}
    plans = result["table"]["0.25"]["block_influence"]
    assert set(plans) == {"mixed", "double only", "single only"}
    # the judge's oracle ranking is the skip table: the teacher's accuracy minus each block's skipped accuracy
    teacher = result["teacher"]["overall"]["mean"]
    skip = [result["skip_one_block"][str(b)]["overall"]["mean"] for b in range(12)]
    assert result["importance"]["judge"]["0"] == pytest.approx([teacher - a for a in skip])
    assert set(result["table"]["0.25"]["judge"]) == {"mixed", "double only", "single only"}
    assert all(b >= 4 for b in plans["single only"]["dropped"]["0"])
    assert plans["single only"]["distilled"] and not plans["double only"]["distilled"]
    # the KD weighting row: the same student distilled again with logit-normal timesteps (the default
    # --kd-weightings), everything else equal
    uniform, weighted = sorted(trained, key=lambda cmd: "--weighting_scheme" in cmd)
    assert len(trained) == 2 and "--weighting_scheme" not in uniform
    assert weighted[weighted.index("--weighting_scheme") :][:6] == [
        "--weighting_scheme", "logit_normal", "--logit_mean", "0", "--logit_std", "1"
    ]  # fmt: skip
    # everything else equal (the output folder is the variant's own)
    same = [
        a
        for a in weighted[: weighted.index("--weighting_scheme")] + weighted[weighted.index("--weighting_scheme") + 6 :]
    ]
    assert [a for a in same if "logit_normal" not in a] == [a for a in uniform if "steps1-" not in a]
    assert set(plans["single only"]["distilled_by_weighting"]) == {"logit_normal"}
    page = (tmp_path / "results_flux.md").read_text()
    assert "double only" in page and "${" not in page and (tmp_path / "results_flux.png").is_file()
    assert "| logit-normal timesteps (mean 0, std 1) |" in page
    assert "| the recipe (uniform timesteps, lr as above, teacher samples) |" in page


def test_kd_variants_change_one_thing_each(rp, tmp_path, monkeypatch):
    # lr5x scales the learning rate only; renders points train_distill at an image folder of true renders whose
    # captions are the image's (full or partial: never a wrong attribute), written once
    from paper.stacks import KD_WEIGHTINGS, StackExperiment
    from PIL import Image

    from diffusers_layerprune.toy import world

    assert KD_WEIGHTINGS["lr5x"] == {"args": (), "lr_scale": 5.0, "label": "learning rate x5"}
    exp = StackExperiment.__new__(StackExperiment)
    exp.output = tmp_path
    assert "{renders}" in KD_WEIGHTINGS["renders"]["args"][1]
    monkeypatch.setitem(KD_WEIGHTINGS["renders"], "renders", 12)
    spec = exp.variant("renders")
    folder = tmp_path / "renders-partial-12"
    assert spec["args"] == ("--train_data_dir", str(folder))
    rows = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]
    assert len(rows) == 12 and not folder.with_name(folder.name + ".partial").exists()
    by_caption = {a.caption(): a for a in world.split_attributes("train")}
    partial = 0
    for row in rows:
        words = row["text"].split()
        assert Image.open(folder / row["file_name"]).size == (world.IMAGE_SIZE, world.IMAGE_SIZE)
        # a partial caption is a full training caption with words left out, the shape always kept
        assert any(w in world.SHAPES for w in words) and set(words) <= set(world.vocabulary())
        partial += row["text"] not in by_caption
    assert 0 < partial < 12  # about half
    (folder / "00000.png").unlink()  # a finished folder is reused, not written again
    assert exp.variant("renders")["args"] == spec["args"] and not (folder / "00000.png").exists()


def test_judge_ranking_needs_the_skip_table(rp, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        rp.main(["--model", "toy-flux", "--criteria", "judge", "--no-skip-table", "--output", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert "--criteria judge ranks the blocks by the skip table" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_unknown_kd_weighting_is_refused_before_anything_is_written(rp, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        rp.main(["--model", "toy-flux", "--kd-weightings", "sigmoid", "--output", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == (
        "error: unknown --kd-weightings sigmoid; choose among logit_normal, lr5x, renders"
    )
    assert not (tmp_path / "out").exists()
