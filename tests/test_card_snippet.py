"""The model card's usage snippet runs as printed (issue 27, point 6), for every family, the toy included.

Each card is rendered by `layerprune push --dry-run`; its Python block is run unchanged in one fresh stock process
that never imports this package (helpers.run_stock), offline (`HF_HUB_OFFLINE=1`), with the repo id resolved from the
Hub cache of that process (helpers.stock_hub_cache), which holds exactly the files push would upload (as a user's
machine holds them after a download). The tiny Sana, Flux, FLUX.2 and Qwen-Image test pipelines generate at their
pipelines' default sizes (256 to 1024 px: minutes on a CPU), so their snippets run with a smaller size and two steps added to the call,
and nothing else changed.
"""

import json
import re
import shutil
from pathlib import Path

import pytest

from diffusers_layerprune.cli import main as cli
from diffusers_layerprune.hub import push_pipeline
from diffusers_layerprune.toy.paths import assets_dir

from helpers import run_stock, stock_hub_cache

MODELS = {
    "toy": "toy",
    "sana": "tiny-random-sana",
    "sd3": "tiny-random-sd3",
    "flux": "tiny-random-flux",
    "flux2": "tiny-random-flux2",
    "qwenimage": "tiny-random-qwenimage",
}
COMMIT = "0123456789abcdef0123456789abcdef01234567"
PROMPT = '"a small cactus with a happy face in the Sahara desert"'
SMALLER = {
    "sana": ", height=32, width=32, num_inference_steps=2",
    "flux": ", height=16, width=16, num_inference_steps=2",
    "flux2": ", height=16, width=16, num_inference_steps=2",
    "qwenimage": ", height=16, width=16, num_inference_steps=2",
}

RUN_SNIPPETS = """
import json, sys
import numpy as np
for name, code in json.loads(open(sys.argv[1]).read()):
    scope = {}
    exec(compile(code, name, "exec"), scope)  # the card's block, as printed
    pixels = np.asarray(scope["image"], dtype=np.float32)
    print(json.dumps([name, list(pixels.shape), float(pixels.std())]))
assert "diffusers_layerprune" not in sys.modules
"""


def cache_repo(cache: Path, repo_id: str, files: dict[str, Path]) -> None:
    """Lay ``files`` (repo path -> local file) out as huggingface_hub's cache holds a downloaded repo."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    for rel, source in files.items():
        target = repo / "snapshots" / COMMIT / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(COMMIT)


def snippet(card: str) -> str:
    (usage,) = re.findall(r"## Usage\n.*?```python\n(.*?)```", card, flags=re.S)
    return usage


@pytest.fixture(scope="module")
def cards(tmp_path_factory):
    """(name, snippet) of each family's pruned model, and the Hub cache its snippet downloads from."""
    root = tmp_path_factory.mktemp("snippet")
    cache, snippets = stock_hub_cache(), []
    for name, model in MODELS.items():
        folder = root / name
        assert cli(["prune", "--model", model, "--drop", "1", "--output", str(folder)]) == 0
        repo_id = f"me/pruned-{name}"
        result = push_pipeline(folder, repo_id, dry_run=True)
        cache_repo(cache, repo_id, {rel: folder / rel for rel, _ in result["files"]})
        snippets.append((name, snippet((folder / "README.md").read_text())))
    # transformer only: the repo holds the transformer; the rest comes from the base model (here the toy teacher)
    folder = root / "toy"
    result = push_pipeline(folder, "me/toy-transformer", dry_run=True, transformer_only=True, base_model="me/toy-base")
    card = (folder / "README.md").read_text()
    assert "config.json" in dict(result["files"]) and "vae/config.json" not in dict(result["files"])
    files = {target: folder / "transformer" / target for target, _ in result["files"] if target != "README.md"}
    cache_repo(cache, "me/toy-transformer", files)
    base = assets_dir() / "pipeline"
    cache_repo(cache, "me/toy-base", {p.relative_to(base).as_posix(): p for p in base.rglob("*") if p.is_file()})
    snippets.append(("toy transformer-only", snippet(card)))
    return root, cache, snippets


def test_the_card_snippet_uses_dtype_and_no_gpu_only_call(cards):
    _, _, snippets = cards
    for name, code in snippets:
        assert "dtype=torch." in code and "torch_dtype" not in code, name
        assert '.to("cuda")' not in code, name  # runs where there is no GPU too
    toy = dict(snippets)["toy"]
    assert "dtype=torch.float32" in toy and "use_resolution_binning=False" in toy  # the toy's sample size has no bins


def test_the_card_snippet_runs_as_printed_in_a_fresh_process(cards, tmp_path):
    root, cache, snippets = cards
    runs = []
    for name, code in snippets:
        if name in SMALLER:
            assert code.count(PROMPT) == 1
            code = code.replace(PROMPT, PROMPT + SMALLER[name])
        runs.append((name, code))
    (tmp_path / "snippets.json").write_text(json.dumps(runs))
    # a bare environment whose Hub cache holds the pushed repos (helpers.bare_env)
    result = run_stock(RUN_SNIPPETS, args=[tmp_path / "snippets.json"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    ran = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("[")]
    assert [name for name, _, _ in ran] == [name for name, _ in snippets]
    for name, shape, std in ran:
        assert len(shape) == 3 and shape[2] == 3 and shape[0] >= 16, name
        assert std > 0, name  # an image, not a blank
    assert (tmp_path / "cactus.png").is_file()  # the snippet saves what it generated
