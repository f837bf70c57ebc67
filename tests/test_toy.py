"""The embedded toy world: renderer, judge, shipped teacher and scorer, training-script smoke runs."""

from __future__ import annotations

import hashlib
import json
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from diffusers_layerprune.toy import (  # noqa: E402
    IMAGE_SIZE,
    MAX_SEQUENCE_LENGTH,
    toy_generation_kwargs,
    toy_pipeline_path,
    toy_scorer_path,
    world,
)
from diffusers_layerprune.toy.judge import judge  # noqa: E402


@pytest.fixture(scope="module")
def toy_pipe():
    from diffusers_layerprune.modeling import load_pipeline

    pipe = load_pipeline("toy")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_world_splits_and_captions():
    train, heldout = world.split_attributes("train"), world.split_attributes("heldout")
    assert (len(train), len(heldout)) == (360, 216)
    assert not set(train) & set(heldout)
    assert set(train) | set(heldout) == set(world.all_attributes())
    # Held-out captions are new combinations, not new words: every (colour, position) pair is seen in training.
    seen = {(a.colour, a.row, a.column) for a in train}
    assert all((a.colour, a.row, a.column) in seen for a in heldout)
    for a in world.all_attributes():
        assert world.parse_caption(a.caption()) == a
    with pytest.raises(ValueError):
        world.parse_caption("a photo of a cat")


def test_partial_captions_leave_out_attributes_but_never_the_shape():
    a = world.Attributes("red", "triangle", "large", 0, 2)
    assert a.caption(()) == a.caption() == "a large red triangle at the top right on a black background"
    assert a.caption(("size", "position")) == "a red triangle on a black background"
    assert a.caption(world.OMITTABLE) == "a triangle on a black background"
    # every word a partial caption uses is in the tokenizers' vocabulary (no unknown token)
    assert set(a.caption(("colour",)).split()) <= set(world.vocabulary())
    with pytest.raises(ValueError, match="shape"):
        a.caption(("shape",))


def test_renderer_is_deterministic():
    a = world.Attributes("red", "triangle", "large", 0, 2)
    first, again, other = world.render(a, seed=3), world.render(a, seed=3), world.render(a, seed=4)
    assert first.shape == (3, IMAGE_SIZE, IMAGE_SIZE) and first.dtype == torch.float32
    assert 0.0 <= first.min() and first.max() <= 1.0
    assert torch.equal(first, again)
    assert not torch.equal(first, other)  # the seed jitters position and size
    assert [e.caption for e in world.sample("train", 5, seed=1)] == [e.caption for e in world.sample("train", 5, 1)]


def test_judge_reads_clean_renders():
    attrs = world.split_attributes("all")
    images = world.render_batch(attrs, [7] * len(attrs))
    report = judge(images, attrs)
    for name in ("colour", "position", "shape", "size", "overall"):
        assert report.accuracy[name] >= 0.98, (name, report.accuracy)
    # The same images against shuffled captions must fail: the judge checks, it does not just approve.
    shuffled = [attrs[(i * 37 + 11) % len(attrs)] for i in range(len(attrs))]
    wrong = judge(images, shuffled)
    assert wrong.accuracy["overall"] < 0.1
    assert judge(torch.zeros(2, 3, IMAGE_SIZE, IMAGE_SIZE), attrs[:2]).accuracy["overall"] == 0.0


def test_load_toy_by_short_name_offline(toy_pipe):
    from diffusers import PixArtSigmaPipeline, PixArtTransformer2DModel

    assert isinstance(toy_pipe, PixArtSigmaPipeline)
    assert isinstance(toy_pipe.transformer, PixArtTransformer2DModel)
    assert toy_pipe.transformer.config.num_layers >= 12
    assert toy_pipe.transformer.config.out_channels == 8
    ids = toy_pipe.tokenizer(world.captions("heldout")).input_ids
    assert max(len(i) for i in ids) <= MAX_SEQUENCE_LENGTH
    assert toy_pipe.tokenizer.unk_token_id not in {t for row in ids for t in row}
    assert (toy_pipeline_path() / "model_index.json").is_file()


def test_bundled_text_encoder_is_the_training_scripts_seeded_build(toy_pipe):
    # train_teacher.py freezes a seeded random T5: rebuilding it must give the shipped weights and vocabulary.
    from diffusers_layerprune.toy.train_teacher import build_text_encoder

    tokenizer, text_encoder = build_text_encoder(0)
    shipped = toy_pipe.text_encoder.state_dict()
    rebuilt = text_encoder.state_dict()
    assert shipped.keys() == rebuilt.keys()
    assert all(torch.equal(shipped[k], rebuilt[k]) for k in shipped)
    assert tokenizer.get_vocab() == toy_pipe.tokenizer.get_vocab()


def test_teacher_generates_images_of_the_world(toy_pipe):
    attrs = world.split_attributes("heldout")[::27]  # 8 held-out captions spread over colours
    out = toy_pipe([a.caption() for a in attrs], **toy_generation_kwargs(list(range(len(attrs))))).images
    assert out.shape == (len(attrs), 3, IMAGE_SIZE, IMAGE_SIZE)
    assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
    assert out.amax(dim=(1, 2, 3)).min() > 0.5  # every image draws something bright on the black background
    report = judge(out, attrs)
    assert report.accuracy["colour"] >= 0.75 and report.accuracy["position"] >= 0.75, report.accuracy


def test_scorer_folder_loads_and_prefers_the_matching_caption():
    from PIL import Image
    from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel

    from diffusers_layerprune.toy.train_scorer import image_embeddings, normalise, text_embeddings

    path = toy_scorer_path()
    model = CLIPModel.from_pretrained(path).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    processor = CLIPImageProcessor.from_pretrained(path)
    assert tokenizer.eos_token_id == model.config.text_config.eos_token_id != 2
    ids = tokenizer(["a small red circle at the top left on a black background"]).input_ids[0]
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id == max(ids)

    attrs = world.split_attributes("heldout")[:12]
    renders = world.render_batch(attrs, [0] * len(attrs))
    pil = [Image.fromarray((r.permute(1, 2, 0).numpy() * 255).round().astype("uint8")) for r in renders]
    pixels = processor(images=pil, return_tensors="pt").pixel_values
    # The processor's preprocessing is the one the scorer was trained with (up to 8-bit rounding).
    torch.testing.assert_close(pixels, normalise(renders), atol=0.01, rtol=0)
    with torch.no_grad():
        scores = image_embeddings(model, renders) @ text_embeddings(model, tokenizer, [a.caption() for a in attrs]).T
    assert (scores.argmax(dim=1) == torch.arange(len(attrs))).float().mean() >= 0.9


def _digest(folder) -> str:
    h = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            h.update(path.name.encode() + path.read_bytes())
    return h.hexdigest()


def test_training_scripts_smoke(tmp_path):
    from diffusers_layerprune.toy import evaluate, train_judge, train_scorer, train_teacher, train_vae
    from diffusers_layerprune.toy.paths import assets_dir

    before = _digest(assets_dir())
    assert train_judge.main(["--smoke", "--output_dir", str(tmp_path / "judge")])["steps"] == 3
    vae = train_vae.main(["--smoke", "--output_dir", str(tmp_path / "vae")])
    assert vae["scaling_factor"] > 0
    scorer = train_scorer.main(["--smoke", "--output_dir", str(tmp_path / "scorer")])
    assert 0.0 <= scorer["heldout_top1"] <= 1.0
    teacher = train_teacher.main(
        ["--smoke", "--vae", str(tmp_path / "vae"), "--output_dir", str(tmp_path / "pipe"), "--num_layers", "2"]
    )
    assert torch.isfinite(torch.tensor(teacher["final_loss"]))
    for folder in ("judge/model.safetensors", "vae/config.json", "scorer/config.json", "pipe/model_index.json"):
        assert (tmp_path / folder).is_file(), folder
    result = evaluate.main(
        [
            "--model",
            str(tmp_path / "pipe"),
            "--limit",
            "2",
            "--num_inference_steps",
            "2",
            "--output",
            str(tmp_path / "e.json"),
        ]
    )
    assert result["teacher"]["n"] == 2 and len(result["skip_one_block"]) == 2
    assert _digest(assets_dir()) == before  # smoke runs never touch the shipped artifacts


def test_teacher_training_resumes_exactly(tmp_path):
    # A long teacher run (benchmarks/capacity_toy.py trains 6000-step models in pieces) must end where one
    # uninterrupted run ends: same weights, to the bit; and a piece with other settings is refused.
    from safetensors.torch import load_file

    from diffusers_layerprune.errors import LayerPruneError
    from diffusers_layerprune.toy import train_teacher

    common = ["--smoke", "--num_layers", "2", "--max_steps", "4", "--num_renders", "8"]
    whole = tmp_path / "whole"
    train_teacher.main([*common, "--output_dir", str(whole)])
    pieces = tmp_path / "pieces"
    stopped = train_teacher.main([*common, "--output_dir", str(pieces), "--resume", "--stop_at_step", "2"])
    assert stopped["stopped_at"] == 2 and (pieces / train_teacher.RESUME_STATE).is_file()
    assert not (pieces / "model_index.json").exists()
    with pytest.raises(LayerPruneError, match="--num_layers 2"):
        train_teacher.main([*common[:2], "3", *common[3:], "--output_dir", str(pieces), "--resume"])
    train_teacher.main([*common, "--output_dir", str(pieces), "--resume"])
    assert not (pieces / train_teacher.RESUME_STATE).exists()
    a = load_file(whole / "transformer" / "diffusion_pytorch_model.safetensors")
    b = load_file(pieces / "transformer" / "diffusion_pytorch_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    log_a = json.loads((whole / "training_log.json").read_text())
    log_b = json.loads((pieces / "training_log.json").read_text())
    assert log_a["final_loss"] == log_b["final_loss"]
