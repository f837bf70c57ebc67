"""benchmarks/bench_adaptive_scan.py: how a configuration is judged, on known numbers (no model runs)."""

import pytest

from helpers import load_benchmark


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("bench_adaptive_scan")


def row(seed, ratio, cost, overall, d):
    return {"seed": seed, "ratio": ratio, "cost": cost, "overall": overall, "d": d}


def test_a_configuration_is_judged_on_all_seeds_and_on_the_confirmation_seeds_alone(bench):
    # Seed 0 loses one caption in four at 25% (beyond noise); seed 3 loses nothing.
    rows = [
        row(0, 0.25, 0.2, 0.30, [-1.0, -1.0, 0.0, 0.0]),
        row(0, 0.4, 0.4, 0.20, [0.0, 0.0, 1.0, -1.0]),
        row(3, 0.25, 0.2, 0.40, [0.0, 0.0, 0.0, 0.0]),
        row(3, 0.4, 0.2, 0.20, [1.0, 0.0, 0.0, -1.0]),
    ]
    spread = {(0, 0.25): {"mean": 0.40, "sd": 0.01}, (0, 0.4): {"mean": 0.2, "sd": 0.01},
              (3, 0.25): {"mean": 0.40, "sd": 0.01}, (3, 0.4): {"mean": 0.2, "sd": 0.01}}  # fmt: skip
    pooled = bench.judged_option(rows, [0.25, 0.4], spread)
    assert pooled["seeds"] == [0, 3] and pooled["cost"] == pytest.approx(0.25)
    assert pooled["differences"]["0.25"]["overall_difference"] == pytest.approx(-0.25)
    assert pooled["versus_spread"]["0.25"]["overall_difference"] == pytest.approx(-0.05)
    assert not pooled["within_spread"]  # -5 points against a spread of 0.7: beyond noise
    alone = bench.judged_option(rows, [0.25, 0.4], spread, seeds=[3])
    assert alone["seeds"] == [3] and alone["cost"] == pytest.approx(0.2)
    assert alone["differences"]["0.25"] == {"overall_difference": 0.0, "overall_difference_se": 0.0}
    assert alone["within_noise"] and alone["within_spread"]
    assert bench.judged_option(rows, [0.25, 0.4], {}, seeds=[3])["within_spread"] is False  # no spread measured


def test_confirmation_seeds_must_be_among_the_seeds(bench, capsys):
    assert bench.parse_args(["--seeds", "0", "1"]).confirmation_seeds == []
    assert bench.parse_args([]).confirmation_seeds == [3, 4, 5]
    with pytest.raises(SystemExit):
        bench.parse_args(["--seeds", "0", "--confirmation-seeds", "3"])
    assert "must be among --seeds" in capsys.readouterr().err
