"""A model whose weights are pickles (.bin / .pt / .ckpt) is refused by name before anything is unpickled: as a Hub id
(served offline from huggingface_hub's cache layout) and as a local folder, for every command that loads it."""

import importlib

import pytest

from diffusers_layerprune.cli import main as cli

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def pickled_hub(tmp_path_factory):
    """A tiny pipeline saved with pickled weights, as the Hub cache holds a downloaded repo ``someone/pickled``."""
    from diffusers_layerprune.testing import build_tiny_pixart_pipeline

    root = tmp_path_factory.mktemp("pickles")
    repo = root / "hub" / "models--someone--pickled"
    build_tiny_pixart_pipeline().save_pretrained(repo / "snapshots" / COMMIT, safe_serialization=False)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    return root


@pytest.fixture
def never_unpickle(monkeypatch):
    import torch

    def refuse(*args, **kwargs):
        raise AssertionError("a pickle was opened")

    monkeypatch.setattr(torch, "load", refuse)


@pytest.mark.parametrize(
    "command",
    [
        ["prune", "--model", "{model}", "--drop", "1", "--output", "{out}"],
        [
            "eval",
            "--model",
            "{model}",
            "--prompts",
            "toy",
            "--num-prompts",
            "1",
            "--no-teacher",
            "--output",
            "{out}.json",
        ],
    ],
    ids=["prune", "eval"],
)
@pytest.mark.parametrize("where", ["hub_id", "local_folder"])
def test_pickled_weights_are_refused_by_name(
    pickled_hub, never_unpickle, monkeypatch, capsys, tmp_path, command, where
):
    import huggingface_hub.constants

    model = (
        "someone/pickled" if where == "hub_id" else str(pickled_hub / "hub/models--someone--pickled/snapshots" / COMMIT)
    )
    monkeypatch.setenv("HF_HUB_CACHE", str(pickled_hub / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    importlib.reload(huggingface_hub.constants)  # the cache folder and offline mode are read at import
    try:
        capsys.readouterr()
        argv = [a.format(model=model, out=tmp_path / "out") for a in command]
        assert cli(argv) == 2
    finally:
        monkeypatch.undo()
        importlib.reload(huggingface_hub.constants)
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    err = lines[0]
    assert err.startswith(f"layerprune {command[0]}: error:") and "diffusion_pytorch_model.bin" in err, err
    assert "pickled weights" in err and "never loads" in err, err
    assert list(tmp_path.iterdir()) == []
