"""`layerprune score`, `layerprune prune --importance`, bad input, and the two-process accelerate run."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from diffusers_layerprune.cli import main
from diffusers_layerprune.errors import LayerPruneError
from diffusers_layerprune.importance import LayerImportance
from diffusers_layerprune.importance.cli import PLAN_NAMES
from diffusers_layerprune.importance.plans import PLANS
from diffusers_layerprune.importance.registry import CRITERIA_MODULES

from helpers import read_config

WORKTREE = Path(__file__).resolve().parents[1]
PROMPTS = "a red circle\na blue square\na green star\na small yellow cross\na large white triangle\n"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Same thread count as each accelerate worker, so the two runs do the same arithmetic.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    from diffusers_layerprune.scorers.tiny import save_tiny_clip_folder

    root = tmp_path_factory.mktemp("assets")
    (root / "prompts.txt").write_text(PROMPTS)
    (root / "empty.txt").write_text("\n")
    return {"scorer": save_tiny_clip_folder(root / "tinyclip", seed=3), "prompts": root / "prompts.txt", "root": root}


def score_args(model, assets, output, *extra):
    return [
        "score",
        "--model",
        str(model),
        "--scorer",
        str(assets["scorer"]),
        "--prompts",
        str(assets["prompts"]),
        "--steps",
        "2",
        "--guidance",
        "2.0",
        "--batch-size",
        "2",
        "--num-timesteps",
        "2",
        "--no-progress",
        "--output",
        str(output),
        *extra,
    ]


def test_help_names_every_criterion_and_plan(capsys):
    assert main(["score", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert all(name in text for name in CRITERIA_MODULES)
    assert set(PLAN_NAMES) == set(PLANS)


def test_score_writes_json_and_png_then_prune_drops_the_least_important(tiny_pipeline_dir, assets, tmp_path, capsys):
    output = tmp_path / "imp.json"
    assert main(score_args(tiny_pipeline_dir, assets, output, "--criterion", "preference")) == 0
    printed = capsys.readouterr().out
    assert "preference importance" in printed and "least important 2" in printed
    importance = LayerImportance.load(output)
    assert importance.criterion == "preference" and importance.num_layers == 6
    assert importance.metadata["model"] == tiny_pipeline_dir.name  # a local model by its folder name only
    assert importance.metadata["prompts"]["count"] == 5 and importance.metadata["num_inference_steps"] == 2
    assert importance.stderr is not None and len(importance.per_prompt[0]) == 5
    assert (tmp_path / "imp.png").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["imp.json", "imp.png"]  # progress file removed

    # an existing output is refused without --overwrite
    assert main(score_args(tiny_pipeline_dir, assets, output, "--criterion", "random")) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err

    pruned = tmp_path / "pruned"
    assert main(["prune", "--model", str(tiny_pipeline_dir), "--importance", str(output), "--ratio", "0.34",
                 "--output", str(pruned)]) == 0  # fmt: skip
    config = read_config(pruned / "transformer" / "config.json")
    assert config["kept_layers"] == importance.kept_layers(2) and config["num_layers"] == 4


def test_score_greedy_order_and_span_plan_through_prune(tiny_pipeline_dir, assets, tmp_path):
    greedy_file = tmp_path / "loss.json"
    args = score_args(tiny_pipeline_dir, assets, greedy_file, "--criterion", "output_loss", "--greedy-steps", "2")
    assert main(args) == 0
    importance = LayerImportance.load(greedy_file)
    order = importance.extra["greedy_order"]
    assert len(order) == 2 and order[0] == importance.ranking()[0]
    assert main(["prune", "--model", str(tiny_pipeline_dir), "--importance", str(greedy_file), "--remove", "2",
                 "--plan", "greedy", "--output", str(tmp_path / "g")]) == 0  # fmt: skip
    kept = read_config(tmp_path / "g" / "transformer" / "config.json")["kept_layers"]
    assert sorted(set(range(6)) - set(kept)) == sorted(order)

    span_file = tmp_path / "ang.json"
    assert main(score_args(tiny_pipeline_dir, assets, span_file, "--criterion", "angular_distance")) == 0
    best = LayerImportance.load(span_file).extra["best_span"]["3"]
    assert main(["prune", "--model", str(tiny_pipeline_dir), "--importance", str(span_file), "--num-layers", "3",
                 "--plan", "span", "--output", str(tmp_path / "s")]) == 0  # fmt: skip
    kept = read_config(tmp_path / "s" / "transformer" / "config.json")["kept_layers"]
    assert sorted(set(range(6)) - set(kept)) == [best, best + 1, best + 2]


@pytest.fixture(scope="module")
def weight_norm_file(tiny_pipeline_dir, tmp_path_factory):
    output = tmp_path_factory.mktemp("wn") / "wn.json"
    assert (
        main(["score", "--model", str(tiny_pipeline_dir), "--criterion", "weight_norm", "--output", str(output)]) == 0
    )
    return output


def _other_model_file(path, tiny_pipeline_dir, num_layers, model):
    LayerImportance(values=list(range(num_layers)), criterion="random", metadata={"model": model}).save(path)
    return path


@pytest.mark.parametrize(
    "case, message",
    [
        ("unknown_criterion", "unknown criterion 'nope'; known criteria: preference, block_influence"),
        ("unknown_scorer", "unknown scorer 'nope'; known scorers:"),
        ("empty_prompts", "is empty"),
        ("zero_prompts", "argument --num-prompts: must be a positive integer, got 0"),
    ],
)
def test_score_bad_input_one_line_exit_2_nothing_written(tiny_pipeline_dir, assets, tmp_path, capsys, case, message):
    output = tmp_path / "out" / "imp.json"
    extra = {
        "unknown_criterion": ["--criterion", "nope"],
        "unknown_scorer": ["--criterion", "preference", "--scorer", "nope"],
        "empty_prompts": ["--criterion", "preference", "--prompts", str(assets["root"] / "empty.txt")],
        "zero_prompts": ["--criterion", "preference", "--num-prompts", "0"],
    }[case]
    assert main(score_args(tiny_pipeline_dir, assets, output, *extra)) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "case, message",
    [
        ("all_layers", "--num-layers (blocks to keep) must be between 1 and 5 for a model of 6 blocks, got 6"),
        ("zero_layers", "must be between 1 and 5 for a model of 6 blocks, got 0"),
        ("remove_all", "--remove (blocks to remove) must be between 1 and 5 for a model of 6 blocks, got 6"),
        ("two_sizes", "with --importance give exactly one of --num-layers (blocks to keep), --remove"),
        ("ratio", "--ratio must be between 0 and 1"),
        ("other_depth", "the importance file has 4 blocks"),
        ("other_model", "the importance file was measured on some/other-model"),
        ("no_size", "give exactly one of --num-layers (blocks to keep), --remove (blocks to remove) or --ratio"),
        ("span_of_norms", "the span plan needs an angular_distance importance file"),
        ("size_without_importance", "--num-layers, --remove, --ratio and --plan go with --importance"),
    ],
)
def test_prune_importance_bad_input(tiny_pipeline_dir, weight_norm_file, tmp_path, capsys, case, message):
    files = tmp_path / "files"
    files.mkdir()
    imp = str(weight_norm_file)
    args = {
        "all_layers": ["--importance", imp, "--num-layers", "6"],
        "zero_layers": ["--importance", imp, "--num-layers", "0"],
        "remove_all": ["--importance", imp, "--remove", "6"],
        "two_sizes": ["--importance", imp, "--remove", "2", "--num-layers", "4"],
        "ratio": ["--importance", imp, "--ratio", "1.5"],
        "other_depth": [
            "--importance",
            str(_other_model_file(files / "a.json", tiny_pipeline_dir, 4, None)),
            "--num-layers",
            "1",
        ],  # fmt: skip
        "other_model": [
            "--importance",
            str(_other_model_file(files / "b.json", tiny_pipeline_dir, 6, "some/other-model")),
            "--num-layers",
            "1",
        ],  # fmt: skip
        "no_size": ["--importance", imp],
        "span_of_norms": ["--importance", imp, "--num-layers", "2", "--plan", "span"],
        "size_without_importance": ["--drop", "1", "--num-layers", "2"],
    }[case]
    before = sorted(p.name for p in files.iterdir())
    out = tmp_path / "pruned"
    assert main(["prune", "--model", str(tiny_pipeline_dir), *args, "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not out.exists() and sorted(p.name for p in files.iterdir()) == before


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def subprocess_runs(tmp_path_factory, tiny_pipeline_dir, assets):
    """Run ``layerprune`` in fresh processes; returns ``run(args, accelerate=False, wait=True)``.

    Every run gets the same thread count and ``MKL_CBWR=COMPATIBLE``: MKL otherwise picks kernels by memory
    alignment, which moves float32 results by an ulp between any two processes, split or not.
    """
    root = tmp_path_factory.mktemp("runs")
    script = root / "layerprune_main.py"
    script.write_text("import sys\nfrom diffusers_layerprune.cli import main\nsys.exit(main())\n")
    config = root / "accelerate.yaml"
    config.write_text("compute_environment: LOCAL_MACHINE\ndistributed_type: MULTI_GPU\n")
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_CBWR="COMPATIBLE", HF_HUB_OFFLINE="1", PYTHONPATH=str(WORKTREE))

    def run(args, accelerate=False, wait=True):
        command = [sys.executable, str(script), *args]
        if accelerate:
            command = [
                sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config), "--multi_gpu",
                "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                "--main_process_port", str(_free_port()), str(script), *args,
            ]  # fmt: skip
        run_env = {**env, "ACCELERATE_USE_CPU": "1"} if accelerate else env
        if not wait:
            return subprocess.Popen(command, env=run_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        done = subprocess.run(command, env=run_env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        return done

    reference = root / "single.json"
    run(score_args(tiny_pipeline_dir, assets, reference, "--criterion", "preference"))
    return run, LayerImportance.load(reference)


@pytest.mark.slow
def test_two_accelerate_processes_match_one_process(subprocess_runs, tiny_pipeline_dir, assets, tmp_path):
    run, one = subprocess_runs
    double = tmp_path / "double.json"
    done = run(score_args(tiny_pipeline_dir, assets, double, "--criterion", "preference"), accelerate=True)
    assert done.stdout.count("wrote ") == 1  # only the main process writes
    two = LayerImportance.load(double)
    assert two.metadata["num_processes"] == 2 and one.metadata["num_processes"] == 1
    assert two.values == one.values and two.per_prompt == one.per_prompt and two.stderr == one.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["double.json", "double.png"]


@pytest.mark.slow
def test_a_killed_scan_restarts_and_ends_with_identical_numbers(subprocess_runs, tiny_pipeline_dir, assets, tmp_path):
    run, reference = subprocess_runs
    output = tmp_path / "imp.json"
    progress = tmp_path / "imp.json.progress.jsonl"
    args = score_args(tiny_pipeline_dir, assets, output, "--criterion", "preference")
    process = run(args, wait=False)
    deadline = time.monotonic() + 240
    while process.poll() is None and time.monotonic() < deadline:
        if progress.is_file() and len(progress.read_text().splitlines()) >= 3:
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    process.wait(timeout=60)
    process.stdout.close()
    process.stderr.close()
    assert process.returncode == -signal.SIGKILL, "the scan finished before it could be killed"
    finished = len(progress.read_text().splitlines())
    assert not output.exists() and 3 <= finished < 21

    done = run(args)
    assert f"{finished} of 21 units already done" in done.stdout
    resumed = LayerImportance.load(output)
    assert resumed.values == reference.values and resumed.per_prompt == reference.per_prompt
    assert sorted(p.name for p in tmp_path.iterdir()) == ["imp.json", "imp.png"]


def test_score_blocks_is_the_python_form_of_score(tiny_pipeline_dir, assets, tmp_path):
    from diffusers_layerprune.importance import score_blocks

    output = tmp_path / "importance.json"
    LayerImportance([0.0] * 6, "random").save(output, plot=False)  # an earlier result: replaced, as the recipe expects
    result = score_blocks(str(tiny_pipeline_dir), "block_influence", output, prompts=str(assets["prompts"]), steps=2)
    assert LayerImportance.load(output).values == result.values and result.criterion == "block_influence"
    assert result.metadata["num_inference_steps"] == 2 and result.metadata["prompts"]["count"] == 5
    with pytest.raises(LayerPruneError, match="already exists"):
        score_blocks(str(tiny_pipeline_dir), "random", output, overwrite=False)


def test_prune_num_layers_is_the_pruned_depth(tiny_pipeline_dir, weight_norm_file, tmp_path):
    # --num-layers means what diffusers' config.num_layers means: the depth of the pruned model
    imp = str(weight_norm_file)
    for i, (flags, depth) in enumerate(((["--num-layers", "4"], 4), (["--remove", "4"], 2), (["--ratio", "0.5"], 3))):
        out = tmp_path / str(i)
        assert (
            main(["prune", "--model", str(tiny_pipeline_dir), "--importance", imp, *flags, "--output", str(out)]) == 0
        )
        config = read_config(out / "transformer" / "config.json")
        assert config["num_layers"] == depth == len(config["kept_layers"])
