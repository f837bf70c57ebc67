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
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "diffusion_pytorch_model.safetensors"]
    config = json.loads((out / "config.json").read_text())
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
    config = json.loads((out / "config.json").read_text())
    config["source_model"] = None
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(LayerPruneError, match="pass --base-model"):
        load_pipeline(out)
    # pruning a transformer folder again keeps counting blocks in the source's numbering
    again = tmp_path / "again"
    assert main(["prune", "--model", str(out), "--drop", "0", "--transformer-only", "--output", str(again)]) == 0
    assert json.loads((again / "config.json").read_text())["kept_layers"] == [2, 3, 4, 5]


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
