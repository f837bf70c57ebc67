"""layerprune eval / push and the model card, on a tiny pruned + distilled + evaluated folder (offline)."""

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from huggingface_hub import ModelCard

from diffusers_layerprune.cli import main as cli
from diffusers_layerprune.evaluation import hpdv2_summary
from diffusers_layerprune.hub import render_model_card
from diffusers_layerprune.scorers.tiny import save_tiny_clip_folder
from diffusers_layerprune.testing import save_tiny_pixart_pipeline
from diffusers_layerprune.upload import files_to_upload

from helpers import distill_args, run_stock, run_train_distill

PROMPTS = ["a small red circle", "a large blue square", "a green star at the top left", "a white cross"]
SECRET = "hf_NotARealTokenButSecret123"


def _distill_args(work, out, *extra):
    return [*distill_args(work, out, student="pruned", steps=2, checkpointing_steps=1), "--report_to", "none", *extra]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """teacher -> pruned (drop 1,4) -> distilled (2 steps) -> evaluated with a tiny CLIP scorer."""
    root = tmp_path_factory.mktemp("evalhub")
    save_tiny_pixart_pipeline(root / "teacher", num_layers=6)
    save_tiny_clip_folder(root / "clip")
    (root / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    assert cli(["prune", "--model", str(root / "teacher"), "--drop", "1,4", "--output", str(root / "pruned")]) == 0
    run_train_distill(_distill_args(root, root / "distilled"))
    eval_args = [
        "eval",
        "--model",
        str(root / "distilled"),
        "--prompts",
        str(root / "prompts.txt"),
        "--scorers",
        str(root / "clip"),
        "--steps",
        "3",
        "--guidance",
        "1.0",
        "--latency-repeats",
        "2",
        "--output",  # the card shows the folder's report.json (eval's default is ./distilled-report.json)
        str(root / "distilled" / "report.json"),
    ]
    assert cli(eval_args) == 0
    return root


def test_eval_report_compares_with_teacher_on_same_seeds(work):
    folder = work / "distilled"
    report = json.loads((folder / "report.json").read_text())
    assert report["teacher"] == "teacher"  # found through the source_model kept in the folder's marker
    teacher, student = report["models"]["teacher"], report["models"]["student"]
    assert (teacher["num_layers"], student["num_layers"]) == (6, 4)
    assert student["kept_layers"] == [0, 2, 3, 5]
    assert teacher["latency"]["speedup"] == 1.0 and student["latency"]["speedup"] > 0
    assert student["parameters"]["transformer"] < teacher["parameters"]["transformer"]
    # the text encoder is shared, so whole-pipeline sizes differ exactly by the transformers'
    assert (
        teacher["parameters"]["total"] - student["parameters"]["total"]
        == teacher["parameters"]["transformer"] - student["parameters"]["transformer"]
    )
    clip = "clip"  # a local scorer folder, recorded by its name
    assert len(student["scores"][clip]["per_prompt"]) == 4 and report["prompts"] == PROMPTS
    assert report["settings"]["num_inference_steps"] == 3 and report["settings"]["seed"] == 0
    md = (folder / "report.md").read_text()
    assert "| transformer blocks | 6 | 4 |" in md and "speed-up" in md
    assert (folder / "report_grid.png").stat().st_size > 0


def test_eval_is_deterministic_and_refuses_to_overwrite(work, tmp_path, capsys):
    out = tmp_path / "again.json"
    args = [
        "eval",
        "--model",
        str(work / "distilled"),
        "--prompts",
        str(work / "prompts.txt"),
        "--scorers",
        str(work / "clip"),
        "--steps",
        "3",
        "--guidance",
        "1.0",
        "--latency-repeats",
        "1",
        "--no-teacher",
        "--output",
        str(out),
    ]
    assert cli(args) == 0
    again = json.loads(out.read_text())
    first = json.loads((work / "distilled" / "report.json").read_text())
    clip = "clip"  # a local scorer folder, recorded by its name
    assert set(again["models"]) == {"student"}
    assert (
        again["models"]["student"]["scores"][clip]["per_prompt"]
        == first["models"]["student"]["scores"][clip]["per_prompt"]
    )
    capsys.readouterr()
    assert cli(args) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--scorers", "no-such-scorer"], "unknown scorer"),
        (["--prompts", "missing.txt"], "does not exist"),
        (["--model", "/nonexistent/model"], "does not exist"),
    ],
)
def test_eval_bad_input_writes_nothing(work, tmp_path, capsys, args, message):
    out = tmp_path / "r.json"
    base = ["eval", "--model", str(work / "distilled"), "--prompts", str(work / "prompts.txt"), "--output", str(out)]
    for flag, value in zip(args[::2], args[1::2], strict=True):
        if flag in base:
            base[base.index(flag) + 1] = value
        else:
            base += [flag, value]
    assert cli(base) == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_hpdv2_protocol_chunks():
    scores = torch.cat([torch.full((800,), 0.25), torch.arange(800, dtype=torch.float64) / 800])
    groups = ["anime"] * 800 + ["photo"] * 800
    out = hpdv2_summary(scores, groups)
    assert out["anime"] == {"mean": pytest.approx(25.0), "std": pytest.approx(0.0), "chunks": 10, "chunk_size": 80}
    chunk_means = torch.tensor([(torch.arange(80) + 80 * i).double().mean() / 8 for i in range(10)])
    assert out["photo"]["mean"] == pytest.approx(chunk_means.mean().item())
    assert out["photo"]["std"] == pytest.approx(chunk_means.std(unbiased=False).item())
    assert out["average"]["mean"] == pytest.approx((scores * 100).mean().item())


def _card(folder, repo_id="me/tiny-pruned", **kwargs):
    text = render_model_card(folder, repo_id, **kwargs)
    return text, ModelCard(text)


def test_card_metadata_and_body_follow_the_folder(work):
    folder = work / "distilled"
    text, card = _card(folder)
    meta = card.data.to_dict()
    assert meta["library_name"] == "diffusers" and meta["pipeline_tag"] == "text-to-image"
    assert {"pruned", "layer-pruning", "knowledge-distillation", "pixart-sigma"} <= set(meta["tags"])
    assert "base_model" not in meta and "license" not in meta  # a local source: nothing to link, nothing invented
    report = json.loads((folder / "report.json").read_text())
    student, teacher = report["models"]["student"], report["models"]["teacher"]
    clip = "clip"  # a local scorer folder, recorded by its name
    s = student["scores"][clip]
    assert (
        f"| {clip} | {teacher['scores'][clip]['mean']:.4f} ± {teacher['scores'][clip]['sem']:.4f} | {s['mean']:.4f} ± {s['sem']:.4f} |"
        in text
    )
    assert f"{student['latency']['speedup']:.2f}x" in text
    assert "Removed source blocks (2): `[1, 4]`" in text and "Kept source blocks (4): `[0, 2, 3, 5]`" in text
    assert 'DiffusionPipeline.from_pretrained("me/tiny-pruned"' in text
    assert "steps: 2" in text and "BK-SDM" in text and "PixArt-Sigma" in text
    assert "(loss_curve.png)" in text and "(report_grid.png)" in text


def test_card_for_hub_source_and_without_report(work, tmp_path):
    folder = tmp_path / "pruned"
    shutil.copytree(work / "pruned", folder)
    config_path = folder / "transformer" / "config.json"
    config = json.loads(config_path.read_text())
    config["source_model"] = "PixArt-alpha/PixArt-Sigma-XL-2-1024-MS"
    config_path.write_text(json.dumps(config))
    text, card = _card(folder, license="openrail++")
    meta = card.data.to_dict()
    # pruned, not distilled: not a fine-tune (tests/test_first_minutes.py and hub.py say why "quantized")
    assert meta["base_model"] == "PixArt-alpha/PixArt-Sigma-XL-2-1024-MS" and meta["base_model_relation"] == "quantized"
    assert meta["license"] == "openrail++"
    assert "knowledge-distillation" not in meta["tags"]
    assert "## Evaluation" not in text and "## Distillation" not in text
    assert "https://huggingface.co/PixArt-alpha/PixArt-Sigma-XL-2-1024-MS" in text


def test_card_license_looks_up_only_hub_ids(work, tmp_path, monkeypatch):
    """A short model name (``toy``) is no repo: the card must not ask the Hub for it (offline, that is ~23 s of
    retries). A local source folder's README and a Hub id are read."""
    import huggingface_hub

    asked = []

    def fake_load(target, *args, **kwargs):
        asked.append(str(target))
        local = Path(target)
        return ModelCard(local.read_text() if local.is_file() else "---\nlicense: apache-2.0\n---\n")

    monkeypatch.setattr(huggingface_hub.ModelCard, "load", staticmethod(fake_load))
    folder = tmp_path / "pruned"
    shutil.copytree(work / "pruned", folder)
    config_path = folder / "transformer" / "config.json"
    config = json.loads(config_path.read_text())
    source = tmp_path / "source"
    source.mkdir()
    (source / "README.md").write_text("---\nlicense: mit\n---\n")
    for name, looked_up, license in (
        ("toy", [], None),
        (str(source), [str(source / "README.md")], "mit"),
        ("PixArt-alpha/PixArt-Sigma-XL-2-1024-MS", ["PixArt-alpha/PixArt-Sigma-XL-2-1024-MS"], "apache-2.0"),
    ):
        asked.clear()
        config_path.write_text(json.dumps({**config, "source_model": name}))
        _, card = _card(folder)
        assert asked == looked_up, name
        assert card.data.to_dict().get("license") == license, name


class FakeApi:
    calls: list = []

    def __init__(self, token=None):
        FakeApi.calls.append(("init", token))

    def create_repo(self, repo_id, **kwargs):
        FakeApi.calls.append(("create_repo", repo_id, kwargs))

    def create_branch(self, repo_id, **kwargs):
        FakeApi.calls.append(("create_branch", repo_id, kwargs))

    def upload_folder(self, **kwargs):
        FakeApi.calls.append(("upload_folder", kwargs))
        return type("Info", (), {"commit_url": f"https://huggingface.co/{kwargs['repo_id']}/commit/abc"})()


@pytest.fixture
def fake_hub(monkeypatch):
    import huggingface_hub

    FakeApi.calls = []
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: SECRET)
    return FakeApi.calls


def test_push_sends_one_commit_of_the_model_files(work, fake_hub, capsys):
    folder = work / "distilled"
    assert (
        cli(
            [
                "push",
                str(folder),
                "--repo-id",
                "me/tiny-pruned",
                "--private",
                "--revision",
                "v1",
                "--commit-message",
                "first",
            ]
        )
        == 0
    )
    kinds = [c[0] for c in fake_hub]
    assert kinds == ["init", "create_repo", "create_branch", "upload_folder"]
    assert fake_hub[0][1] == SECRET
    assert fake_hub[1][1] == "me/tiny-pruned" and fake_hub[1][2]["private"] is True and fake_hub[1][2]["exist_ok"]
    upload = fake_hub[3][1]
    assert upload["repo_id"] == "me/tiny-pruned" and upload["revision"] == "v1" and upload["commit_message"] == "first"
    assert Path(upload["folder_path"]) == folder
    sent = [p for p, _ in files_to_upload(folder)]
    assert "README.md" in sent and "transformer/diffusion_pytorch_model.safetensors" in sent and "report.json" in sent
    assert not any(p.startswith(("checkpoint-", "logs/")) or p.endswith(".jsonl") for p in sent)
    printed = capsys.readouterr()
    assert "commit/abc" in printed.out
    # the token is in no file, card or log
    assert SECRET not in printed.out + printed.err
    assert not [p for p in folder.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]


def test_push_bad_input(work, tmp_path, capsys, monkeypatch):
    import huggingface_hub

    assert cli(["push", str(tmp_path), "--repo-id", "me/x", "--dry-run"]) == 2
    assert "neither a pipeline folder" in capsys.readouterr().err
    assert cli(["push", str(work / "distilled"), "--repo-id", "not a repo", "--dry-run"]) == 2
    assert "invalid repo id" in capsys.readouterr().err
    assert cli(["push", str(work / "distilled"), "--repo-id", "a/b/c", "--dry-run"]) == 2
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    assert cli(["push", str(work / "distilled"), "--repo-id", "me/x"]) == 2
    assert "no Hugging Face token" in capsys.readouterr().err


def test_dry_run_folder_loads_in_fresh_stock_process(work, tmp_path, capsys):
    folder = tmp_path / "card"
    shutil.copytree(work / "distilled", folder)
    assert cli(["push", str(folder), "--repo-id", "me/tiny-pruned", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "would upload" in out and "README.md" in out
    script = (
        "import sys, torch\nfrom diffusers import DiffusionPipeline\n"
        f"pipe = DiffusionPipeline.from_pretrained({str(folder)!r})\n"
        "img = pipe('a red circle', num_inference_steps=2, height=16, width=16, use_resolution_binning=False,"
        " max_sequence_length=16, clean_caption=False, output_type='pt').images\n"
        "assert 'diffusers_layerprune' not in sys.modules\nprint(tuple(img.shape), pipe.transformer.config._kept_layers)\n"
    )
    result = run_stock(script, cwd=tmp_path)  # a bare environment, as a user's (helpers.bare_env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "(1, 3, 16, 16) [0, 2, 3, 5]"
    assert yaml.safe_load((folder / "README.md").read_text().split("---")[1])["library_name"] == "diffusers"


def test_training_script_push_uses_the_same_code(work, fake_hub):
    out = work / "pushed"
    run_train_distill(_distill_args(work, out, "--push_to_hub", "--hub_model_id", "me/distilled"))
    upload = [c for c in fake_hub if c[0] == "upload_folder"][0][1]
    assert upload["repo_id"] == "me/distilled" and Path(upload["folder_path"]) == out
    assert "knowledge-distillation" in (out / "README.md").read_text()


def test_latency_samples_are_long_enough_and_equal_across_models(tiny_transformer, monkeypatch):
    """Each timed sample runs the same number of back-to-back forwards for every model, enough for the fastest to
    fill ``min_sample_seconds``; latency is per forward. A fake clock (teacher 4 ms, student 3 ms a forward) makes
    the numbers exact."""
    import math
    import time as time_module

    from diffusers_layerprune import PrunedPixArtTransformer
    from diffusers_layerprune.evaluation import transformer_latency

    student = PrunedPixArtTransformer.from_transformer(tiny_transformer, pruned_layers=[1, 4])
    clock = [0.0]
    calls = {"teacher": 0, "student": 0}
    for name, model, seconds in (("teacher", tiny_transformer, 0.004), ("student", student, 0.003)):

        def tick(*_, name=name, seconds=seconds):
            clock[0] += seconds
            calls[name] += 1

        model.register_forward_hook(tick)
    monkeypatch.setattr(time_module, "perf_counter", lambda: clock[0])
    kwargs = dict(resolution=64, vae_scale_factor=8, text_tokens=5, warmup=2, repeats=3)

    result = transformer_latency({"teacher": tiny_transformer, "student": student}, min_sample_seconds=0.1, **kwargs)
    per_sample = math.ceil(0.1 / 0.003)  # the fastest model fills 0.1 s
    assert result["teacher"]["calls_per_sample"] == result["student"]["calls_per_sample"] == per_sample
    assert calls == {"teacher": 2 + 3 * per_sample, "student": 2 + 3 * per_sample}
    assert result["teacher"]["median_ms"] == pytest.approx(4.0) and result["student"]["median_ms"] == pytest.approx(3.0)

    single = transformer_latency({"teacher": tiny_transformer, "student": student}, min_sample_seconds=0, **kwargs)
    assert single["student"]["calls_per_sample"] == 1 and single["student"]["median_ms"] == pytest.approx(3.0)


def test_models_of_one_architecture_share_one_latency(tiny_transformer, monkeypatch):
    """A pruned model and its distilled copy (same architecture, other weights) timed in one measurement get one
    latency, pooled over both models' samples, and so the same speed-up; the teacher keeps its own. A fake clock
    (teacher 4 ms, pruned 3 ms, distilled 3.5 ms a forward) makes the numbers exact."""
    import copy
    import time as time_module

    from diffusers_layerprune import PrunedPixArtTransformer
    from diffusers_layerprune.evaluation import latency_entries, transformer_latency

    pruned = PrunedPixArtTransformer.from_transformer(tiny_transformer, pruned_layers=[1, 4])
    distilled = copy.deepcopy(pruned)
    with torch.no_grad():
        for p in distilled.parameters():
            p.add_(0.01)
    clock = [0.0]
    for model, seconds in ((tiny_transformer, 0.004), (pruned, 0.003), (distilled, 0.0035)):
        model.register_forward_hook(lambda *_, s=seconds: clock.__setitem__(0, clock[0] + s))
    monkeypatch.setattr(time_module, "perf_counter", lambda: clock[0])
    models = {"teacher": tiny_transformer, "pruned": pruned, "distilled": distilled}
    kwargs = dict(resolution=64, vae_scale_factor=8, text_tokens=5, warmup=1, repeats=3, min_sample_seconds=0)

    result = transformer_latency(models, **kwargs)
    assert result["pruned"] == result["distilled"]  # one latency for one architecture
    assert result["pruned"]["pooled_with"] == ["pruned", "distilled"] and result["teacher"]["pooled_with"] == [
        "teacher"
    ]
    assert result["pruned"]["median_ms"] == pytest.approx(3.25)  # the median of 3 x 3.0 and 3 x 3.5 ms
    assert result["pruned"]["q1_ms"] == pytest.approx(3.0) and result["pruned"]["q3_ms"] == pytest.approx(3.5)
    assert result["teacher"]["median_ms"] == pytest.approx(4.0)
    entries = latency_entries(result, 20, {}, "teacher")
    assert entries["pruned"].speedup == entries["distilled"].speedup == pytest.approx(4.0 / 3.25)
    assert entries["pruned"].shared_with == ["pruned", "distilled"] and entries["teacher"].shared_with is None
    assert entries["pruned"].speedup_iqr == pytest.approx([4.0 / 3.25, 4.0 / 3.25])
    # without pooling each keeps its own samples
    apart = transformer_latency(models, pool_same_architecture=False, **kwargs)
    assert apart["pruned"]["median_ms"] == pytest.approx(3.0) and apart["distilled"]["median_ms"] == pytest.approx(3.5)


def test_teacher_is_evaluated_once_for_several_students(work, tmp_path, monkeypatch):
    """Evaluating a second student of the same teacher with the same prompts, seeds and settings reuses the
    teacher's images and scores (not generated again); its latency is measured again; other settings miss."""
    import diffusers_layerprune.modeling as modeling
    from diffusers_layerprune.evaluation import EvalReport, evaluate_pipeline

    first = EvalReport.load(work / "distilled" / "report.json")
    assert first.settings.teacher_cache["reused"] is False and first.settings.teacher_cache["seconds"] > 0
    generated = []
    real = modeling.generate_from_conditioning

    def counting(pipe, text, *args, **kwargs):
        generated.append((pipe.transformer.config.num_layers, len(text["prompt_embeds"])))
        return real(pipe, text, *args, **kwargs)

    monkeypatch.setattr(modeling, "generate_from_conditioning", counting)
    settings = dict(prompts=str(work / "prompts.txt"), scorers=str(work / "clip"), steps=3, guidance=1.0)
    report = evaluate_pipeline(work / "pruned", output=tmp_path / "r.json", latency_repeats=2, **settings)
    cache = report.settings.teacher_cache
    assert cache["reused"] is True and cache["key"] == first.settings.teacher_cache["key"]
    assert report.teacher_entry.scores == first.teacher_entry.scores  # per-prompt scores included
    assert report.teacher_entry.latency.transformer_ms_per_step > 0
    assert (6, 4) not in generated  # the 6-block teacher generated no image of the 4 prompts
    assert "reused from an earlier evaluation" in (tmp_path / "r.md").read_text()
    assert (tmp_path / "r_grid.png").stat().st_size > 0

    generated.clear()
    again = evaluate_pipeline(work / "pruned", teacher_cache=False, latency_repeats=2, **settings)
    assert again.settings.teacher_cache is None and (6, 4) in generated
    assert again.teacher_entry.scores == first.teacher_entry.scores  # what the cache held is what it computes
    other_seed = evaluate_pipeline(work / "pruned", seed=1, latency_repeats=2, **settings)
    assert other_seed.settings.teacher_cache["reused"] is False


def test_eval_on_a_full_disk_leaves_none_of_the_report_files(work, tmp_path, monkeypatch, capsys):
    """The disk fills while the third file (the image grid) is written: one line, and neither report.json nor
    report.md of this evaluation is left behind (the three files are renamed into place together)."""
    import errno
    import os

    from diffusers_layerprune import evaluation

    def full(rows, prompts, path, max_columns=8):
        Path(path).write_bytes(b"\0" * 100)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(evaluation, "image_grid", full)
    out = tmp_path / "reports" / "report.json"
    args = ["eval", "--model", str(work / "distilled"), "--prompts", str(work / "prompts.txt"), "--steps", "2"]
    args += ["--scorers", str(work / "clip")]
    capsys.readouterr()
    assert cli([*args, "--guidance", "1.0", "--latency-repeats", "1", "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip()  # progress bars, then the one line
    assert "Traceback" not in err and err.splitlines()[-1].startswith(
        f"layerprune eval: error: the disk holding {out.parent} is full ("
    ), err
    assert not out.parent.exists() or not any(out.parent.iterdir()), list(out.parent.iterdir())
