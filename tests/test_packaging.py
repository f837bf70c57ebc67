"""The package as users get it from `pip install .` (not editable): build the wheel, install it into a temporary
target, and from a folder outside the checkout run a short recipe (score -> prune -> distil -> eval -> card) and a
dry-run push. Everything read at run time (model card template, training script, toy world) must be in the wheel."""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from helpers import ROOT, read_config

_IGNORE = shutil.ignore_patterns(".git", "build", "dist", "runs", "*.egg-info", "__pycache__", ".*cache")


def IGNORE(folder, names):
    # "out*" only at the top (run outputs): anywhere else it also dropped diffusers_layerprune/outputs.py, and the
    # installed wheel then imported that module from the editable checkout
    top = {n for n in names if n.startswith("out")} if Path(folder) == ROOT else set()
    return set(_IGNORE(folder, names)) | top


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(site folder with the installed wheel, environment that imports only it)."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "src"  # build from a copy: an in-tree build would leave build/ in the checkout
    shutil.copytree(ROOT, source, ignore=IGNORE, symlinks=True)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", tmp / "dist", source], check=True)
    (wheel,) = (tmp / "dist").glob("diffusers_layerprune-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for needed in (
        "diffusers_layerprune/model_cards/pruned_pixart.md",
        "diffusers_layerprune/train_distill.py",
        "diffusers_layerprune/toy/assets/pipeline/model_index.json",
    ):
        assert needed in names, needed
    site = tmp / "site"
    subprocess.run([*pip, "install", "--no-deps", "--target", site, wheel], check=True)
    env = {**os.environ, "PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return site, env


@pytest.mark.slow
def test_wheel_runs_the_recipe_and_a_dry_run_push_outside_the_checkout(installed, tmp_path):
    site, env = installed
    where = subprocess.run(
        [sys.executable, "-c", "import diffusers_layerprune.outputs as m; print(m.__file__)"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert Path(where).is_relative_to(site), where  # the wheel, not the checkout

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "num_prompts: 2\nscan_steps: 2\nratio: 0.25\ndistill_steps: 2\ndistill_batch_size: 2\neval_num_prompts: 2\n"
        "output: runs/toy\nextra_train_args: [--max_train_samples, '4', --teacher_inference_steps, '2']\n"
    )
    layerprune = [str(site / "bin" / "layerprune")]
    result = subprocess.run(
        [*layerprune, "run", "--recipe", str(recipe)], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    distilled = tmp_path / "runs" / "toy" / "distilled"
    assert (distilled / "distill_config.json").is_file() and (distilled / "report.json").is_file()
    card = (distilled / "README.md").read_text()
    assert "knowledge-distillation" in card and "## How the blocks were chosen" in card

    result = subprocess.run(
        [*layerprune, "push", "runs/toy/distilled", "--repo-id", "me/x", "--dry-run"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "would upload" in result.stdout and "transformer/diffusion_pytorch_model.safetensors" in result.stdout
    kept = read_config(distilled / "transformer" / "config.json")["kept_layers"]
    assert len(kept) == 9


def test_training_module_runs_from_the_wheel(installed, tmp_path):
    site, env = installed
    result = subprocess.run(
        [sys.executable, "-m", "diffusers_layerprune.train_distill", "--help"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "--student_model" in result.stdout and "--teacher_model" in result.stdout
