"""benchmarks/elastic_toy.py with more than two depths: the timed elastic steps cover every middle depth, and the report
compares every depth and costs the elastic run against all the separate runs (known cells, no model runs)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from types import SimpleNamespace

import pytest

from helpers import load_benchmark

DEPTHS = [11, 10, 9, 8, 7]


@pytest.fixture(scope="module")
def study():
    load_benchmark("elastic_toy")
    from elastic_study import run

    return run


def _plan(depths):
    from diffusers_layerprune.elastic import ElasticPlan

    kept = {d: tuple(range(d)) for d in depths}
    return ElasticPlan(tuple(depths), kept, kept[depths[0]])


def test_each_middle_depth_is_timed_on_a_step_that_draws_it(study):
    plan = _plan(DEPTHS)
    draws = study.elastic_step_draws(plan)
    assert sorted(draws) == ["elastic-middle10", "elastic-middle8", "elastic-middle9"]
    for name, step in draws.items():
        assert plan.depths_for_step(0, step) == [11, int(name.removeprefix("elastic-middle")), 7]
    assert study.elastic_step_draws(_plan([9, 7])) == {"elastic": 0}  # two depths: every step trains both
    medians = {"elastic-middle10": 0.30, "elastic-middle9": 0.27, "elastic-middle8": 0.24, "elastic": 9.9}
    assert study.expected_elastic_seconds(medians, DEPTHS) == pytest.approx(0.27)
    assert study.expected_elastic_seconds({"elastic": 0.165}, [9, 7]) == 0.165
    weighted = study.expected_elastic_seconds(medians, DEPTHS, [2, 1, 1])  # the first middle depth on half the steps
    assert weighted == pytest.approx((2 * 0.30 + 0.27 + 0.24) / 4)


def _record(correct, cpu=None):
    record = {"accuracy": {"overall": statistics.mean(correct)}, "correct": correct, "toy_score": 0.8}
    if cpu is not None:
        record["train"] = {"cpu_seconds": cpu, "wall_seconds": 2 * cpu, "steps": 0}
    return record


def test_report_over_five_depths(study, tmp_path):
    el = load_benchmark("elastic_toy")
    args = el.parse_args(["--depths", "11,10,9,8,7", "--elastic-steps", "150", "--variant", "featlargest",
                          "--seeds", "0,1", "--work", str(tmp_path)])  # fmt: skip
    bench = study.Bench(args)
    bench.importance = SimpleNamespace(criterion="preference", ranking=lambda: list(range(12)))
    bench.kept, bench.source_depth = {d: list(range(d)) for d in DEPTHS}, 12
    right, wrong = [True] * 8 + [False] * 2, [True] * 2 + [False] * 8
    for seed in (0, 1):
        bench.cells.put(f"teacher|seed={seed}", _record(right))
        for d in DEPTHS:
            bench.cells.put(f"pruned-{d}|seed={seed}", _record(wrong))
            bench.cells.put(f"separate-{d}[steps200]|seed={seed}", _record(right, cpu=10.0 * d))
            # every depth ties with its separate student except depth 7, wrong on 6 of 10 captions more
            bench.cells.put(f"elastic-{d}[steps150-featlargest]|seed={seed}", _record(wrong if d == 7 else right, 90.0))
    per_step = {f"separate-{d}": 0.01 * d for d in DEPTHS}  # 0.45 s for the five separate steps
    per_step.update({"elastic-middle10": 0.20, "elastic-middle9": 0.18, "elastic-middle8": 0.16, "elastic": 0.18})
    (tmp_path / "step_costs.json").write_text(json.dumps(
        {"cpu_seconds_per_step": per_step, "elastic_over_separate_per_step": 0.18 / 0.45}))  # fmt: skip
    report = bench.report()
    assert [c["depth"] for c in report["comparisons"]] == DEPTHS
    assert [c["within_noise"] for c in report["comparisons"]] == [True] * 4 + [False]
    assert report["comparisons"][-1]["difference"] == pytest.approx(-0.6)
    cost = report["cost"]["150"]
    assert cost["cpu_ratio"]["mean"] == pytest.approx(90.0 / 450.0)  # against all five separate runs
    assert cost["loop_ratio"] == pytest.approx(150 * 0.4 / 200)
    goal = report["goal"]["150"]
    assert goal["at_most_one_third"] and not goal["every_depth_within_noise"] and goal["reached"] is False


def test_own_cache_run_builds_its_cache_in_a_fresh_folder_and_removes_it(study, tmp_path, monkeypatch):
    el = load_benchmark("elastic_toy")
    bench = study.Bench(el.parse_args(["--work", str(tmp_path)]))
    seen = []

    def fake_distil(student, output, *, extra, **kw):
        cache = extra[extra.index("--cache_dir") + 1] if "--cache_dir" in extra else None
        seen.append(cache)
        if cache:
            assert not list(Path(cache).glob("*"))  # fresh: nothing left from an earlier run
            (Path(cache) / "latents").mkdir(parents=True)
        (output / "model_index.json").parent.mkdir(parents=True)
        (output / "model_index.json").write_text("{}")
        return {"cpu_seconds": 1.0, "wall_seconds": 1.0, "steps": kw["steps"]}

    monkeypatch.setattr(study, "timed_distil", fake_distil)
    (tmp_path / "elastic.cache" / "stale").mkdir(parents=True)  # left by a killed run
    cost = bench.train(tmp_path / "student", tmp_path / "elastic", 5, 0, ["--elastic_depths", "9,7"], own_cache=True)
    assert seen == [str(tmp_path / "elastic.cache")] and cost["own_cache"] is True
    assert not (tmp_path / "elastic.cache").exists()
    assert json.loads((tmp_path / "elastic.cost.json").read_text())["own_cache"] is True
    cost = bench.train(tmp_path / "student", tmp_path / "separate", 5, 0)
    assert seen[-1] is None and "own_cache" not in cost  # the shared cache, as before
