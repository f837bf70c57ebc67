"""benchmarks/stack_toy.py: its plan choice, paired statistics, verdict and page on known numbers, and (slow) its
smoke mode end to end."""

import json
import os
import subprocess
import sys

import pytest

from helpers import ROOT, load_benchmark


@pytest.fixture(scope="module")
def st():
    return load_benchmark("stack_toy")


def test_plans_are_the_best_distilled_selection_of_either_paper_grid(st):
    def acc(v):
        return {"overall": {"mean": v}}

    pixart = {
        "table": {"distilled": {r: {"preference": acc(0.40), "learnable": acc(0.50)} for r in ("0.25", "0.40")}},
        "plans": {
            "preference": {"0.25": {"0": [5, 6, 7]}, "0.40": {"0": [1, 2, 3, 4, 5]}},
            "learnable": {"0.25": {"0": [11, 8, 10]}, "0.40": {"0": [3, 7, 8, 10, 11]}},
        },
    }
    plans = st.best_plans(pixart)
    assert plans["full"]["dropped"] == [] and plans["25%"] == {
        "dropped": [8, 10, 11],
        "selection": "learnable",
        "paper_distilled": 0.50,
    }
    flux = {  # reproduce_paper_flux.json: a plan that was not distilled (None) is skipped
        "table": {
            r: {
                "preference": {
                    "mixed": {"dropped": {"0": [8, 9, 10]}, "distilled": acc(0.28)},
                    "double only": {"dropped": {"0": [0, 1, 3]}, "distilled": acc(0.16)},
                },
                "block_influence": {"mixed": {"dropped": {"0": [1, 2, 3]}, "distilled": None}},
            }
            for r in ("0.25", "0.40")
        }
    }
    assert st.best_plans(flux)["40%"]["selection"] == "preference, mixed"
    assert st.best_plans(flux)["40%"]["dropped"] == [8, 9, 10]


def test_points_lost_are_paired_per_caption(st):
    # 2 captions x 2 seeds (image j is caption j % 2): the teacher gets caption 0 right twice, the cell once
    lost, (low, high) = st.paired_points_lost("1010", "1000", 2)
    assert lost == pytest.approx(25.0)  # per caption: 0.5 and 0.0
    # sample sd of (0.5, 0.0) is 0.354, its standard error over 2 captions 0.25: 25 +- 1.96 x 25 points
    assert (low, high) == pytest.approx((25 - 49.0, 25 + 49.0))
    same, interval = st.paired_points_lost("1101", "1101", 2)
    assert same == 0.0 and interval == (0.0, 0.0)


def _cell(depth, cache, weights, correct, flops, steps=20, seconds=1.0):
    return dict(depth=depth, dropped=[] if depth == "full" else [1], blocks=12, selection="s", distilled=True,
                cache=cache, weights=weights, steps=steps, images=len(correct), accuracy=correct.count("1") / len(correct),
                ci95=(0.0, 1.0), correct=correct, flops_per_image=flops, seconds_per_image=seconds, cpu_seconds=6.0)  # fmt: skip


def _result(cells):
    st = load_benchmark("stack_toy")
    st.derive(cells, 4, 20)
    settings = dict(num_inference_steps=20, guidance_scale=4.5, fbc_threshold=0.05, mag_threshold=0.06,
                    calib_prompts=16, distilled=True, distill_steps=400)  # fmt: skip
    plans = {"full": {"dropped": [], "selection": "teacher"}, "40%": {"dropped": [1], "selection": "learnable"}}
    return dict(model="toy", settings=settings, captions=4, seeds_per_caption=1, machine="m", plans=plans,
                mag_ratios={"full": [1.0, 1.1]}, gguf={"available": False, "reason": "PixArt-Sigma cannot be exported"},
                cells=cells, cpu_minutes=1.0)  # fmt: skip


def test_verdict_and_page_from_known_cells(st):
    cells = [
        _cell("full", "none", "fp32", "1111", 12.0),
        _cell("full", "magcache", "fp32", "1110", 8.0),
        _cell("full", "none", "int8", "1110", 0.1),  # quanto's kernels are not counted: the float count is used
        _cell("40%", "none", "fp32", "1111", 5.0),
        _cell("40%", "magcache", "fp32", "1111", 3.0),
        _cell("40%", "none", "fp32", "1100", 2.5, steps=10),
    ]
    result = _result(cells)
    int8 = cells[2]
    assert int8["flops_per_image"] == 12.0 and int8["flops_counted"] == 0.1 and int8["points_lost"] == 25.0
    assert cells[4]["cache_work_fraction"] == pytest.approx(0.6) and cells[4]["flops_saving"] == 4.0
    lines = st.verdict(result)
    assert "4.00x (40%, magcache, fp32, 20 steps" in lines[1] and "is met." in lines[1]
    assert "40%, none, fp32, 10 steps: 4.80x for 50.0 points" in lines[2]
    assert "magcache keeps 67% of the full model's work, 60% of the 40%-pruned one's" in lines[3]
    assert lines[4].endswith("together (float32): 40% + magcache: +0.0 measured, +25.0 if the losses added.")
    page = st.render([result])
    assert page.startswith(st.BEGIN) and page.endswith(st.END)
    assert "N/A, `layerprune export` refuses the model: PixArt-Sigma cannot be exported" in page
    assert "| 40% | 12 | magcache | fp32 | 20 | 100.0% (0-100) | +0.0 (+0.0 to +0.0) | 0.000 | 4.00x | 60% |" in page
    cells[4]["correct"] = "1000"  # now 75 points lost: nothing reaches 3x within 2 points
    lines = st.verdict(_result([{k: v for k, v in c.items() if k != "flops_counted"} for c in cells]))
    assert "**not met**" in lines[1]


@pytest.mark.slow
@pytest.mark.parametrize("model,name", [("toy", "stack_toy.json"), ("toy-flux", "stack_toy_flux.json")])
def test_smoke_mode_writes_the_json_plot_and_page(tmp_path, model, name):
    page = tmp_path / "stacking.md"
    page.write_text("# head\n\n<!-- stack_toy: begin -->\nSTALE-SECTION\n<!-- stack_toy: end -->\ntail\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, str(ROOT / "benchmarks" / "stack_toy.py"), "--smoke", "--model", model, "--results-dir",
           str(tmp_path), "--docs-dir", str(tmp_path)]  # fmt: skip
    subprocess.run(cmd, check=True, env=env, capture_output=True, timeout=600)
    result = json.loads((tmp_path / name).read_text())
    assert result["model"] == model
    assert {c["cache"] for c in result["cells"]} == {"none", "first_block", "taylorseer", "magcache"}
    assert {c["weights"] for c in result["cells"]} == {"fp32", "int8"} and not result["gguf"]["available"]
    assert len(result["mag_ratios"]["full"]) == result["settings"]["num_inference_steps"]
    text = page.read_text()
    assert "STALE-SECTION" not in text and text.endswith("tail\n") and "| full | 12 | magcache | fp32 |" in text
    assert (tmp_path / "stacking.png").stat().st_size > 0
