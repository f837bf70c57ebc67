"""Nothing of the user's is ever lost or exposed (issue 14, point 0).

- ``--overwrite`` (and the training script's ``--overwrite_output_dir``) replaces only folders the package wrote,
  never an input model; every refusal is exit code 2 with one line on stderr and leaves the disk as it was.
- No output is written through a symbolic link; ``push`` uploads no link whose target lies outside the folder.
- No file that ``push`` uploads holds a local path of the machine.
- ``layerprune run`` reuses a stage only under the same settings; a killed parent takes its training child with
  it; temporaries of killed runs are cleaned on the next run.
"""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard
from safetensors.torch import load_file

from diffusers_layerprune.cli import main as cli
from diffusers_layerprune.outputs import MARKER, write_marker
from diffusers_layerprune.provenance import public_name
from diffusers_layerprune.scorers.tiny import save_tiny_clip_folder
from diffusers_layerprune.testing import save_tiny_pixart_pipeline

from helpers import ROOT, distill_args, read_config, run_train_distill, train_in_this_process, train_refused

PROMPTS = ["a small red circle", "a large blue square", "a green star at the top left", "a white cross"]


def snapshot(root: Path) -> dict:
    """Every entry under ``root`` (hidden ones too): file hashes, symbolic link targets, folders."""
    tree = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            if path.is_symlink():
                tree[rel] = ("link", os.readlink(path))
            elif path.is_dir():
                tree[rel] = ("dir",)
            else:
                tree[rel] = ("file", hashlib.sha256(path.read_bytes()).hexdigest())
    return tree


def refused(capsys, argv, *fragments) -> str:
    """Run ``layerprune argv``: exit code 2, one line on stderr naming ``fragments``, no traceback."""
    capsys.readouterr()
    assert cli([str(a) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"layerprune {argv[0]}: error:"), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, err
    return err


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """teacher (6 blocks) and its pruned copy (blocks 1, 4 removed), a prompt file and a tiny CLIP scorer."""
    root = tmp_path_factory.mktemp("safety")
    save_tiny_pixart_pipeline(root / "teacher", num_layers=6)
    assert cli(["prune", "--model", str(root / "teacher"), "--drop", "1,4", "--output", str(root / "pruned")]) == 0
    (root / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    save_tiny_clip_folder(root / "clip")
    return root


@pytest.fixture
def sandbox(tmp_path, world):
    """A writable copy of the pruned folder (ours) in ``tmp_path``; the teacher is read from the shared world."""
    shutil.copytree(world / "pruned", tmp_path / "ours", symlinks=True)
    return tmp_path


def prune_argv(world, output, *extra):
    return ["prune", "--model", world / "teacher", "--drop", "2", "--output", output, *extra]


# ----------------------------------------------------------------------------------------------------------------
# --overwrite replaces only folders the package wrote, never an input
# ----------------------------------------------------------------------------------------------------------------


def test_overwrite_refuses_a_folder_holding_user_files(world, sandbox, capsys):
    users = sandbox / "mine"
    (users / "notes").mkdir(parents=True)
    (users / "notes" / "todo.txt").write_text("my notes")
    (users / "thesis.tex").write_text("my thesis")
    # a folder the package wrote, into which the user put a file of their own
    (sandbox / "ours" / "my-eval.txt").write_text("hand-written results")
    before = snapshot(sandbox)

    refused(capsys, prune_argv(world, users, "--overwrite"), str(users), "did not write", "notes")
    refused(capsys, prune_argv(world, users), "did not write")
    refused(capsys, prune_argv(world, sandbox / "ours", "--overwrite"), "did not write (my-eval.txt)")
    assert snapshot(sandbox) == before  # nothing created, changed or left behind (no temporary folders)


def test_overwrite_replaces_only_an_output_of_ours(world, sandbox, capsys):
    ours = sandbox / "ours"
    refused(capsys, prune_argv(world, ours), "already exists; pass --overwrite")
    assert cli([str(a) for a in prune_argv(world, ours, "--overwrite")]) == 0
    assert read_config(ours / "transformer" / "config.json")["kept_layers"] == [0, 1, 3, 4, 5]
    assert json.loads((ours / MARKER).read_text())["kind"] == "pipeline"
    assert sorted(p.name for p in sandbox.iterdir()) == ["ours"]  # no temporary or old copy left


def test_overwrite_never_replaces_the_input_model(world, sandbox, capsys):
    ours = sandbox / "ours"  # a pruned folder of ours, used as the input model
    (sandbox / "link").symlink_to(sandbox, target_is_directory=True)
    (ours / "importance.json").write_text("{}")
    before = snapshot(sandbox)
    again = ["prune", "--model", ours, "--drop", "1", "--output"]
    refused(capsys, [*again, ours, "--overwrite"], "is the input")
    refused(capsys, [*again, sandbox / "link" / "ours", "--overwrite"], "is the input")  # the same, spelled via a link
    refused(capsys, [*again, ours / "again"], "is inside the input")
    refused(capsys, prune_argv(world, world / "teacher" / "pruned"), "is inside the input")
    # an input inside the output: replacing the output would delete the importance file being read
    argv = ["prune", "--model", world / "teacher", "--importance", ours / "importance.json", "--num-layers", "1"]
    refused(capsys, [*argv, "--output", ours, "--overwrite"], "is inside the output folder")
    assert snapshot(sandbox) == before
    assert not (world / "teacher" / "pruned").exists()


def test_prune_into_the_current_folder_is_refused_cleanly(world, tmp_path, monkeypatch, capsys):
    here = tmp_path / "work"
    here.mkdir()
    monkeypatch.chdir(here)
    refused(capsys, prune_argv(world, "."), "is the current folder")
    refused(capsys, prune_argv(world, ".", "--overwrite"), "is the current folder")
    refused(capsys, prune_argv(world, "..", "--overwrite"), "contains it")
    assert snapshot(tmp_path) == {"work": ("dir",)}  # no hidden temporary pipeline anywhere
    assert cli([str(a) for a in prune_argv(world, "pruned")]) == 0 and (here / "pruned" / "model_index.json").is_file()


def test_output_that_is_a_symbolic_link_is_refused(world, tmp_path, capsys):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "out").symlink_to(elsewhere)
    (tmp_path / "report.json").symlink_to(elsewhere / "precious.json")
    (elsewhere / "precious.json").write_text("{}")
    before = snapshot(tmp_path)
    refused(capsys, prune_argv(world, tmp_path / "out", "--overwrite"), "is a symbolic link")
    eval_argv = ["eval", "--model", world / "pruned", "--output", tmp_path / "report.json", "--overwrite"]
    refused(capsys, eval_argv, "is a symbolic link")
    assert snapshot(tmp_path) == before


def test_eval_and_score_never_replace_user_files(world, tmp_path, capsys):
    (tmp_path / "notes.md").write_text("my notes")  # eval --output notes.json would write notes.md beside it
    (tmp_path / "mine.json").write_text('{"mine": true}')
    before = snapshot(tmp_path)
    for overwrite in ([], ["--overwrite"]):
        argv = ["eval", "--model", world / "pruned", "--output", tmp_path / "notes.json", *overwrite]
        refused(capsys, argv, "notes.md", "not written by layerprune")
        argv = ["score", "--model", world / "teacher", "--criterion", "random", "--output", tmp_path / "mine.json"]
        refused(capsys, [*argv, *overwrite], "mine.json", "not written by layerprune")
    assert snapshot(tmp_path) == before


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_stale_temporaries_of_killed_runs_are_cleaned_on_the_next_run(world, sandbox):
    dead, alive = _dead_pid(), os.getppid()
    ours = [f".ours.tmp-{dead}-k2j4", f".ours.old-{dead}", f".ours.json.tmp-{dead}-x1"]
    kept = [f".ours.tmp-{alive}-live", ".ours.tmp-notapid", f".mine.tmp-{dead}-x", "ours.tmp-1"]
    for name in ours[:2] + kept[:3]:
        (sandbox / name).mkdir()
        (sandbox / name / "weights.bin").write_text("x")
    (sandbox / ours[2]).write_text("half a file")
    (sandbox / kept[3]).write_text("a user file")
    assert cli([str(a) for a in prune_argv(world, sandbox / "ours", "--overwrite")]) == 0
    names = {p.name for p in sandbox.iterdir()}
    assert names == {"ours", ours[2], *kept}  # only the dead temporaries of "ours" itself went
    for name in kept[:3]:
        assert (sandbox / name / "weights.bin").read_text() == "x"


# ----------------------------------------------------------------------------------------------------------------
# The training script: --overwrite_output_dir, never into the student or the teacher
# ----------------------------------------------------------------------------------------------------------------


def _train_args(world, tmp_path, out, *extra):
    if not (tmp_path / "student").exists():
        shutil.copytree(world / "pruned", tmp_path / "student")
    args = distill_args(world, out, steps=2, checkpointing_steps=1)
    args[args.index("--student_model") + 1] = tmp_path / "student"
    args[args.index("--cache_dir") + 1] = tmp_path / "cache"
    return [*args, "--report_to", "none", *extra]


def test_training_refuses_a_foreign_output_dir_and_the_model_folders(world, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.csv").write_text("a,b\n1,2\n")
    args = _train_args(world, tmp_path, out)
    teacher = tmp_path / "teacher"
    shutil.copytree(world / "teacher", teacher)
    before = snapshot(tmp_path)
    train_refused(capsys, args, "not empty", "results.csv")
    train_refused(capsys, [*args, "--overwrite_output_dir"], "results.csv")
    for target, message in (
        (tmp_path / "student", "is the input"),
        (tmp_path / "student" / "kd", "is inside the input"),
        (teacher, "is the input"),
        (teacher / "kd", "is inside the input"),
        (tmp_path, "is inside the --output_dir folder"),
    ):
        argv = [*args, "--teacher_model", teacher]
        argv[argv.index("--output_dir") + 1] = target
        train_refused(capsys, argv, message)
        train_refused(capsys, [*argv, "--overwrite_output_dir"], message)
    assert snapshot(tmp_path) == before


def test_training_resumes_or_starts_over_only_when_asked(world, tmp_path, capsys):
    out = tmp_path / "kd"
    args = _train_args(world, tmp_path, out)
    run_train_distill(_train_args(world, tmp_path, out, "--max_train_steps", 3))
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2", "checkpoint-3"]
    before = snapshot(tmp_path)
    train_refused(capsys, args, "already holds a distillation run", "--overwrite_output_dir")
    train_refused(capsys, [*args, "--overwrite_output_dir", "--resume_from_checkpoint", "latest"], "pass one")
    assert snapshot(tmp_path) == before
    (out / "notes.txt").write_text("added by the user after the run")
    train_refused(capsys, [*args, "--overwrite_output_dir"], "did not write (notes.txt)")
    (out / "notes.txt").unlink()

    # a symbolic link in the run pointing elsewhere: refused, its target untouched
    precious = tmp_path / "precious.jsonl"
    precious.write_text("keep\n")
    (out / "train_log.jsonl").unlink()
    (out / "train_log.jsonl").symlink_to(precious)
    train_refused(capsys, [*args, "--resume_from_checkpoint", "latest"], "symbolic link", "outside")
    assert precious.read_text() == "keep\n"
    (out / "train_log.jsonl").unlink()

    (out / ".checkpoint-4.tmp").mkdir()  # a checkpoint cut short by a kill
    run_train_distill([*args, "--overwrite_output_dir"])  # 2 steps, from scratch: the 3-step run is gone
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    assert not (out / ".checkpoint-4.tmp").exists()
    assert [json.loads(line)["step"] for line in (out / "train_log.jsonl").read_text().splitlines()] == [1, 2]
    assert json.loads((out / "distill_config.json").read_text())["steps"] == 2
    run_train_distill([*args, "--resume_from_checkpoint", "latest"])  # continuing is allowed
    assert [json.loads(line)["step"] for line in (out / "train_log.jsonl").read_text().splitlines()] == [1, 2]


# ----------------------------------------------------------------------------------------------------------------
# push: no symbolic link to outside files, no local paths
# ----------------------------------------------------------------------------------------------------------------


class FakeApi:
    uploads: list = []

    def __init__(self, token=None):
        pass

    def create_repo(self, repo_id, **kwargs):
        pass

    def upload_folder(self, **kwargs):
        FakeApi.uploads.append(kwargs)
        return type("Info", (), {"commit_url": f"https://huggingface.co/{kwargs['repo_id']}/commit/1"})()

    def create_commit(self, **kwargs):
        FakeApi.uploads.append(kwargs)
        return type("Info", (), {"commit_url": f"https://huggingface.co/{kwargs['repo_id']}/commit/1"})()


@pytest.fixture
def fake_hub(monkeypatch):
    import huggingface_hub

    FakeApi.uploads = []
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_test_token_not_real")
    return FakeApi.uploads


def uploaded_files(upload: dict) -> dict[str, bytes]:
    """What ``HfApi.upload_folder`` (its own listing and filter) or ``create_commit`` would send for ``upload``, read
    as bytes."""
    from huggingface_hub.utils import filter_repo_objects

    if "operations" in upload:
        return {
            op.path_in_repo: op.path_or_fileobj
            if isinstance(op.path_or_fileobj, bytes)
            else Path(op.path_or_fileobj).read_bytes()
            for op in upload["operations"]
        }

    folder = Path(upload["folder_path"]).resolve()
    files = {p.relative_to(folder).as_posix(): p for p in sorted(folder.glob("**/*")) if p.is_file()}
    kept = filter_repo_objects(list(files), ignore_patterns=upload["ignore_patterns"])
    return {rel: files[rel].read_bytes() for rel in kept}


def test_push_refuses_a_symbolic_link_to_a_file_outside_the_folder(sandbox, capsys):
    ours = sandbox / "ours"
    secret = sandbox / "id_ed25519"
    secret.write_text("PRIVATE KEY")
    (ours / "extra.txt").symlink_to(secret)
    (ours / "validation").mkdir()
    (ours / "validation" / "ignored.txt").symlink_to(secret)  # never uploaded: fine where it is
    before = snapshot(sandbox)
    refused(capsys, ["push", ours, "--repo-id", "me/x", "--dry-run"], "extra.txt", "outside the folder")
    assert snapshot(sandbox) == before  # no README written, the target untouched

    (ours / "extra.txt").unlink()
    (ours / "extra.txt").symlink_to(ours / "model_index.json")  # a link inside the folder is fine
    assert cli(["push", str(ours), "--repo-id", "me/x", "--dry-run"]) == 0
    assert secret.read_text() == "PRIVATE KEY"


def test_push_rewrites_a_local_path_and_refuses_a_foreign_readme(sandbox, capsys):
    ours = sandbox / "ours"
    (ours / "notes.json").write_text(json.dumps({"data": str(sandbox / "my-data")}))
    before = snapshot(sandbox)
    capsys.readouterr()
    assert cli(["push", str(ours), "--repo-id", "me/x", "--dry-run"]) == 0  # tests/test_upload_paths.py: the rest
    assert f"notes.json  (local paths rewritten: {sandbox / 'my-data'} -> my-data)" in capsys.readouterr().out
    assert {k for k in snapshot(sandbox) if snapshot(sandbox)[k] != before.get(k)} == {"ours/README.md"}
    (ours / "notes.json").unlink()
    (ours / "README.md").unlink()
    (ours / "README.md").write_text("# My own write-up\n")
    before = snapshot(sandbox)
    refused(capsys, ["push", ours, "--repo-id", "me/x", "--dry-run"], "README.md", "not written by layerprune")
    refused(capsys, ["push", ours, "--repo-id", "me/x", "--dry-run", "--base-model", str(sandbox)], "not a Hub id")
    assert snapshot(sandbox) == before


def test_no_uploaded_file_holds_the_local_path(world, tmp_path, fake_hub, capsys):
    """score -> prune -> distill -> eval -> push of models kept in a temporary folder: no file that is uploaded
    holds that folder's path (nor this checkout's); the teacher is still found locally."""
    clip, prompts, teacher = world / "clip", world / "prompts.txt", world / "teacher"
    imp, pruned, distilled = tmp_path / "imp.json", tmp_path / "pruned", tmp_path / "distilled"
    common = ["--prompts", prompts, "--steps", 2]
    argv = ["score", "--model", teacher, "--criterion", "preference", "--scorer", clip, "--output", imp, *common]
    assert cli([str(a) for a in argv]) == 0
    argv = ["prune", "--model", teacher, "--importance", imp, "--num-layers", 2, "--output", pruned]
    assert cli([str(a) for a in argv]) == 0
    args = distill_args(world, distilled, student="pruned", steps=2, checkpointing_steps=1)
    args[args.index("--student_model") + 1] = pruned
    args[args.index("--cache_dir") + 1] = tmp_path / "cache"
    run_train_distill([*args, "--report_to", "none"])
    for suffix in (".json", ".png"):  # as `layerprune run` does
        shutil.copy(imp.with_suffix(suffix), distilled / f"importance{suffix}")
    report_path = tmp_path / "distilled-report.json"  # outside the model folder, as eval's default
    argv = ["eval", "--model", distilled, "--scorers", clip, *common, "--guidance", 1.0, "--latency-repeats", 1]
    assert cli([str(a) for a in [*argv, "--output", report_path]]) == 0
    report = json.loads(report_path.read_text())
    assert report["teacher"] == "teacher" and set(report["models"]) == {"teacher", "student"}

    base = "PixArt-alpha/PixArt-Sigma-XL-2-1024-MS"
    push = ["push", str(distilled), "--repo-id", "me/tiny", "--base-model", base, "--report", str(report_path)]
    assert cli(push) == 0
    sent = uploaded_files(fake_hub[0])
    assert {"README.md", "report.json", "importance.json", "distill_config.json", "model_index.json"} <= set(sent)
    assert "transformer/config.json" in sent and "vae/config.json" in sent
    needles = {str(world), str(world.resolve()), str(tmp_path), str(tmp_path.resolve()), str(ROOT)}
    needles |= {n.replace("/", "\\/") for n in needles}  # as JSON may escape it
    leaks = {rel: n for rel, data in sent.items() for n in needles if n.encode() in data}
    assert leaks == {}
    card = ModelCard(sent["README.md"].decode())
    assert card.data.base_model == base and f"A depth-pruned version of `{base}`" in card.text
    # locally the full paths stay in the hidden marker, which is not uploaded
    assert json.loads((distilled / MARKER).read_text())["local"]["teacher_model"] == str(teacher)


def test_the_toy_pipeline_records_no_install_path(tmp_path):
    out = tmp_path / "toy-pruned"
    assert cli(["prune", "--model", "toy", "--drop", "1", "--output", str(out)]) == 0
    package = str(Path(__file__).resolve().parents[1])
    for path in out.rglob("*.json"):
        if path.name != MARKER:
            assert package not in path.read_text() and str(tmp_path) not in path.read_text(), path
    assert read_config(out / "vae" / "config.json")["_name_or_path"] == "toy"


@pytest.mark.parametrize(
    "value, expected",
    [
        ("PixArt-alpha/PixArt-Sigma-XL-2-1024-MS", "PixArt-alpha/PixArt-Sigma-XL-2-1024-MS"),
        ("toy", "toy"),
        ("toy:heldout", "toy:heldout"),
        ("hpdv2:anime", "hpdv2:anime"),
        ("/home/alice/models/teacher", "teacher"),
        ("/home/alice/models/teacher/vae", "teacher"),
        ("./data/prompts.txt", "prompts.txt"),
        ("~/runs/pruned/", "pruned"),
        ("/root/.cache/huggingface/hub/models--org--name/snapshots/0123abc/transformer", "org/name"),
        (None, None),
    ],
)
def test_public_names(value, expected):
    assert public_name(value) == expected


# ----------------------------------------------------------------------------------------------------------------
# layerprune run: refusals, settings-keyed reuse, children, temporaries
# ----------------------------------------------------------------------------------------------------------------


def test_run_refuses_folders_it_did_not_make(tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "paper.pdf").write_text("%PDF")
    run_folder = tmp_path / "run"
    run_folder.mkdir()
    write_marker(run_folder, "run")
    (run_folder / "pruned").mkdir()
    (run_folder / "pruned" / "keep.txt").write_text("a user's file inside the run's pruned folder")
    linked = tmp_path / "linked"
    linked.mkdir()
    write_marker(linked, "run")
    (linked / "summary.json").symlink_to(mine / "paper.pdf")  # the run would write its summary there
    before = snapshot(tmp_path)
    refused(capsys, ["run", "--model", "tiny-random", "--output", mine], "not made by layerprune", "paper.pdf")
    refused(capsys, ["run", "--model", "tiny-random", "--output", run_folder], "keep.txt")
    refused(capsys, ["run", "--model", "tiny-random", "--output", linked], "summary.json", "outside the run folder")
    assert snapshot(tmp_path) == before


@pytest.mark.slow
def test_changed_distillation_settings_start_fresh(tmp_path, capfd, monkeypatch):
    """A finished run whose learning rate changes distils again from scratch (the old bug resumed the old run's
    last checkpoint and kept its weights). Adding LoRA to a finished run: tests/test_recipe.py's reuse test."""
    from diffusers_layerprune.recipe import Recipe, run_recipe

    def recipe(folder, **changes):
        settings = dict(
            model="tiny-random",
            num_prompts=2,
            scan_steps=2,
            num_layers=2,
            ratio=None,
            distill_steps=2,
            distill_batch_size=2,
            eval_num_prompts=1,
            output=str(folder),
            extra_train_args=["--max_train_samples", "4", "--teacher_inference_steps", "2"],
        )
        return Recipe(**{**settings, **changes})

    def weights(folder):
        return load_file(folder / "distilled" / "transformer" / "diffusion_pytorch_model.safetensors")

    trained = train_in_this_process(monkeypatch)  # the recipe's launch itself: tests/test_recipe.py
    run, fresh = tmp_path / "run", tmp_path / "fresh"
    run_recipe(recipe(run), log=lambda _: None)
    first = weights(run)
    shutil.copytree(run, fresh, symlinks=True)
    shutil.rmtree(fresh / "distilled")  # the same run, but its distillation never happened
    capfd.readouterr()

    run_recipe(recipe(run, learning_rate=1e-3), log=lambda _: None)
    assert "resumed from" not in capfd.readouterr().out
    run_recipe(recipe(fresh, learning_rate=1e-3), log=lambda _: None)
    changed, reference = weights(run), weights(fresh)
    assert any(not torch.equal(first[k], changed[k]) for k in first)
    for key in reference:
        torch.testing.assert_close(changed[key], reference[key], atol=1e-6, rtol=0)
    assert json.loads((run / "distilled" / "distill_config.json").read_text())["learning_rate"] == 1e-3
    assert len(trained) == 3  # every distillation ran (none was reused), and in this process


PARENT = textwrap.dedent(
    """
    import signal, sys
    from diffusers_layerprune.launch import run_child

    # Ctrl-C as a foreground process gets it: a test run started in the background (`pytest &`) inherits SIGINT
    # ignored, and the SIGINT case would then test nothing but that
    signal.signal(signal.SIGINT, signal.default_int_handler)

    child = "import os, time; open(sys.argv[1] + '.tmp', 'w').write(str(os.getpid())); "
    child += "os.replace(sys.argv[1] + '.tmp', sys.argv[1]); time.sleep(600)"
    run_child([sys.executable, "-c", "import sys; " + child, sys.argv[1]])
    """
)


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")  # a zombie waiting for a reaper has finished running


def _wait_for(condition, seconds: float = 60.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG and /proc are Linux")
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_killed_parent_takes_the_training_child_with_it(tmp_path, sig):
    pid_file = tmp_path / "child.pid"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(pid_file)], env=env)
    try:
        assert _wait_for(pid_file.exists), "the child never started"
        child = int(pid_file.read_text())
        assert not _gone(child)
        parent.send_signal(sig)
        parent.wait(timeout=60)
        assert _wait_for(lambda: _gone(child)), f"the child outlived its parent killed by {sig.name}"
    finally:
        parent.kill()
        parent.wait()
        if pid_file.exists() and not _gone(int(pid_file.read_text())):
            os.kill(int(pid_file.read_text()), signal.SIGKILL)


def test_a_short_name_is_not_a_folder_of_the_working_directory(tmp_path, monkeypatch):
    """`toy` is the bundled pipeline even when the working directory holds a folder named toy (a user's earlier
    `--output toy`): it is neither loaded, recorded nor checked as ./toy; `./toy` names that folder."""
    from diffusers_layerprune.cli import main
    from diffusers_layerprune.outputs import check_apart_from_inputs
    from diffusers_layerprune.provenance import full_local, local_inputs
    from diffusers_layerprune.toy import toy_pipeline_path

    monkeypatch.chdir(tmp_path)
    (tmp_path / "toy").mkdir()
    assert local_inputs("toy") == [str(toy_pipeline_path())]
    assert local_inputs("tiny-random") == []
    assert full_local("toy") == "toy" and full_local("./toy") == str(tmp_path / "toy")
    check_apart_from_inputs(tmp_path / "toy" / "pruned", local_inputs("toy"))  # not "inside the input"
    assert main(["prune", "--model", "toy", "--drop", "2,5", "--output", "toy/pruned"]) == 0
    assert (tmp_path / "toy" / "pruned" / "model_index.json").is_file()
