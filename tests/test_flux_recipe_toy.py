"""benchmarks/flux_recipe_toy.py: its report is rebuilt from the cells alone (pooled accuracy, Wilson interval,
share of the teacher, the paired difference), an unfinished grid writes nothing, and a mistyped variant is refused."""

from __future__ import annotations

import json

import pytest

from helpers import load_benchmark


def cell(correct):
    return {"accuracy": {"overall": sum(correct) / len(correct)}, "correct": correct, "cpu_seconds": 1.0,
            "wall_seconds": 1.0, "command": "train_distill ..."}  # fmt: skip


def test_report_from_cells(tmp_path, capsys):
    bench = load_benchmark("flux_recipe_toy")
    work = tmp_path / "work"
    work.mkdir()
    teacher = [True, True, False, False]
    rows = {"teacher": cell(teacher), "task_logit|seed=0": cell([True, False, False, False]),
            "task_logit|seed=1": cell([True, True, True, False])}  # fmt: skip
    (work / "cells.jsonl").write_text("".join(json.dumps({"key": k, **v}) + "\n" for k, v in rows.items()))
    args = ["--report-only", "--variants", "task_logit", "--seeds", "0,1", "--work", str(work)]
    assert bench.main([*args, "--results", str(tmp_path / "r.json")]) == 0
    result = json.loads((tmp_path / "r.json").read_text())
    (row,) = result["variants"]
    assert row["pooled"] == 4 / 8 and row["share_of_teacher"] == 1.0
    assert row["against_teacher"]["difference"] == 0.0
    lo, hi = row["against_teacher"]["bootstrap_95"]
    assert lo < 0 < hi and row["wilson_95"][0] < 0.5 < row["wilson_95"][1]
    assert "| task_logit | 50.0 ± 35.4 |" in capsys.readouterr().out
    # a seed not judged yet: no report
    assert bench.main([*args[:-4], "--seeds", "0,2", "--work", str(work), "--results", str(tmp_path / "s.json")]) == 1
    assert not (tmp_path / "s.json").exists()


def test_unknown_variant_is_refused(capsys):
    bench = load_benchmark("flux_recipe_toy")
    with pytest.raises(SystemExit) as exit_info:
        bench.parse_args(["--variants", "task_logit,fast"])
    assert exit_info.value.code == 2 and "unknown variant 'fast'" in capsys.readouterr().err
