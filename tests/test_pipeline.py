import json
import textwrap

import numpy as np
import pytest
import torch
from diffusers import DDPMPipeline, UNet2DModel

from diffusers_layerprune import LayerPruneError, PrunedPixArtTransformer
from diffusers_layerprune.modeling import load_pipeline, prune_pipeline, save_pruned_pipeline
from diffusers_layerprune.testing import tiny_generation_kwargs

from helpers import run_stock

PROMPT = "a small red circle at the top left"


def generate(pipe, seed=0):
    return pipe(PROMPT, **tiny_generation_kwargs(pipe, seed=seed)).images


def test_pruned_pipeline_loads_in_fresh_stock_diffusers_process(tiny_pipeline_dir, tmp_path):
    pipe = load_pipeline(tiny_pipeline_dir)
    pruned = prune_pipeline(pipe, pruned_layers=[1, 4])
    assert isinstance(pruned.transformer, PrunedPixArtTransformer)
    assert pruned.transformer.config.source_model == str(tiny_pipeline_dir)
    assert pipe.transformer.config.num_layers == 6  # the source pipeline is untouched
    expected = generate(pruned).numpy()

    out = save_pruned_pipeline(pruned, tmp_path / "pruned")
    index = json.loads((out / "model_index.json").read_text())
    assert index["transformer"] == ["diffusers", "PixArtTransformer2DModel"]

    script = textwrap.dedent(
        f"""
        import sys, numpy as np, torch
        from diffusers import DiffusionPipeline
        pipe = DiffusionPipeline.from_pretrained({str(out)!r})
        size = pipe.transformer.config.sample_size * pipe.vae_scale_factor
        images = pipe({PROMPT!r}, num_inference_steps=2, height=size, width=size, use_resolution_binning=False,
                      max_sequence_length=16, clean_caption=False, output_type="pt",
                      generator=torch.Generator().manual_seed(0)).images
        np.save({str(tmp_path / "stock.npy")!r}, images.numpy())
        assert "diffusers_layerprune" not in sys.modules, "plugin was imported"
        print(type(pipe.transformer).__name__, pipe.transformer.config.num_layers, pipe.transformer.config._kept_layers)
        """
    )
    result = run_stock(script, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "PixArtTransformer2DModel 4 [0, 2, 3, 5]"
    np.testing.assert_array_equal(np.load(tmp_path / "stock.npy"), expected)


def test_reloaded_transformer_is_pruned_class_with_provenance(tiny_pipeline_dir, tmp_path):
    pruned = prune_pipeline(load_pipeline(tiny_pipeline_dir), kept_layers=[0, 5])
    out = save_pruned_pipeline(pruned, tmp_path / "p")
    student = PrunedPixArtTransformer.from_pretrained(out, subfolder="transformer")
    assert student.config.kept_layers == [0, 5] and student.config.source_num_layers == 6
    reloaded = load_pipeline(out)
    assert torch.equal(generate(reloaded), generate(pruned))


def test_failed_save_leaves_nothing_and_keeps_old_output(tiny_pipeline_dir, tmp_path, monkeypatch):
    pruned = prune_pipeline(load_pipeline(tiny_pipeline_dir), kept_layers=[0, 1])
    target = tmp_path / "out"
    save_pruned_pipeline(pruned, target)  # an earlier output of ours
    before = sorted(p.relative_to(target) for p in target.rglob("*"))

    def broken_save(path, **kwargs):
        (path / "partial.bin").write_text("half")
        raise OSError("disk full")

    monkeypatch.setattr(pruned, "save_pretrained", broken_save)
    with pytest.raises(LayerPruneError, match="already exists"):
        save_pruned_pipeline(pruned, target)
    with pytest.raises(OSError, match="disk full"):
        save_pruned_pipeline(pruned, target, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temp folder left behind
    assert sorted(p.relative_to(target) for p in target.rglob("*")) == before
    with pytest.raises(OSError):
        save_pruned_pipeline(pruned, tmp_path / "new")
    assert not (tmp_path / "new").exists()


def test_load_pipeline_errors(tiny_pipeline_dir, tmp_path):
    with pytest.raises(LayerPruneError, match="does not exist"):
        load_pipeline(tmp_path / "missing")
    with pytest.raises(LayerPruneError, match="not a diffusers pipeline folder"):
        load_pipeline(tmp_path)
    with pytest.raises(LayerPruneError, match="holds only a transformer and does not record its base pipeline"):
        load_pipeline(tiny_pipeline_dir / "transformer")
    with pytest.raises(LayerPruneError, match="could not load pipeline 'nobody/nothing'"):
        load_pipeline("nobody/nothing")

    unet = UNet2DModel(
        sample_size=8,
        in_channels=3,
        out_channels=3,
        block_out_channels=(8, 8),
        norm_num_groups=4,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        layers_per_block=1,
    )
    from diffusers import DDPMScheduler

    DDPMPipeline(unet=unet, scheduler=DDPMScheduler()).save_pretrained(tmp_path / "ddpm")
    with pytest.raises(LayerPruneError, match="supports PixArt-Sigma"):
        load_pipeline(tmp_path / "ddpm")
