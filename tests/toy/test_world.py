"""encoder_shrink.toy.world: the toy grammar round-trips, splits deterministically, renders deterministic scenes."""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pytest

from encoder_shrink.toy import checker, world
from encoder_shrink.toy.world import (
    ALPHABET,
    COLOURS,
    GLYPHS,
    KINDS,
    WORDS,
    ToyObject,
    ToyPrompt,
    all_prompts,
    parse_prompt,
    render,
    sample_prompts,
    spell_quoted,
    split_of,
    vocabulary,
)
from tests.doctests import run_docstring_examples


def test_grammar_sizes_and_order():
    assert [len(all_prompts(kind)) for kind in KINDS] == [18, 36, 1224, 12**3]
    prompts = all_prompts()
    assert len({p.text for p in prompts}) == len(prompts) == 18 + 36 + 1224 + 1728
    assert prompts == all_prompts()  # a fixed order
    assert [p.text for p in all_prompts("single")[:2]] == ["a red circle", "a red square"]
    assert all_prompts("spatial")[0].text == "a red circle left of a red square"
    assert [p.word for p in all_prompts("text")[:2]] == ["aaa", "aac"]
    assert {p.word for p in all_prompts("text")} >= set(WORDS)


def test_every_prompt_round_trips():
    for prompt in all_prompts():
        assert parse_prompt(prompt.text) == prompt
        assert parse_prompt("  " + prompt.text.upper().replace(" ", "  \t") + "\n") == prompt
        assert parse_prompt(spell_quoted(prompt.text)) == prompt


@pytest.mark.parametrize(
    "text",
    [
        "",
        "a red circel",
        "one red circle",
        "two red circle",
        "four red circles",
        "a pink circle",
        "a red circle left of a red circle",
        "a red circle next to a blue square",
        "a sign that says 'xyz'",
        "a sign that says 'cats'",
        "a sign that says cat",
        "a red circle.",
    ],
)
def test_prompts_outside_the_grammar_raise_one_line_errors_quoting_them(text):
    with pytest.raises(ValueError) as error:
        parse_prompt(text)
    message = str(error.value)
    assert repr(text) in message and "\n" not in message
    assert "e.g." in message


def test_prompt_fields_are_validated():
    red_circle = ToyObject("red", "circle")
    with pytest.raises(ValueError, match="'pink'"):
        ToyObject("pink", "circle")
    with pytest.raises(ValueError, match="'hexagon'"):
        ToyObject("red", "hexagon")
    with pytest.raises(ValueError, match="count"):
        ToyPrompt("count", (red_circle,), count=4)
    with pytest.raises(ValueError, match="differ"):
        ToyPrompt("spatial", (red_circle, red_circle), relation="above")
    with pytest.raises(ValueError, match="relation"):
        ToyPrompt("single", (red_circle,), relation="above")
    with pytest.raises(ValueError, match="'xyz'"):
        ToyPrompt("text", word="xyz")
    with pytest.raises(ValueError, match="'ca'"):
        ToyPrompt("text", word="ca")
    assert ToyPrompt("text", word="tnc").text == "a sign that says 'tnc'"  # any three glyphs, not only WORDS
    with pytest.raises(ValueError, match="'photo'"):
        ToyPrompt("photo", (red_circle,))


def test_attributes_follow_the_fixed_category_order():
    assert parse_prompt("a red circle").attributes == ("colour", "shape")
    assert parse_prompt("three green triangles").attributes == ("colour", "shape", "count")
    assert parse_prompt("a red circle below a blue square").attributes == ("colour", "shape", "position")
    assert parse_prompt("a sign that says 'cat'").attributes == ("text",)
    for prompt in all_prompts():
        assert list(prompt.attributes) == sorted(prompt.attributes, key=world.ATTRIBUTES.index)


def test_split_holds_out_about_a_fifth_of_each_kind_and_is_stable():
    for kind in ("single", "count", "spatial"):
        splits = [split_of(p) for p in all_prompts(kind)]
        assert set(splits) == {"train", "heldout"}
        assert 0.1 <= splits.count("heldout") / len(splits) <= 0.3, kind
    # sha256 of the text, not Python's salted hash(): the same words on every machine and in every process.
    heldout_words = {p.word for p in all_prompts("text") if split_of(p) == "heldout"}
    assert heldout_words == {"ace", "aid", "arc", "car", "cut", "ear", "end", "nod", "not", "pan", "pod", "pun", "pup",
                             "put", "sat", "sir", "spa", "sun", "tan", "top"}
    assert split_of("a sign that says 'sun'") == "heldout" and split_of("a sign that says 'cat'") == "train"


def test_held_out_text_is_a_fifth_of_the_words_and_every_letter_is_trained_in_every_cell():
    by_split = {split: {p.word for p in all_prompts("text") if split_of(p) == split} for split in ("train", "heldout")}
    assert not by_split["train"] & by_split["heldout"]
    assert by_split["heldout"] < set(WORDS) and len(by_split["heldout"]) == round(0.2 * len(WORDS))
    assert len(by_split["train"]) == 12**3 - len(by_split["heldout"])  # every other three-glyph string is trained
    for cell in range(3):
        assert {word[cell] for word in by_split["train"]} == set(ALPHABET)
    assert all(split_of(p) == "heldout" for p in sample_prompts(40, "heldout", kinds="text"))


def test_sample_prompts_respects_split_is_balanced_and_seeded():
    for split in ("train", "heldout"):
        prompts = sample_prompts(200, split=split, seed=3)
        assert all(split_of(p) == split for p in prompts)
        counts = Counter(p.kind for p in prompts)
        assert set(counts) == set(KINDS) and max(counts.values()) - min(counts.values()) <= 1
        assert [p.kind for p in prompts[:4]] == list(KINDS)
    assert sample_prompts(50, seed=1) == sample_prompts(50, seed=1)
    assert sample_prompts(50, seed=1) != sample_prompts(50, seed=2)
    assert {p.kind for p in sample_prompts(10, kinds=("text", "count"))} == {"text", "count"}
    assert {p.kind for p in sample_prompts(3, kinds="text")} == {"text"}
    # Each kind's prompts are all used before any repeats.
    train_singles = [p for p in all_prompts("single") if split_of(p) == "train"]
    drawn = sample_prompts(len(train_singles), kinds=["single"], seed=5)
    assert sorted(p.text for p in drawn) == sorted(p.text for p in train_singles)
    assert sample_prompts(0) == []
    # A kind listed twice is drawn twice as often.
    weighted = Counter(p.kind for p in sample_prompts(60, kinds=("single", "text", "text")))
    assert weighted == {"single": 20, "text": 40}


def test_sample_prompts_rejects_bad_arguments():
    with pytest.raises(ValueError, match="'val'"):
        sample_prompts(4, split="val")
    with pytest.raises(ValueError, match="'photo'"):
        sample_prompts(4, kinds=("photo",))
    with pytest.raises(ValueError, match="-1"):
        sample_prompts(-1)


def test_spell_quoted_and_vocabulary_cover_every_prompt():
    assert spell_quoted("a sign that says 'cat'") == "a sign that says ' c a t '"
    assert spell_quoted(parse_prompt("a sign that says 'top'")) == "a sign that says ' t o p '"
    assert spell_quoted("two blue squares") == "two blue squares"
    words = vocabulary()
    assert words == sorted(set(words))
    known = set(words)
    for prompt in all_prompts():
        assert set(spell_quoted(prompt.text).split()) <= known, prompt.text
    assert set(ALPHABET) <= known
    assert known & set(WORDS) == {"red"}  # quoted words are spelled; "red" is there as a colour
    assert {"a", "two", "three", "left", "of", "above", "sign", "says", "'", *COLOURS, "triangles"} <= known


def test_palette_glyphs_and_words_are_well_formed():
    assert len(COLOURS) == 6
    for rgb in COLOURS.values():
        assert max(rgb) - min(rgb) >= 140  # saturated: far from white, black and grey
    for a, b in itertools.combinations(COLOURS.values(), 2):
        assert np.linalg.norm(np.subtract(a, b)) > 100
    assert 10 <= len(GLYPHS) <= 12 and ALPHABET == tuple(sorted(GLYPHS))
    bitmaps = {letter: np.array([[c == "#" for c in row] for row in rows]) for letter, rows in GLYPHS.items()}
    assert all(b.shape == (5, 3) and set("".join(GLYPHS[k])) <= {"#", "."} for k, b in bitmaps.items())
    for a, b in itertools.combinations(bitmaps, 2):
        assert (bitmaps[a] != bitmaps[b]).sum() >= 3, (a, b)
    assert len(WORDS) == len(set(WORDS)) == 100
    assert all(len(w) == 3 and set(w) <= set(ALPHABET) for w in WORDS)


def test_render_is_deterministic_per_seed_and_jittered_across_seeds():
    for text in (
        "a red circle",
        "three green triangles",
        "a red circle above a blue square",
        "a sign that says 'cat'",
    ):
        image = render(text, seed=4)
        assert image.shape == (32, 32, 3) and image.dtype == np.uint8
        assert np.array_equal(image, render(parse_prompt(text), seed=4))
        assert np.array_equal(image, render(text, seed=np.random.default_rng(4)))
        assert len({render(text, seed=s).tobytes() for s in range(6)}) > 1, text
        assert (image[0] == 255).all() and (image[-1] == 255).all()  # white background, objects inside


def test_render_draws_the_named_colours_and_black_text():
    image = render("a red circle left of a blue square", seed=0)
    colours = {tuple(p) for p in image.reshape(-1, 3)}
    assert colours == {(255, 255, 255), COLOURS["red"], COLOURS["blue"]}
    red = np.argwhere((image == COLOURS["red"]).all(-1))
    blue = np.argwhere((image == COLOURS["blue"]).all(-1))
    assert red[:, 1].max() < blue[:, 1].min()  # red on the left
    square = np.ptp(blue[:, 0]) + 1, np.ptp(blue[:, 1]) + 1
    assert square[0] * square[1] == len(blue)  # an axis-aligned filled square
    text = render("a sign that says 'cat'", seed=0)
    assert {tuple(p) for p in text.reshape(-1, 3)} == {(255, 255, 255), (0, 0, 0)}
    count = render("three yellow squares", seed=0)
    assert (count == COLOURS["yellow"]).all(-1).sum() == 3 * 8 * 8


def test_render_scales_and_rejects_bad_arguments():
    big = render("two purple circles", seed=1, size=64)
    assert big.shape == (64, 64, 3)
    assert checker.check(big, "two purple circles") == {"colour": True, "shape": True, "count": True}
    assert checker.read_sign(render("a sign that says 'toe'", size=64)) == "toe"
    with pytest.raises(ValueError, match="at least 32"):
        render("a red circle", size=16)
    with pytest.raises(ValueError, match="seed"):
        render("a red circle", seed="zero")
    with pytest.raises(ValueError, match="'a red circel'"):
        render("a red circel")


@pytest.mark.parametrize("module", [world, checker], ids=["world", "checker"])
def test_docstring_examples_run(module):
    examples = run_docstring_examples(module)
    assert examples >= 10 if module is world else examples >= 4
