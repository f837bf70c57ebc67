"""A launched stage's failure (`layerprune run` starts the distillation and a multi-process scan under accelerate
launch) reaches the user as one line: the script's own message for a mistake, or for a crash its exception and the
log file that keeps the traceback, never the traceback itself."""

import os
from pathlib import Path

import pytest

from diffusers_layerprune.errors import LayerPruneError
from diffusers_layerprune.launch import CLI_MODULE, LaunchSettings, run_launched

ONE = LaunchSettings(num_processes=1)


def _launch_fails(module: str, args: list[str], capfd, what: str = "scoring") -> str:
    capfd.readouterr()
    with pytest.raises(LayerPruneError) as caught:
        run_launched(module, args, ONE, what=what)
    err = capfd.readouterr().err
    assert "Traceback" not in err and "error:" not in err, err  # the launching process says it, once
    message = str(caught.value)
    assert len(message.splitlines()) == 1, message
    return message


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["score", "--model", "/nonexistent/model"], "/nonexistent/model does not exist"),  # a LayerPruneError
        (["score", "--steps", "0"], "argument --steps: must be a positive integer, got 0"),  # an argument error
    ],
)
def test_a_launched_commands_mistake_is_its_own_one_line(args, fragment, capfd, tmp_path):
    message = _launch_fails(CLI_MODULE, [*args, "--output", str(tmp_path / "i.json")], capfd)
    assert message.endswith(fragment) or fragment in message, message
    assert "log" not in message


@pytest.fixture
def crashing_modules(tmp_path, monkeypatch):
    """Scripts that fail in ways no check foresees: the training script's entry point with a ``main`` that raises, a
    light script that hands its crash over the same way, and a module that raises while it is imported (before any
    handler of ours)."""
    (tmp_path / "crash_in_training.py").write_text(
        "from diffusers_layerprune import train_distill\n"
        "def main(argv=None):\n"
        "    raise RuntimeError('forced failure in the child\\nits second line')\n"
        "train_distill.main = main\n"
        "train_distill.cli()\n"
    )
    # the training script's crash hand-over (train_distill.cli: report_crash, then re-raise) without importing the
    # training script (11 CPU-seconds): test_train_distill_cli_hands_a_crash_over checks that cli does exactly this
    (tmp_path / "crash_handed_over.py").write_text(
        "from diffusers_layerprune.launch import follow_parent, report_crash\n"
        "follow_parent()\n"
        "try:\n"
        "    raise RuntimeError('forced failure in the child\\nits second line')\n"
        "except Exception as error:\n"
        "    report_crash(error)\n"
        "    raise\n"
    )
    (tmp_path / "crash_on_import.py").write_text("raise ImportError('forced failure while importing')\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    return tmp_path


def _crash_is_one_line_with_the_log(module: str, capfd) -> None:
    message = _launch_fails(module, [], capfd, what="distillation")
    assert message.startswith("distillation crashed: RuntimeError: forced failure in the child;"), message
    log = Path(message.rsplit("the full log is in ", 1)[1])
    try:
        text = log.read_text()
        assert "Traceback (most recent call last)" in text and "its second line" in text
    finally:
        log.unlink()


def test_a_crash_in_a_launched_script_is_one_line_with_the_log(crashing_modules, capfd):
    """A launched script that hands its crash over as the training script does (a light script: the real one is
    test_a_crash_in_the_launched_training_script_is_one_line_with_the_log, -m slow)."""
    _crash_is_one_line_with_the_log("crash_handed_over", capfd)


@pytest.mark.slow  # the launched training script's imports alone are ~11 CPU-seconds
def test_a_crash_in_the_launched_training_script_is_one_line_with_the_log(crashing_modules, capfd):
    _crash_is_one_line_with_the_log("crash_in_training", capfd)


def test_train_distill_cli_hands_a_crash_over(tmp_path, monkeypatch):
    """What the light launched script above stands in for: the training script's entry point hands an unexpected
    exception over to the launching process (its type and first line, marked as a crash) and re-raises it, so its
    traceback reaches the log."""
    import json

    from diffusers_layerprune import train_distill
    from diffusers_layerprune.launch import ERROR_FILE_ENV

    def main(argv=None):
        raise RuntimeError("forced failure in the child\nits second line")

    monkeypatch.setattr(train_distill, "main", main)
    monkeypatch.setenv(ERROR_FILE_ENV, str(tmp_path / "error.json"))
    with pytest.raises(RuntimeError, match="its second line"):
        train_distill.cli([])
    reported = json.loads((tmp_path / "error.json").read_text())
    assert reported == {"message": "RuntimeError: forced failure in the child", "crash": True}


def test_a_crash_before_any_handler_is_one_line_with_the_log(crashing_modules, capfd):
    message = _launch_fails("crash_on_import", [], capfd, what="distillation")
    assert "distillation failed (exit code 1: ImportError: forced failure while importing)" in message, message
    log = Path(message.rsplit("the full log is in ", 1)[1])
    try:
        assert "Traceback (most recent call last)" in log.read_text()
    finally:
        log.unlink()


@pytest.mark.slow
def test_distillations_error_reaches_layerprune_run_as_one_line(tiny_pipeline_dir, tmp_path, capfd):
    """The real training script under accelerate launch, failing on a mistake only it sees (the prompt file)."""
    from diffusers_layerprune.cli import main as cli
    from diffusers_layerprune.distill import distill_student

    pruned = tmp_path / "pruned"
    assert cli(["prune", "--model", str(tiny_pipeline_dir), "--drop", "1", "--output", str(pruned)]) == 0
    (tmp_path / "cells.json").write_text('[{"prompt": "a red circle"}, {"prompt": 5}]')
    capfd.readouterr()
    with pytest.raises(LayerPruneError, match="prompt cells are not text") as caught:
        distill_student(
            str(tiny_pipeline_dir),
            str(pruned),
            str(tmp_path / "kd"),
            max_train_steps=1,
            global_batch_size=1,
            prompts=str(tmp_path / "cells.json"),
            launch=ONE,
            extra_args=["--max_sequence_length", "16", "--cache_dir", str(tmp_path / "cache")],
        )
    assert len(str(caught.value).splitlines()) == 1
    err = capfd.readouterr().err
    assert "Traceback" not in err and "train_distill: error" not in err, err
    assert not (tmp_path / "kd").exists()
