"""training/train_distill.py end to end on a tiny pipeline: full, LoRA, image-caption data, bad input, and two
processes that train, checkpoint and resume to the same weights as an uninterrupted run."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from diffusers_layerprune import LayerPruneError, PrunedPixArtTransformer
from diffusers_layerprune.cli import main as cli
from diffusers_layerprune.testing import save_tiny_pixart_pipeline

from helpers import ROOT, TRAIN_SCRIPT, distill_args, run_train_distill, write_accelerate_config

SCRIPT = TRAIN_SCRIPT
PROMPTS = ["a small red circle", "a large blue square", "a green star at the top left", "a white cross", "a black star"]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("kd")
    save_tiny_pixart_pipeline(root / "teacher", num_layers=6)
    assert cli(["prune", "--model", str(root / "teacher"), "--drop", "1,4", "--output", str(root / "student")]) == 0
    (root / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    return root


def base_args(work, out, steps=3):
    return distill_args(work, out, steps=steps)


def transformer_weights(folder):
    return load_file(Path(folder) / "transformer" / "diffusion_pytorch_model.safetensors")


def test_full_distillation_writes_a_loadable_pruned_pipeline(work):
    out = work / "full"
    run_train_distill(base_args(work, out) + ["--validation_prompts", "a red circle", "--report_to", "tensorboard"])
    student = PrunedPixArtTransformer.from_pretrained(out, subfolder="transformer")
    assert student.config.kept_layers == [0, 2, 3, 5] and student.config.source_num_layers == 6
    before, after = transformer_weights(work / "student"), transformer_weights(out)
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # it trained
    index = json.loads((out / "model_index.json").read_text())
    assert index["transformer"] == ["diffusers", "PixArtTransformer2DModel"]

    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3]
    assert all(np.isfinite(r[k]) for r in log for k in ("loss", "task", "output", "variance", "feature"))
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-3"]
    assert (out / "loss_curve.png").stat().st_size > 0
    assert sorted(p.name for p in (out / "validation").iterdir()) == ["step-2", "step-3"]
    events = list((out / "logs").rglob("events.out.tfevents.*"))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    images = [e for e in events if "validation" in EventAccumulator(str(e)).Reload().Tags()["images"]]
    assert len(images) == 1  # the validation images of both steps, in TensorBoard
    # every checkpoint's student loads with stock diffusers; the last one is the saved model
    from diffusers import PixArtTransformer2DModel

    for checkpoint in ("checkpoint-2", "checkpoint-3"):
        stock = PixArtTransformer2DModel.from_pretrained(out / checkpoint / "transformer")
        assert stock.config._kept_layers == [0, 2, 3, 5]
    last = dict(stock.state_dict())
    assert all(torch.equal(last[k], after[k]) for k in after)
    # the TensorBoard logs go to the Hub with the model, and hold no local path (push checks every file it sends)
    from diffusers_layerprune.hub import push_pipeline

    sent = [path for path, _ in push_pipeline(out, "me/kd", dry_run=True)["files"]]
    assert any(p.startswith("logs/") and "tfevents" in p for p in sent)
    assert not any(p.startswith(("checkpoint-", "validation/")) for p in sent)
    recipe = json.loads((out / "distill_config.json").read_text())
    assert recipe["steps"] == 3 and recipe["kept_layers"] == [0, 2, 3, 5] and recipe["lora"] is False
    assert list((work / "cache").glob("teacher-latents-*/dataset_info.json"))  # latents cached for later runs
    (manifest,) = (work / "cache").glob("teacher-latents-*/layerprune_cache.json")
    assert json.loads(manifest.read_text())["cache_dtype"] == recipe["cache_dtype"] == "bfloat16"


def test_lora_distillation_saves_merged_model_and_adapter_with_alpha(work):
    out = work / "lora"
    run_train_distill(base_args(work, out) + ["--use_lora", "--rank", 4, "--lora_alpha", 8, "--report_to", "none"])
    # PixArt has no diffusers LoRA loader: the adapter is a peft folder (test_lora.py loads every family's stock)
    config = json.loads((out / "lora" / "adapter_config.json").read_text())
    assert config["lora_alpha"] == 8 and config["r"] == 4

    merged = PrunedPixArtTransformer.from_pretrained(out, subfolder="transformer")
    from peft import PeftModel

    base = PrunedPixArtTransformer.from_pretrained(work / "student", subfolder="transformer")
    PeftModel.from_pretrained(base, out / "lora")  # injects the adapter into base
    assert any("lora" in n for n, _ in base.named_parameters())
    g = torch.Generator().manual_seed(0)
    inputs = dict(
        hidden_states=torch.randn(2, 4, 8, 8, generator=g),
        encoder_hidden_states=torch.randn(2, 16, 32, generator=g),
        timestep=torch.tensor([50, 900]),
        added_cond_kwargs={"resolution": None, "aspect_ratio": None},
    )
    plain = PrunedPixArtTransformer.from_pretrained(work / "student", subfolder="transformer")
    with torch.no_grad():
        a, b, c = merged(**inputs).sample, base(**inputs).sample, plain(**inputs).sample
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)  # merged == base + adapter
    assert (a - c).abs().max() > 1e-4  # and the adapter did change the model


def test_image_caption_dataset(work):
    from PIL import Image

    data = work / "images"
    data.mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i, caption in enumerate(PROMPTS[:4]):
        Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(data / f"{i}.png")
        rows.append(json.dumps({"file_name": f"{i}.png", "text": caption}))
    (data / "metadata.jsonl").write_text("\n".join(rows) + "\n")
    out = work / "images-out"
    args = [a for a in base_args(work, out, steps=2)]
    i = args.index("--prompts")
    del args[i : i + 2]
    run_train_distill(args + ["--train_data_dir", data, "--report_to", "none"])
    assert PrunedPixArtTransformer.from_pretrained(out, subfolder="transformer").config.kept_layers == [0, 2, 3, 5]
    recipe = json.loads((out / "distill_config.json").read_text())
    assert recipe["train_samples"] == 4 and recipe["data"] == data.name


def test_bad_input_fails_before_training(work, tmp_path):
    save_tiny_pixart_pipeline(tmp_path / "teacher8", num_layers=8)
    assert cli(["prune", "--model", str(tmp_path / "teacher8"), "--drop", "1", "--output", str(tmp_path / "s8")]) == 0
    (tmp_path / "empty.txt").write_text("\n")
    (tmp_path / "table.csv").write_text("caption,other\na red circle,1\n")
    out = tmp_path / "out"
    cases = [
        (["--student_model", work / "teacher"], "no kept_layers"),
        (["--student_model", tmp_path / "s8"], "pruned from a 8-block model but the teacher has 6"),
        (["--student_model", tmp_path / "missing"], "does not exist"),
        (["--prompts", tmp_path / "empty.txt"], "is empty"),
        (["--prompts", tmp_path / "nope.txt"], "does not exist"),
    ]
    for overrides, message in cases:
        args = base_args(work, out)
        for flag, value in zip(overrides[::2], overrides[1::2], strict=True):
            args[args.index(flag) + 1] = value
        with pytest.raises(LayerPruneError, match=message):
            run_train_distill(args)
        assert not (out / "model_index.json").exists()
    args = base_args(work, out)
    i = args.index("--prompts")
    del args[i : i + 2]
    with pytest.raises(LayerPruneError, match="no column 'prompt'"):
        run_train_distill(args + ["--dataset_name", tmp_path / "table.csv", "--prompt_column", "prompt"])


def test_script_prints_one_line_for_a_user_error(work, tmp_path, capsys):
    # the command-line wrapper in this process (a fresh one costs ~13 CPU-seconds of imports); the script started
    # as a real process prints its one-line errors in test_help_and_argument_mistakes_answer_before_torch_loads
    from diffusers_layerprune.train_distill import cli as train_cli

    with pytest.raises(SystemExit) as done:
        train_cli([*map(str, base_args(work, tmp_path / "o")), "--student_model", str(work / "teacher")])
    assert done.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("train_distill: error: the student's config has no kept_layers")
    assert not any("Traceback" in line for line in err) and not (tmp_path / "o").exists()


NO_TORCH = """
import runpy, sys
sys.argv = [ENTRY, *ARGS]
try:
    if ENTRY.endswith(".py"):  # training/train_distill.py, the launcher of a source checkout
        runpy.run_path(ENTRY, run_name="__main__")
    else:  # python -m diffusers_layerprune.train_distill
        runpy.run_module(ENTRY, run_name="__main__")
except SystemExit as done:
    print(done.code, sorted(m for m in ("torch", "diffusers", "accelerate") if m in sys.modules))
"""


@pytest.mark.parametrize(
    "entry, args, code, shown",
    [
        ("diffusers_layerprune.train_distill", ["--help"], 0, "--student_model"),
        (str(SCRIPT), ["--max_train_steps", "0"], 2, "train_distill: error: argument --max_train_steps: must be a"),
    ],
)
def test_help_and_argument_mistakes_answer_before_torch_loads(entry, args, code, shown):
    """`python -m diffusers_layerprune.train_distill --help` and training/train_distill.py parse before the heavy
    imports: an answer in a fraction of a second instead of ~12 CPU-seconds of imports."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    script = f"ENTRY = {entry!r}\nARGS = {args!r}\n" + NO_TORCH
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert result.stdout.strip().splitlines()[-1] == f"{code} []", result.stderr[-2000:]
    assert shown in result.stdout + result.stderr and "Traceback" not in result.stderr


def distill_on_processes(work, out, num_processes, **options):
    """``distill_student`` (the library's distill stage: train_distill under accelerate launch) on the tiny pair,
    4 samples, global batch 2: with 2 processes each takes 1 sample a step."""
    from diffusers_layerprune.distill import distill_student
    from diffusers_layerprune.launch import LaunchSettings

    extra = ["--prompts", work / "prompts.txt", "--cache_dir", work / "cache", "--max_sequence_length", 16]
    extra += ["--teacher_inference_steps", 2, "--teacher_guidance_scale", 1.0, "--max_train_samples", 4]
    return distill_student(
        work / "teacher",
        work / "student",
        out,
        max_train_steps=4,
        global_batch_size=2,
        learning_rate=1e-3,
        lr_scheduler="linear",
        checkpointing_steps=2,
        checkpoints_total_limit=None,
        launch=LaunchSettings(num_processes=num_processes, accelerate_config=str(write_accelerate_config(work))),
        extra_args=[str(a) for a in extra],
        **options,
    )


@pytest.fixture
def two_process_env(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # the launched processes import this checkout
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


@pytest.mark.slow
def test_two_processes_match_one_process_and_resume_to_identical_weights(work, two_process_env):
    """Two gloo processes of batch 1 train what one process of batch 2 trains (each sample gets the same noise and
    timestep, gradients are averaged): equal within float summation order. A run killed after a checkpoint and
    resumed ends with the uninterrupted run's weights."""
    out = work / "ddp"
    record = distill_on_processes(work, out, 2)  # uninterrupted: 4 steps, checkpoints at 2 and 4
    assert record.num_processes == 2 and record.train_batch_size == 1 and record.global_batch_size == 2
    reference = transformer_weights(out)

    single = work / "single"
    args = base_args(work, single, steps=4) + ["--max_train_samples", 4, "--lr_scheduler", "linear"]
    args[args.index("--train_batch_size") + 1] = 2
    run_train_distill(args + ["--report_to", "none"])
    one, start = transformer_weights(single), transformer_weights(work / "student")
    diff = max((one[k] - reference[k]).abs().max().item() for k in reference)
    moved = max((one[k] - start[k]).abs().max().item() for k in one)
    print(
        f"2 processes x batch 1 vs 1 process x batch 2, 4 steps: max abs weight difference {diff:.3g}, max update {moved:.3g}"
    )
    # Measured 3.2e-5 against updates of 2.4e-3 (lr 1e-3): the largest differences sit in the attention key biases,
    # whose true gradient is zero (softmax ignores a shift shared by all keys), so Adam turns float rounding into
    # small steps there; every other weight agrees within 1.5e-5.
    assert diff < 5e-5 and diff < 0.02 * moved

    # as if killed right after checkpoint-2: drop everything written later, then resume from "latest"
    shutil.rmtree(out / "checkpoint-4")
    for name in ("transformer", "model_index.json"):
        path = out / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    distill_on_processes(work, out, 2, resume_from_checkpoint="latest")
    resumed = transformer_weights(out)
    for key in reference:
        torch.testing.assert_close(resumed[key], reference[key], atol=1e-6, rtol=0)
    steps = [json.loads(line)["step"] for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(work, monkeypatch):
    import diffusers_layerprune.train_distill as script

    real = script.kd_step_losses
    calls = {"n": 0}

    def poisoned(*args, **kwargs):  # finite for two steps, then NaN
        parts = real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] > 2:
            parts["loss"] = parts["loss"] * float("nan")
        return parts

    monkeypatch.setattr(script, "kd_step_losses", poisoned)
    out = work / "nan"
    with pytest.raises(LayerPruneError, match=r"non-finite loss at step 2 .*Last good checkpoint: .*checkpoint-2"):
        run_train_distill(base_args(work, out, steps=4) + ["--report_to", "none"])
    assert (out / "checkpoint-2").is_dir() and not (out / "model_index.json").exists()


def test_a_base_install_without_tensorboard_trains_with_the_defaults(work, tmp_path, monkeypatch, capsys):
    """`pip install diffusers-layerprune` has no tensorboard: the default tracker is tensorboard only where it is
    installed; named but missing, it is refused in one line naming the extra."""
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real_find_spec(name, *a)
    )
    out = tmp_path / "base"
    run_train_distill(base_args(work, out, steps=1))
    assert (out / "transformer" / "diffusion_pytorch_model.safetensors").is_file()
    assert not (out / "logs").exists()  # no tracker ran

    from diffusers_layerprune.train_distill import cli as train_cli

    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        train_cli([str(a) for a in [*base_args(work, tmp_path / "named", steps=1), "--report_to", "tensorboard"]])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "diffusers-layerprune[train]" in err
    assert not (tmp_path / "named").exists()
