"""The ocr metric: read_text on text PIL draws in known strings, fonts and sizes; accuracy at three levels."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from encoder_shrink import EncoderShrinkError
from encoder_shrink.data import generate_commontext
from encoder_shrink.evaluation import OCRMetricConfig, quoted_text, read_text, score_images, text_accuracy

needs_ocr = pytest.mark.skipif(importlib.util.find_spec("rapidocr_onnxruntime") is None,
                               reason="reading text needs encoder-shrink[eval] (rapidocr-onnxruntime)")

DEJAVU = Path("/usr/share/fonts/truetype/dejavu/DejaVuSerif-Bold.ttf")


def _font(name: str, size: int):
    from PIL import ImageFont

    if name == "pillow":
        return ImageFont.load_default(size=size)  # Pillow's own (Aileron), there wherever Pillow is
    if not DEJAVU.is_file():
        pytest.skip(f"{DEJAVU} is not installed")
    return ImageFont.truetype(str(DEJAVU), size)


def _sign(text: str, font, size=(256, 128), background=(205, 220, 240)) -> np.ndarray:
    """`text` centred in dark ink on a light board, as a text-to-image model would draw a sign."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", size, background)
    draw = ImageDraw.Draw(image)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    draw.text(((size[0] - right + left) // 2 - left, (size[1] - bottom + top) // 2 - top), text, fill=(25, 25, 25),
              font=font)
    return np.asarray(image)


@pytest.fixture(scope="module")
def words() -> list[str]:
    # CommonText's own generator: frequent English words and short phrases, as its prompts quote them.
    return [quoted_text(p) for p in generate_commontext(10, split="val", seed=3)]


@pytest.mark.slow
@needs_ocr
@pytest.mark.parametrize("font", ["pillow", "dejavu-serif"])
def test_clean_text_is_read_and_noise_defeats_it(words, font):
    rng = np.random.default_rng(0)
    for size in (14, 28):
        clean = [_sign(w, _font(font, size)) for w in words]
        read = [read_text(image) for image in clean]
        accuracy = np.mean([text_accuracy(w, r)["word"] for w, r in zip(words, read)])
        assert accuracy >= 0.9, list(zip(words, read))
        # Gaussian noise of std 120 (of 255) buries the strokes: the same words are (almost) never read.
        noisy = [np.clip(i + rng.normal(0, 120, i.shape), 0, 255).astype(np.uint8) for i in clean]
        noisy_accuracy = np.mean([text_accuracy(w, read_text(i))["word"] for w, i in zip(words, noisy)])
        assert noisy_accuracy <= 0.3 and noisy_accuracy < accuracy


@needs_ocr
def test_read_text_takes_pil_images_and_float_arrays():
    from PIL import Image

    image = _sign("profile", _font("pillow", 24))
    assert read_text(Image.fromarray(image)) == read_text(image.astype(np.float32) / 255) == "profile"
    assert read_text(np.full((64, 64, 3), 255, np.uint8)) == ""
    with pytest.raises(EncoderShrinkError, match="one image"):
        read_text(np.zeros((2, 64, 64, 3), np.uint8))


def test_text_accuracy_levels():
    assert text_accuracy("i remember", "I REMEMBER!") == {"char": 1.0, "word": 1.0, "sentence": 1.0}
    # every word, in the wrong order: word level right, sentence wrong
    assert text_accuracy("i remember", "remember i") == {"char": pytest.approx(8 / 9), "word": 1.0, "sentence": 0.0}
    # one letter dropped: 8 of 9 characters, the word missed
    assert text_accuracy("community", "comunity") == {"char": pytest.approx(8 / 9), "word": 0.0, "sentence": 0.0}
    # text elsewhere in the image costs nothing; nothing read scores 0
    assert text_accuracy("cat", "SALE cat 50") == {"char": 1.0, "word": 1.0, "sentence": 1.0}
    assert text_accuracy("cat", "") == {"char": 0.0, "word": 0.0, "sentence": 0.0}
    assert quoted_text("An activist carrying a banner with words 'that's weird'.") == "that's weird"
    assert quoted_text('a poster saying "open" and \u201cclosed\u201d') == "open closed"
    assert quoted_text("a banner \u2018that\u2019s weird\u2019, a dog\u2019s bowl") == "that\u2019s weird"
    assert quoted_text("a dog's bowl") is None


@needs_ocr
def test_score_images_on_commontext_prompts(shared_data):
    prompts = json.loads((shared_data / "CommonText_Test.json").read_text())[:8]
    font = _font("pillow", 24)
    images = [_sign(quoted_text(p), font) for p in prompts]
    images[0] = _sign("wrong", font)  # one image renders another word
    prompts = prompts + ["a red circle"]  # quotes nothing: not scored at all
    images.append(images[1])
    result = score_images(np.stack(images), prompts, "ocr")
    assert result["prompts"] == 8 and result["without_quoted_text"] == 1
    assert result["readings"][0]["read"] == "wrong" and result["readings"][0]["word"] == 0.0
    assert result["sentence"] == pytest.approx(7 / 8) and result["word"] == pytest.approx(7 / 8)
    assert 0.5 < result["char"] < 1.0
    with pytest.raises(EncoderShrinkError, match="none of the 1 prompts quotes any"):
        score_images(np.stack(images[:1]), ["a red circle"], "ocr")
    with pytest.raises(EncoderShrinkError, match="min_side >= 32"):
        OCRMetricConfig(min_side=8)
