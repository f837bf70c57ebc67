"""Prompt sets as users pass them with --prompts: built-ins, files, dataset folders and Hub specs
(name[:config][:split][@column]); deduplication, exclusion of evaluation prompts, and one-line errors."""

import json

import pytest
from datasets import Dataset, DatasetDict

from diffusers_layerprune import LayerPruneError
from diffusers_layerprune.data import PromptSpec, load_prompts, parse_prompt_spec
from diffusers_layerprune.modeling import GENERATION_DEFAULTS, model_defaults, resolve_dtype


@pytest.mark.parametrize(
    "text, spec",
    [
        ("toy:train", PromptSpec("toy", None, "train")),
        ("hpdv2", PromptSpec("hpdv2")),
        ("user/corpus", PromptSpec("user/corpus")),
        ("user/corpus:validation@caption", PromptSpec("user/corpus", None, "validation", "caption")),
        ("user/corpus:cfg:train[:100]@Prompt", PromptSpec("user/corpus", "cfg", "train[:100]", "Prompt")),
    ],
)
def test_prompt_spec(text, spec):
    assert parse_prompt_spec(text) == spec


@pytest.mark.parametrize("text", ["user/c:a:b:c", "user/c:", "user/c@", ":train", "user/c@a/b"])
def test_bad_prompt_spec(text):
    with pytest.raises(LayerPruneError, match="expected name\\[:config\\]\\[:split\\]\\[@column\\]"):
        parse_prompt_spec(text)


def test_files_are_cleaned_and_counted(tmp_path):
    txt = tmp_path / "p.txt"
    txt.write_text("a red circle\n\n  a red   circle \nA RED CIRCLE\na blue square\n   \na green star\n")
    ps = load_prompts(str(txt))
    assert ps.prompts == ["a red circle", "a blue square", "a green star"]
    assert ps.record() | {"fingerprint": None} == {
        "source": str(txt),
        "count": 3,
        "fingerprint": None,
        "rows": 7,
        "empty": 2,
        "duplicates": 2,
    }
    # exclusion happens before the limit, so the limit still gets N prompts
    ps = load_prompts(str(txt), exclude=["A blue square"], limit=2)
    assert ps.prompts == ["a red circle", "a green star"] and ps.meta["excluded"] == 1

    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text("".join(json.dumps({"id": i, "Caption": f"prompt {i % 3}"}) + "\n" for i in range(6)))
    assert load_prompts(str(jsonl)).prompts == ["prompt 0", "prompt 1", "prompt 2"]  # column found in any case
    csv = tmp_path / "p.csv"
    csv.write_text("a,b\nx one,y one\nx two,y two\n")
    assert load_prompts(str(csv), column="b").prompts == ["y one", "y two"]
    with pytest.raises(LayerPruneError, match="say which column holds the prompts"):
        load_prompts(str(csv))


def test_dataset_folders_with_split_and_column(tmp_path):
    rows = {"text": ["one cat", "two dogs", "one cat"], "style": ["p1", "p2", "p3"]}
    Dataset.from_dict(rows).save_to_disk(str(tmp_path / "ds"))
    assert load_prompts(str(tmp_path / "ds")).prompts == ["one cat", "two dogs"]
    assert load_prompts(str(tmp_path / "ds")).meta["duplicates"] == 1
    DatasetDict({"train": Dataset.from_dict(rows), "val": Dataset.from_dict({"caption": ["v1", "v2"]})}).save_to_disk(
        str(tmp_path / "dd")
    )
    assert load_prompts(f"{tmp_path / 'dd'}@style").prompts == ["p1", "p2", "p3"]
    assert load_prompts(str(tmp_path / "dd"), split="val").prompts == ["v1", "v2"]
    with pytest.raises(LayerPruneError, match="has no split 'test'"):
        load_prompts(str(tmp_path / "dd"), split="test")
    with pytest.raises(LayerPruneError, match="has no column 'nope'"):
        load_prompts(str(tmp_path / "ds"), column="nope")


@pytest.mark.parametrize(
    "content, message",
    [
        ("", "is empty"),
        ("\n  \n\n", "is empty once empty lines and duplicates are dropped (rows: 3, empty: 3)"),
        ("same\nsame\nSame\n", "all 3 rows are the same prompt"),
        (b"\xff\xfe\x00bad", "is not a readable UTF-8 txt prompt file"),
    ],
)
def test_bad_prompt_files(tmp_path, content, message):
    path = tmp_path / "p.txt"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(LayerPruneError, match=message.replace("(", "\\(").replace(")", "\\)")):
        load_prompts(str(path))


def test_unknown_sources_and_offline_hub(tmp_path, monkeypatch):
    with pytest.raises(LayerPruneError, match="unknown prompt set 'nonsense'"):
        load_prompts("nonsense")
    with pytest.raises(LayerPruneError, match="prompt file .*missing.txt does not exist"):
        load_prompts(str(tmp_path / "missing.txt"))
    # offline (the tests run with HF_HUB_OFFLINE=1): one line naming the dataset and the --prompts flag
    with pytest.raises(LayerPruneError) as info:
        load_prompts("someone/not-cached-prompts:train@text")
    message = str(info.value)
    assert "someone/not-cached-prompts" in message and "--prompts" in message and "\n" not in message


def test_real_models_never_default_to_toy_prompts():
    sigma = model_defaults("PixArt-alpha/PixArt-Sigma-XL-2-1024-MS")
    for key in ("score_prompts", "train_prompts", "eval_prompts"):
        assert not sigma[key].startswith("toy")
    # scoring and training corpora are not the evaluation benchmark
    assert sigma["eval_prompts"] == "hpdv2" and "hpdv2" not in sigma["score_prompts"] + sigma["train_prompts"]
    assert parse_prompt_spec(sigma["score_prompts"]).column == "caption"
    assert model_defaults("toy")["score_prompts"] == "toy:train" == GENERATION_DEFAULTS["toy"]["train_prompts"]
    # real-size PixArt-Sigma runs in bfloat16 by default; the toy world stays exact
    assert str(resolve_dtype("auto", "PixArt-alpha/PixArt-Sigma-XL-2-1024-MS")) == "torch.bfloat16"
    assert str(resolve_dtype(None, "toy")) == "torch.float32"
    assert str(resolve_dtype("float16", "toy")) == "torch.float16"
