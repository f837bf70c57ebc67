"""A resume never mixes states (issue 27, point 2).

Every checkpoint records the settings that shape it (``train_distill.run_settings``). ``--resume_from_checkpoint
latest`` after one changed is refused in one line naming the setting (old -> new), with nothing written; with
``--resume_mismatch restart`` the run starts over, says so, and keeps none of the earlier run.
"""

import json
import shutil
from pathlib import Path

import pytest

from diffusers_layerprune.checkpoints import CHECKPOINT_RECORD
from diffusers_layerprune.cli import main as cli
from diffusers_layerprune.testing import save_tiny_pixart_pipeline

from helpers import distill_args, run_train_distill, train_refused

PROMPTS = ["a small red circle", "a large blue square", "a green star at the top left", "a white cross"]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """teacher, its pruned student, prompts, and a finished 2-step run with a checkpoint at each step."""
    root = tmp_path_factory.mktemp("resume")
    save_tiny_pixart_pipeline(root / "teacher", num_layers=4)
    assert cli(["prune", "--model", str(root / "teacher"), "--drop", "1", "--output", str(root / "student")]) == 0
    assert cli(["prune", "--model", str(root / "teacher"), "--drop", "2", "--output", str(root / "other")]) == 0
    shutil.copytree(root / "teacher", root / "teacher-copy")
    (root / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    (root / "other-prompts.txt").write_text("\n".join(reversed(PROMPTS)) + "\n")
    run_train_distill(base_args(root, root / "run"))
    return root


def base_args(root: Path, out: Path) -> list:
    return [*distill_args(root, out, steps=2, checkpointing_steps=1), "--report_to", "none"]


def with_value(args: list, flag: str, value) -> list:
    args = list(args)
    if flag in args:
        args[args.index(flag) + 1] = value
    else:
        args += [flag, value]
    return args


def snapshot(root: Path) -> dict:
    return {p: p.read_bytes() if p.is_file() else None for p in sorted(root.rglob("*"))}


def test_every_checkpoint_records_its_settings(work):
    record = json.loads((work / "run" / "checkpoint-1" / CHECKPOINT_RECORD).read_text())
    settings = record["settings"]
    assert settings["learning_rate"] == 1e-3 and settings["train_batch_size"] == 2 and settings["seed"] == 0
    assert settings["prompts"] == str(work / "prompts.txt") and len(settings["prompts content"]) == 16
    assert settings["teacher_model"] == str(work / "teacher") and settings["num_processes"] == 1
    assert {"lr_scheduler", "feature_loss", "lambda_feat", "gradient_accumulation_steps"} <= set(settings)


CHANGES = [
    # (flag, new value, what the one line names)
    ("--learning_rate", 2e-3, "--learning_rate 0.001, this run has 0.002"),
    ("--train_batch_size", 1, "--train_batch_size 2, this run has 1"),
    ("--gradient_accumulation_steps", 2, "--gradient_accumulation_steps 1, this run has 2"),
    ("--lr_scheduler", "cosine", "--lr_scheduler constant, this run has cosine"),
    ("--lr_warmup_steps", 5, "--lr_warmup_steps 0, this run has 5"),
    ("--feature_loss", "normalized", "--feature_loss mse, this run has normalized"),
    ("--lambda_feat", 0.5, "--lambda_feat 1.0, this run has 0.5"),
    ("--seed", 7, "--seed 0, this run has 7"),
    ("--max_train_samples", 3, "--max_train_samples (not set), this run has 3"),
    ("--teacher_model", "teacher-copy", "--teacher_model"),
    ("--prompts", "other-prompts.txt", "--prompts"),
    ("--mixed_precision", "no", "--mixed_precision (not set), this run has no"),
    ("--student_model", "other", "belongs to another run: its student has kept_layers [0, 2, 3]"),
    ("--use_lora", None, "belongs to another run (full fine-tuning, this run: LoRA"),
]


@pytest.mark.parametrize("flag, value, named", CHANGES, ids=[c[0] for c in CHANGES])
def test_resume_after_a_changed_setting_is_refused_naming_it(work, tmp_path, capsys, flag, value, named):
    out = tmp_path / "run"
    shutil.copytree(work / "run", out)
    args = [*base_args(work, out), "--max_train_steps", 3, "--resume_from_checkpoint", "latest"]
    if value is None:
        args.append(flag)
    else:
        args = with_value(
            args, flag, work / value if flag in ("--teacher_model", "--prompts", "--student_model") else value
        )
    before = snapshot(tmp_path)
    err = train_refused(capsys, args, named, "--resume_mismatch restart")
    assert str(out / "checkpoint-2") in err
    assert snapshot(tmp_path) == before  # nothing written, nothing removed


def test_resume_after_the_prompt_file_was_edited_is_refused(work, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(work / "run", out)
    prompts = tmp_path / "prompts.txt"  # a run on a prompt file of its own, edited before the resume
    prompts.write_text("\n".join(PROMPTS) + "\n")
    record = out / "checkpoint-2" / CHECKPOINT_RECORD
    data = json.loads(record.read_text())
    data["settings"]["prompts"] = str(prompts)
    record.write_text(json.dumps(data))
    prompts.write_text("\n".join(PROMPTS[:2]) + "\n")
    args = [*with_value(base_args(work, out), "--prompts", prompts), "--resume_from_checkpoint", "latest"]
    train_refused(capsys, args, "--prompts content")


def test_resume_with_the_same_settings_continues_and_a_longer_constant_run_is_allowed(work, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(work / "run", out)
    run_train_distill([*with_value(base_args(work, out), "--max_train_steps", 3), "--resume_from_checkpoint", "latest"])
    assert "resumed from" in capsys.readouterr().out
    steps = [json.loads(line)["step"] for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2", "checkpoint-3"]


def test_resume_mismatch_restart_starts_over_and_says_so(work, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(work / "run", out)
    args = [*with_value(base_args(work, out), "--learning_rate", 2e-3), "--resume_from_checkpoint", "latest"]
    capsys.readouterr()
    run_train_distill([*args, "--resume_mismatch", "restart"])
    printed = capsys.readouterr().out
    assert (
        "--learning_rate 0.001, this run has 0.002: " in printed
        and "starting over (--resume_mismatch restart)" in printed
    )
    assert "resumed from" not in printed
    # a new run: steps from 1, every checkpoint of the new settings, the record says the new learning rate
    steps = [json.loads(line)["step"] for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert steps == [1, 2]
    for checkpoint in out.glob("checkpoint-*"):
        assert json.loads((checkpoint / CHECKPOINT_RECORD).read_text())["settings"]["learning_rate"] == 2e-3
    assert json.loads((out / "distill_config.json").read_text())["learning_rate"] == 2e-3


EARLY = {
    "lora_targets_match_nothing": (["--use_lora", "--lora_target_modules", "to_q,nope"], "--lora_target_modules nope"),
    "fp16_without_gpu": (["--mixed_precision", "fp16"], "--mixed_precision fp16 needs a GPU"),
    # `accelerate launch --mixed_precision fp16` (what layerprune run starts) passes it in the environment
    "fp16_from_the_launcher": ([], "--mixed_precision fp16 needs a GPU"),
    "prompt_cells_not_text": (["--prompts", "{cells}"], "prompt cells are not text (row 1: 3, int)"),
    "prompt_file_missing": (["--prompts", "{missing}"], "does not exist"),
    "exclude_file_missing": (["--exclude_prompts", "{missing}"], "does not exist"),
    "revision_walks_out": (["--student_revision", "../x"], "is not a branch, tag or commit name"),
}


@pytest.mark.parametrize("case", sorted(EARLY))
def test_training_refuses_before_loading_the_teacher(work, tmp_path, capsys, monkeypatch, case):
    import torch

    import diffusers_layerprune.train_distill as train_distill

    if case.startswith("fp16") and torch.cuda.is_available():
        pytest.skip("a GPU runs fp16")
    if case == "fp16_from_the_launcher":
        monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp16")
    monkeypatch.setattr(train_distill, "load_pipeline", lambda *a, **k: pytest.fail("the teacher was loaded"))
    (tmp_path / "cells.json").write_text(json.dumps([{"prompt": 3}, {"prompt": "a red circle"}]))
    extra, named = EARLY[case]
    extra = [a.format(cells=tmp_path / "cells.json", missing=tmp_path / "none.txt") for a in extra]
    out = tmp_path / "out"
    args = [*base_args(work, out), *extra]
    if "--prompts" in extra:
        args = with_value(base_args(work, out), "--prompts", extra[1])
    before = snapshot(tmp_path)
    train_refused(capsys, args, named)
    assert snapshot(tmp_path) == before and not out.exists()


@pytest.mark.parametrize("pattern", ["**/*.safetensors", "optimizer.bin", "random_states_0.pkl"])
def test_resume_from_a_truncated_checkpoint_names_the_file(work, tmp_path, capsys, pattern):
    """A checkpoint file cut short (a disk that filled, a copy that stopped): refused naming it, nothing unpickled."""
    out = tmp_path / "run"
    shutil.copytree(work / "run", out)
    damaged = sorted((out / "checkpoint-2").glob(pattern))[0]
    damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size * 9 // 10])
    before = snapshot(tmp_path)
    train_refused(capsys, [*base_args(work, out), "--resume_from_checkpoint", "latest"], f"{damaged} is damaged")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("role, component", [("teacher", "text_encoder"), ("student", "transformer")])
def test_a_truncated_teacher_or_student_file_is_named(work, tmp_path, capsys, role, component):
    folder = tmp_path / role
    shutil.copytree(work / role, folder)
    damaged = sorted((folder / component).glob("*.safetensors"))[0]
    damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size * 9 // 10])
    flag = "--teacher_model" if role == "teacher" else "--student_model"
    args = with_value(base_args(work, tmp_path / "out"), flag, folder)
    train_refused(capsys, args, f"{damaged} is damaged or not a safetensors file")
    assert not (tmp_path / "out").exists()
