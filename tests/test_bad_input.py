"""Every mistake a user can make, per command: exit code 2, one line on stderr naming the offending value, no
traceback, and the file tree (every file's hash, hidden files and link targets included) left exactly as it was.

The workspace holds what users point commands at: a tiny pipeline, a pruned pipeline, importance files, a prompt
file, and damaged or hand-edited copies of each. Cases are grouped by kind: nonsense numbers, damaged artifacts,
inconsistent model folders, paths, recipes, devices and sizes.
"""

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from diffusers_layerprune.cli import main as cli

PROMPTS = ["a small red circle", "a large blue square", "a green star at the top left", "a white cross"]


def snapshot(root: Path) -> dict:
    tree = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            if path.is_symlink():
                tree[rel] = ("link", os.readlink(path))
            elif path.is_dir():
                tree[rel] = ("dir",)
            else:
                tree[rel] = ("file", hashlib.sha256(path.read_bytes()).hexdigest())
    return tree


def cli_refused_leaving_unchanged(capsys, args, message: str, *roots: Path) -> None:
    """``layerprune ARGS`` exits 2 with one line holding ``message``, and nothing under ``roots`` changes."""
    from diffusers_layerprune.cli import main as cli

    before = [snapshot(root) for root in roots]
    assert cli(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert [snapshot(root) for root in roots] == before


def _edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


@pytest.fixture(scope="module")
def ws(tmp_path_factory, tiny_pipeline_dir):
    """A workspace of inputs, good and damaged. Tests must not change it (the snapshot check would see it)."""
    root = tmp_path_factory.mktemp("bad")
    shutil.copytree(tiny_pipeline_dir, root / "model")
    (root / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    for name, cell in (("number", 5), ("null", None), ("list", ["a", "b"])):  # prompt cells that are not text
        rows = [{"prompt": PROMPTS[0]}, {"prompt": cell}, {"prompt": PROMPTS[1]}]
        (root / f"cells_{name}.json").write_text(json.dumps(rows))
    assert cli(["prune", "--model", str(root / "model"), "--drop", "1,4", "--output", str(root / "pruned")]) == 0
    assert cli(["score", "--model", str(root / "model"), "--criterion", "weight_norm", "--output",
                str(root / "imp.json")]) == 0  # fmt: skip

    def pruned_copy(name):
        shutil.copytree(root / "pruned", root / name)
        return root / name

    _edit_json(pruned_copy("short_kept") / "transformer" / "config.json", kept_layers=[0, 2, 3])
    _edit_json(pruned_copy("kept_out_of_range") / "transformer" / "config.json", kept_layers=[0, 2, 3, 9])
    _edit_json(pruned_copy("too_deep") / "transformer" / "config.json", num_layers=6, kept_layers=[0, 1, 2, 3, 4, 5])
    weights = pruned_copy("truncated") / "transformer" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    (pruned_copy("garbage") / "transformer" / "diffusion_pytorch_model.safetensors").write_bytes(b"\x00" * 64)
    for component in ("vae", "text_encoder"):  # cut short in the weights, past the header: named, never loaded
        weights = sorted((pruned_copy(f"truncated_{component}") / component).glob("*.safetensors"))[0]
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size * 9 // 10])
    (pruned_copy("bad_config") / "transformer" / "config.json").write_text("{not json")
    (pruned_copy("routed") / "routing.json").write_text("{}")  # a prompt-routed folder: pruning would drop the router
    # pickles where safetensors belong: refused by name, never opened
    weights = pruned_copy("pickled") / "transformer" / "diffusion_pytorch_model.safetensors"
    weights.rename(weights.with_suffix(".bin"))
    encoder = pruned_copy("pickled_encoder") / "text_encoder" / "model.safetensors"
    encoder.rename(encoder.parent / "pytorch_model.bin")

    imp = json.loads((root / "imp.json").read_text())
    (root / "imp_nan.json").write_text(json.dumps({**imp, "values": [float("nan")] + imp["values"][1:]}))
    for name, cell in (("text", "0.3"), ("bool", True), ("null", None)):  # values that are not numbers
        (root / f"imp_{name}.json").write_text(json.dumps({**imp, "values": [cell] + imp["values"][1:]}))
    (root / "imp_meta.json").write_text(json.dumps({**imp, "metadata": "oops"}))
    (root / "imp_truncated.json").write_text((root / "imp.json").read_text()[:50])
    (root / "not_importance.json").write_text(json.dumps({"hello": 1}))

    push_imp = pruned_copy("push_bad_importance")
    (push_imp / "importance.json").write_text("{")
    push_report = pruned_copy("push_bad_report")
    (push_report / "report.json").write_text(json.dumps({"settings": 3, "models": []}))

    (root / "recipe_syntax.yaml").write_text("model: [toy\n")
    (root / "recipe_types.yaml").write_text("num_prompts: many\n")
    (root / "recipe_unknown.yaml").write_text("modle: toy\n")
    (root / "recipe_tag.yaml").write_text("model: !!python/object/apply:os.system [echo]\n")
    (root / "a_file").write_text("not a folder")
    (root / "prog.json.progress.jsonl").write_text('{"not": "a scan record"}\n')  # a hand-made progress file
    from diffusers_layerprune.outputs import write_marker

    (root / "old_run").mkdir()
    write_marker(root / "old_run", "run", entries=())  # a run folder of ours whose record was damaged
    (root / "old_run" / "run.json").write_text('{"stages": {"score": ')
    return root


M, P = "{model}", "{pruned}"

# command, arguments (placeholders filled from the workspace), fragment of the one-line message
CASES = {
    # -- prune -------------------------------------------------------------------------------------------------
    "prune/ratio_nan": ("prune", [M, "--importance", "{imp}", "--ratio", "nan"], "--ratio must be between 0 and 1"),
    "prune/num_layers_negative": ("prune", [M, "--importance", "{imp}", "--num-layers", "-1"], "got -1"),
    "prune/index_out_of_range": ("prune", [M, "--drop", "7"], "7"),
    "prune/importance_nan": ("prune", [M, "--importance", "{imp_nan}", "--ratio", "0.5"], "not finite"),
    "prune/importance_value_text": ("prune", [M, "--importance", "{imp_text}", "--ratio", "0.5"], "found '0.3'"),
    "prune/importance_value_bool": ("prune", [M, "--importance", "{imp_bool}", "--ratio", "0.5"], "found True"),
    "prune/importance_value_null": ("prune", [M, "--importance", "{imp_null}", "--ratio", "0.5"], "must be a list"),
    "prune/importance_metadata": ("prune", [M, "--importance", "{imp_meta}", "--ratio", "0.5"], "metadata must be"),
    "prune/importance_truncated": ("prune", [M, "--importance", "{imp_truncated}", "--ratio", "0.5"], "not valid JSON"),
    "prune/importance_foreign": (
        "prune",
        [M, "--importance", "{not_importance}", "--ratio", "0.5"],
        "not a layer-importance",
    ),
    "prune/span_missing": ("prune", [M, "--importance", "{imp}", "--remove", "2", "--plan", "span"], "span plan needs"),
    "prune/short_kept_layers": ("prune", ["{short_kept}", "--drop", "0"], "kept_layers in"),
    "prune/kept_out_of_range": ("prune", ["{kept_out_of_range}", "--drop", "0"], "out of range"),
    "prune/num_layers_beyond_weights": ("prune", ["{too_deep}", "--drop", "0"], "the weights hold 4 blocks"),
    "prune/truncated_weights": ("prune", ["{truncated}", "--drop", "0"], "is damaged or not a safetensors file"),
    "prune/garbage_weights": ("prune", ["{garbage}", "--drop", "0"], "is damaged or not a safetensors file"),
    "prune/bad_config_json": ("prune", ["{bad_config}", "--drop", "0"], "could not read the transformer config"),
    "prune/routed_folder": ("prune", ["{routed}", "--drop", "0"], "pruning it would drop its router"),
    "prune/pickled_weights": ("prune", ["{pickled}", "--drop", "0"], "diffusion_pytorch_model.bin holds pickled"),
    "eval/pickled_text_encoder": (
        "eval",
        ["{pickled_encoder}", "--prompts", "{prompts}"],
        "pytorch_model.bin holds pickled weights",
    ),
    "prune/output_under_a_file": (
        "prune",
        [M, "--drop", "0", "--output-override", "{a_file}/x"],
        "is a file, not a folder",
    ),
    "prune/output_is_a_file": ("prune", [M, "--drop", "0", "--output-override", "{a_file}"], "is a file, not a folder"),
    # -- score -------------------------------------------------------------------------------------------------
    "score/steps_0": ("score", [M, "--steps", "0"], "argument --steps: must be a positive integer, got 0"),
    "score/batch_size_0": ("score", [M, "--batch-size", "0"], "argument --batch-size: must be a positive integer"),
    "score/num_prompts_negative": ("score", [M, "--num-prompts", "-1"], "argument --num-prompts"),
    "score/guidance_nan": ("score", [M, "--guidance", "nan"], "argument --guidance: must be a finite number"),
    "score/resolution_not_divisible": ("score", [M, "--resolution", "30"], "--resolution 30 is not a multiple of 4"),
    "score/output_png": ("score", [M, "--output-override", "{ws}/x.png"], "must end in .json"),
    "score/unknown_criterion": ("score", [M, "--criterion", "nope"], "nope"),
    "score/damaged_model": ("score", ["{truncated}"], "is damaged or not a safetensors file"),
    "score/unknown_prompts": ("score", [M, "--prompts", "nonsense"], "unknown prompt set 'nonsense'"),
    "score/foreign_progress_record": (
        "score",
        [M, "--criterion", "block_influence", "--prompts", "{prompts}", "--output-override", "{ws}/prog.json"],
        "line 1 is not a scan record",
    ),
    # -- eval --------------------------------------------------------------------------------------------------
    "eval/cuda_on_cpu": ("eval", [P, "--device", "cuda"], "CUDA is not available"),
    "eval/unknown_device": ("eval", [P, "--device", "tpu7"], "tpu7"),
    "eval/latency_repeats_0": ("eval", [P, "--latency-repeats", "0"], "argument --latency-repeats"),
    "eval/guidance_inf": ("eval", [P, "--guidance", "inf"], "argument --guidance: must be a finite number"),
    "eval/resolution_odd": ("eval", [P, "--resolution", "17"], "--resolution 17 is not a multiple of 4"),
    "eval/damaged_model": ("eval", ["{garbage}"], "is damaged or not a safetensors file"),
    "eval/short_kept_layers": ("eval", ["{short_kept}"], "kept_layers in"),
    "eval/output_is_folder": ("eval", [P, "--output-override", "{ws}"], "is a folder"),
    "eval/teacher_and_no_teacher": ("eval", [P, "--teacher", "{model}", "--no-teacher"], "--no-teacher leaves out"),
    "prune/base_model_of_a_pipeline": ("prune", [M, "--drop", "0", "--base-model", "org/x"], "--base-model applies"),
    "eval/scorers_empty": ("eval", [P, "--scorers", ","], "--scorers names no scorer"),
    "eval/prompt_cell_null": ("eval", [P, "--prompts", "{cells_null}"], "prompt cells are not text (row 2: None"),
    "score/prompt_cell_number": ("score", [M, "--prompts", "{cells_number}"], "are not text (row 2: 5, int)"),
    "score/prompt_cell_list": ("score", [M, "--prompts", "{cells_list}"], "are not text (row 2: ['a', 'b'], list)"),
    "prune/revision_walks_out": ("prune", [M, "--drop", "0", "--revision", "../../etc"], "is not a branch, tag"),
    "prune/revision_of_a_local_model": ("prune", [M, "--drop", "0", "--revision", "v1"], "--revision v1 picks a"),
    "eval/revision_of_the_toy": ("eval", ["toy", "--revision", "main"], "toy is a local or built-in model"),
    # -- push --------------------------------------------------------------------------------------------------
    "push/revision_walks_out": ("push", [P, "--repo-id", "me/x", "--dry-run", "--revision", "a/../b"], "is not a"),
    "push/empty_license": ("push", [P, "--repo-id", "me/x", "--dry-run", "--license", ""], "--license is empty"),
    "push/report_missing": ("push", [P, "--repo-id", "me/x", "--dry-run", "--report", "{ws}/no.json"], "--report"),
    "push/damaged_importance": (
        "push",
        ["{push_bad_importance}", "--repo-id", "me/x", "--dry-run"],
        "importance.json is damaged",
    ),
    "push/damaged_report": (
        "push",
        ["{push_bad_report}", "--repo-id", "me/x", "--dry-run"],
        "is damaged or hand-edited",
    ),
    "push/truncated_weights": ("push", ["{truncated}", "--repo-id", "me/x", "--dry-run"], "is damaged or not a"),
    "push/truncated_vae": (
        "push",
        ["{truncated_vae}", "--repo-id", "me/x", "--dry-run"],
        "vae/diffusion_pytorch_model.safetensors is damaged",
    ),
    "eval/truncated_text_encoder": (
        "eval",
        ["{truncated_text_encoder}", "--prompts", "{prompts}"],
        "text_encoder/model.safetensors is damaged",
    ),
    "prune/truncated_vae": ("prune", ["{truncated_vae}", "--drop", "0"], "vae/diffusion_pytorch_model.safetensors is"),
    "push/bad_repo_id": ("push", [P, "--repo-id", "not a repo", "--dry-run"], "invalid repo id"),
    "push/not_a_folder": ("push", ["{a_file}", "--repo-id", "me/x", "--dry-run"], "does not exist or is not a folder"),
    # -- run ---------------------------------------------------------------------------------------------------
    "run/ratio_too_big": ("run", ["--ratio", "1.5"], "--ratio must be between 0 and 1"),
    "run/num_layers_all": ("run", ["--num-layers", "12"], "--num-layers (blocks to keep) must be between 1 and 11"),
    "run/distill_steps_negative": ("run", ["--distill-steps", "-1"], "argument --distill-steps: must be 0 or more"),
    "run/num_prompts_0": ("run", ["--num-prompts", "0"], "argument --num-prompts"),
    "run/recipe_syntax": ("run", ["--recipe", "{recipe_syntax}"], "line 2, column 1"),
    "run/recipe_types": ("run", ["--recipe", "{recipe_types}"], "num_prompts must be int, got 'many'"),
    "run/recipe_unknown": ("run", ["--recipe", "{recipe_unknown}"], "unknown field(s) ['modle']"),
    "run/recipe_tag": ("run", ["--recipe", "{recipe_tag}"], "could not determine a constructor"),
    "run/recipe_missing": ("run", ["--recipe", "{ws}/none.yaml"], "does not exist"),
    # before the scan and pruning, not when the training process starts (CPU machines: fp16 needs a GPU)
    "run/fp16_on_cpu": ("run", ["--mixed-precision", "fp16"], "--mixed_precision fp16 needs a GPU"),
    "run/bad_model_path": ("run", ["--model", "{ws}/nothing"], "does not exist"),
    "run/damaged_run_record": ("run", ["--output-override", "{old_run}"], "run.json is damaged"),
}


def _argv(case: str, ws: Path) -> list[str]:
    command, args, _ = CASES[case]
    values = {p.stem if p.suffix in (".json", ".yaml", ".txt") else p.name: str(p) for p in ws.iterdir()}
    values.update(ws=str(ws), model=str(ws / "model"), pruned=str(ws / "pruned"), out=str(ws / "out"))
    filled = [a.format(**values) for a in args]
    output = [str(ws / "out" / "x.json")] if command in ("score", "eval") else [str(ws / "out")]
    if "--output-override" in filled:  # the case is about the output path itself
        i = filled.index("--output-override")
        output = [filled[i + 1]]
        del filled[i : i + 2]
    if command in ("prune", "score", "eval"):
        return [command, "--model", *filled, "--output", *output]
    if command == "run":
        return [command, *filled, "--output", *output]
    return [command, *filled]


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input(ws, case, capsys):
    before = snapshot(ws)
    argv = _argv(case, ws)
    capsys.readouterr()
    assert cli(argv) == 2, argv
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"layerprune {argv[0]}: error:") and "Traceback" not in err, err
    assert CASES[case][2] in err, err
    assert snapshot(ws) == before  # nothing created, changed or removed


def test_matrix_covers_every_command():
    per_command = {}
    for command, _, _ in CASES.values():
        per_command[command] = per_command.get(command, 0) + 1
    assert set(per_command) == {"prune", "score", "eval", "push", "run"} and min(per_command.values()) >= 4


TRAIN_CASES = {
    "max_train_steps_0": (["--max_train_steps", "0"], "argument --max_train_steps: must be a positive integer"),
    "checkpointing_steps_0": (["--checkpointing_steps", "0"], "argument --checkpointing_steps"),
    "negative_learning_rate": (["--learning_rate", "-1"], "argument --learning_rate: must be greater than 0"),
    "unknown_report_to": (["--report_to", "mlflowx"], "argument --report_to: invalid choice: 'mlflowx'"),
    "batch_size_0": (["--train_batch_size", "0"], "argument --train_batch_size"),
    "adam_beta_1_5": (["--adam_beta1", "1.5"], "argument --adam_beta1: must be in [0, 1)"),
    "resolution_not_divisible": (["--resolution", "30"], "--resolution 30 is not a multiple of 4"),
    "student_short_kept": (["--student_model", "{short_kept}"], "kept_layers in"),
    "student_damaged_weights": (["--student_model", "{garbage}"], "is damaged or not a safetensors file"),
    "student_is_teacher": (["--student_model", "{model}"], "has no kept_layers"),
    # flags the chosen path would ignore
    "rank_without_lora": (["--rank", "8"], "--rank applies only with --use_lora"),
    "ema_decay_without_ema": (["--ema_decay", "0.99"], "--ema_decay applies only with --use_ema"),
    "validation_steps_without_prompts": (["--validation_steps", "5"], "applies only with --validation_prompts"),
    "resume_mismatch_without_resume": (["--resume_mismatch", "restart"], "only with --resume_from_checkpoint"),
    "prompt_column_without_dataset": (["--prompt_column", "text"], "--prompt_column applies to --dataset_name"),
    "image_column_prompt_only": (["--image_column", "img"], "--image_column applies to image-caption datasets"),
}


@pytest.mark.parametrize("case", sorted(TRAIN_CASES))
def test_train_distill_bad_input(ws, case, capsys):
    from accelerate.state import AcceleratorState, GradientState

    from diffusers_layerprune.train_distill import cli as train_cli

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    extra, message = TRAIN_CASES[case]
    values = {p.name: str(p) for p in ws.iterdir()}
    base = ["--teacher_model", str(ws / "model"), "--student_model", str(ws / "pruned"), "--output_dir",
            str(ws / "out_train"), "--prompts", str(ws / "prompts.txt"), "--cache_dir", str(ws / "cache"),
            "--max_train_steps", "2", "--max_sequence_length", "16", "--report_to", "none"]  # fmt: skip
    before = snapshot(ws)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        train_cli(base + [a.format(**values) for a in extra])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("train_distill: error:") and "Traceback" not in err, err
    assert message in err, err
    assert snapshot(ws) == before


@pytest.mark.parametrize(
    "budget, accepted", [("1.0", False), ("1e0", False), ("1", True), ("0.75", True), ("9.5", True)]
)
def test_route_budget_one_point_zero_is_ambiguous(budget, accepted):
    import argparse

    from diffusers_layerprune.routing.cli import _budget

    if accepted:
        assert _budget(budget) == float(budget)
    else:
        with pytest.raises(argparse.ArgumentTypeError, match="is ambiguous"):
            _budget(budget)
