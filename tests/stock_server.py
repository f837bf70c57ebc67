"""A fork server for the tests' stock processes (started by ``helpers.run_stock``; never imports this package).

Each stock check needs a process that imports only torch, diffusers, transformers and peft, as a user's script does.
Starting an interpreter and importing those costs ~8 CPU-seconds, paid by every such test. This server pays it once:
it imports the stock libraries, then forks one child per job. A job runs in its own child, a copy of a process that
has imported the stock libraries and run nothing else, so no job sees another job's state; the child runs the job's
code as ``__main__`` (``python -c CODE ARGS`` or ``python FILE ARGS``) with its output in files, and exits.

Protocol: one JSON request per line on stdin ``{"code" | "path", "argv", "cwd", "stdout", "stderr"}``; one JSON
answer per line on the original stdout ``{"returncode", "cpu"}`` (the child's CPU seconds).
"""

import json
import os
import sys


def _preload() -> None:
    """Import what the jobs import (modules only: no tensor op runs here, so no OpenMP pool exists to be forked)."""
    import diffusers
    import numpy  # noqa: F401
    import torch  # noqa: F401
    import transformers
    from diffusers import DiffusionPipeline  # noqa: F401  (imports diffusers' loaders, peft, quantizers)

    # the lazy modules of the pipelines and text encoders the tiny folders name (best effort: a job imports what is
    # missing here itself)
    for library, name in [
        *((diffusers, n) for n in ("PixArtSigmaPipeline", "SanaPipeline", "StableDiffusion3Pipeline", "FluxPipeline")),
        *((transformers, n) for n in ("T5EncoderModel", "CLIPTextModelWithProjection", "Gemma2Model")),
    ]:
        try:
            getattr(library, name)
        except (AttributeError, ImportError):
            pass


def _run_child(job: dict, answers_fd: int) -> None:
    """In the forked child: the job's files as stdout / stderr, its cwd and argv, its code as ``__main__``; exits."""
    os.close(answers_fd)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    out = os.open(job["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    err = os.open(job["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(out, 1)
    os.dup2(err, 2)
    sys.stdin = open(0, closefd=False)
    sys.stdout = open(1, "w", closefd=False, buffering=1)
    sys.stderr = open(2, "w", closefd=False, buffering=1)
    os.chdir(job["cwd"])
    code = 0
    try:
        if job.get("path"):
            import runpy

            sys.argv = [job["path"], *job["argv"]]
            sys.path[0] = os.path.dirname(os.path.abspath(job["path"]))
            runpy.run_path(job["path"], run_name="__main__")
        else:
            import types

            sys.argv = ["-c", *job["argv"]]
            sys.path[0] = ""
            module = types.ModuleType("__main__")
            sys.modules["__main__"] = module
            exec(compile(job["code"], "<string>", "exec"), module.__dict__)
    except SystemExit as done:
        if done.code is None or isinstance(done.code, int):
            code = done.code or 0
        else:
            print(done.code, file=sys.stderr)
            code = 1
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)


def main() -> None:
    answers = os.dup(1)  # the answer channel; fd 1 becomes stderr so a library's print cannot corrupt it
    os.dup2(2, 1)
    sys.stdout = open(1, "w", closefd=False, buffering=1)
    sys.path[0] = ""  # as `python -c` has it (the server starts in an empty folder)
    _preload()
    assert not any(m.startswith("diffusers_layerprune") for m in sys.modules), "the stock server imported the plugin"
    for line in sys.stdin:
        job = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _run_child(job, answers)
        _, status, usage = os.wait4(pid, 0)
        answer = {"returncode": os.waitstatus_to_exitcode(status), "cpu": usage.ru_utime + usage.ru_stime}
        os.write(answers, (json.dumps(answer) + "\n").encode())


if __name__ == "__main__":
    main()
