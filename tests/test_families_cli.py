"""`layerprune score` (every criterion), `prune`, `eval` and the model card on every registered family's tiny pipeline
(PixArt-Sigma's own tests cover the first), and the bad input of many families: one line, exit 2, nothing written."""

import hashlib
import json
import os
from pathlib import Path

import pytest

from diffusers_layerprune import LayerPruneError
from diffusers_layerprune.cli import main as cli
from diffusers_layerprune.families import DEFAULT_FAMILY, FAMILIES, get_family
from diffusers_layerprune.importance.learnable import check_family
from diffusers_layerprune.importance.registry import CRITERIA_MODULES
from diffusers_layerprune.testing import TINY_RESOLUTION

from helpers import read_config

FAMILY_NAMES = [name for name in FAMILIES if name != DEFAULT_FAMILY]


def learnable_refuses(family: str) -> bool:
    try:
        check_family(get_family(family))
    except LayerPruneError:
        return True
    return False


def stack_names(family: str) -> list[str] | None:
    """Each block's label in outputs of a many-stack family (``double 0``, ...), ``None`` for one stack."""
    record = get_family(family)
    depths = [len(getattr(record.tiny_pipeline().transformer, s.attr)) for s in record.stacks]
    return record.block_names(depths) if len(record.stacks) > 1 else None


PROMPTS = "a small red circle\na large blue square\n"


def quick_score(model, output, criterion, prompts):
    return [
        "score", "--model", str(model), "--criterion", criterion, "--scorer", "toy", "--prompts", str(prompts),
        "--steps", "1", "--guidance", "1.0", "--batch-size", "2", "--num-timesteps", "1", "--no-progress",
        "--output", str(output),
    ]  # fmt: skip


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    path.write_text(PROMPTS)
    return path


@pytest.mark.parametrize("criterion", sorted(CRITERIA_MODULES))
@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_score_every_criterion(family, criterion, prompts, tmp_path, capsys):
    output = tmp_path / "imp.json"
    if criterion == "learnable" and learnable_refuses(family):  # blocks that also carry the text stream
        assert cli(quick_score(f"tiny-random-{family}", output, criterion, prompts)) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "learnable supports the families" in err[0] and "pixart, sana" in err[0], err
        assert not output.exists()
        return
    # learnable trains masks for 200 steps by default; 4 give the same outputs to check (it was 60 s of the suite)
    extra = ["--learn-steps", "4"] if criterion == "learnable" else []
    assert cli([*quick_score(f"tiny-random-{family}", output, criterion, prompts), *extra]) == 0
    data = json.loads(output.read_text())
    values = data["values"]
    assert len(values) == 6 and all(isinstance(v, float) for v in values)
    assert data["metadata"]["family"] == family
    out = capsys.readouterr().out
    names = stack_names(family)
    if names is not None:  # every output names each block's stack
        assert data["metadata"]["block_names"] == names
        assert "stack    " + "   ".join(n.split()[0] for n in names[:3]) in out
    else:
        assert data["metadata"]["block_names"] is None


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_prune_from_importance_then_eval_and_card(family, prompts, tmp_path, capsys):
    imp = tmp_path / "imp.json"
    assert cli(quick_score(f"tiny-random-{family}", imp, "output_loss", prompts)) == 0
    pruned = tmp_path / "pruned"
    args = ["prune", "--model", f"tiny-random-{family}", "--importance", str(imp), "--remove", "2"]
    assert cli([*args, "--output", str(pruned)]) == 0
    config = read_config(pruned / "transformer" / "config.json")
    ranked = sorted(range(6), key=lambda i: json.loads(imp.read_text())["values"][i])
    assert config["kept_layers"] == [i for i in range(6) if i not in ranked[:2]]
    if len(get_family(family).stacks) > 1:
        assert sum(config[s.depth_key] for s in get_family(family).stacks) == 4
        assert f"kept {get_family(family).stacks[0].kind} blocks:" in capsys.readouterr().out

    report = tmp_path / "report.json"
    # at the tiny size (a saved tiny Flux-like folder's default is its pipeline's, 256 pixels: 4096 image tokens)
    size = str(TINY_RESOLUTION[family])
    argv = ["eval", "--model", str(pruned), "--scorers", "toy", "--prompts", str(prompts), "--steps", "1",
            "--batch-size", "2", "--latency-repeats", "1", "--resolution", size, "--output", str(report)]  # fmt: skip
    assert cli(argv) == 0
    data = json.loads(report.read_text())
    assert data["models"]["student"]["num_layers"] == 4 and data["models"]["teacher"]["num_layers"] == 6

    assert cli(["push", str(pruned), "--repo-id", f"me/{family}-pruned", "--dry-run"]) == 0
    card = (pruned / "README.md").read_text()
    record = get_family(family)
    assert "from diffusers import DiffusionPipeline" in card and record.pruned_class().__name__ in card
    assert f"- {record.hub_tag}\n" in card  # the family's Hub tag
    if stack_names(family) is not None:
        assert "double blocks are global indices 0..1, single blocks are global indices 2..5" in card


def snapshot(root: Path) -> dict:
    tree = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            tree[rel] = ("dir",) if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return tree


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """Inputs of several families: a flux pipeline folder, a pruned one, importance files, an unsupported model."""
    from diffusers_layerprune.testing import build_tiny_flux_pipeline

    root = tmp_path_factory.mktemp("families_bad")
    build_tiny_flux_pipeline().save_pretrained(root / "flux")
    assert cli(["prune", "--model", str(root / "flux"), "--drop", "1,5", "--output", str(root / "flux_pruned")]) == 0
    for family in ("flux", "sd3"):
        argv = ["score", "--model", f"tiny-random-{family}", "--criterion", "weight_norm", "--output",
                str(root / f"{family}_imp.json")]  # fmt: skip
        assert cli(argv) == 0
    # a pipeline whose transformer is of a family layerprune does not support
    (root / "other" / "transformer").mkdir(parents=True)
    (root / "other" / "model_index.json").write_text(json.dumps({"_class_name": "HunyuanDiTPipeline"}))
    (root / "other" / "transformer" / "config.json").write_text(
        json.dumps({"_class_name": "HunyuanDiT2DModel", "num_layers": 4})
    )
    return root


CASES = {
    "unsupported_family": (
        ["prune", "--model", "{other}", "--drop", "1", "--output", "{out}"],
        "holds a HunyuanDiT2DModel; layerprune supports PixArt-Sigma (PixArtTransformer2DModel), Sana "
        "(SanaTransformer2DModel), Stable Diffusion 3 / 3.5 (SD3Transformer2DModel), Flux.1 (FluxTransformer2DModel)",
    ),
    "flux_all_double_blocks": (
        ["prune", "--model", "{flux}", "--drop", "0,1", "--output", "{out}"],
        "every double block would be removed (num_layers=2); keep at least one block of each stack",
    ),
    "flux_all_single_blocks": (
        ["prune", "--model", "{flux}", "--keep", "0,1", "--output", "{out}"],
        "every single block would be removed (num_single_layers=4)",
    ),
    "pruned_flux_last_double_block": (
        ["prune", "--model", "{flux_pruned}", "--drop", "0", "--output", "{out}"],
        "every double block would be removed (num_layers=1)",
    ),
    "flux_global_index_out_of_range": (
        ["prune", "--model", "{flux}", "--drop", "2,6", "--output", "{out}"],
        "pruned_layers [6] out of range: the model has 6 blocks, indices 0..5",
    ),
    "importance_of_another_family": (
        ["prune", "--model", "{flux}", "--importance", "{sd3_imp}", "--remove", "1", "--output", "{out}"],
        "the importance file was measured on a sd3 model (tiny-random-sd3), but",
    ),
    "importance_of_another_depth": (
        ["prune", "--model", "{flux_pruned}", "--importance", "{flux_imp}", "--remove", "1", "--output", "{out}"],
        "the importance file has 6 blocks (model tiny-random-flux) but the model has 4",
    ),
    "score_unsupported_family": (
        ["score", "--model", "{other}", "--criterion", "weight_norm", "--output", "{out}.json"],
        "holds a HunyuanDiT2DModel; layerprune supports PixArt-Sigma",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_family_bad_input(ws, case, capsys):
    argv, message = CASES[case]
    values = {p.name.removesuffix(".json"): str(p) for p in ws.iterdir()} | {"out": str(ws / "out")}
    argv = [a.format(**values) for a in argv]
    before = snapshot(ws)
    capsys.readouterr()
    assert cli(argv) == 2, argv
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"layerprune {argv[0]}: error:"), err
    assert "Traceback" not in err and message in err, err
    assert snapshot(ws) == before  # nothing created, changed or removed


def test_train_distill_refuses_an_image_folder_without_captions_before_writing(ws, capsys):
    """Image-caption data works for every family (test_flow_objective.py); a folder without captions is refused."""
    from accelerate.state import AcceleratorState, GradientState

    from diffusers_layerprune.train_distill import cli as train_cli

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    argv = ["--teacher_model", str(ws / "flux"), "--student_model", str(ws / "flux_pruned"), "--output_dir",
            str(ws / "out_train"), "--train_data_dir", str(ws), "--max_train_steps", "1", "--report_to", "none"]  # fmt: skip
    before = snapshot(ws)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        train_cli(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("train_distill: error:"), err
    assert "has no metadata.jsonl" in err
    assert snapshot(ws) == before


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_distillation_trains_with_the_family_objective_and_saves_a_stock_loadable_pipeline(family, tmp_path):
    """Sana, SD3 and Flux are distilled with the rectified-flow objective from cached conditioning (SD3 / Flux:
    untrimmed embeddings and pooled embeddings), on the tiny pipelines."""
    import diffusers
    import numpy as np
    import torch
    from safetensors.torch import load_file

    from diffusers_layerprune.families import get_family
    from diffusers_layerprune.testing import TINY_BUILDERS, TINY_RESOLUTION

    from helpers import distill_args, run_train_distill

    TINY_BUILDERS[family]().save_pretrained(tmp_path / "teacher")
    (tmp_path / "prompts.txt").write_text(PROMPTS + "a white cross\na black star\n")
    assert (
        cli(["prune", "--model", str(tmp_path / "teacher"), "--drop", "1,4", "--output", str(tmp_path / "student")])
        == 0
    )
    out = tmp_path / "out"
    size = str(TINY_RESOLUTION[family])
    run_train_distill(distill_args(tmp_path, out, steps=2) + ["--resolution", size, "--validation_prompts", "a cross"])
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2] and all(np.isfinite(r[k]) for r in log for k in ("loss", "feature"))
    weights = "transformer/diffusion_pytorch_model.safetensors"
    before, after = load_file(tmp_path / "student" / weights), load_file(out / weights)
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # it trained
    stock_class = getattr(diffusers, get_family(family).transformer_class)
    stock, info = stock_class.from_pretrained(out, subfolder="transformer", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert stock.config._kept_layers == [0, 2, 3, 5]
    assert sorted(p.name for p in (out / "validation").iterdir()) == ["step-2"]


@pytest.mark.parametrize("family", [name for name in FAMILIES if get_family(name).single_file is None])
def test_export_refuses_families_without_a_single_file_layout_in_one_line(family, tmp_path, capsys):
    """``layerprune export`` of a family with no original-layout writer: one line naming why, exit 2, no file."""
    folder = tmp_path / "pruned"
    assert cli(["prune", "--model", f"tiny-random-{family}", "--drop", "1", "--output", str(folder)]) == 0
    capsys.readouterr()
    out = tmp_path / "model.safetensors"
    assert cli(["export", str(folder), "--format", "single-file", "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("layerprune export: error:"), err
    assert get_family(family).single_file_refusal in err and get_family(family).title in err
    assert not out.exists() and not list(tmp_path.glob("model*"))
