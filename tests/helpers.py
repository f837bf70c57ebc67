"""Helpers shared by test modules (pytest puts tests/ on sys.path)."""

import json
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRAIN_SCRIPT = ROOT / "training" / "train_distill.py"


def stock_env() -> dict:
    """The environment of a user's process: this checkout off the path (extra paths a user set stay)."""
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and Path(p).resolve() != ROOT]
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join(paths),
    }


_stock_folder: Path | None = None


def _stock_home() -> Path:
    """The session's folder for stock processes: their HOME, their Hub cache (``hub/``) and the server's files."""
    global _stock_folder
    if _stock_folder is None:
        import atexit
        import shutil
        import tempfile

        _stock_folder = Path(tempfile.mkdtemp(prefix="layerprune-stock-"))
        (_stock_folder / "hub").mkdir()
        atexit.register(shutil.rmtree, _stock_folder, ignore_errors=True)
    return _stock_folder


def stock_hub_cache() -> Path:
    """The Hub cache (``HF_HUB_CACHE``) of the stock processes of :func:`run_stock`: lay a repo out here as
    huggingface_hub's cache holds a download, and a stock process finds it offline."""
    return _stock_home() / "hub"


def bare_env() -> dict:
    """A user's bare environment: no variable of this session (no checkout on a path, no cache folder of the tests),
    offline, an empty HOME, an empty Hub cache (:func:`stock_hub_cache`). OpenMP threads wait passively, as the package
    sets it for its own processes: spinning ones stall when other processes hold the cores."""
    home = _stock_home()
    env = {
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_CACHE": str(home / "hub"),
        "HOME": str(home),
        "PATH": "/usr/bin:/bin",
        "OMP_WAIT_POLICY": "PASSIVE",
    }
    # The thread count stays the test process's: CPU kernels split work by thread, and images compared for equality
    # with the stock process differ in the last bits (3.6e-7 measured) when one side runs on another number of threads.
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        if name in os.environ:
            env[name] = os.environ[name]
    return env


class _StockServer:
    """The session's stock fork server (``tests/stock_server.py``), started on first use with :func:`bare_env`."""

    def __init__(self):
        import subprocess
        import sys
        import tempfile

        self.folder = Path(tempfile.mkdtemp(prefix="server-", dir=_stock_home()))
        self.log = open(self.folder / "server.log", "w+")
        self.process = subprocess.Popen(
            [sys.executable, str(ROOT / "tests" / "stock_server.py")],
            cwd=self.folder,  # a folder of its own: nothing importable from the working directory
            env=bare_env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            start_new_session=True,  # its jobs are its children: one signal to the group ends them all
        )
        self.jobs = 0
        import atexit

        atexit.register(self.close)

    def run(self, job: dict, timeout: float | None):
        import select
        import subprocess

        self.jobs += 1
        out, err = self.folder / f"{self.jobs}.out", self.folder / f"{self.jobs}.err"
        self.process.stdin.write(json.dumps({**job, "stdout": str(out), "stderr": str(err)}) + "\n")
        self.process.stdin.flush()
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        line = self.process.stdout.readline() if ready else ""
        if not ready:
            self.close()
            raise subprocess.TimeoutExpired(job.get("path") or "-c", timeout)
        if not line:
            self.log.seek(0)
            raise RuntimeError(f"the stock server ended: {self.log.read()[-3000:]}")
        answer = json.loads(line)
        texts = [p.read_text(errors="replace") if p.exists() else "" for p in (out, err)]
        for p in (out, err):
            p.unlink(missing_ok=True)
        return answer, texts

    def close(self):
        import signal

        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait()
        self.log.close()


_server: "_StockServer | None" = None
STOCK_CPU = [0.0]  # CPU seconds of the stock jobs run so far (for measuring the suite; the server's own are apart)


def forks_stock_processes() -> bool:
    """Whether :func:`run_stock` forks its processes from the stock server (Linux, unless
    ``LAYERPRUNE_TEST_INTERPRETERS`` asks for a real interpreter per call)."""
    import sys

    return sys.platform == "linux" and not os.environ.get("LAYERPRUNE_TEST_INTERPRETERS")


def start_stock_server() -> "_StockServer":
    """The session's stock server, started if it is not running (it imports in the background: conftest starts it
    once the collected tests show they will call :func:`run_stock`, so the imports overlap the first tests)."""
    global _server
    if _server is None or _server.process.poll() is not None:
        _server = _StockServer()
    return _server


def run_stock(code: str | None = None, *, path=None, args=(), cwd, timeout: float | None = 600):
    """Run ``python -c CODE ARGS`` (or ``python PATH ARGS``) as a user's stock process: a process that never imports
    this package, in a bare environment (:func:`bare_env`), in ``cwd``. Returns a ``subprocess.CompletedProcess``
    (text stdout / stderr).

    The process is a fork of one stock server per test session that has imported torch, diffusers and transformers
    and run nothing else (tests/stock_server.py): each call gets a process of its own without paying ~8 CPU-seconds
    of imports. Tests about imports themselves (what a command line loads, in which order) start a real interpreter.
    """
    import subprocess
    import sys

    argv = [str(a) for a in args]
    command = [str(path)] if path else ["-c", code]
    if not forks_stock_processes():
        # fork after importing torch is Linux-safe only; LAYERPRUNE_TEST_INTERPRETERS=1 starts a real interpreter
        # per call (the same checks, ~8 CPU-seconds more each)
        return subprocess.run(
            [sys.executable, *command, *argv], cwd=cwd, env=bare_env(), capture_output=True, text=True, timeout=timeout
        )
    job = {"code": code, "path": str(path) if path else None, "argv": argv, "cwd": str(cwd)}
    answer, (stdout, stderr) = start_stock_server().run(job, timeout)
    STOCK_CPU[0] += answer["cpu"]
    return subprocess.CompletedProcess([sys.executable, *command, *argv], answer["returncode"], stdout, stderr)


def read_config(path) -> dict:
    """A saved transformer ``config.json`` as the package reads it (the kept-block record under its plain names)."""
    import json

    from diffusers_layerprune.config_record import expose_record

    return expose_record(json.loads(Path(path).read_text()))


def load_benchmark(name: str):
    """The module of ``benchmarks/<name>.py`` (its folder on ``sys.path``: the scripts import the ``paper`` package
    that lives there), for testing its rules on known numbers."""
    import importlib.util
    import sys

    folder = str(ROOT / "benchmarks")
    if folder not in sys.path:
        sys.path.insert(0, folder)
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # as an import does: dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


def run_train_distill(args) -> None:
    """Run training/train_distill.py's main() in this process; accelerate keeps global state between
    Accelerators, so reset it first."""
    import gc

    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    from diffusers_layerprune.train_distill import main

    # The training's own full collections (gc.collect after the teacher's work) then scan what it made, not every
    # object of the test session (~0.3 CPU-seconds each); unfrozen after, so nothing escapes collection.
    gc.freeze()
    try:
        main([str(a) for a in args])
    finally:
        gc.unfreeze()


def distill_args(work: Path, out: Path, *, student: str = "student", steps: int = 3, checkpointing_steps: int = 2):
    """Fast train_distill.py arguments on the tiny pipelines of a test workspace (teacher/, student/, prompts.txt)."""
    return [
        "--teacher_model", work / "teacher", "--student_model", work / student, "--output_dir", out,
        "--prompts", work / "prompts.txt", "--cache_dir", work / "cache", "--train_batch_size", 2,
        "--max_train_steps", steps, "--checkpointing_steps", checkpointing_steps, "--max_sequence_length", 16,
        "--teacher_inference_steps", 2, "--teacher_guidance_scale", 1.0, "--learning_rate", 1e-3,
    ]  # fmt: skip


# A CPU accelerate config for tests (the design notes: pass --config_file, never rely on a user's default config).
ACCELERATE_CONFIG = """compute_environment: LOCAL_MACHINE
debug: false
distributed_type: 'NO'
mixed_precision: 'no'
num_machines: 1
num_processes: 1
use_cpu: true
"""


def write_accelerate_config(folder: Path) -> Path:
    path = Path(folder) / "accelerate.yaml"
    path.write_text(ACCELERATE_CONFIG)
    return path


def train_in_this_process(monkeypatch) -> list[list[str]]:
    """Make the library's one-process distillation launches (``accelerate launch -m diffusers_layerprune.train_distill``
    from ``distill_student`` / ``layerprune run``) run the training script's ``main`` in this process instead.

    A launch costs two fresh interpreters (the launcher and the script), ~18 CPU-seconds of imports before any work.
    For tests of what happens around training (stage reuse, settings, records); the launch itself keeps real
    processes in test_recipe.py, test_packaging.py and test_train_distill.py. Returns the argument lists run here.
    """
    import diffusers_layerprune.launch as launch

    real = launch.run_launched
    calls: list[list[str]] = []

    def run_launched(module, args, settings, *, what):
        settings = settings or launch.LaunchSettings()
        if module != launch.TRAIN_MODULE or settings.resolved_num_processes() != 1:
            return real(module, args, settings, what=what)
        calls.append([str(a) for a in args])
        run_train_distill(calls[-1])

    monkeypatch.setattr(launch, "run_launched", run_launched)
    return calls


def train_refused(capsys, args, *fragments) -> str:
    """The training script's command-line entry point refuses ``args`` with exit code 2 and one line holding every
    fragment; returns the line. (accelerate keeps global state between Accelerators, so it is reset first.)"""
    import pytest
    from accelerate.state import AcceleratorState, GradientState

    from diffusers_layerprune.train_distill import cli as train_cli

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        train_cli([str(a) for a in args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("train_distill: error:"), err
    for fragment in fragments:
        assert fragment in err, err
    return err
