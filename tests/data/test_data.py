"""Prompt data: CommonText generation, CompBench/caption readers, mixing, and clear errors for bad files."""

from __future__ import annotations

import json
import re

import pytest
from encoder_shrink.recipes import load_recipe

from encoder_shrink.data import (
    PromptFileError,
    PromptMixture,
    build_mixture,
    generate_commontext,
    read_captions,
    read_commontext,
    read_compbench,
)
from encoder_shrink.data.commontext import HOLDING_ACTIONS, OBJECTS, PHRASES, WRITTEN_ACTIONS, frequent_words

PATTERN = re.compile(r"^An? (?P<subject>[a-z\- ]+?) (?P<action>[a-z\- ]+) '(?P<text>[^']+)'\.$")


def _parse(prompt):
    match = PATTERN.match(prompt)
    assert match, prompt
    return match


def test_commontext_is_deterministic_and_well_formed():
    prompts = generate_commontext(500, seed=3)
    assert prompts == generate_commontext(500, seed=3)
    assert prompts != generate_commontext(500, seed=4)
    words = set(frequent_words())
    assert len(words) == 5000
    for prompt in prompts:
        match = _parse(prompt)
        body = prompt.split(" ", 1)[1]
        assert any(f" {a} '" in body for a in HOLDING_ACTIONS + WRITTEN_ACTIONS)
        assert match["text"] in words or match["text"] in PHRASES
        if any(body.startswith(o + " ") for o in OBJECTS):
            assert any(f" {a} '" in body for a in WRITTEN_ACTIONS)  # objects get actions that fit them


def test_commontext_train_and_validation_texts_are_disjoint():
    train = {PATTERN.match(p)["text"] for p in generate_commontext(3000, "train")}
    val = {PATTERN.match(p)["text"] for p in generate_commontext(500, "val")}
    assert train and val and not train & val


def test_compbench_reader_on_the_published_files(shared_data):
    folder = shared_data / "T2I-CompBench"
    prompts = read_compbench(folder)
    assert len(prompts) == 6 * 700  # the paper's semantics set: 700 per category
    assert prompts[0] == (folder / "color_train.txt").read_text().splitlines()[0].strip()
    assert len(read_compbench(folder, categories=["numeracy"], split="val")) > 0
    assert len(read_compbench(folder / "shape_val.txt", limit=5)) == 5


def test_commontext_reader_on_the_published_files(shared_data):
    train = read_commontext(shared_data / "CommonText_Train.json")
    assert len(train) == 50_000 and len(read_commontext(shared_data / "CommonText_Test.json")) == 1_000


def test_caption_formats(tmp_path):
    (tmp_path / "c.txt").write_text("a cat\n\n a dog \n")
    (tmp_path / "c.json").write_text(json.dumps([{"caption": "a cat"}, "a dog"]))
    (tmp_path / "c.jsonl").write_text('{"TEXT": "a cat"}\n"a dog"\n')
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"TEXT": ["a cat", "a dog"], "AESTHETIC_SCORE": [6.6, 7.0]}), tmp_path / "c.parquet")
    for name in ("c.txt", "c.json", "c.jsonl", "c.parquet"):
        assert read_captions(tmp_path / name) == ["a cat", "a dog"], name
    assert read_captions(tmp_path / "c.parquet", limit=1) == ["a cat"]


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("empty.txt", b"\n\n", "holds no prompts"),
        ("latin1.txt", "caf\xe9\n".encode("latin-1"), "is not UTF-8 text"),
        ("bad.json", b"[1, 2", "is not valid JSON"),
        ("dict.json", b'{"a": 1}', "must hold a JSON list"),
        ("records.json", b'[{"url": "x"}]', "records must be strings or objects with one of TEXT, caption"),
        ("bad.jsonl", b'"ok"\n{oops\n', r"bad.jsonl:2 is not valid JSON"),
        ("captions.csv", b"a,b", "unsupported caption file type '.csv'"),
        ("broken.parquet", b"not parquet", "is not a readable parquet file"),
    ],
)
def test_bad_caption_files(tmp_path, name, content, message):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(PromptFileError, match=message):
        read_captions(tmp_path / name)


def test_missing_paths(tmp_path):
    with pytest.raises(PromptFileError, match="does not exist"):
        read_captions(tmp_path / "none.txt")
    with pytest.raises(PromptFileError, match="T2I-CompBench path .* does not exist"):
        read_compbench(tmp_path / "nowhere")
    (tmp_path / "cb").mkdir()
    with pytest.raises(PromptFileError, match="has no color_train.txt"):
        read_compbench(tmp_path / "cb")


def test_mixture_is_deterministic_by_index_and_follows_weights():
    mixture = PromptMixture({"a": ["a1", "a2"], "b": ["b1"]}, {"a": 3.0, "b": 1.0}, seed=0)
    assert mixture.batch(7, 16) == mixture.batch(7, 16)
    assert mixture.batch(7, 16) != mixture.batch(8, 16)
    assert mixture.batch(7, 16, stream=1) != mixture.batch(7, 16, stream=0)
    drawn = [p for i in range(200) for p in mixture.batch(i, 10)]
    share_a = sum(p.startswith("a") for p in drawn) / len(drawn)
    assert 0.70 < share_a < 0.80


def test_build_mixture_from_recipe_stage(tmp_path, shared_data):
    stage = load_recipe("flux-t5base").stages[2]  # laion + compbench + commontext
    with pytest.raises(ValueError, match="source 'laion' needs a caption file"):
        build_mixture(stage, {"compbench": shared_data / "T2I-CompBench"})
    (tmp_path / "laion.txt").write_text("a photo of a lake\n")
    mixture = build_mixture(stage, {"compbench": shared_data / "T2I-CompBench", "laion": tmp_path / "laion.txt"})
    assert set(mixture.sources) == {"laion", "compbench", "commontext"}
    assert mixture.weights == {"laion": 100, "compbench": 49, "commontext": 50}
    assert len(mixture.sources["commontext"]) == 50_000  # generated: the paper's training set size
    only = build_mixture(stage, ["x", "y"])
    assert only.sources == {"prompts": ["x", "y"]}
