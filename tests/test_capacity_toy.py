"""benchmarks/capacity_toy.py: the from-scratch control trains in resumable pieces, is judged like the paper grid,
and its report is rebuilt from the cells alone; the lever's render folder is a valid image-caption dataset."""

from __future__ import annotations

import json

from helpers import load_benchmark


def test_capacity_smoke_and_report_only(tmp_path, capsys):
    cap = load_benchmark("capacity_toy")
    args = ["--smoke", "--depths", "2", "--budgets", "kd400", "--lever-seeds", "", "--seeds", "0",
            "--eval-prompts", "4", "--chunk-steps", "2", "--work", str(tmp_path / "work"),
            "--results", str(tmp_path / "capacity.json")]  # fmt: skip
    # --train-only trains the pieces and writes no report (nothing judged yet: no teacher row to report against)
    assert cap.main([*args, "--train-only"]) == {"trained": True}
    assert not (tmp_path / "capacity.json").exists()
    result = cap.main(args)
    rows = result["rows"]
    assert set(rows) >= {"teacher", "scratch-d2-kd400"}
    scratch = rows["scratch-d2-kd400"]
    # 4 smoke steps in pieces of 2: two training processes, their CPU time summed
    assert len((tmp_path / "work" / "costs.jsonl").read_text().splitlines()) == 2 and scratch["train_cpu_seconds"] > 0
    assert scratch["images"] == 4 and 0 <= scratch["wilson_95"][0] <= scratch["pooled"] <= scratch["wilson_95"][1]
    # the 2-block model is a new architecture trained by train_teacher.py, not the teacher with blocks skipped
    config = json.loads((tmp_path / "work" / "scratch-d2-kd400" / "transformer" / "config.json").read_text())
    assert config["num_layers"] == 2
    section = cap.render(result)
    assert section.startswith(cap.BEGIN) and section.rstrip().endswith(cap.END)
    assert "| 2 blocks from scratch, the KD run's budget (400 x 16) |" in section
    capsys.readouterr()

    # --report-only trains and judges nothing: the same rows from the cells
    (tmp_path / "capacity.json").unlink()
    again = cap.main([*args, "--report-only"])
    assert again["rows"] == rows
    assert ": steps " not in capsys.readouterr().out  # no training piece started


def test_retrain_lever_continues_the_pruned_student_with_the_teachers_recipe(tmp_path, capsys):
    cap = load_benchmark("capacity_toy")
    args = ["--smoke", "--depths", "2", "--budgets", "", "--lever-seeds", "", "--retrain-seeds", "0", "--seeds", "0",
            "--eval-prompts", "4", "--work", str(tmp_path / "work"), "--results", str(tmp_path / "capacity.json")]  # fmt: skip
    result = cap.main(args)
    row = result["rows"]["retrain-d2"]
    assert row["images"] == 4 and row["seeds"] == [0] and row["train_cpu_seconds"]["mean"] > 0
    trained = tmp_path / "work" / "retrain-d2-seed0" / "trained"
    config = json.loads((trained / "transformer" / "config.json").read_text())
    assert config["num_layers"] == 2  # the pruned student's depth, trained on (not a fresh model)
    log = json.loads((trained / "training_log.json").read_text())
    assert log["init_from"].endswith("pruned") and log["steps"] == 2
    assert "| 2 blocks pruned (learnable) + the teacher's recipe continued" in cap.render(result)
    capsys.readouterr()


def test_lever_render_folder_is_an_image_dataset(tmp_path):
    from diffusers_layerprune.image_data import check_image_folder

    cap = load_benchmark("capacity_toy")
    bench = cap.Bench(cap.parse_args(["--renders", "5", "--work", str(tmp_path)]))
    folder = bench.render_folder()
    assert check_image_folder(folder) == 5  # what train_distill --train_data_dir accepts
    rows = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]
    from diffusers_layerprune.toy import world

    assert {r["text"] for r in rows} <= set(world.captions("train"))  # training captions only, never held-out
    assert bench.render_folder() == folder  # written once


def test_reproduce_paper_keeps_the_capacity_section(tmp_path):
    # reproduce_paper.py rewrites docs/results.md whole; the section this benchmark wrote there must survive
    load_benchmark("reproduce_paper")  # puts the paper package on the path
    from paper.run import CAPACITY_END, CAPACITY_START, keep_capacity_section

    doc = tmp_path / "results.md"
    doc.write_text(f"old page\n{CAPACITY_START}\n| capacity table |\n{CAPACITY_END}\nold tail\n")
    page = keep_capacity_section(f"new page\n{CAPACITY_START}\n(placeholder)\n{CAPACITY_END}\nnew tail\n", doc)
    assert page == f"new page\n{CAPACITY_START}\n| capacity table |\n{CAPACITY_END}\nnew tail\n"
    doc.unlink()  # no page yet: the template's placeholder stays
    assert "(placeholder)" in keep_capacity_section(f"{CAPACITY_START}\n(placeholder)\n{CAPACITY_END}\n", doc)
