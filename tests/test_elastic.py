"""Elastic depth (elastic.py): train_distill --elastic_depths trains nested depths in one run; `layerprune extract`
saves any trained depth as an ordinary pruned folder that stock diffusers loads and that computes what the elastic
student computes at that depth. PixArt and Flux (global numbering over both stacks) on tiny models."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from diffusers_layerprune.cli import main as cli

from helpers import distill_args, run_stock, run_train_distill, train_refused

PROMPTS = "a red circle\na blue square\na green triangle\na white cross\n"
# Least important first: 1, 3, 5, 2, 0, 4
VALUES = [5.0, 1.0, 4.0, 2.0, 6.0, 3.0]


def snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in sorted(root.rglob("*"))}


def make_workspace(root: Path, family: str, values, student_depth: int) -> Path:
    """teacher/ (tiny pipeline of ``family``), importance.json (``values``), student/ (pruned to ``student_depth``
    with that file), prompts.txt."""
    from diffusers_layerprune.importance import LayerImportance
    from diffusers_layerprune.testing import TINY_BUILDERS

    TINY_BUILDERS[family]().save_pretrained(root / "teacher")
    (root / "prompts.txt").write_text(PROMPTS)
    LayerImportance(values=values, criterion="preference", metadata={"model": "teacher", "family": family}).save(
        root / "importance.json", plot=False
    )
    argv = ["prune", "--model", str(root / "teacher"), "--importance", str(root / "importance.json"),
            "--num-layers", str(student_depth), "--output", str(root / "student")]  # fmt: skip
    assert cli(argv) == 0
    return root


def elastic_args(work: Path, out: Path, depths: str, *extra) -> list:
    return distill_args(work, out, steps=2, checkpointing_steps=2) + [
        "--elastic_depths", depths, "--importance", work / "importance.json", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def pixart(tmp_path_factory):
    """A 6-block PixArt teacher, a 5-block student and a 2-step elastic run over depths 5, 4, 3."""
    work = make_workspace(tmp_path_factory.mktemp("elastic_pixart"), "pixart", VALUES, 5)
    run_train_distill(elastic_args(work, work / "out", "5,4,3", "--elastic_inplace_distill"))
    return work


def test_nested_depths_drop_blocks_in_importance_order_and_keep_one_block_per_stack():
    from diffusers_layerprune.elastic import nested_kept_layers

    ranking = [1, 3, 5, 2, 0, 4]  # least important first
    assert nested_kept_layers(ranking, [0, 2, 3, 4, 5], [5, 4, 3, 2]) == {
        5: [0, 2, 3, 4, 5],
        4: [0, 2, 4, 5],
        3: [0, 2, 4],
        2: [0, 4],
    }
    # Flux, 2 double + 4 single blocks: both double blocks are least important, yet one of them stays
    assert nested_kept_layers([0, 1, 2, 3, 4, 5], [0, 1, 2, 3, 4, 5], [6, 4, 2], [2, 4]) == {
        6: [0, 1, 2, 3, 4, 5],
        4: [1, 3, 4, 5],
        2: [1, 5],
    }


def test_elastic_run_writes_a_stock_loadable_largest_depth_and_the_nested_record(pixart):
    import diffusers

    out = pixart / "out"
    record = json.loads((out / "elastic.json").read_text())
    assert record["format"] == "diffusers-layerprune/elastic-depths"
    assert record["depths"] == [5, 4, 3]
    assert record["kept_layers"] == {"5": [0, 2, 3, 4, 5], "4": [0, 2, 4, 5], "3": [0, 2, 4]}
    assert record["inplace_distill"] is True and record["importance"]["criterion"] == "preference"
    assert not list(out.glob("*.safetensors"))  # the record holds no weights; the model is the largest depth
    stock, info = diffusers.PixArtTransformer2DModel.from_pretrained(
        out, subfolder="transformer", output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"] and stock.config.num_layers == 5
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2]
    assert all(k in log[0] for k in ("loss_largest", "loss_middle", "loss_smallest", "inplace"))
    settings = json.loads((out / "checkpoint-2" / "layerprune_checkpoint.json").read_text())["settings"]
    assert settings["elastic_depths"] == [5, 4, 3] and settings["elastic_inplace_distill"] is True
    assert json.loads((out / "distill_config.json").read_text())["elastic"]["depths"] == [5, 4, 3]


def test_each_step_trains_largest_smallest_and_a_seeded_middle_depth():
    from diffusers_layerprune.elastic import ElasticPlan

    plan = ElasticPlan((8, 7, 6, 5), {}, ())
    steps = [plan.depths_for_step(0, step) for step in range(40)]
    assert all(s[0] == 8 and s[-1] == 5 and s[1] in (7, 6) for s in steps)
    assert {s[1] for s in steps} == {7, 6}
    assert steps == [plan.depths_for_step(0, step) for step in range(40)]  # a resumed run draws the same


def test_middle_weights_set_how_often_a_step_draws_each_middle_depth():
    from diffusers_layerprune.elastic import ElasticPlan

    weighted = ElasticPlan((8, 7, 6, 5), {}, (), (3.0, 1.0))
    steps = [weighted.depths_for_step(0, step) for step in range(2000)]
    assert all(s[0] == 8 and s[-1] == 5 for s in steps)
    assert 0.72 < sum(s[1] == 7 for s in steps) / len(steps) < 0.78  # 3:1
    assert steps[:50] == [weighted.depths_for_step(0, step) for step in range(50)]  # a resumed run draws the same
    only = ElasticPlan((8, 7, 6, 5), {}, (), (0.0, 1.0))
    assert {only.depths_for_step(1, step)[1] for step in range(200)} == {6}


def test_extracted_depth_loads_in_a_fresh_stock_process_with_the_elastic_students_images(pixart, tmp_path):
    """What a user ships: depth 3 extracted, loaded by stock diffusers without this package, gives the images of
    the elastic student run at depth 3 (its other blocks skipped)."""
    import numpy as np

    from diffusers_layerprune.blocks import skip_blocks
    from diffusers_layerprune.hub import render_model_card
    from diffusers_layerprune.modeling import load_pipeline

    assert cli(["extract", str(pixart / "out"), "--num-layers", "3", "--output", str(tmp_path / "d3")]) == 0
    elastic = load_pipeline(str(pixart / "out"))
    elastic.set_progress_bar_config(disable=True)
    call = dict(num_inference_steps=2, height=16, width=16, max_sequence_length=16, output_type="np",
                use_resolution_binning=False, clean_caption=False)  # fmt: skip
    with skip_blocks(elastic.transformer, [2, 4]):  # student blocks of source blocks 3 and 5
        expected = elastic("a red circle", generator=torch.Generator().manual_seed(0), **call).images
    script = (
        "import sys, numpy, torch, diffusers\n"
        "assert 'diffusers_layerprune' not in sys.modules\n"
        f"pipe = diffusers.DiffusionPipeline.from_pretrained({str(tmp_path / 'd3')!r})\n"
        "pipe.set_progress_bar_config(disable=True)\n"
        f"image = pipe('a red circle', generator=torch.Generator().manual_seed(0), **{call!r}).images\n"
        f"numpy.save({str(tmp_path / 'stock.npy')!r}, image)\n"
        "assert 'diffusers_layerprune' not in sys.modules\n"
        "print(type(pipe.transformer).__name__, pipe.transformer.config.num_layers)\n"
    )
    done = run_stock(script, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["PixArtTransformer2DModel", "3"]
    np.testing.assert_array_equal(np.load(tmp_path / "stock.npy"), expected)
    config = json.loads((tmp_path / "d3" / "transformer" / "config.json").read_text())
    assert config["_kept_layers"] == [0, 2, 4] and config["_source_num_layers"] == 6
    card = render_model_card(tmp_path / "d3", "user/d3")
    assert "extracted at depth 3 from an elastic run that distilled the nested depths 5, 4, 3" in card


@pytest.mark.parametrize("balance", ["normalized", "normalized_output"])
def test_normalized_balance_divides_each_depths_gradient_by_its_detached_loss(balance):
    """``loss_balance="normalized"`` back-propagates sum_d L_d / sg(L_d), ``"normalized_output"`` sum_d L_d /
    sg(L_d - feature KD): on the blocks only the largest depth runs, the gradient is the summed run's divided by the
    largest depth's total (or its total less its feature KD, which only the largest depth has); the totals logged are
    the same."""
    from diffusers_layerprune.distill import KDWeights, block_pairs
    from diffusers_layerprune.elastic import ElasticPlan, elastic_step_losses
    from diffusers_layerprune.families import encode_text, family_of
    from diffusers_layerprune.modeling import prune_pipeline
    from diffusers_layerprune.testing import TINY_BUILDERS

    pipe = TINY_BUILDERS["pixart"]()  # 6 blocks; the student keeps 5, depth 3 skips student blocks 1 and 3
    teacher = pipe.transformer.eval().requires_grad_(False)
    text = encode_text(pipe, PROMPTS.split("\n")[:2], max_sequence_length=16)
    g = torch.Generator().manual_seed(0)
    noisy, target = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    timesteps = torch.tensor([10, 500])
    plan = ElasticPlan((5, 3), {5: (0, 2, 3, 4, 5), 3: (0, 3, 5)}, (0, 2, 3, 4, 5))

    def cond(model, x):
        return family_of(model).forward(model, x, timesteps, text)

    grads, totals = {}, {}
    for mode in ("sum", balance):
        torch.manual_seed(0)
        student = prune_pipeline(pipe, kept_layers=[0, 2, 3, 4, 5]).transformer.train().requires_grad_(True)
        parts = elastic_step_losses(student, teacher, noisy, cond, target, block_pairs(student, teacher),
                                    KDWeights(), plan, seed=0, step=0, loss_balance=mode)  # fmt: skip
        parts["loss"].backward()
        totals[mode] = parts
        only_largest = [p for b in (1, 3) for p in student.transformer_blocks[b].parameters()]
        grads[mode] = torch.cat([p.grad.flatten() for p in only_largest])
    summed, normalized = totals["sum"], totals[balance]
    scale = summed["loss_largest"] - (summed["feature"] if balance == "normalized_output" else 0)
    assert summed["feature"] > 0.01 * summed["loss_largest"]  # the two balances differ here
    if balance == "normalized":
        assert normalized["loss"].item() == pytest.approx(2.0)  # each depth's total over itself
    for key in ("loss_largest", "loss_smallest"):
        assert normalized[key].item() == pytest.approx(summed[key].item(), rel=1e-6)
    assert normalized["loss_sum"].item() == pytest.approx(summed["loss"].item(), rel=1e-6)
    assert grads["sum"].abs().max() > 0
    torch.testing.assert_close(grads[balance], grads["sum"] / scale, rtol=1e-4, atol=1e-8)


def test_normalized_balance_is_recorded_and_a_resume_with_another_balance_is_refused(pixart, tmp_path, capsys):
    out = tmp_path / "norm"
    balance = ["--elastic_loss_balance", "normalized", "--elastic_middle_weights", "2"]  # one middle depth: 4
    run_train_distill(elastic_args(pixart, out, "5,4,3", *balance))
    record = json.loads((out / "elastic.json").read_text())
    assert record["loss_balance"] == "normalized" and record["middle_weights"] == [2.0]
    elastic = json.loads((out / "distill_config.json").read_text())["elastic"]
    assert elastic["loss_balance"] == "normalized" and elastic["middle_weights"] == [2.0]
    settings = json.loads((out / "checkpoint-2" / "layerprune_checkpoint.json").read_text())["settings"]
    assert settings["elastic_loss_balance"] == "normalized" and settings["elastic_middle_weights"] == [2.0]
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert all(r["loss"] == pytest.approx(3.0) and r["loss_sum"] > 0 for r in log)  # three depths a step
    from diffusers_layerprune.elastic import read_elastic_record

    assert read_elastic_record(out).loss_balance == "normalized"
    assert read_elastic_record(pixart / "out").loss_balance == "sum"  # the default, recorded
    before = snapshot(out)
    argv = elastic_args(pixart, out, "5,4,3") + ["--resume_from_checkpoint", "latest"]  # the default: sum
    train_refused(capsys, argv, "elastic_loss_balance")
    argv = elastic_args(pixart, out, "5,4,3", "--elastic_loss_balance", "normalized", "--resume_from_checkpoint",
                        "latest")  # fmt: skip
    train_refused(capsys, argv, "elastic_middle_weights")  # uniform now, [2.0] then
    assert snapshot(out) == before


def test_resuming_with_other_elastic_depths_is_refused(pixart, capsys):
    argv = elastic_args(pixart, pixart / "out", "5,3") + ["--resume_from_checkpoint", "latest"]
    before = snapshot(pixart / "out")
    train_refused(capsys, argv, "--elastic_depths [5, 4, 3]", "[5, 3]")
    assert snapshot(pixart / "out") == before


def test_flux_elastic_run_across_both_stacks_and_extract(tmp_path):
    """Flux, 2 double + 4 single blocks (global 0..5), LoRA training: the student keeps 5, depth 3 keeps one double
    block even though both are ranked least important; the extracted depth, loaded by the stock class, computes
    what the elastic student (LoRA merged) computes at that depth."""
    import diffusers

    from diffusers_layerprune.blocks import skip_blocks
    from diffusers_layerprune.modeling import load_transformer

    work = make_workspace(tmp_path, "flux", [0.0, 1.0, 5.0, 2.0, 4.0, 3.0], 5)  # student drops block 0
    run_train_distill(elastic_args(work, work / "out", "5,3") + ["--resolution", "16", "--use_lora"])  # LoRA too
    record = json.loads((work / "out" / "elastic.json").read_text())
    assert record["kept_layers"] == {"5": [1, 2, 3, 4, 5], "3": [1, 2, 4]}  # double 1 stays; then 3, 5 go
    assert cli(["extract", str(work / "out"), "--num-layers", "3", "--output", str(tmp_path / "d3")]) == 0
    stock = diffusers.FluxTransformer2DModel.from_pretrained(tmp_path / "d3", subfolder="transformer")
    assert (stock.config.num_layers, stock.config.num_single_layers) == (1, 2)
    elastic = load_transformer(str(work / "out"))
    g = torch.Generator().manual_seed(0)
    inputs = dict(
        hidden_states=torch.randn(1, 16, 16, generator=g),
        encoder_hidden_states=torch.randn(1, 5, 32, generator=g),
        pooled_projections=torch.randn(1, 16, generator=g),
        timestep=torch.tensor([0.5]),
        guidance=torch.tensor([3.5]),
        img_ids=torch.zeros(16, 3),
        txt_ids=torch.zeros(5, 3),
    )
    with torch.no_grad(), skip_blocks(elastic, [2, 4]):  # student blocks of source blocks 3 and 5
        expected = elastic(**inputs).sample
    with torch.no_grad():  # float summation order only (Flux's attention kernels by sequence layout)
        torch.testing.assert_close(stock(**inputs).sample, expected, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------------------------------
# Bad input: one line, exit 2, nothing written
# ------------------------------------------------------------------------------------------------------------------

TRAIN_REFUSALS = {
    "not_descending": (["--elastic_depths", "3,5,4"], "descending order"),
    "duplicated": (["--elastic_depths", "5,4,4"], "lists depth 4 more than once"),
    "out_of_range": (["--elastic_depths", "5,4,0"], "out of range: the source has 6 blocks"),
    "one_depth": (["--elastic_depths", "5"], "needs two or more depths"),
    "largest_is_not_the_student": (["--elastic_depths", "4,3"], "the student has 5 blocks but the largest"),
    "importance_of_another_depth": (["--importance", "{imp7}"], "the importance file has 7 blocks"),
    "importance_of_another_model": (["--importance", "{other}"], "was measured on other-model"),
    "importance_of_another_family": (["--importance", "{flux}"], "measured on a flux model"),
    "importance_without_depths": (["--no-depths"], "--importance applies only with --elastic_depths"),
    "depths_without_importance": (["--no-importance"], "--elastic_depths needs --importance"),
    "feature_kd_without_depths": (
        ["--no-depths", "--no-importance", "--elastic_feature_kd", "all"],
        "--elastic_feature_kd applies only with --elastic_depths",
    ),
    "loss_balance_without_depths": (
        ["--no-depths", "--no-importance", "--elastic_loss_balance", "normalized"],
        "--elastic_loss_balance applies only with --elastic_depths",
    ),
    "unknown_loss_balance": (["--elastic_loss_balance", "mean"], "invalid choice: 'mean'"),
    "middle_weights_without_depths": (
        ["--no-depths", "--no-importance", "--elastic_middle_weights", "1"],
        "--elastic_middle_weights applies only with --elastic_depths",
    ),
    "middle_weights_count": (["--elastic_middle_weights", "2,1"], "needs one weight per middle depth [4]"),
    "middle_weights_negative": (["--elastic_middle_weights", "-1"], "expected finite weights >= 0"),
    "middle_weights_all_zero": (["--elastic_middle_weights", "0"], "not all 0"),
    "bad_depth_text": (["--elastic_depths", "5,four"], "expected block counts"),
}


@pytest.fixture(scope="module")
def refusal_files(pixart):
    from diffusers_layerprune.importance import LayerImportance

    files = {}
    for name, n, model, family in (("imp7", 7, "teacher", "pixart"), ("other", 6, "other-model", "pixart"),
                                   ("flux", 6, "teacher", "flux")):  # fmt: skip
        files[name] = pixart / f"{name}.json"
        LayerImportance(
            values=list(range(n)), criterion="preference", metadata={"model": model, "family": family}
        ).save(files[name], plot=False)
    return files


@pytest.mark.parametrize("case", list(TRAIN_REFUSALS))
def test_train_distill_refuses_bad_elastic_input_before_writing(case, pixart, refusal_files, tmp_path, capsys):
    change, message = TRAIN_REFUSALS[case]
    argv = [str(a) for a in elastic_args(pixart, tmp_path / "out", "5,4,3")]
    if change[0].startswith("--no-"):
        for removed, flag in (("--no-depths", "--elastic_depths"), ("--no-importance", "--importance")):
            if removed in change:
                i = argv.index(flag)
                del argv[i : i + 2]
        argv += [c for c in change if not c.startswith("--no-")]
    else:
        flag, value = change
        value = value.format(**{k: str(v) for k, v in refusal_files.items()})
        if flag in argv:
            argv[argv.index(flag) + 1] = value
        else:
            argv += [flag, value]
    before = snapshot(pixart)
    train_refused(capsys, argv, message)
    assert not (tmp_path / "out").exists() and snapshot(pixart) == before


@pytest.fixture(scope="module")
def foreign_elastic(pixart, tmp_path_factory):
    """An elastic.json copied next to a model of another source (the 5-block student of a 7-block teacher)."""
    import shutil

    from diffusers_layerprune.testing import save_tiny_pixart_pipeline

    root = tmp_path_factory.mktemp("foreign")
    save_tiny_pixart_pipeline(root / "teacher7", num_layers=7)
    argv = ["prune", "--model", str(root / "teacher7"), "--keep", "0,2,3,4,5", "--output", str(root / "pruned")]
    assert cli(argv) == 0
    shutil.copy(pixart / "out" / "elastic.json", root / "pruned" / "elastic.json")
    return root / "pruned"


EXTRACT_REFUSALS = {
    "depth_not_trained": ("{out}", "2", "depth 2 was not trained", "trained depths are 5, 4, 3"),
    "not_elastic": ("{student}", "3", "is not an elastic run (no elastic.json)", ""),
    "another_source": ("{foreign}", "3", "belongs to a model of another source", ""),
    "missing_folder": ("{missing}", "3", "does not exist", ""),
    "existing_output": ("{out}", "3", "already exists", "--overwrite"),
}


@pytest.mark.parametrize("case", list(EXTRACT_REFUSALS))
def test_extract_refuses_bad_input_in_one_line_and_writes_nothing(case, pixart, foreign_elastic, tmp_path, capsys):
    folder, depth, *messages = EXTRACT_REFUSALS[case]
    paths = {"out": pixart / "out", "student": pixart / "student", "foreign": foreign_elastic,
             "missing": tmp_path / "nowhere"}  # fmt: skip
    output = tmp_path / "extracted"
    if case == "existing_output":
        output = pixart / "student"  # a folder that exists (layerprune wrote it)
    before = snapshot(pixart), snapshot(foreign_elastic)
    capsys.readouterr()
    code = cli(["extract", folder.format(**{k: str(v) for k, v in paths.items()}), "--num-layers", depth,
                "--output", str(output)])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("layerprune extract: error:"), err
    assert all(m in err for m in messages if m), err
    assert (snapshot(pixart), snapshot(foreign_elastic)) == before
    assert case == "existing_output" or not output.exists()


def test_eval_of_an_elastic_folder_evaluates_every_depth_and_plots_quality_against_depth(pixart, tmp_path, capsys):
    from diffusers_layerprune.eval_report import EvalReport
    from diffusers_layerprune.scorers.tiny import save_tiny_clip_folder

    save_tiny_clip_folder(tmp_path / "clip")
    argv = ["eval", "--model", str(pixart / "out"), "--prompts", str(pixart / "prompts.txt"), "--scorers",
            str(tmp_path / "clip"), "--steps", "2", "--guidance", "1.0", "--latency-repeats", "1",
            "--output", str(tmp_path / "el.json")]  # fmt: skip
    assert cli(argv) == 0
    summary = json.loads((tmp_path / "el-depths.json").read_text())
    assert summary["depths"] == [5, 4, 3] and (tmp_path / "el-depths.png").stat().st_size > 0
    for depth, kept in ((5, [0, 2, 3, 4, 5]), (4, [0, 2, 4, 5]), (3, [0, 2, 4])):
        report = EvalReport.load(tmp_path / f"el-depth{depth}.json")  # each depth as the model extract writes
        assert report.student.num_layers == depth and report.student.kept_layers == kept
        assert summary["by_depth"][str(depth)]["kept_layers"] == kept
    teacher = [EvalReport.load(tmp_path / f"el-depth{d}.json").teacher_entry.scores for d in (5, 3)]
    assert teacher[0].keys() == teacher[1].keys()  # one teacher, the same images for every depth
    assert all(teacher[0][k].mean == teacher[1][k].mean for k in teacher[0])
    assert "(3 blocks)" in capsys.readouterr().out


@pytest.mark.slow
def test_elastic_run_on_two_processes_trains_what_one_process_trains(pixart, tmp_path, monkeypatch):
    """The depths' losses are summed and back-propagated once per step, so DDP's step is the ordinary one: two gloo
    processes of batch 1 end where one process of batch 2 ends, within float summation order (the bound of the
    one-depth test in test_train_distill.py)."""
    from safetensors.torch import load_file

    from diffusers_layerprune.distill import distill_student
    from diffusers_layerprune.launch import LaunchSettings

    from helpers import ROOT, write_accelerate_config

    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    extra = ["--prompts", pixart / "prompts.txt", "--cache_dir", pixart / "cache", "--max_sequence_length", 16,
             "--teacher_inference_steps", 2, "--teacher_guidance_scale", 1.0, "--max_train_samples", 4,
             "--elastic_depths", "5,4,3", "--importance", pixart / "importance.json", "--elastic_inplace_distill"]  # fmt: skip
    weights = {}
    for n in (1, 2):
        distill_student(
            pixart / "teacher", pixart / "student", tmp_path / f"p{n}", max_train_steps=3, global_batch_size=2,
            learning_rate=1e-3, lr_scheduler="linear", checkpointing_steps=3,
            launch=LaunchSettings(num_processes=n, accelerate_config=str(write_accelerate_config(tmp_path))),
            extra_args=[str(a) for a in extra],
        )  # fmt: skip
        weights[n] = load_file(tmp_path / f"p{n}" / "transformer" / "diffusion_pytorch_model.safetensors")
    start = load_file(pixart / "student" / "transformer" / "diffusion_pytorch_model.safetensors")
    moved = max((weights[1][k] - start[k]).abs().max().item() for k in start)
    # Attention key biases have a true gradient of zero (softmax ignores a shift shared by all keys): Adam turns float
    # rounding into small steps there, more so with several depths' passes summed; every other weight must agree.
    keys = [k for k in start if not k.endswith("to_k.bias")]
    diff = max((weights[1][k] - weights[2][k]).abs().max().item() for k in keys)
    key_bias = max((weights[1][k] - weights[2][k]).abs().max().item() for k in start if k.endswith("to_k.bias"))
    print(f"1 vs 2 processes: max difference {diff:.3g} (key biases {key_bias:.3g}), max update {moved:.3g}")
    assert diff < 1.5e-5 and diff < 0.01 * moved, (diff, moved)
    assert key_bias < 0.05 * moved, (key_bias, moved)


def test_extract_help_and_a_folder_that_is_not_elastic_answer_before_torch_loads(tmp_path):
    script = (
        "import sys\n"
        "from diffusers_layerprune.cli import main\n"
        f"codes = [main(['extract', '--help']), main(['extract', {str(tmp_path)!r}, '--num-layers', '3', "
        f"'--output', {str(tmp_path / 'out')!r}])]\n"
        "print(codes, sorted(m for m in ('torch', 'diffusers') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[0, 2] []"
    assert "is not an elastic run (no elastic.json)" in done.stderr and not (tmp_path / "out").exists()
