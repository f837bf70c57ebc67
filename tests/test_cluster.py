"""Distillation as on a cluster (issue 13): the training script has the options of diffusers' examples (EMA, 8-bit
Adam, gradient checkpointing, trackers, Hub students, weight variants), checkpoints that stock diffusers loads and
that a kill cannot take away, launches through ``accelerate launch`` whose workers die with the caller, and the
stages are library functions with typed records and no import circle."""

import ast
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from diffusers_layerprune import LayerPruneError
from diffusers_layerprune.cli import main as cli
from diffusers_layerprune.testing import save_tiny_pixart_pipeline

from helpers import ROOT, distill_args, run_train_distill, train_refused, write_accelerate_config

PROMPTS = ["a small red circle", "a large blue square", "a green star at the top left", "a white cross", "a star"]
PACKAGE = ROOT / "diffusers_layerprune"


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("cluster")
    save_tiny_pixart_pipeline(root / "teacher", num_layers=6)
    assert cli(["prune", "--model", str(root / "teacher"), "--drop", "1,4", "--output", str(root / "student")]) == 0
    (root / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    return root


def weights(folder) -> dict[str, torch.Tensor]:
    return load_file(Path(folder) / "diffusion_pytorch_model.safetensors")


def assert_same(a: dict, b: dict, atol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=atol, rtol=0)


def snapshot(root: Path) -> dict:
    tree = {}
    for path in sorted(Path(root).rglob("*")):
        rel = path.relative_to(root).as_posix()
        tree[rel] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return tree


def drop_after(out: Path, step: int) -> None:
    """Make ``out`` look like a run killed right after ``checkpoint-<step>``."""
    for path in out.glob("checkpoint-*"):
        if int(path.name.split("-")[1]) > step:
            shutil.rmtree(path)
    for name in ("transformer", "model_index.json", "distill_config.json"):
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


# ----------------------------------------------------------------------------------------------------------------
# EMA, checkpoints that load with stock diffusers
# ----------------------------------------------------------------------------------------------------------------


def test_ema_weights_are_what_is_saved_and_resume_exactly(work, tmp_path):
    from diffusers import PixArtTransformer2DModel

    out = tmp_path / "ema"
    args = distill_args(work, out, steps=4, checkpointing_steps=2)
    args += ["--use_ema", "--ema_decay", "0.9", "--gradient_checkpointing", "--allow_tf32", "--report_to", "none"]
    run_train_distill(args)
    final, last = weights(out / "transformer"), out / "checkpoint-4"
    assert_same(final, weights(last / "transformer_ema"))  # the EMA is the model
    raw = weights(last / "transformer")
    assert any(not torch.equal(final[k], raw[k]) for k in final)  # and it is not the trained weights
    for checkpoint in (out / "checkpoint-2", last):  # every checkpoint's student loads with stock diffusers
        for part in ("transformer", "transformer_ema"):
            stock = PixArtTransformer2DModel.from_pretrained(checkpoint / part)
            assert stock.config.num_layers == 4
    ema_config = json.loads((last / "transformer_ema" / "config.json").read_text())
    assert ema_config["optimization_step"] == 4 and ema_config["decay"] == 0.9
    record = json.loads((out / "distill_config.json").read_text())
    assert record["use_ema"] is True and record["ema_decay"] == 0.9

    resumed = tmp_path / "resumed"
    shutil.copytree(out, resumed)
    drop_after(resumed, 2)
    args_resumed = [*args, "--resume_from_checkpoint", "latest"]
    args_resumed[args_resumed.index("--output_dir") + 1] = resumed
    run_train_distill(args_resumed)
    assert_same(weights(resumed / "transformer"), final, atol=1e-6)
    assert_same(weights(resumed / "checkpoint-4" / "transformer"), raw, atol=1e-6)


def test_lora_checkpoints_hold_the_merged_student_and_resume(work, tmp_path):
    from diffusers import PixArtTransformer2DModel

    out = tmp_path / "lora"
    args = distill_args(work, out, steps=2, checkpointing_steps=1)
    args += ["--use_lora", "--rank", 4, "--report_to", "none"]
    run_train_distill(args)
    merged = PixArtTransformer2DModel.from_pretrained(out / "checkpoint-2" / "transformer")  # stock class, no peft
    assert_same(dict(merged.state_dict()), weights(out / "transformer"), atol=1e-6)  # == the fused final model
    first = weights(out / "checkpoint-1" / "transformer")
    assert any(not torch.equal(first[k], merged.state_dict()[k]) for k in first)

    drop_after(out, 1)
    run_train_distill([*args, "--resume_from_checkpoint", "latest"])
    assert_same(weights(out / "transformer"), dict(merged.state_dict()), atol=1e-6)


KILL_WHILE_SAVING = textwrap.dedent(
    """
    import pathlib, sys, time
    import accelerate

    flag, argv = pathlib.Path(sys.argv[1]), sys.argv[2:]
    real = accelerate.Accelerator.save_state

    def slow(self, output_dir=None, **kwargs):
        result = real(self, output_dir, **kwargs)
        if "checkpoint-2" in str(output_dir):  # checkpoint-2 is on disk but not yet complete: wait for the kill
            flag.write_text("saving")
            time.sleep(600)
        return result

    accelerate.Accelerator.save_state = slow
    from diffusers_layerprune.train_distill import cli

    cli(argv)
    """
)


@pytest.mark.slow
def test_a_kill_while_saving_never_leaves_zero_checkpoints(work, tmp_path):
    """With --checkpoints_total_limit 1, checkpoint-1 is removed only once checkpoint-2 is complete: a run killed
    (SIGKILL) while writing checkpoint-2 keeps checkpoint-1 and resumes from it."""
    out = tmp_path / "kd"
    args = [str(a) for a in distill_args(work, out, steps=3, checkpointing_steps=1)]
    args += ["--checkpoints_total_limit", "1", "--report_to", "none"]
    flag = tmp_path / "saving"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-c", KILL_WHILE_SAVING, str(flag), *args], env=env)
    try:
        deadline = time.monotonic() + 300
        while not flag.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert flag.exists(), "the run never reached checkpoint-2"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert [p.name for p in out.glob("checkpoint-*")] == ["checkpoint-1"]
    assert (out / "checkpoint-1" / "layerprune_checkpoint.json").is_file()
    assert (out / ".checkpoint-2.tmp").is_dir()  # the cut-short save, never taken for a checkpoint

    run_train_distill([*args, "--resume_from_checkpoint", "latest"])
    assert [p.name for p in out.glob("checkpoint-*")] == ["checkpoint-3"]
    assert not (out / ".checkpoint-2.tmp").exists()
    steps = [json.loads(line)["step"] for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]


# ----------------------------------------------------------------------------------------------------------------
# Models from the Hub, weight variants
# ----------------------------------------------------------------------------------------------------------------


def test_student_from_the_hub_at_a_revision_and_a_teacher_variant(work, tmp_path, monkeypatch):
    """The student as a Hub id (here served offline from a Hub cache, at revision v1) and a teacher whose weights
    exist only as the fp16 variant: --pretrained_model_name_or_path/--variant/--student_model/--student_revision."""
    import huggingface_hub.constants

    from diffusers_layerprune.modeling import load_pipeline

    cache = tmp_path / "hub"
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / "models--me--tiny-student"
    shutil.copytree(work / "student", repo / "snapshots" / commit, ignore=shutil.ignore_patterns(".*"))
    (repo / "refs").mkdir()
    (repo / "refs" / "v1").write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    load_pipeline(str(work / "teacher")).save_pretrained(tmp_path / "teacher-fp16", variant="fp16")
    assert not list((tmp_path / "teacher-fp16" / "transformer").glob("diffusion_pytorch_model.safetensors"))

    out = tmp_path / "kd"
    args = distill_args(work, out, steps=2, checkpointing_steps=2)
    args[args.index("--teacher_model")] = "--pretrained_model_name_or_path"
    args[args.index("--pretrained_model_name_or_path") + 1] = tmp_path / "teacher-fp16"
    args[args.index("--student_model") + 1] = "me/tiny-student"
    with pytest.raises(LayerPruneError, match="could not read the student 'me/tiny-student'"):
        run_train_distill([*args, "--variant", "fp16", "--report_to", "none"])  # no revision main in the cache
    run_train_distill([*args, "--variant", "fp16", "--student_revision", "v1", "--report_to", "none"])
    record = json.loads((out / "distill_config.json").read_text())
    assert record["student_model"] == "me/tiny-student" and record["student_revision"] == "v1"
    assert record["teacher_variant"] == "fp16" and record["kept_layers"] == [0, 2, 3, 5]


# ----------------------------------------------------------------------------------------------------------------
# Trackers
# ----------------------------------------------------------------------------------------------------------------


def test_validation_images_go_to_wandb_when_it_is_the_tracker(monkeypatch):
    import types

    from PIL import Image

    from diffusers_layerprune.train_distill import log_validation_images

    logged = []

    class FakeImage:
        def __init__(self, image, caption=None):
            self.image, self.caption = image, caption

    class Tracker:
        name = "wandb"

        def log(self, values, step=None):
            logged.append((values, step))

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(Image=FakeImage))
    images = [Image.new("RGB", (4, 4)), Image.new("RGB", (4, 4), "red")]
    log_validation_images([Tracker()], images, ["0: a red fox", "1: a cat"], 7)
    ((values, step),) = logged
    assert step == 7 and [im.caption for im in values["validation"]] == ["0: a red fox", "1: a cat"]
    assert values["validation"][1].image is images[1]


# ----------------------------------------------------------------------------------------------------------------
# Bad input: one line, exit 2, nothing written
# ----------------------------------------------------------------------------------------------------------------


def test_training_bad_input_is_one_line_and_writes_nothing(work, tmp_path, capsys):
    def student_with(name, **changes):
        folder = tmp_path / name
        shutil.copytree(work / "student", folder)
        path = folder / "transformer" / "config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))
        return folder

    out_of_range = student_with("s-range", kept_layers=[0, 2, 3, 9])
    wider = student_with("s-wide", attention_head_dim=16)
    # a finished run of another student (blocks 2, 3 removed instead of 1, 4), to resume from by mistake
    assert cli(["prune", "--model", str(work / "teacher"), "--drop", "2,3", "--output", str(tmp_path / "s-other")]) == 0
    other = tmp_path / "other-run"
    other_args = distill_args(work, other, steps=1, checkpointing_steps=1)
    other_args[other_args.index("--student_model") + 1] = tmp_path / "s-other"
    run_train_distill([*other_args, "--report_to", "none"])
    mine = tmp_path / "mine"
    run_train_distill([*distill_args(work, mine, steps=1, checkpointing_steps=1), "--report_to", "none"])

    before = snapshot(tmp_path)
    out = tmp_path / "new"
    base = distill_args(work, out)

    def with_student(folder):
        args = list(base)
        args[args.index("--student_model") + 1] = folder
        return args

    train_refused(capsys, [*base, "--use_8bit_adam"], "--use_8bit_adam needs bitsandbytes")
    train_refused(capsys, [*base, "--report_to", "wandb"], "--report_to wandb needs wandb")
    train_refused(capsys, [*base, "--use_ema", "--use_lora"], "--use_ema", "--use_lora")
    train_refused(capsys, with_student(out_of_range), "[0, 2, 3, 9]", "out of")
    train_refused(capsys, with_student(wider), "differ in attention_head_dim (16 vs 8)")
    resume_other = [*base, "--resume_from_checkpoint", other / "checkpoint-1"]
    train_refused(capsys, resume_other, "belongs to another run", "kept_layers [0, 1, 4, 5]")
    again = distill_args(work, mine, steps=2)  # continuing "mine" with the other student
    again[again.index("--student_model") + 1] = tmp_path / "s-other"
    train_refused(capsys, [*again, "--resume_from_checkpoint", "latest"], "belongs to another run")
    assert snapshot(tmp_path) == before  # nothing created, changed or removed


def refused(capsys, argv, *fragments) -> None:
    capsys.readouterr()
    assert cli([str(a) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"layerprune {argv[0]}: error:"), err
    for fragment in fragments:
        assert fragment in err, err


def test_run_bad_launch_settings_are_one_line_and_write_nothing(tmp_path, capsys):
    run = ["run", "--model", "tiny-random", "--output", tmp_path / "r"]
    refused(capsys, [*run, "--num-processes", "0"], "--num-processes: must be a positive integer, got 0")
    refused(capsys, [*run, "--accelerate-config", tmp_path / "nope.yaml"], "nope.yaml does not exist")
    (tmp_path / "broken.yaml").write_text("compute_environment: [unclosed\n")
    refused(capsys, [*run, "--accelerate-config", tmp_path / "broken.yaml"], "broken.yaml cannot be read")
    config = write_accelerate_config(tmp_path)
    uneven = [*run, "--num-processes", "2", "--accelerate-config", config, "--distill-batch-size", "3"]
    refused(capsys, uneven, "3 (the global batch) does not split evenly over 2 processes")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["accelerate.yaml", "broken.yaml"]


def test_accelerate_commands(tmp_path):
    """What `accelerate launch` is told: two CPU processes need --multi_gpu and ACCELERATE_USE_CPU (with
    --cpu it starts one), a free port; an FSDP/DeepSpeed config keeps its own launcher; mixed precision and the
    config file are passed on."""
    from diffusers_layerprune.launch import LaunchSettings, accelerate_command

    config = write_accelerate_config(tmp_path)
    cmd, env = accelerate_command("pkg.mod", ["--x", "1"], LaunchSettings(num_processes=2, accelerate_config=config))
    assert cmd[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    assert cmd[-4:] == ["-m", "pkg.mod", "--x", "1"]
    launch = cmd[: cmd.index("-m", 3)]
    assert {"--multi_gpu", "--quiet"} <= set(launch) and "--cpu" not in launch
    assert launch[launch.index("--config_file") + 1] == str(config)
    assert launch[launch.index("--num_processes") + 1] == "2"
    assert launch[launch.index("--main_process_port") + 1] == "0"
    if not torch.cuda.is_available():
        assert env["ACCELERATE_USE_CPU"] == "1"

    fsdp = tmp_path / "fsdp.yaml"
    fsdp.write_text(config.read_text().replace("'NO'", "FSDP").replace("use_cpu: true", "use_cpu: false"))
    cmd, _ = accelerate_command("m", [], LaunchSettings(accelerate_config=fsdp, mixed_precision="bf16", verbose=True))
    launch = cmd[: cmd.index("-m", 3)]
    assert "--multi_gpu" not in launch and "--quiet" not in launch
    assert launch[launch.index("--mixed_precision") + 1] == "bf16"
    assert launch[launch.index("--num_processes") + 1] == "1"  # the config's


SLEEPER = textwrap.dedent(
    """
    import os, sys, time
    from diffusers_layerprune.launch import follow_parent

    follow_parent()
    path = sys.argv[1] + "." + os.environ.get("RANK", "0")
    open(path + ".tmp", "w").write(str(os.getpid()))
    os.replace(path + ".tmp", path)
    time.sleep(600)
    """
)

PARENT = textwrap.dedent(
    """
    import sys
    from diffusers_layerprune.launch import LaunchSettings, accelerate_command, run_child

    launch = LaunchSettings(num_processes=int(sys.argv[3]), accelerate_config=sys.argv[2])
    cmd, env = accelerate_command("sleeper", [sys.argv[1]], launch)
    run_child(cmd, env)
    """
)


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG and /proc are Linux")
@pytest.mark.parametrize("processes", [1, 2])
def test_a_killed_run_takes_its_accelerate_workers_with_it(tmp_path, processes):
    """`layerprune run` killed with SIGKILL: accelerate's launcher gets SIGTERM from the kernel, and the workers it
    started (which accelerate's one-process launcher does not stop) follow it."""
    (tmp_path / "sleeper.py").write_text(SLEEPER)
    config = write_accelerate_config(tmp_path)
    pid_file = tmp_path / "worker"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)]), "OMP_NUM_THREADS": "1"}
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(pid_file), str(config), str(processes)], env=env)
    files = [Path(f"{pid_file}.{rank}") for rank in range(processes)]
    try:
        deadline = time.monotonic() + 180
        while not all(f.exists() for f in files) and time.monotonic() < deadline:
            time.sleep(0.1)
        workers = [int(f.read_text()) for f in files]
        assert all(not _gone(w) for w in workers)
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=60)
        deadline = time.monotonic() + 60
        while not all(_gone(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert all(_gone(w) for w in workers), "a worker outlived the killed run"
    finally:
        parent.kill()
        parent.wait()
        for f in files:
            if f.exists() and not _gone(int(f.read_text())):
                os.kill(int(f.read_text()), signal.SIGKILL)


# ----------------------------------------------------------------------------------------------------------------
# Stages are library functions; records are typed
# ----------------------------------------------------------------------------------------------------------------


def _imports(path: Path, package: str) -> set[str]:
    """Modules of the package that ``path`` imports (anywhere in the file, also inside functions)."""
    module = path.relative_to(ROOT).with_suffix("").as_posix().replace("/", ".")
    parts = module.split(".")
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = parts[: len(parts) - node.level] if node.level else []
            target = ".".join([*base, *(node.module or "").split(".")]).strip(".") if node.level else node.module
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {m for m in found if m and m.startswith(package)}


def test_no_import_circle_among_cli_recipe_and_importance():
    modules = {
        "diffusers_layerprune.cli": PACKAGE / "cli.py",
        "diffusers_layerprune.recipe": PACKAGE / "recipe.py",
        **{f"diffusers_layerprune.importance.{p.stem}": p for p in (PACKAGE / "importance").glob("*.py")},
    }
    graph = {
        name: {m for m in _imports(path, "diffusers_layerprune") if m in modules} for name, path in modules.items()
    }
    assert "diffusers_layerprune.cli" not in graph["diffusers_layerprune.recipe"]
    assert not {m for m in graph["diffusers_layerprune.recipe"] if m.endswith(".cli")}
    for name in graph:
        if name.startswith("diffusers_layerprune.importance"):
            assert "diffusers_layerprune.cli" not in graph[name], name

    def reaches(start, goal, seen=()):
        return any(n == goal or (n not in seen and reaches(n, goal, (*seen, n))) for n in graph[start])

    assert not [name for name in graph if reaches(name, name)]
    assert "argparse" not in (PACKAGE / "recipe.py").read_text()


def test_stage_functions_write_into_new_folders(work, tmp_path):
    """score_blocks and evaluate_pipeline, called from Python, create the folders of their outputs."""
    from diffusers_layerprune import LayerImportance, evaluate_pipeline, score_blocks

    output = tmp_path / "runs" / "py" / "importance.json"
    common = dict(prompts=str(work / "prompts.txt"), steps=2)
    importance = score_blocks(str(work / "teacher"), "block_influence", output, num_prompts=2, **common)
    assert LayerImportance.load(output).values == importance.values and output.with_suffix(".png").is_file()
    assert score_blocks(str(work / "teacher"), "block_influence", None, num_prompts=2, **common).values == (
        importance.values
    )
    report = evaluate_pipeline(
        work / "student",
        output=tmp_path / "new" / "report.json",
        scorers="toy",
        num_prompts=2,
        latency_repeats=1,
        **common,
    )
    assert report.student.num_layers == 4 and (tmp_path / "new" / "report_grid.png").is_file()


def test_records_round_trip_and_refuse_what_they_cannot_read(tmp_path):
    from diffusers_layerprune import DistillConfig, EvalReport
    from diffusers_layerprune.distill import KDWeights
    from diffusers_layerprune.eval_report import EvalSettings, Latency, ModelEval, ScoreSummary

    config = DistillConfig("toy", "pruned", [0, 2], 4, steps=3, weights=KDWeights(feature_loss="normalized"))
    config.num_processes, config.train_batch_size, config.gradient_accumulation_steps = 2, 4, 3
    config.save(tmp_path)
    loaded = DistillConfig.load(tmp_path)
    assert loaded == config and loaded.global_batch_size == 24
    data = json.loads((tmp_path / "distill_config.json").read_text())
    assert data["format_version"] == 1 and data["feature_loss"] == "normalized" and data["weights"]["task"] == 1.0
    legacy = {k: v for k, v in data.items() if k not in ("format", "format_version", "use_ema")}
    assert DistillConfig.from_dict(legacy).weights.feature_loss == "normalized"  # written before the format field
    with pytest.raises(LayerPruneError, match="newer diffusers-layerprune"):
        DistillConfig.from_dict({**data, "format_version": 99})

    entry = ModelEval("m", 2, [0, 2], {"transformer": 10, "total": 20}, Latency(1.0, 0.02, 0.5, 1.3))
    entry.scores["toy"] = ScoreSummary(0.5, 0.1, 0.05, 4, [0.4, 0.5, 0.6, 0.5])
    settings = EvalSettings("toy:heldout", 4, ["toy"], 20, 4.5, 32, 16, teacher_cache={"reused": True, "seconds": 2})
    report = EvalReport("m", "toy", settings, {"student": entry}, ["a", "b", "c", "d"], {"torch": "x"})
    report.save(tmp_path / "report.json")
    assert EvalReport.load(tmp_path / "report.json") == report
    for bad, message in (({"models": {}}, "not an evaluation report"), ({**report.to_dict(), "format": "x"}, "format")):
        (tmp_path / "bad.json").write_text(json.dumps(bad))
        with pytest.raises(LayerPruneError, match=message):
            EvalReport.load(tmp_path / "bad.json")
