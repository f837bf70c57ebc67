"""``toy-flux``: the shipped toy Flux teacher (both stacks, rectified flow) on the toy world, by name and stock."""

from __future__ import annotations

import json
import os
import textwrap

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from diffusers_layerprune.toy import (  # noqa: E402
    IMAGE_SIZE,
    toy_flux_pipeline_path,
    toy_generation_kwargs,
    world,
)
from diffusers_layerprune.toy.judge import judge  # noqa: E402

from helpers import run_stock  # noqa: E402

ATTRS = world.split_attributes("heldout")[::27]  # 8 held-out captions spread over the colours


@pytest.fixture(scope="module")
def flux_pipe():
    from diffusers_layerprune.modeling import load_pipeline

    pipe = load_pipeline("toy-flux")
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def flux_images(flux_pipe):
    kwargs = toy_generation_kwargs(list(range(len(ATTRS))), pipe=flux_pipe)
    return flux_pipe([a.caption() for a in ATTRS], **kwargs).images


def test_toy_flux_resolves_by_name_with_both_stacks(flux_pipe):
    from diffusers import FluxPipeline, FluxTransformer2DModel

    from diffusers_layerprune.blocks import block_names, num_blocks
    from diffusers_layerprune.modeling import model_defaults, pipeline_folder, read_transformer_config
    from diffusers_layerprune.provenance import public_name

    assert isinstance(flux_pipe, FluxPipeline) and isinstance(flux_pipe.transformer, FluxTransformer2DModel)
    config = read_transformer_config("toy-flux")  # without loading: commands check indices against it first
    assert (config["num_layers"], config["num_single_layers"]) == (4, 8)
    assert num_blocks(flux_pipe.transformer) == 12
    assert block_names(flux_pipe.transformer)[3:5] == ["double 3", "single 0"]
    assert pipeline_folder("toy-flux") == toy_flux_pipeline_path()
    # The same toy world: its prompt splits, scorer and judge; and what uploads record for the bundled folder.
    defaults = model_defaults("toy-flux")
    assert (defaults["train_prompts"], defaults["eval_prompts"], defaults["scorers"]) == (
        "toy:train",
        "toy:heldout",
        ["toy"],
    )
    assert public_name(toy_flux_pipeline_path() / "transformer") == "toy-flux"


def test_toy_flux_generates_the_world(flux_images):
    assert flux_images.shape == (len(ATTRS), 3, IMAGE_SIZE, IMAGE_SIZE)
    assert torch.isfinite(flux_images).all() and flux_images.min() >= 0 and flux_images.max() <= 1
    report = judge(flux_images, ATTRS)
    # A trained teacher, not a random one (the documented held-out numbers are in docs/toy_world.md).
    assert report.accuracy["colour"] >= 0.75 and report.accuracy["position"] >= 0.75, report.accuracy


def test_toy_flux_is_guided_by_true_cfg_the_same_way_in_every_command(flux_pipe, flux_images):
    """score / eval / prune scans / the paper's judge generate from cached conditioning with the model's defaults;
    the toy's own helpers (evaluate, train_teacher's judge) call the pipeline with prompts: one set of images."""
    from diffusers_layerprune.families import encode_text, get_family
    from diffusers_layerprune.generation import generate_from_conditioning
    from diffusers_layerprune.modeling import model_defaults

    defaults = model_defaults("toy-flux")
    assert defaults["guidance_scale"] == 4.5 and defaults["resolution"] == IMAGE_SIZE  # the toy's, as measured
    flux = get_family("flux")
    assert flux.guidance_kwargs(4.5, flux_pipe.transformer.config) == {"true_cfg_scale": 4.5}
    # Flux.1-dev's guidance is a model input, not a second forward
    assert flux.guidance_kwargs(3.5, {"guidance_embeds": True}) == {"guidance_scale": 3.5}
    # FLUX.1-schnell has no guidance embedding either but does not ask for true CFG: called as FluxPipeline calls it
    assert flux.guidance_kwargs(3.5, {"guidance_embeds": False}) == {"guidance_scale": 3.5}
    # latency is timed on the batch one step runs: the negative forward counts where true CFG adds it
    assert flux.denoising_batch(4.5, flux_pipe.transformer.config) == 2
    assert (
        flux.denoising_batch(3.5, {"guidance_embeds": True})
        == flux.denoising_batch(1.0, flux_pipe.transformer.config)
        == 1
    )
    length = defaults["max_sequence_length"]
    text = encode_text(flux_pipe, [a.caption() for a in ATTRS], max_sequence_length=length)
    images = generate_from_conditioning(
        flux_pipe, text, encode_text(flux_pipe, [""], max_sequence_length=length),
        seeds=list(range(len(ATTRS))), num_inference_steps=defaults["num_inference_steps"],
        guidance_scale=defaults["guidance_scale"], resolution=defaults["resolution"], max_sequence_length=length,
    )  # fmt: skip
    torch.testing.assert_close(images, flux_images.clamp(0, 1), atol=1e-5, rtol=0)
    unguided = flux_pipe(
        [a.caption() for a in ATTRS],
        **toy_generation_kwargs(list(range(len(ATTRS))), guidance_scale=1.0, pipe=flux_pipe),
    ).images
    assert (unguided - flux_images).abs().max() > 0.05  # the guidance changes the images


def test_stock_diffusers_loads_toy_flux_in_a_fresh_process_without_warnings(flux_images, tmp_path):
    script = textwrap.dedent(
        f"""
        import json, logging, sys, warnings
        import torch
        from diffusers import DiffusionPipeline
        from diffusers.utils import logging as diffusers_logging

        records = []
        handler = logging.Handler()
        handler.emit = lambda record: records.append(record.getMessage())
        diffusers_logging.get_logger("diffusers").addHandler(handler)
        diffusers_logging.set_verbosity_warning()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pipe = DiffusionPipeline.from_pretrained({str(toy_flux_pipeline_path())!r}, local_files_only=True)
        pipe.set_progress_bar_config(disable=True)
        captions = {[a.caption() for a in ATTRS]!r}
        # true CFG against the empty prompt, as docs/toy_world.md tells users to call it
        images = pipe(captions, num_inference_steps=20, height=32, width=32, max_sequence_length=16,
                      true_cfg_scale=4.5, negative_prompt="", output_type="pt",
                      generator=[torch.Generator().manual_seed(i) for i in range(len(captions))]).images
        assert "diffusers_layerprune" not in sys.modules, "plugin was imported"
        torch.save(images, sys.argv[1])
        print(json.dumps(dict(cls=type(pipe).__name__, logs=records,
                              warnings=[str(w.message) for w in caught if "diffusers" in w.filename])))
        """
    )
    out = tmp_path / "images.pt"
    result = run_stock(script, args=[out], cwd=tmp_path)  # a process of its own that never imports the package
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    stock = torch.load(out, weights_only=True)
    assert report["cls"] == "FluxPipeline"
    assert report["logs"] == [] and report["warnings"] == [], report
    # The images the package generates through its short name are the stock pipeline's, bit for bit.
    torch.testing.assert_close(stock, flux_images, atol=1e-5, rtol=0)


def test_build_script_small_mode(tmp_path):
    from diffusers import FluxPipeline

    from diffusers_layerprune.toy import train_teacher

    result = train_teacher.main(["--family", "flux", "--smoke", "--output_dir", str(tmp_path / "pipe")])
    assert torch.isfinite(torch.tensor(result["final_loss"]))
    pipe = FluxPipeline.from_pretrained(tmp_path / "pipe", local_files_only=True)
    config = pipe.transformer.config
    assert (config.num_layers, config.num_single_layers, config.guidance_embeds) == (4, 8, False)
    assert config["_layerprune_true_cfg"] == 4.5  # the rebuilt teacher asks for true CFG as the shipped one does
    assert pipe.vae.config.shift_factor == 0.0
    log = json.loads((tmp_path / "pipe" / "training_log.json").read_text())
    assert log["family"] == "flux" and log["steps"] == 2


def test_build_script_partial_captions(tmp_path, capsys):
    # --partial_captions trains on captions that leave attributes out: a share outside [0, 1] is refused before any
    # work, and a run with it differs from one without (the partial variants are really fed).
    from safetensors.torch import load_file

    from diffusers_layerprune.toy import train_teacher

    with pytest.raises(SystemExit) as refused:
        train_teacher.main(["--family", "flux", "--smoke", "--partial_captions", "1.5", "--output_dir", str(tmp_path)])
    assert refused.value.code == 2 and "--partial_captions" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
    weights = {}
    for name, share in (("plain", "0"), ("partial", "1")):
        args = ["--family", "flux", "--smoke", "--partial_captions", share, "--output_dir", str(tmp_path / name)]
        train_teacher.main(args)
        weights[name] = load_file(tmp_path / name / "transformer" / "diffusion_pytorch_model.safetensors")
        log = json.loads((tmp_path / name / "training_log.json").read_text())
        assert log["partial_captions"] == float(share)
    key = "proj_out.weight"
    assert not torch.equal(weights["plain"][key], weights["partial"][key])


def test_a_pruned_toy_flux_keeps_asking_for_true_cfg(flux_pipe, tmp_path):
    """The marker travels with pruning and saving, so students of toy-flux are guided as their teacher."""
    from diffusers_layerprune.families import get_family

    family = get_family("flux")
    student = family.pruned_class().from_transformer(flux_pipe.transformer, pruned_layers=[5, 6])
    student.save_pretrained(tmp_path / "student")
    saved = json.loads((tmp_path / "student" / "config.json").read_text())
    assert saved["_layerprune_true_cfg"] == 4.5
    assert family.guidance_kwargs(4.5, student.config) == {"true_cfg_scale": 4.5}
    # and the card's stock snippet runs it guided as layerprune evaluates it
    assert family.card_call_args(student.config) == {"negative_prompt": "", "true_cfg_scale": 4.5}
    assert family.card_call_args({"guidance_embeds": True}) == {}
