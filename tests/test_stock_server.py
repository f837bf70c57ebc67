"""The stock processes the tests judge artifacts in (helpers.run_stock): each job is a process of its own that never
imports this package, in a user's bare environment, and reports what a ``python -c`` run would."""

import json
import os

from helpers import bare_env, run_stock

PROBE = """
import json, os, sys, diffusers
print(json.dumps(dict(pid=os.getpid(), cwd=os.getcwd(), argv=sys.argv, env=dict(os.environ),
                      left=hasattr(diffusers, "left_by_a_job"),
                      plugin=[m for m in sys.modules if m.startswith("diffusers_layerprune")])))
"""


def test_each_job_is_a_process_of_its_own_that_never_imports_the_package(tmp_path):
    first = run_stock("import os, diffusers; diffusers.left_by_a_job = 1; print(os.getpid())", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    second = run_stock(PROBE, args=["a", 1], cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-2000:]
    seen = json.loads(second.stdout)
    assert seen["pid"] not in (int(first.stdout), os.getpid())
    assert seen["cwd"] == str(tmp_path) and seen["argv"] == ["-c", "a", "1"]
    assert not seen["left"] and seen["plugin"] == []  # nothing of the first job; the package not imported
    # a user's bare environment (and what Python and torch add themselves): no path to this checkout
    # (the package may be installed, as in CI: what matters is that no job imports it, checked above)
    assert bare_env().items() <= seen["env"].items() and "PYTHONPATH" not in seen["env"]


def test_exit_codes_and_output_are_those_of_the_job(tmp_path):
    done = run_stock("import sys; print('out'); print('err', file=sys.stderr); sys.exit(3)", cwd=tmp_path)
    assert (done.returncode, done.stdout, done.stderr) == (3, "out\n", "err\n")
    failed = run_stock("raise ValueError('broken')", cwd=tmp_path)
    assert failed.returncode == 1 and failed.stderr.strip().endswith("ValueError: broken")
    (tmp_path / "script.py").write_text("import sys\nprint(sys.argv[1:], __name__)\n")
    ran = run_stock(path=tmp_path / "script.py", args=["x"], cwd=tmp_path)
    assert (ran.returncode, ran.stdout) == (0, "['x'] __main__\n")
