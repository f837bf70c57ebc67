import subprocess
import sys

import pytest

from diffusers_layerprune.cli import main

from helpers import read_config


def test_prune_writes_a_full_pipeline(tiny_pipeline_dir, tmp_path, capsys):
    out = tmp_path / "pruned"
    assert main(["prune", "--model", str(tiny_pipeline_dir), "--drop", "1,3-4", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "6 -> 3 blocks" in printed and "[0, 2, 5]" in printed
    assert {p.name for p in out.iterdir()} >= {"model_index.json", "transformer", "vae", "text_encoder", "tokenizer"}
    config = read_config(out / "transformer" / "config.json")
    assert config["kept_layers"] == [0, 2, 5] and config["source_num_layers"] == 6
    assert config["source_model"] == tiny_pipeline_dir.name  # the full local path stays in the hidden marker
    # the text encoder is not pruned: textual inversions and text-encoder adapters of the parent still apply
    from safetensors.torch import load_file

    encoder_files = sorted((tiny_pipeline_dir / "text_encoder").glob("*.safetensors"))
    assert encoder_files
    for source in encoder_files:
        before, after = load_file(source), load_file(out / "text_encoder" / source.name)
        assert before.keys() == after.keys() and all(before[k].equal(after[k]) for k in before)

    # same folder again: refused without --overwrite, replaced with it
    assert main(["prune", "--model", str(tiny_pipeline_dir), "--keep", "0,1", "--output", str(out)]) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert main(["prune", "--model", str(tiny_pipeline_dir), "--keep", "0,1", "--output", str(out), "--overwrite"]) == 0
    assert read_config(out / "transformer" / "config.json")["kept_layers"] == [0, 1]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--drop", "6"], "out of range: the model has 6 blocks"),
        (["--keep", "0,0,1"], "more than once"),
        (["--keep", "0-5"], "nothing to prune"),
        (["--drop", "0-5"], "no block would be kept"),
    ],
)
def test_prune_bad_indices_write_nothing(tiny_pipeline_dir, tmp_path, capsys, args, message):
    out = tmp_path / "out"
    assert main(["prune", "--model", str(tiny_pipeline_dir), *args, "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_prune_bad_model_writes_nothing(tiny_pipeline_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["prune", "--model", str(tmp_path / "nope"), "--drop", "1", "--output", str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["prune", "--model", str(tiny_pipeline_dir / "vae"), "--drop", "1", "--output", str(out)]) == 2
    assert "holds a AutoencoderKL; layerprune supports PixArt-Sigma" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["prune", "--model", str(tmp_path / "empty"), "--drop", "1", "--output", str(out)]) == 2
    assert "not a diffusers pipeline folder (no model_index.json) nor a transformer folder" in capsys.readouterr().err
    assert not out.exists()
    (tmp_path / "empty").rmdir()


def test_argument_errors_exit_2(capsys):
    assert main(["prune", "--keep", "1", "--drop", "2", "--output", "x"]) == 2
    assert main(["prune", "--drop", "one", "--output", "x"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "expected block indices" in err[1]  # one line per mistake, no usage block
    assert err[1].startswith("layerprune prune: error: argument --drop")


def test_console_script_prints_one_line_without_traceback(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "diffusers_layerprune.cli",
            "prune",
            "--model",
            str(tmp_path / "missing"),
            "--drop",
            "1",
            "--output",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"layerprune prune: error: model path {tmp_path / 'missing'} does not exist"
    ]
    assert "Traceback" not in result.stderr and not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv", [["--help"], ["prune", "--help"]])
def test_help(argv, capsys):
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "usage: layerprune" in text
    assert ("--keep" in text and "--overwrite" in text) if argv[0] == "prune" else "prune" in text


CHEAP = """
import sys
from diffusers_layerprune.cli import main

codes = [main(argv) for argv in ARGVS]
heavy = sorted(m for m in ("torch", "diffusers", "transformers", "peft", "accelerate", "datasets") if m in sys.modules)
print(codes, heavy)
"""


def test_help_and_mistakes_before_any_work_import_no_torch(tmp_path):
    """--help, argument errors and a mistyped model path end before torch or diffusers load (~12 CPU-seconds per
    process: the difference between an instant answer and a wait, and most of a suite's subprocess time)."""
    missing, not_a_model = str(tmp_path / "missing"), str(tmp_path)
    argvs = [
        ["--help"],
        ["score", "--help"],
        ["route", "--help"],
        ["sparsify", "--help"],
        ["prune", "--drop", "one", "--output", "x"],
        ["prune", "--model", missing, "--drop", "1", "--output", str(tmp_path / "out")],
        ["score", "--model", missing, "--output", str(tmp_path / "imp.json")],
        ["eval", "--model", not_a_model],
        ["route", "--model", missing, "--num-codes", "2", "--budget", "0.5", "--output", str(tmp_path / "r")],
        ["sparsify", "--model", missing, "--component", "transformer", "--output", str(tmp_path / "s")],
        ["run", "--model", missing, "--output", str(tmp_path / "run")],
        ["score", "--criterion", "nope", "--output", str(tmp_path / "imp.json")],
    ]
    script = f"ARGVS = {argvs!r}\n" + CHEAP
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == str([0, 0, 0, 0, 2, 2, 2, 2, 2, 2, 2, 2]) + " []"
    errors = [line for line in result.stderr.splitlines() if ": error: " in line]
    assert len(errors) == 8 and "model path" in errors[1] and "not a diffusers pipeline folder" in errors[3]
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_library_logs_are_quieted_when_the_library_is_imported_later(tmp_path, monkeypatch):
    """The command line quiets diffusers/transformers/datasets without importing them: the setting is applied when
    a library is first imported (a probe with importlib.util.find_spec, as libraries do, runs nothing)."""
    import importlib.util

    from diffusers_layerprune import quiet

    (tmp_path / "fakelib").mkdir()
    (tmp_path / "fakelib" / "__init__.py").write_text("LEVEL = 'info'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(quiet._QUIETERS, "fakelib", lambda: setattr(sys.modules["fakelib"], "LEVEL", "error"))
    monkeypatch.delitem(sys.modules, "fakelib", raising=False)
    try:
        quiet.quiet_libraries()
        assert quiet._hook in sys.meta_path and "fakelib" not in sys.modules
        assert importlib.util.find_spec("fakelib") is not None and "fakelib" not in sys.modules
        import fakelib

        assert fakelib.LEVEL == "error"
        assert "fakelib" not in quiet._hook.pending  # done once (the hook leaves the import path when none is left)
    finally:
        quiet._hook.pending.pop("fakelib", None)
        sys.modules.pop("fakelib", None)
