"""benchmarks/routing_toy.py: the verdict, balance and code-analysis rules on known numbers (no model runs)."""

import pytest

from helpers import load_benchmark


@pytest.fixture(scope="module")
def rt():
    return load_benchmark("routing_toy")


def _entry(static_pruned: dict, static_distilled: dict, routed: dict, finetuned: dict) -> dict:
    def stat(v, seeds):
        return {"overall": {"mean": v, "n": len(seeds)}, "seeds": seeds}

    return {
        "static": {"per_seed": {"pruned": static_pruned, "distilled": static_distilled}},
        "routed": {k: stat(v, [0]) for k, v in routed.items()},
        "finetuned": {k: stat(v, [0]) for k, v in finetuned.items()},
    }


def test_verdict_compares_the_best_routed_with_the_best_static_on_the_same_seeds(rt):
    entry = _entry(
        {"preference": {"0": 0.40, "1": 0.10}, "latent": {"0": 0.30, "1": 0.90}},
        {"random": {"0": 0.50}},
        {"2": 0.35, "8": 0.404},  # within one of 216 images of 0.40: a tie
        {"2": 0.45},
    )
    lines = rt.verdicts({"budgets": {"9": entry}})
    # seed 0 only: preference's seed-0 value (0.40), not the best mean over seeds (latent)
    assert "K = 8" in lines[0] and "ties with" in lines[0] and "preference, 40.0%" in lines[0]
    assert "loses to" in lines[1] and "random, 50.0%" in lines[1]
    assert rt.overall_verdict(lines).startswith("**Routing does not beat static pruning")
    mixed = _entry({"preference": {"0": 0.30}}, {"random": {"0": 0.60}}, {"4": 0.40}, {"4": 0.45})
    text = rt.overall_verdict(rt.verdicts({"budgets": {"9": mixed}}))
    assert "does not beat static pruning overall" in text and "wins 1 of 1 comparisons before" in text
    better = _entry({"preference": {"0": 0.30}}, {"random": {"0": 0.40}}, {"4": 0.40}, {"4": 0.45})
    won = rt.verdicts({"budgets": {"7": better}})
    assert all("**beats**" in v for v in won)
    assert rt.overall_verdict(won).startswith("**Routing beats static pruning")


def test_balance_and_mutual_information(rt):
    cell = {"codes": [0, 0, 1, 1], "code_blocks": [[0], [1], [2]]}
    b = rt.balance(cell)
    assert b["shares"] == [0.5, 0.5, 0.0] and b["codes_used"] == 2
    assert b["normalised_entropy"] == pytest.approx(0.6309, abs=1e-4)  # ln 2 / ln 3
    assert rt.nmi([0, 0, 1, 1], ["a", "a", "b", "b"]) == pytest.approx(1.0)
    assert rt.nmi([0, 1, 0, 1], ["a", "a", "b", "b"]) == pytest.approx(0.0, abs=1e-12)


def test_budget_rows_pair_each_router_with_its_plain_routing_and_render(rt):
    def part(mean, changed=0, accuracy=None):
        return {"mean_blocks": mean, "shares": [0.5, 0.5], "changed": changed, "accuracy": accuracy}

    def cell(router, heldout, whole, batches):
        return {"key": f"budget|{router}|batch=16", "router": router, "budget": 9, "blocks": [7, 11],
                "record_mean_blocks": 8.9, "train": part(8.9), "heldout": part(heldout), "enforced_whole": whole,
                "enforced_batches": batches, "batch_size": 16, "batches_over_budget": 3, "num_batches": 14,
                "max_batch_mean_blocks": 9.5}  # fmt: skip

    cells = [
        cell("B9-K2-s1-uniform", 9.04, part(9.0, 2, 0.40), part(8.8, 9, 0.38)),
        cell("B9-K2-s0-uniform", 8.72, part(8.72), part(8.6, 5, 0.41)),
        {"key": "routed|B=9|K=2|seed=1|ot=uniform", "accuracy": {"overall": 0.41}, "toy_score": 0.7},
        {"key": "routed|B=9|K=2|seed=0|ot=uniform", "accuracy": {"overall": 0.42}, "toy_score": 0.7},
    ]
    rows = rt.budget_rows(cells, {c["key"]: c for c in cells})
    assert [r["router"] for r in rows] == ["B9-K2-s0-uniform", "B9-K2-s1-uniform"]  # seed order
    assert [r["plain_accuracy"] for r in rows] == [0.42, 0.41]
    text = "\n".join(rt.budget_section(rows))
    assert "1 of 2 routers run over it, the most 0.04 blocks per caption (B9-K2-s1-uniform)" in text
    assert "| 9.00, 2 moved; 40.0% (-1.0) |" in text and "8.72, unchanged" in text
    assert "all four right moves by -1.0 to -1.0 points" in text and "-3.0 to -1.0 points" in text


def test_the_page_shows_the_command_without_this_machines_output_folder(rt):
    argv = ["--output", "/home/me/cells", "--threads", "2", "--from-cells", "--output=/x", "--finetune-seeds", "0,1"]
    assert rt.command_args(argv) == "--threads 2 --finetune-seeds 0,1"
