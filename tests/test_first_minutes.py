"""What a new user meets in the first ten minutes (issue 27, point 6): the evaluation grid shows the teacher in the
top row, as the card says, whether the teacher's images were generated or cached; its captions differ per prompt;
`eval` writes nothing into the model folder it reads, and `push --report` puts such a report into the card."""

import json
import shutil

import numpy as np
import pytest
import torch

from diffusers_layerprune.cli import main as cli
from diffusers_layerprune.evaluation import grid_captions
from diffusers_layerprune.scorers.tiny import save_tiny_clip_folder
from diffusers_layerprune.testing import save_tiny_pixart_pipeline

# the first two share their first 40 characters: their captions must still differ
PROMPTS = [
    "a photograph of a small red circle drawn in the middle of a white page",
    "a photograph of a small red circle drawn in the corner of a white page",
    "a large blue square",
]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("first")
    save_tiny_pixart_pipeline(root / "teacher", num_layers=4)
    assert cli(["prune", "--model", str(root / "teacher"), "--drop", "1", "--output", str(root / "pruned")]) == 0
    save_tiny_clip_folder(root / "clip")
    (root / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    return root


def eval_args(work, *extra):
    return [
        "eval", "--model", str(work / "pruned"), "--prompts", str(work / "prompts.txt"), "--scorers",
        str(work / "clip"), "--steps", "2", "--guidance", "1.0", "--latency-repeats", "1", *extra,
    ]  # fmt: skip


class GridSpy:
    """What image_grid draws: per row of the figure its label and images, and the column titles."""

    def __init__(self, monkeypatch):
        import matplotlib.axes

        import diffusers_layerprune.evaluation as evaluation

        self.given, self.labels, self.images, self.titles = [], {}, {}, []
        real_grid, axes = evaluation.image_grid, matplotlib.axes.Axes

        def image_grid(rows, prompts, path, **kwargs):
            self.given.append({name: images.clone() for name, images in rows.items()})
            return real_grid(rows, prompts, path, **kwargs)

        def row(ax):
            return ax.get_subplotspec().rowspan.start

        real_imshow, real_label, real_title = axes.imshow, axes.set_ylabel, axes.set_title
        monkeypatch.setattr(evaluation, "image_grid", image_grid)
        monkeypatch.setattr(
            axes,
            "imshow",
            lambda ax, x, **kw: self.images.setdefault(row(ax), []).append(x) or real_imshow(ax, x, **kw),
        )
        monkeypatch.setattr(
            axes, "set_ylabel", lambda ax, t, **kw: self.labels.update({row(ax): t}) or real_label(ax, t, **kw)
        )
        monkeypatch.setattr(axes, "set_title", lambda ax, t, **kw: self.titles.append(t) or real_title(ax, t, **kw))


def test_the_grid_shows_the_teacher_on_top_generated_or_cached(work, tmp_path, monkeypatch, capsys):
    runs = []
    for name in ("first", "cached"):
        with monkeypatch.context() as patched:
            spy = GridSpy(patched)
            assert cli(eval_args(work, "--output", str(tmp_path / f"{name}.json"))) == 0
        report = json.loads((tmp_path / f"{name}.json").read_text())
        runs.append((spy, report))
    assert runs[0][1]["settings"]["teacher_cache"]["reused"] is False
    assert runs[1][1]["settings"]["teacher_cache"]["reused"] is True
    for spy, _ in runs:
        assert spy.labels == {0: "teacher", 1: "student"}
        (given,) = spy.given
        for r, name in enumerate(("teacher", "student")):  # the top row draws the teacher's images
            for c, drawn in enumerate(spy.images[r]):
                np.testing.assert_allclose(drawn, given[name][c].permute(1, 2, 0).numpy(), atol=1e-6)
    # the cached teacher row is the generated one (stored as 8-bit), and the student rows are equal
    first, cached = runs[0][0].given[0], runs[1][0].given[0]
    torch.testing.assert_close(cached["teacher"], first["teacher"], atol=1 / 255 + 1e-6, rtol=0)
    torch.testing.assert_close(cached["student"], first["student"], atol=0, rtol=0)
    titles = runs[0][0].titles
    assert len(titles) == len(PROMPTS) == len(set(titles))
    # the card says what the grid shows
    folder = tmp_path / "pruned"
    shutil.copytree(work / "pruned", folder)
    assert cli(["push", str(folder), "--repo-id", "me/x", "--dry-run", "--report", str(tmp_path / "first.json")]) == 0
    card = (folder / "README.md").read_text()
    assert "![Teacher (top) vs this model (bottom), same prompts and seeds](report_grid.png)" in card


@pytest.mark.parametrize(
    "prompts",
    [
        PROMPTS,
        ["a cat", "a cat", "a dog"],  # the same prompt twice (another seed)
        ["x" * 60 + "1", "x" * 60 + "2", "x" * 70],  # long prompts alike but for their end
        ["short", "a" * 39, "b" * 41],
    ],
)
def test_grid_captions_differ_per_prompt(prompts):
    captions = grid_captions(prompts)
    assert len(set(captions)) == len(prompts) and all(len(c) <= 44 for c in captions)


def test_eval_writes_nothing_into_the_model_folder_and_push_report_puts_it_in_the_card(
    work, tmp_path, monkeypatch, capsys
):
    folder = tmp_path / "pruned"
    shutil.copytree(work / "pruned", folder)
    before = sorted(p.relative_to(folder) for p in folder.rglob("*"))
    monkeypatch.chdir(tmp_path)
    args = eval_args(work)
    args[args.index("--model") + 1] = str(folder)
    assert cli(args) == 0
    out = capsys.readouterr().out
    assert sorted(p.relative_to(folder) for p in folder.rglob("*")) == before  # the model folder is as it was
    report = tmp_path / "pruned-report.json"
    assert (
        report.is_file()
        and (tmp_path / "pruned-report.md").is_file()
        and (tmp_path / "pruned-report_grid.png").is_file()
    )
    assert f"layerprune push {folder} --repo-id USER/NAME --report pruned-report.json" in out

    assert cli(["push", str(folder), "--repo-id", "me/x", "--dry-run", "--report", str(report)]) == 0
    listed = capsys.readouterr().out
    for name in ("report.json", "report.md", "report_grid.png"):
        assert f"  {name}\n" in listed
    card = (folder / "README.md").read_text()
    assert "## Evaluation" in card and "(report_grid.png)" in card
    # a report of another model is refused in one line
    other = tmp_path / "other"
    assert cli(["prune", "--model", str(work / "teacher"), "--drop", "2", "--output", str(other)]) == 0
    capsys.readouterr()
    assert cli(["push", str(other), "--repo-id", "me/x", "--dry-run", "--report", str(report)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "evaluated a model that kept blocks [0, 2, 3]" in err
    assert not (other / "README.md").exists()


def _http_error(cls, status: int):
    import httpx2

    request = httpx2.Request("GET", "https://huggingface.co/api/models/org/name")
    return cls(f"{status} Client Error", response=httpx2.Response(status, request=request))


def _hub_errors():
    from huggingface_hub import errors

    return {
        "gated": (_http_error(errors.GatedRepoError, 403), "accept its licence on https://huggingface.co/org/name"),
        "missing": (_http_error(errors.RepositoryNotFoundError, 404), "no such model on the Hub, or it is private"),
        "revision": (_http_error(errors.RevisionNotFoundError, 404), "that revision does not exist"),
        "unreachable": (
            errors.LocalEntryNotFoundError("cannot find the requested files in the local cache"),
            "check the connection",
        ),
        "denied": (_http_error(errors.HfHubHTTPError, 401), "log in with `hf auth login`"),
    }


@pytest.mark.parametrize("kind", ["gated", "missing", "revision", "unreachable", "denied"])
@pytest.mark.parametrize("command", ["prune", "eval", "score"])
def test_hub_errors_end_with_the_fix(kind, command, tmp_path, monkeypatch, capsys):
    import huggingface_hub
    from huggingface_hub import constants

    error, fix = _hub_errors()[kind]

    def download(*args, **kwargs):
        raise error

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # as a user online; the download itself is faked
    out = tmp_path / "out"
    argv = {
        "prune": ["prune", "--model", "org/name", "--drop", "1", "--output", str(out)],
        "eval": ["eval", "--model", "org/name", "--output", str(out) + ".json"],
        "score": ["score", "--model", "org/name", "--output", str(out) + ".json"],
    }[command]
    capsys.readouterr()
    assert cli(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and fix in err and "org/name" in err, err
    assert list(tmp_path.iterdir()) == []


def test_offline_and_not_cached_says_hf_hub_offline(tmp_path, capsys):
    # the tests run with HF_HUB_OFFLINE=1 (conftest): the real download refuses, nothing is faked
    assert cli(["prune", "--model", "org/not-cached", "--drop", "1", "--output", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "HF_HUB_OFFLINE=1 is set" in err and "hf download org/not-cached" in err


def _card_meta(folder):
    import yaml

    return yaml.safe_load((folder / "README.md").read_text().split("---")[1])


def test_card_relation_and_other_licence_follow_the_source(work, tmp_path, monkeypatch, capsys):
    import huggingface_hub
    from huggingface_hub import ModelCard

    base_card = "---\nlicense: other\nlicense_name: flux-1-dev-non-commercial-license\nlicense_link: LICENSE.md\n---\n"
    monkeypatch.setattr(huggingface_hub.ModelCard, "load", staticmethod(lambda target, *a, **k: ModelCard(base_card)))
    folder = tmp_path / "pruned"
    shutil.copytree(work / "pruned", folder)
    assert cli(["push", str(folder), "--repo-id", "me/x", "--dry-run", "--base-model", "org/base"]) == 0
    meta = _card_meta(folder)
    # pruned, not trained: not a finetune (see hub.py for why quantized), and the card says what it is
    assert meta["base_model"] == "org/base" and meta["base_model_relation"] == "quantized"
    assert "not trained further" in (folder / "README.md").read_text()
    assert meta["license"] == "other"
    assert meta["license_name"] == "flux-1-dev-non-commercial-license" and meta["license_link"] == "LICENSE.md"
    # an explicit licence wins; an empty one is refused in one line, nothing written
    assert cli(["push", str(folder), "--repo-id", "me/x", "--dry-run", "--license", "mit"]) == 0
    assert _card_meta(folder)["license"] == "mit" and "license_name" not in _card_meta(folder)
    (folder / "README.md").unlink()
    capsys.readouterr()
    assert cli(["push", str(folder), "--repo-id", "me/x", "--dry-run", "--license", " "]) == 2
    assert "--license is empty" in capsys.readouterr().err and not (folder / "README.md").exists()


def test_quiet_mode_keeps_hub_download_bars(tmp_path):
    """The command line's quiet mode hides the libraries' loading bars but not the Hub's download bars (the longest
    wait of a real run). A fresh interpreter: what counts is the order in which the libraries are first imported."""
    import subprocess
    import sys

    script = (
        "from diffusers_layerprune.quiet import quiet_libraries\n"
        "quiet_libraries()\n"
        "import huggingface_hub, diffusers, transformers, datasets\n"
        "from diffusers.utils import logging as d\n"
        "from transformers.utils import logging as t\n"
        "print(huggingface_hub.utils.are_progress_bars_disabled(), d.is_progress_bar_enabled(), "
        "t.is_progress_bar_enabled(), datasets.is_progress_bar_enabled())\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["False", "False", "False", "False"]
