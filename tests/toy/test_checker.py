"""encoder_shrink.toy.checker: passes every rendered prompt, clean or mildly degraded, and rejects wrong images."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageFilter

from encoder_shrink.toy.checker import check, read_sign, score
from encoder_shrink.toy.world import KINDS, WORDS, all_prompts, parse_prompt, render


def degrade(image: np.ndarray, rng: np.random.Generator, radius: float = 0.6, std: float = 8.0) -> np.ndarray:
    """A stand-in for a generative model's output: Gaussian blur, then Gaussian pixel noise."""
    blurred = np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(radius)), dtype=np.float64)
    return np.clip(blurred + rng.normal(0.0, std, blurred.shape), 0, 255).round().astype(np.uint8)


@pytest.mark.slow
def test_every_clean_render_passes_every_attribute():
    failures = []
    for prompt in all_prompts():
        for seed in (0, 1):
            result = check(render(prompt, seed=seed), prompt)
            assert tuple(result) == prompt.attributes
            if not all(result.values()):
                failures.append((prompt.text, seed, result))
    assert not failures, failures[:5]


@pytest.mark.slow
def test_degraded_renders_pass_at_least_99_percent():
    rng = np.random.default_rng(0)
    prompts = all_prompts()
    images = [degrade(render(prompt, seed=seed), rng) for seed, prompt in enumerate(prompts)]
    result = score(images, prompts)
    assert result["prompts"] == len(prompts)
    assert result["overall"] >= 0.99, result
    for kind in KINDS:
        assert result["by_kind"][kind]["overall"] >= 0.98, (kind, result["by_kind"])


def test_wrong_colour_shape_count_position_and_text_are_rejected():
    red_circle = render("a red circle", seed=2)
    assert check(red_circle, "a red circle") == {"colour": True, "shape": True}
    assert check(red_circle, "a blue circle") == {"colour": False, "shape": True}
    assert check(red_circle, "a red square") == {"colour": True, "shape": False}
    assert check(red_circle, "a red triangle")["shape"] is False
    assert check(render("a green triangle", seed=2), "a green circle")["shape"] is False
    two = render("two red circles", seed=2)
    assert check(two, "three red circles") == {"colour": True, "shape": True, "count": False}
    assert check(render("three red circles", seed=2), "two red circles")["count"] is False
    assert check(render("two red squares", seed=2), "two blue squares")["colour"] is False
    relation = render("a red circle left of a blue square", seed=2)
    assert check(relation, "a red circle left of a blue square") == {"colour": True, "shape": True, "position": True}
    assert check(relation, "a red circle right of a blue square")["position"] is False
    assert check(relation, "a blue square left of a red circle")["position"] is False
    assert check(relation, "a red circle above a blue square")["position"] is False
    assert check(relation, "a red circle left of a green square")["colour"] is False
    assert check(relation, "a red square left of a blue circle")["shape"] is False
    # Same colour, told apart by shape only: swapping the shapes swaps the sides.
    same_colour = render("a red circle above a red square", seed=2)
    assert check(same_colour, "a red circle above a red square")["position"] is True
    assert check(same_colour, "a red square above a red circle")["position"] is False
    assert check(render("a sign that says 'cat'", seed=2), "a sign that says 'cap'") == {"text": False}


def test_a_blank_image_fails_every_attribute():
    blank = np.full((32, 32, 3), 255, dtype=np.uint8)
    for text in ("a red circle", "two blue squares", "a red circle left of a blue square", "a sign that says 'cat'"):
        result = check(blank, text)
        assert result and not any(result.values()), (text, result)
    assert read_sign(blank) == "???"


def test_extra_or_missing_objects_are_caught():
    pair = render("a red circle above a blue square", seed=0)
    assert check(pair, "a red circle") == {"colour": False, "shape": True}  # an extra blue object
    assert check(pair, "two red circles") == {"colour": False, "shape": True, "count": True}
    spatial = render("a red circle left of a blue square", seed=0)
    left_only = spatial.copy()
    left_only[:, 16:] = 255
    result = check(left_only, "a red circle left of a blue square")
    assert result == {"colour": False, "shape": False, "position": False}


def test_read_sign_reads_every_word_and_rejects_off_grid_text():
    for seed, word in enumerate(WORDS):
        assert read_sign(render(f"a sign that says '{word}'", seed=seed)) == word
    shifted = np.full((32, 32, 3), 255, dtype=np.uint8)
    shifted[:, :28] = render("a sign that says 'cat'", seed=0)[:, 4:]  # half a cell to the left
    assert read_sign(shifted) != "cat"
    assert read_sign(render("a red circle", seed=0)) == "???"


def test_score_aggregates_per_category_kind_and_overall():
    images = [
        render("a red circle", seed=0),  # all right
        render("a blue circle", seed=0),  # colour wrong
        render("three green squares", seed=0),  # count wrong
        render("a red circle left of a blue square", seed=0),  # all right
        render("a sign that says 'cat'", seed=0),  # text wrong
    ]
    prompts = [
        "a red circle",
        parse_prompt("a red circle"),
        "two green squares",
        "a red circle left of a blue square",
        "a sign that says 'cap'",
    ]
    result = score(images, prompts)
    assert result["colour"] == pytest.approx(3 / 4)
    assert result["shape"] == 1.0
    assert result["count"] == 0.0
    assert result["position"] == 1.0
    assert result["text"] == 0.0
    assert result["overall"] == pytest.approx(2 / 5)
    assert result["prompts"] == 5
    assert result["by_kind"] == {
        "single": {"overall": 0.5, "prompts": 2},
        "count": {"overall": 0.0, "prompts": 1},
        "spatial": {"overall": 1.0, "prompts": 1},
        "text": {"overall": 0.0, "prompts": 1},
    }
    assert set(score([images[0]], ["a red circle"])) == {"colour", "shape", "overall", "prompts", "by_kind"}


def test_inputs_are_validated_and_common_formats_accepted():
    image = render("two cyan triangles", seed=3)
    expected = {"colour": True, "shape": True, "count": True}
    assert check(image.astype(np.float32) / 255.0, "two cyan triangles") == expected
    assert check(Image.fromarray(image), "two cyan triangles") == expected
    with pytest.raises(ValueError, match="shape"):
        check(image[..., :2], "two cyan triangles")
    with pytest.raises(ValueError, match="smaller"):
        check(image[:16, :16], "two cyan triangles")
    with pytest.raises(ValueError, match="dtype"):
        check(image.astype(np.int64), "two cyan triangles")
    with pytest.raises(ValueError, match="'two cyan hexagons'"):
        check(image, "two cyan hexagons")
    with pytest.raises(ValueError, match="2 images for 1 prompts"):
        score([image, image], ["two cyan triangles"])


def test_checker_is_deterministic():
    rng = np.random.default_rng(1)
    text = "a yellow triangle below a purple circle"
    image = degrade(render(text, seed=7), rng)
    assert check(image, text) == check(image.copy(), text) == {"colour": True, "shape": True, "position": True}
