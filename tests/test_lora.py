"""LoRAs and pruned models, judged by stock tools in a fresh process (tests/stock_lora_run.py): our own distilled LoRA
loads with the family's stock loader and matches the merged student; a parent's LoRA adapted with
``layerprune adapt-lora`` matches the parent with the LoRA fused, then pruned; folders of earlier versions convert;
bad input is refused in one line with nothing written."""

import contextlib
import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from diffusers_layerprune.cli import main as cli
from diffusers_layerprune.families import FAMILIES as REGISTERED
from diffusers_layerprune.families import get_family
from diffusers_layerprune.modeling import load_pipeline, prune_pipeline
from diffusers_layerprune.testing import tiny_call_kwargs

from helpers import ROOT, distill_args, run_stock, run_train_distill

FAMILIES = list(REGISTERED)
DROP = [1, 5]  # a middle block and the last (SD3: its context_pre_only block; Flux: double 1 and the last single)
PROMPT = "a small red circle at the top left"
PROMPTS = ["a small red circle", "a large blue square", "a green star at the top left", "a white cross"]
# Modules of the parent's LoRA: attention in every block, one module outside the blocks (proj_out) and, for SD3, the
# context modules the new last block loses or reorders.
TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_out"]
SD3_TARGETS = ["add_q_proj", "to_add_out", "norm1_context.linear", "ff_context.net.2"]


def call_settings(pipe) -> dict:
    """tiny_call_kwargs without the generator and output type (the fresh process sets those), as JSON."""
    kwargs = tiny_call_kwargs(pipe)
    return {k: v for k, v in kwargs.items() if k not in ("generator", "output_type")}


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """Per family: a tiny 6-block teacher pipeline, its student with blocks DROP removed, training prompts."""
    root = tmp_path_factory.mktemp("lora")
    for family in FAMILIES:
        work = root / family
        load_pipeline(f"tiny-random-{family}").save_pretrained(work / "teacher")  # six blocks each
        drop = ",".join(map(str, DROP))
        assert cli(["prune", "--model", str(work / "teacher"), "--drop", drop, "--output", str(work / "student")]) == 0
        (work / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    return root


@pytest.fixture(scope="module")
def trained(ws):
    """train_distill --use_lora (2 steps, rank 4, alpha 8) per family, at the tiny pipeline's size (a saved tiny
    Flux-like folder's default is its pipeline's, 256 pixels: 4096 image tokens, most of this file's time)."""
    from diffusers_layerprune.testing import TINY_RESOLUTION

    for family in FAMILIES:
        work = ws / family
        args = distill_args(work, work / "kd", steps=2, checkpointing_steps=2)
        run_train_distill(
            args
            + ["--use_lora", "--rank", 4, "--lora_alpha", 8, "--learning_rate", 1e-2, "--report_to", "none"]
            + ["--resolution", TINY_RESOLUTION[family]]
        )
    return ws


# The parent LoRAs adapted: every family as diffusers' writer stores it (with adapter metadata); for Flux also one
# without metadata (the loader derives rank and alpha) and one in kohya's layout (the loader converts it).
CASES = [(f, "meta") for f in FAMILIES] + [("flux", "plain"), ("flux", "kohya")]


def kohya_flux_lora(work: Path, transformer) -> Path:
    """A Flux LoRA in kohya's layout (``lora_unet_double_blocks_N_img_attn_qkv.lora_down.weight``, alpha 2, rank 4):
    fused q/k/v and output projections of the double blocks, the output projection of the single blocks."""
    generator = torch.Generator().manual_seed(2)
    dim, rank, state = transformer.inner_dim, 4, {}

    def add(name, fan_in, fan_out):
        state[f"{name}.lora_down.weight"] = torch.randn(rank, fan_in, generator=generator) * 0.1
        state[f"{name}.lora_up.weight"] = torch.randn(fan_out, rank, generator=generator) * 0.1
        state[f"{name}.alpha"] = torch.tensor(2.0)

    for i in range(transformer.config.num_layers):
        add(f"lora_unet_double_blocks_{i}_img_attn_qkv", dim, 3 * dim)
        add(f"lora_unet_double_blocks_{i}_img_attn_proj", dim, dim)
    for i, block in enumerate(transformer.single_transformer_blocks):
        add(f"lora_unet_single_blocks_{i}_linear2", block.proj_out.in_features, dim)
    folder = work / "parent_lora_kohya"
    folder.mkdir()
    save_file(state, str(folder / "my_style.safetensors"))
    return folder


def parent_lora(work: Path, family: str, variant: str = "meta") -> Path:
    """A LoRA of the family's teacher (rank 4, alpha 8, random A and B), written by the stock writer users have:
    ``Pipeline.save_lora_weights`` (a peft folder for PixArt); ``variant`` ``plain``: without adapter metadata,
    ``kohya``: :func:`kohya_flux_lora`."""
    import diffusers
    from peft import LoraConfig, inject_adapter_in_model
    from peft.utils import get_peft_model_state_dict

    pipe = load_pipeline(work / "teacher")
    if variant == "kohya":
        return kohya_flux_lora(work, pipe.transformer)
    metadata = variant == "meta"
    targets = TARGETS + (SD3_TARGETS if family == "sd3" else [])
    config = LoraConfig(r=4, lora_alpha=8, init_lora_weights=False, target_modules=targets)
    model = inject_adapter_in_model(config, pipe.transformer)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.1)
    state = get_peft_model_state_dict(model)
    folder = work / ("parent_lora" if metadata else "parent_lora_plain")
    if get_family(family).lora_format == "peft":
        folder.mkdir()
        config.save_pretrained(str(folder))
        save_file(
            {f"base_model.model.{k}": v.contiguous() for k, v in state.items()},
            str(folder / "adapter_model.safetensors"),
        )
    else:
        getattr(diffusers, type(pipe).__name__).save_lora_weights(
            folder,
            transformer_lora_layers=state,
            transformer_lora_adapter_metadata=config.to_dict() if metadata else None,
        )
    return folder


def fused_then_pruned(work: Path, family: str, lora: Path) -> np.ndarray:
    """The reference: the teacher with the LoRA fused by stock tools, then pruned in memory, generating."""
    pipe = load_pipeline(work / "teacher")
    pipe.set_progress_bar_config(disable=True)
    if get_family(family).lora_format == "peft":
        from peft import PeftModel

        pipe.transformer = PeftModel.from_pretrained(pipe.transformer, lora).merge_and_unload()
    else:
        pipe.load_lora_weights(lora)
        pipe.fuse_lora()
        pipe.unload_lora_weights()
    pruned = prune_pipeline(pipe, pruned_layers=DROP)
    return pruned(prompt=PROMPT, **tiny_call_kwargs(pruned)).images.numpy()


@pytest.fixture(scope="module")
def adapted(ws):
    """adapt-lora of each parent LoRA of CASES, with its reference."""
    runs = {}
    for family, variant in CASES:
        work = ws / family
        lora = parent_lora(work, family, variant)
        out = work / f"adapted-{lora.name}"
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            code = cli(["adapt-lora", str(lora), "--pruned", str(work / "student"), "--output", str(out)])
        assert code == 0
        runs[(family, variant)] = dict(
            lora=lora, out=out, printed=printed.getvalue(), expected=fused_then_pruned(work, family, lora)
        )
    return runs


@pytest.fixture(scope="module")
def old_format(ws):
    """A LoRA as earlier versions of train_distill wrote it (save_lora_adapter: no transformer. prefix), converted
    with layerprune convert-lora; the reference is the student with that LoRA merged in memory."""
    runs = {}
    for family in ("pixart", "sana"):
        from peft import LoraConfig

        work = ws / family
        pipe = load_pipeline(work / "student")
        pipe.set_progress_bar_config(disable=True)
        student = get_family(family).pruned_class().from_pretrained(work / "student", subfolder="transformer")
        student.add_adapter(LoraConfig(r=4, lora_alpha=8, init_lora_weights=False, target_modules=["to_q", "to_v"]))
        student.save_lora_adapter(str(work / "old_run" / "lora"))
        out = work / "converted"
        model = ["--model", str(work / "student")]
        assert cli(["convert-lora", str(work / "old_run" / "lora"), *model, "--output", str(out)]) == 0
        # an earlier checkpoint: transformer_lora/ without metadata, rank and alpha in the checkpoint record
        from peft.utils import get_peft_model_state_dict

        checkpoint = work / "old_run" / "checkpoint-1"
        (checkpoint / "transformer_lora").mkdir(parents=True)
        state = {k: v.contiguous() for k, v in get_peft_model_state_dict(student).items()}
        save_file(state, str(checkpoint / "transformer_lora" / "adapter_model.safetensors"))
        record = {"step": 1, "lora": {"rank": 4, "alpha": 8, "target_modules": ["to_q", "to_v"]}}
        (checkpoint / "layerprune_checkpoint.json").write_text(json.dumps(record))
        old = str(checkpoint / "transformer_lora")
        assert cli(["convert-lora", old, *model, "--output", str(work / "converted_ckpt")]) == 0
        student.fuse_lora()
        student.unload_lora()
        pipe.transformer = student
        runs[family] = dict(
            out=out,
            checkpoint=work / "converted_ckpt",
            expected=pipe(prompt=PROMPT, **tiny_call_kwargs(pipe)).images.numpy(),
        )
    return runs


@pytest.fixture(scope="module")
def stock(ws, trained, adapted, old_format):
    """Every artifact above loaded and run in ONE fresh stock process; returns ``name -> (images, adapters)``."""
    jobs = []

    def job(name, pipeline, family, lora=None):
        pipe_settings = calls[family]
        jobs.append(
            dict(
                name=name,
                pipeline=str(pipeline),
                lora=str(lora) if lora else None,
                format=get_family(family).lora_format,
                prompt=PROMPT,
                call=pipe_settings,
                out=str(ws / f"{name}.npy"),
            )
        )

    calls = {f: call_settings(load_pipeline(ws / f / "student")) for f in FAMILIES}
    for family in FAMILIES:
        work = ws / family
        job(f"{family}-student", work / "student", family)
        job(f"{family}-merged", work / "kd", family)
        job(f"{family}-own", work / "student", family, work / "kd" / "lora")
        job(f"{family}-checkpoint", work / "student", family, work / "kd" / "checkpoint-2" / "lora")
    for (family, variant), run in adapted.items():
        job(f"{family}-adapted-{variant}", ws / family / "student", family, run["out"])
    for family, run in old_format.items():
        job(f"{family}-converted", ws / family / "student", family, run["out"])
        job(f"{family}-converted-checkpoint", ws / family / "student", family, run["checkpoint"])
    (ws / "jobs.json").write_text(json.dumps(jobs))
    result = run_stock(path=ROOT / "tests" / "stock_lora_run.py", args=[ws / "jobs.json"], cwd=ws)
    assert result.returncode == 0, result.stderr[-3000:]
    listed = {r["name"]: r["adapters"] for r in map(json.loads, result.stdout.strip().splitlines())}
    return {name: (np.load(ws / f"{name}.npy"), listed[name]) for name in listed}


@pytest.mark.parametrize("family", FAMILIES)
def test_own_lora_loads_with_the_stock_loader_and_matches_the_merged_student(family, trained, stock):
    work = trained / family
    lora = work / "kd" / "lora"
    if get_family(family).lora_format == "peft":
        config = json.loads((lora / "adapter_config.json").read_text())
        assert config["r"] == 4 and config["lora_alpha"] == 8 and config["base_model_name_or_path"] is None
    else:
        with safe_open(lora / "pytorch_lora_weights.safetensors", "pt") as f:
            keys, meta = list(f.keys()), json.loads(f.metadata()["lora_adapter_metadata"])
        assert keys and all(k.startswith("transformer.") for k in keys)
        assert meta["transformer.r"] == 4 and meta["transformer.lora_alpha"] == 8
    own, adapters = stock[f"{family}-own"]
    assert adapters and len(next(iter(adapters.values()))) == 1  # the adapter is listed
    merged, _ = stock[f"{family}-merged"]
    np.testing.assert_allclose(own, merged, atol=1e-4, rtol=0)
    checkpoint, _ = stock[f"{family}-checkpoint"]  # the last checkpoint's LoRA is the final one
    np.testing.assert_allclose(checkpoint, merged, atol=1e-4, rtol=0)
    plain, _ = stock[f"{family}-student"]
    assert np.abs(own - plain).max() > 1e-3  # and the LoRA does change the images


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(c))
def test_adapted_parent_lora_equals_fusing_then_pruning(case, adapted, stock):
    family, variant = case
    run = adapted[case]
    images, adapters = stock[f"{family}-adapted-{variant}"]
    assert adapters
    assert np.abs(images - run["expected"]).max() <= 1e-4
    record = json.loads((run["out"] / "layerprune_lora.json").read_text())
    (weights,) = [p for p in run["lora"].glob("*.safetensors")]
    assert record["source_lora"]["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert record["kept_layers"] == [0, 2, 3, 4] and 0 < record["removed_share"] < 1
    assert record["layers_dropped"] > 0 and record["layers_kept"] > 0
    assert str(run["out"].parent) not in (run["out"] / "layerprune_lora.json").read_text()  # no local paths
    assert f"LoRA layers kept: {record['layers_kept']}" in run["printed"]
    assert f"{record['removed_share']:.1%}" in run["printed"]


@pytest.mark.parametrize("family", ["pixart", "sana"])
def test_lora_of_an_earlier_version_converts_with_one_command(family, old_format, stock):
    for name in (f"{family}-converted", f"{family}-converted-checkpoint"):
        images, adapters = stock[name]
        assert adapters
        np.testing.assert_allclose(images, old_format[family]["expected"], atol=1e-4, rtol=0)


def _bad_lora(ws: Path, name: str, state: dict) -> Path:
    path = ws / f"{name}.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


BAD = ["other_family", "other_width", "beyond_depth", "matches_nothing", "no_record", "output_exists", "output_inside"]


@pytest.mark.parametrize("case", BAD)
def test_adapt_lora_bad_input_one_line_exit_2_nothing_written(case, ws, capsys):
    sana = ws / "sana"
    good = sana / "parent_lora" / "pytorch_lora_weights.safetensors"
    if not good.exists():
        parent_lora(sana, "sana")
    lora, pruned, out = str(good), str(sana / "student"), ws / f"bad-{case}"
    a, b = torch.zeros(4, 32), torch.zeros(64, 4)
    if case == "other_family":  # Flux's blocks have attn, not Sana's attn1
        lora = str(
            _bad_lora(
                ws,
                case,
                {
                    "transformer.transformer_blocks.0.attn.to_q.lora_A.weight": a,
                    "transformer.transformer_blocks.0.attn.to_q.lora_B.weight": b,
                },
            )
        )
    elif case == "other_width":
        lora = str(
            _bad_lora(
                ws,
                case,
                {
                    "transformer.transformer_blocks.0.attn1.to_q.lora_A.weight": torch.zeros(4, 48),
                    "transformer.transformer_blocks.0.attn1.to_q.lora_B.weight": torch.zeros(48, 4),
                },
            )
        )
    elif case == "beyond_depth":
        lora = str(
            _bad_lora(
                ws,
                case,
                {
                    "transformer.transformer_blocks.9.attn1.to_q.lora_A.weight": a,
                    "transformer.transformer_blocks.9.attn1.to_q.lora_B.weight": b,
                },
            )
        )
    elif case == "matches_nothing":
        lora = str(
            _bad_lora(
                ws, case, {"transformer.decoder.layer.lora_A.weight": a, "transformer.decoder.layer.lora_B.weight": b}
            )
        )
    elif case == "no_record":
        pruned = str(sana / "teacher")
    elif case == "output_exists":
        out.mkdir()
        (out / "mine.txt").write_text("keep")
    elif case == "output_inside":
        out = sana / "student" / "lora"
    before = sorted(p.relative_to(ws) for p in ws.rglob("*"))
    capsys.readouterr()
    assert cli(["adapt-lora", lora, "--pruned", pruned, "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("layerprune adapt-lora: error:"), err
    assert sorted(p.relative_to(ws) for p in ws.rglob("*")) == before  # nothing written
    expected = {
        "other_family": "match a module",
        "other_width": "another model or width",
        "beyond_depth": "transformer_blocks.9",
        "matches_nothing": "match a module",
        "no_record": "kept blocks",
        "output_exists": "holds files layerprune did not write",
        "output_inside": "inside",
    }[case]
    assert expected in err, err


@pytest.mark.parametrize(
    "case", [("pixart", "meta"), ("sd3", "meta"), ("flux", "plain"), ("flux", "kohya")], ids=lambda c: "-".join(c)
)
def test_recovery_starts_where_stock_tools_start(case, ws, adapted):
    """train_distill --teacher_lora fuses like the stock loader, and --init_lora starts the student from the adapted
    LoRA: both give the images of the parent with the LoRA fused, then pruned."""
    from diffusers_layerprune.adapters.lora import fuse_lora_into, read_lora, start_from_lora

    family, _ = case
    run, work = adapted[case], ws / family
    pipe = load_pipeline(work / "teacher")
    pipe.set_progress_bar_config(disable=True)
    fuse_lora_into(pipe.transformer, read_lora(get_family(family), run["lora"]))
    assert not any("lora_" in name for name, _ in pipe.transformer.named_parameters())  # plain modules again
    pruned = prune_pipeline(pipe, pruned_layers=DROP)
    images = pruned(prompt=PROMPT, **tiny_call_kwargs(pruned)).images.numpy()
    assert np.abs(images - run["expected"]).max() <= 1e-4

    student = load_pipeline(work / "student")
    student.set_progress_bar_config(disable=True)
    student.transformer = get_family(family).pruned_class().from_pretrained(work / "student", subfolder="transformer")
    student.transformer.requires_grad_(False)  # as train_distill does before adding the adapter
    start_from_lora(student.transformer, read_lora(get_family(family), run["out"]))
    trainable = [n for n, p in student.transformer.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)  # only the LoRA trains
    images = student(prompt=PROMPT, **tiny_call_kwargs(student)).images.numpy()
    assert np.abs(images - run["expected"]).max() <= 1e-4


@pytest.mark.slow  # four fresh processes and two short trainings: about a CPU-minute
def test_lora_toy_benchmark_small_mode_runs_end_to_end(tmp_path):
    """benchmarks/lora_toy.py --small: parent LoRA, prune, distil, adapt-lora, recovery with --init_lora and
    --teacher_lora, judge; the wiring only (a few steps)."""
    from helpers import load_benchmark

    result = load_benchmark("lora_toy").main(
        [
            "--small",
            "--output",
            str(tmp_path / "run"),
            "--results",
            str(tmp_path / "r.json"),
            "--cache-dir",
            str(tmp_path / "cache"),
        ]
    )
    assert list(result["table"]) == [
        "parent",
        "parent + LoRA",
        "pruned (distilled)",
        "pruned + adapted LoRA",
        "+ recovery 1 steps",
        "+ recovery 2 steps",
    ]
    assert all(0 <= r["effect"] <= 1 and 0 <= r["control"] <= 1 for r in result["table"].values())
    assert result["adapted_lora"]["layers_dropped"] > 0 and 0 < result["adapted_lora"]["removed_share"] < 1
    assert json.loads((tmp_path / "r.json").read_text())["pruned_blocks"] == result["pruned_blocks"]


@pytest.mark.parametrize("family", FAMILIES)
def test_card_shows_how_to_load_the_lora_alone(family, trained):
    from diffusers_layerprune.hub import render_model_card

    text = render_model_card(trained / family / "kd", "me/pruned-lora")
    if get_family(family).lora_format == "peft":
        assert 'peft.PeftModel.from_pretrained(pipe.transformer, "me/pruned-lora", subfolder="lora")' in text
    else:
        assert 'pipe.load_lora_weights("me/pruned-lora", subfolder="lora")' in text


def test_adapt_lora_reads_a_hub_id_from_the_hub_cache_and_records_its_commit(ws, tmp_path, monkeypatch, capsys):
    """A parent LoRA given as a Hub id (here served offline from huggingface_hub's cache layout) adapts to the same
    file as the local copy, and the record names the repo and its commit, not a local path."""
    import importlib
    import json
    import shutil

    sana = ws / "sana"
    local = sana / "parent_lora" / "pytorch_lora_weights.safetensors"
    if not local.exists():
        parent_lora(sana, "sana")
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--someone--sana-style-lora"
    (repo / "snapshots" / commit).mkdir(parents=True)
    shutil.copyfile(local, repo / "snapshots" / commit / local.name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants

    importlib.reload(huggingface_hub.constants)  # the cache folder and offline mode are read at import
    try:
        from_hub, from_file = tmp_path / "from-hub", tmp_path / "from-file"
        args = ["--pruned", str(sana / "student"), "--weight-name", local.name]
        assert cli(["adapt-lora", "someone/sana-style-lora", *args, "--output", str(from_hub)]) == 0
        assert cli(["adapt-lora", str(local), *args, "--output", str(from_file)]) == 0
    finally:
        monkeypatch.undo()
        importlib.reload(huggingface_hub.constants)
    record = json.loads((from_hub / "layerprune_lora.json").read_text())
    assert record["source_lora"]["source"] == "someone/sana-style-lora" and record["source_lora"]["revision"] == commit
    assert str(tmp_path) not in json.dumps(record)  # no path of this machine
    a, b = load_file(from_hub / local.name), load_file(from_file / local.name)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
