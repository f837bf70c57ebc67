"""--transformer-only: share just the pruned transformer (config + safetensors) while the text encoder and VAE stay in
the base model; load it back into the base pipeline, with stock diffusers and with this package."""

import json

import pytest
import torch
from diffusers import PixArtSigmaPipeline, PixArtTransformer2DModel
from safetensors import safe_open

from diffusers_layerprune import LayerPruneError
from diffusers_layerprune.cli import main
from diffusers_layerprune.modeling import load_pipeline
from diffusers_layerprune.testing import tiny_generation_kwargs

from helpers import read_config


def test_prune_transformer_only_loads_only_the_transformer_and_stock_diffusers_uses_it(
    tiny_pipeline_dir, tmp_path, monkeypatch, capsys
):
    import transformers

    def no_text_encoder(*args, **kwargs):
        raise AssertionError("the text encoder must not be loaded to prune the transformer")

    monkeypatch.setattr(transformers.T5EncoderModel, "from_pretrained", no_text_encoder)
    out = tmp_path / "pruned"
    args = ["prune", "--model", str(tiny_pipeline_dir), "--drop", "1,4", "--transformer-only", "--output", str(out)]
    assert main(args) == 0
    assert "saved transformer" in capsys.readouterr().out
    monkeypatch.undo()
    visible = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))  # .layerprune.json: never uploaded
    assert visible == ["config.json", "diffusion_pytorch_model.safetensors"]
    config = read_config(out / "config.json")
    assert config["_class_name"] == "PixArtTransformer2DModel" and config["kept_layers"] == [0, 2, 3, 5]

    # the way the model card tells users to load it: stock classes only
    transformer = PixArtTransformer2DModel.from_pretrained(out)
    assert transformer.config.num_layers == 4
    stock = PixArtSigmaPipeline.from_pretrained(tiny_pipeline_dir, transformer=transformer)
    # this package loads the folder into its base pipeline too (base from source_model, or given)
    ours = load_pipeline(out, base_model=str(tiny_pipeline_dir))
    assert ours.transformer.config.kept_layers == [0, 2, 3, 5]
    a = stock("a red circle", **tiny_generation_kwargs(stock)).images
    b = ours("a red circle", **tiny_generation_kwargs(ours)).images
    torch.testing.assert_close(a, b, atol=0, rtol=0)

    # the same blocks pruned as a full pipeline give the same transformer weights
    full = tmp_path / "full"
    assert main(["prune", "--model", str(tiny_pipeline_dir), "--drop", "1,4", "--output", str(full)]) == 0
    with safe_open(out / "diffusion_pytorch_model.safetensors", "pt") as f1:
        with safe_open(full / "transformer" / "diffusion_pytorch_model.safetensors", "pt") as f2:
            assert sorted(f1.keys()) == sorted(f2.keys())
            for key in f1.keys():
                assert torch.equal(f1.get_tensor(key), f2.get_tensor(key)), key


def test_transformer_folder_without_base(tiny_pipeline_dir, tmp_path, capsys):
    out = tmp_path / "pruned"
    assert (
        main(["prune", "--model", str(tiny_pipeline_dir), "--drop", "0", "--transformer-only", "--output", str(out)])
        == 0
    )
    # the config names a local source by folder name; the full path is in the hidden marker, so it loads here
    assert read_config(out / "config.json")["source_model"] == tiny_pipeline_dir.name
    assert load_pipeline(out).transformer.config.kept_layers == [1, 2, 3, 4, 5]
    # downloaded elsewhere (no marker) and with no source recorded: the base must be given
    downloaded = tmp_path / "downloaded"
    downloaded.mkdir()
    for name in ("config.json", "diffusion_pytorch_model.safetensors"):
        (downloaded / name).write_bytes((out / name).read_bytes())
    config = read_config(downloaded / "config.json")
    config["source_model"] = None
    (downloaded / "config.json").write_text(json.dumps(config))
    with pytest.raises(LayerPruneError, match="pass --base-model"):
        load_pipeline(downloaded)
    assert load_pipeline(downloaded, base_model=str(tiny_pipeline_dir)).transformer.config.num_layers == 5
    # pruning a transformer folder again keeps counting blocks in the source's numbering
    again = tmp_path / "again"
    assert main(["prune", "--model", str(out), "--drop", "0", "--transformer-only", "--output", str(again)]) == 0
    assert read_config(again / "config.json")["kept_layers"] == [2, 3, 4, 5]


def test_dtype_flag_sets_the_saved_dtype(tmp_path):
    out = tmp_path / "bf16"
    assert main(["prune", "--model", "toy", "--drop", "3", "--transformer-only", "--dtype", "bfloat16",
                 "--output", str(out)]) == 0  # fmt: skip
    with safe_open(out / "diffusion_pytorch_model.safetensors", "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}
    out = tmp_path / "auto"  # auto: the toy world stays float32
    assert main(["prune", "--model", "toy", "--drop", "3", "--transformer-only", "--output", str(out)]) == 0
    with safe_open(out / "diffusion_pytorch_model.safetensors", "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F32"}


class CommitApi:
    """Records what a real push sends (no network)."""

    calls: list = []

    def __init__(self, token=None):
        pass

    def create_repo(self, repo_id, **kwargs):
        CommitApi.calls.append(("create_repo", repo_id))

    def create_commit(self, repo_id, operations, **kwargs):
        CommitApi.calls.append(("create_commit", repo_id, [(op.path_in_repo, op.path_or_fileobj) for op in operations]))
        return type("Info", (), {"commit_url": "https://huggingface.co/x/commit/1"})()


def test_push_transformer_only_sends_the_transformer_at_the_top_with_a_base_model_card(
    tiny_pipeline_dir, tmp_path, monkeypatch, capsys
):
    import huggingface_hub
    from huggingface_hub import ModelCard

    folder = tmp_path / "pruned"
    assert main(["prune", "--model", str(tiny_pipeline_dir), "--drop", "2", "--output", str(folder)]) == 0
    capsys.readouterr()
    args = ["push", str(folder), "--repo-id", "me/small", "--transformer-only", "--base-model", "org/base"]
    assert main([*args, "--dry-run"]) == 0
    listed = [line.split()[-1] for line in capsys.readouterr().out.splitlines() if line.startswith("  ")]
    assert sorted(listed) == ["README.md", "config.json", "diffusion_pytorch_model.safetensors"]
    card = (folder / "README.md").read_text()
    assert (
        'PixArtTransformer2DModel.from_pretrained("me/small"' in card and '"org/base", transformer=transformer' in card
    )
    assert ModelCard(card).data.base_model == "org/base"

    CommitApi.calls = []
    monkeypatch.setattr(huggingface_hub, "HfApi", CommitApi)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_fake")
    assert main(args) == 0
    (commit,) = [c for c in CommitApi.calls if c[0] == "create_commit"]
    sent = dict(commit[2])
    assert sent["config.json"] == str(folder / "transformer" / "config.json")
    assert set(sent) == {"README.md", "config.json", "diffusion_pytorch_model.safetensors"}


def test_card_lists_datasets_and_eval_results():
    from diffusers_layerprune.hub import card_datasets, card_eval_results, prompt_dataset_id

    assert prompt_dataset_id("yuvalkirstain/pickapic_v1_no_images:validation_unique@caption") == (
        "yuvalkirstain/pickapic_v1_no_images"
    )
    assert prompt_dataset_id("hpdv2:photo") == "zhwang/HPDv2"
    assert prompt_dataset_id("toy:train") is None and prompt_dataset_id("prompts.txt") is None
    from diffusers_layerprune import DistillConfig
    from diffusers_layerprune.eval_report import EvalReport, EvalSettings, Latency, ModelEval, ScoreSummary

    importance = {"metadata": {"prompts": {"source": "user/prompts:train@text", "count": 5}}}
    distill = DistillConfig(
        "base", "pruned", [0, 2], 4, steps=10, prompt_set={"source": "user/train-corpus@caption"}, data="x"
    )
    student = ModelEval("m", 2, [0, 2], {"transformer": 1, "total": 2}, Latency(1.0, 0.02, 0.5, 1.17))
    student.scores["hpsv2.1"] = ScoreSummary(0.271)
    settings = EvalSettings("hpdv2", 3200, ["hpsv2.1"], 20, 4.5, 1024, 300)
    report = EvalReport("m", "base", settings, {"student": student})
    assert card_datasets(importance, distill, report) == ["user/prompts", "user/train-corpus", "zhwang/HPDv2"]
    results = card_eval_results(report)
    assert [(r.metric_type, r.metric_value, r.dataset_type) for r in results] == [
        ("hpsv2.1", 0.271, "zhwang/HPDv2"),
        ("speedup", 1.17, "zhwang/HPDv2"),
    ]


def _tree(root):
    return sorted((str(p.relative_to(root)), p.stat().st_size) for p in root.rglob("*"))


@pytest.mark.parametrize(
    "case, message",
    [
        ("prune_vae_folder", "holds a AutoencoderKL; layerprune supports PixArt-Sigma"),
        ("push_no_transformer", "is a pipeline folder without transformer/config.json"),
        ("eval_cuda", "--device cuda: CUDA is not available"),
        ("eval_bad_device", "unknown --device 'gpu0'"),
        ("eval_unknown_prompts", "unknown prompt set 'nonsense'"),
        ("score_missing_column", "has no column 'nope'"),
        ("score_all_duplicates", "all 3 rows are the same prompt"),
    ],
)
def test_real_scale_bad_input_one_line_exit_2_nothing_written(
    tiny_pipeline_dir, tmp_path, capsys, monkeypatch, case, message
):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a CPU-only machine, even where CI has a GPU
    work = tmp_path / "work"
    work.mkdir()
    (work / "dupes.txt").write_text("same\nsame\nsame\n")
    (work / "p.csv").write_text("text\na red circle\n")
    broken = work / "broken"
    broken.mkdir()
    (broken / "model_index.json").write_text("{}")
    out = str(work / "out")
    model = str(tiny_pipeline_dir)
    args = {
        "prune_vae_folder": ["prune", "--model", f"{model}/vae", "--drop", "1", "--transformer-only", "--output", out],
        "push_no_transformer": ["push", str(broken), "--repo-id", "me/x", "--transformer-only", "--dry-run"],
        "eval_cuda": ["eval", "--model", model, "--device", "cuda", "--output", f"{out}.json"],
        "eval_bad_device": ["eval", "--model", model, "--device", "gpu0", "--output", f"{out}.json"],
        "eval_unknown_prompts": ["eval", "--model", model, "--prompts", "nonsense", "--output", f"{out}.json"],
        "score_missing_column": [
            "score",
            "--model",
            model,
            "--prompts",
            f"{work}/p.csv@nope",
            "--output",
            f"{out}.json",
        ],
        "score_all_duplicates": [
            "score",
            "--model",
            model,
            "--prompts",
            f"{work}/dupes.txt",
            "--output",
            f"{out}.json",
        ],
    }[case]
    before = _tree(work)
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert _tree(work) == before
