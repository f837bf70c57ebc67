"""Starting the package's scripts the way users start them: ``accelerate launch``, as a child of the calling process
that never outlives it.

``layerprune run`` launches the distillation script (and, with several processes, the importance scan) through
:func:`accelerate_command`; :func:`run_child` runs the command. A user's accelerate config (``accelerate config``'s
default file, or ``--accelerate-config FILE`` for multi-GPU, FSDP or DeepSpeed setups) is honoured; what the
recipe says (number of processes, mixed precision) is passed on top of it.

Two facts of accelerate 1.x shape this module: ``accelerate launch --cpu --num_processes 2`` starts one process (two
real CPU processes need ``--multi_gpu`` with ``ACCELERATE_USE_CPU=1``), and without a config file it fills missing
settings with defaults and warns about each of them, so the command names them all.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import LayerPruneError, first_line

TRAIN_MODULE = "diffusers_layerprune.train_distill"
CLI_MODULE = "diffusers_layerprune.cli"
MIXED_PRECISION = ("no", "fp16", "bf16")
# Set by run_child for its child; processes started below it (accelerate's workers) read it in follow_parent().
PARENT_ENV = "LAYERPRUNE_PARENT_PID"
# Where a launched script writes the one-line message of a LayerPruneError, so the caller can raise it as is.
ERROR_FILE_ENV = "LAYERPRUNE_ERROR_FILE"


@dataclass(frozen=True)
class LaunchSettings:
    """How to start a stage under ``accelerate launch``.

    Attributes:
        num_processes: processes to start (one per GPU; on a machine without CUDA, CPU processes talking over gloo).
            ``None``: the accelerate config's number, else one per visible GPU, else one.
        accelerate_config: an accelerate config file (``accelerate config --config_file FILE``: multi-GPU, FSDP,
            DeepSpeed, several machines). ``None``: accelerate's default config if there is one.
        mixed_precision: ``no``, ``fp16`` or ``bf16``; ``None``: the config's (``no`` without one).
        verbose: keep accelerate's and the libraries' INFO lines and loading bars.
    """

    num_processes: int | None = None
    accelerate_config: str | None = None
    mixed_precision: str | None = None
    verbose: bool = False

    def check(self) -> None:
        """Refuse settings that cannot start, before anything is written."""
        n = self.num_processes
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise LayerPruneError(f"num_processes must be a whole number >= 1, got {n!r}")
        if self.mixed_precision is not None and self.mixed_precision not in MIXED_PRECISION:
            raise LayerPruneError(
                f"mixed_precision must be one of {', '.join(MIXED_PRECISION)}, got {self.mixed_precision!r}"
            )
        config = read_accelerate_config(self.accelerate_config) if self.accelerate_config is not None else None
        check_mixed_precision(self.mixed_precision or getattr(config, "mixed_precision", None))

    def config_file(self) -> str | None:
        """The config file accelerate will read: the given one, else its default file if it exists."""
        if self.accelerate_config is not None:
            return str(Path(self.accelerate_config).expanduser())
        from accelerate.commands.config.config_args import default_config_file

        return default_config_file if os.path.isfile(default_config_file) else None

    def resolved_num_processes(self) -> int:
        """How many processes ``accelerate launch`` will start with these settings."""
        if self.num_processes is not None:
            return self.num_processes
        config_file = self.config_file()
        if config_file is not None:
            configured = getattr(read_accelerate_config(config_file), "num_processes", None)
            if isinstance(configured, int) and configured >= 1:
                return configured
        import torch

        return max(1, torch.cuda.device_count())


def check_mixed_precision(mixed_precision: str | None) -> None:
    """Refuse a mixed precision this machine cannot run, before anything is loaded or written (the training process
    would otherwise stop with a traceback after the earlier stages ran): fp16 needs a GPU, bf16 a GPU that supports
    it (or the CPU)."""
    if mixed_precision not in ("fp16", "bf16"):
        return
    import torch

    if mixed_precision == "fp16" and not (torch.cuda.is_available() or torch.backends.mps.is_available()):
        raise LayerPruneError("--mixed_precision fp16 needs a GPU; on the CPU use --mixed_precision bf16 or no")
    if mixed_precision == "bf16" and torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
        raise LayerPruneError(f"--mixed_precision bf16 is not supported by {torch.cuda.get_device_name()}; use fp16")


def read_accelerate_config(path: str | os.PathLike):
    """The accelerate config in ``path`` (accelerate's own reader), or one :class:`LayerPruneError` line."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise LayerPruneError(
            f"accelerate config file {path} does not exist; write one with `accelerate config --config_file {path}`"
        )
    from accelerate.commands.config.config_args import load_config_from_file

    try:
        return load_config_from_file(str(path))
    except Exception as error:  # YAML/JSON syntax, unknown keys: accelerate's message, on one line
        raise LayerPruneError(f"accelerate config file {path} cannot be read: {first_line(error)}") from error


def accelerate_command(
    module: str, args: Sequence[str], launch: LaunchSettings | None = None
) -> tuple[list[str], dict[str, str]]:
    """``(command, environment additions)`` that run ``python -m module args`` under ``accelerate launch``.

    The launcher itself runs as ``python -m accelerate.commands.launch`` of this interpreter, so the child uses the
    same environment as the caller. With more than one process and no distributed setup in the config, ``--multi_gpu``
    is added (on a machine without CUDA with ``ACCELERATE_USE_CPU=1``: gloo processes on the CPU).
    """
    launch = launch or LaunchSettings()
    launch.check()
    config_file = launch.config_file()
    config = read_accelerate_config(config_file) if config_file else None
    n = launch.resolved_num_processes()
    cmd = [sys.executable, "-m", "accelerate.commands.launch"]
    env: dict[str, str] = {}
    if launch.accelerate_config is not None:
        cmd += ["--config_file", config_file]
    cmd += ["--num_processes", str(n)]
    if launch.mixed_precision is not None:
        cmd += ["--mixed_precision", launch.mixed_precision]
    if config is None:  # every setting accelerate would otherwise default, and warn about
        cmd += ["--num_machines", "1", "--dynamo_backend", "no"]
        if launch.mixed_precision is None:
            cmd += ["--mixed_precision", "no"]
    distributed = str(getattr(config, "distributed_type", "NO") or "NO").upper().rsplit(".", 1)[-1]
    if n > 1 and distributed == "NO":
        cmd += ["--multi_gpu"]
        if config is None or getattr(config, "main_process_port", None) is None:
            cmd += ["--main_process_port", "0"]  # a free port: two runs on one machine do not collide
    import torch

    if not torch.cuda.is_available():
        if n > 1:
            env["ACCELERATE_USE_CPU"] = "1"
        if "OMP_NUM_THREADS" not in os.environ:
            # accelerate gives a CPU process 1 thread unless told; share this machine's threads among the processes
            threads = max(1, torch.get_num_threads() // n)
            cmd += ["--num_cpu_threads_per_process", str(threads)]
            env["OMP_NUM_THREADS"] = str(threads)
    if not launch.verbose:
        cmd += ["--quiet"]
    cmd += ["-m", module, *map(str, args)]
    return cmd, env


def run_child(cmd: list[str], env: dict[str, str] | None = None, on_stderr=None) -> int:
    """Run ``cmd`` (the training script, or ``accelerate launch`` of it) and return its exit code; the child never
    outlives this process.

    On Linux the child asks the kernel for SIGTERM when its parent dies (``PR_SET_PDEATHSIG``), which covers a
    parent killed with SIGKILL; processes the child starts in turn (accelerate's workers) do the same towards it in
    :func:`follow_parent`. A SIGTERM or Ctrl-C delivered to this process terminates the child, waits for it, then
    goes on as it would have (exception or exit). ``env`` adds to this process's environment. ``on_stderr``: called
    with each chunk (bytes) the child writes to its standard error, as it arrives, instead of passing it through.
    """
    import signal
    import threading

    child_env = {**os.environ, **(env or {}), PARENT_ENV: str(os.getpid())}
    proc = subprocess.Popen(
        cmd,
        env=child_env,
        preexec_fn=_die_with_parent(os.getpid()) if sys.platform == "linux" else None,
        stderr=subprocess.PIPE if on_stderr is not None else None,
    )
    reader = None
    if on_stderr is not None:

        def copy() -> None:
            while chunk := proc.stderr.read1(65536):
                on_stderr(chunk)

        reader = threading.Thread(target=copy, daemon=True)
        reader.start()
    previous = None
    if threading.current_thread() is threading.main_thread():

        def on_term(signum, frame):
            raise SystemExit(128 + signum)

        previous = signal.signal(signal.SIGTERM, on_term)
    try:
        code = proc.wait()
        if reader is not None:
            reader.join(timeout=30)  # a grandchild may still hold the pipe: never wait for it for long
        return code
    except BaseException:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


TRACEBACK = b"Traceback (most recent call last):"


class _StderrFilter:
    """What the user sees of a launched stage's standard error: everything (progress bars, warnings) until the
    stage fails, then nothing more: the failure is told in one line by :func:`run_launched`. The stage fails for the
    filter when its error file appears (written before the script prints anything about it) or a traceback starts
    (a crash before the script's own handler, or the launcher's). Every byte also goes to ``log``."""

    def __init__(self, error_file: Path, log) -> None:
        import codecs

        self.error_file, self.log, self.hidden, self.tail = error_file, log, False, b""
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def __call__(self, chunk: bytes) -> None:
        self.log.write(chunk)
        self.log.flush()
        if self.hidden:
            return
        text = self.tail + chunk
        at = text.find(TRACEBACK)
        if at >= 0 or self.error_file.exists():
            self.hidden = True
            chunk = chunk[: max(0, at - len(self.tail))] if at >= 0 else b""
        else:
            self.tail = text[-len(TRACEBACK) :]
        if chunk:
            sys.stderr.write(self.decoder.decode(chunk))
            sys.stderr.flush()


def run_launched(module: str, args: Sequence[str], launch: LaunchSettings | None, *, what: str) -> None:
    """Run ``module`` under ``accelerate launch`` (:func:`accelerate_command`, :func:`run_child`). A
    :class:`LayerPruneError` raised in the launched script is raised here with its own message (the script does not
    print it: the user reads it once); an unexpected exception there raises one line naming ``what``, the exception
    and the log file that keeps the launched processes' whole standard error (tracebacks included, which are not
    shown). The log is removed when the stage succeeds."""
    import json
    import tempfile
    import time

    cmd, env = accelerate_command(module, args, launch)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    log_path = Path(tempfile.gettempdir()) / f"layerprune-{what.replace(' ', '-')}-{stamp}-{os.getpid()}.log"
    with tempfile.TemporaryDirectory(prefix="layerprune-launch-") as folder, open(log_path, "wb") as log:
        error_file = Path(folder) / "error.json"
        code = run_child(cmd, {**env, ERROR_FILE_ENV: str(error_file)}, on_stderr=_StderrFilter(error_file, log))
        try:
            reported = json.loads(error_file.read_text(encoding="utf-8")) if error_file.is_file() else {}
        except (OSError, ValueError):
            reported = {}
    if code == 0:
        log_path.unlink(missing_ok=True)
        return
    message = str(reported.get("message") or "")
    if message and not reported.get("crash"):
        log_path.unlink(missing_ok=True)
        raise LayerPruneError(message)
    if message:
        raise LayerPruneError(f"{what} crashed: {message}; the full log is in {log_path}")
    last = _last_error_line(log_path)
    raise LayerPruneError(
        f"{what} failed (exit code {code}{': ' + last if last else ''}); the full log is in {log_path}"
    )


def _last_error_line(log_path: Path) -> str:
    """The last line of a traceback in the log (``RuntimeError: ...``), or ``""``."""
    try:
        lines = log_path.read_bytes()[-65536:].decode("utf-8", "replace").splitlines()
    except OSError:
        return ""
    import re

    exception = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit|Failure)\b")
    return next((line.strip()[:300] for line in reversed(lines) if exception.match(line)), "")


def _hand_over(message: str, crash: bool = False) -> bool:
    """In a process launched by :func:`run_launched`: write the one-line ``message`` for it (the first error of any
    of the launched processes wins). ``False`` when this process was not launched that way."""
    path = os.environ.get(ERROR_FILE_ENV)
    if not path:
        return False
    import json

    try:
        with open(path, "x", encoding="utf-8") as file:
            json.dump({"message": message, "crash": crash}, file)
    except FileExistsError:
        pass  # another process of the stage failed first: its message is the one the user needs
    except OSError:
        return False
    return True


def report_error(prefix: str, error: BaseException | str) -> None:
    """A launched script's error (a :class:`LayerPruneError`) on one line: handed to :func:`run_launched`, which
    raises it in the launching process, or printed when the script was started by hand."""
    message = str(error)
    if not _hand_over(message):
        print(f"{prefix}: error: {message}", file=sys.stderr)


def report_crash(error: BaseException) -> None:
    """In a process launched by :func:`run_launched`: hand over one line for an unexpected exception (its type and
    first line); the caller re-raises it, so its traceback goes to the log that :func:`run_launched` keeps."""
    first = (str(error).strip().splitlines() or [""])[0][:300]
    _hand_over(f"{type(error).__name__}: {first}" if first else type(error).__name__, crash=True)


def follow_parent() -> None:
    """In a process started below :func:`run_child` (a script that ``accelerate launch`` started): exit with
    SIGTERM when the process that started this one dies, and at once if the ``layerprune`` process that launched
    the stage is already gone. Does nothing in a process a user started (no :data:`PARENT_ENV`)."""
    pid = os.environ.get(PARENT_ENV)
    if not pid or not pid.isdigit() or sys.platform != "linux":
        return
    import ctypes
    import signal

    ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG towards our own parent
    if not _alive(int(pid)):
        os._exit(1)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _die_with_parent(parent: int):
    """A ``preexec_fn`` asking the kernel to send the child SIGTERM when ``parent`` dies."""
    import ctypes
    import signal

    # Resolved here, in the parent: a child forked from a threaded process should not load libraries.
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    pr_set_pdeathsig, sigterm = 1, int(signal.SIGTERM)

    def preexec() -> None:
        prctl(pr_set_pdeathsig, sigterm)
        if os.getppid() != parent:  # the parent died before the request was in place
            os._exit(1)

    return preexec
