"""The `ocr` metric: text-rendering accuracy (character, word, sentence) against the text a prompt quotes."""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import logging
import re

import numpy as np
from tqdm.auto import tqdm

from encoder_shrink.errors import BackendUnavailableError, InvalidArgumentError
from encoder_shrink.evaluation.metrics import register_metric, to_uint8

logger = logging.getLogger(__name__)

# The text a prompt asks to render: between straight or curly quotes, a single quote opening only where no letter
# precedes it and closing only where none follows, so "that's" inside 'that's weird' (CommonText has such targets)
# does not end the quote and "a dog's sign" does not open one; the same for curly single quotes (U+2019 is also the
# curly apostrophe).
_QUOTED = re.compile(r"""(?<!\w)'(.+?)'(?!\w)|"(.+?)"|\u201c(.+?)\u201d|(?<!\w)\u2018(.+?)\u2019(?!\w)""")
_INSTALL = "pip install 'encoder-shrink[eval]' (rapidocr-onnxruntime: its PP-OCRv4 models ship inside the wheel)"


@dataclasses.dataclass
class OCRMetricConfig:
    r"""
    Configures the `ocr` metric: the text each prompt asks for (between quotes, CommonText style) read back from its
    image with RapidOCR (PP-OCRv4 detection and recognition, ONNX Runtime; `read_text`).

    Args:
        min_side: images whose shorter side is below this many pixels are enlarged to it before text detection (the
            package's default, 736, enlarges every 512 px image; 256 reads 12-40 px text as well here at a fifth of
            the time).
        text_score: recognitions below this confidence (0-1) are dropped, as RapidOCR does by default.

    Example:

    ```python
    >>> OCRMetricConfig(min_side=16)
    Traceback (most recent call last):
    ...
    encoder_shrink.errors.InvalidArgumentError: OCRMetricConfig(min_side=16): pass min_side >= 32 (px).
    ```
    """

    min_side: int = 256
    text_score: float = 0.5

    def __post_init__(self):
        if not isinstance(self.min_side, int) or self.min_side < 32:
            raise InvalidArgumentError(
                f"OCRMetricConfig(min_side={self.min_side!r}): pass min_side >= 32 (px)."
            )
        if not 0 <= self.text_score < 1:
            raise InvalidArgumentError(
                f"OCRMetricConfig(text_score={self.text_score!r}): a confidence threshold is in [0, 1)."
            )


def _unavailable() -> str | None:
    if importlib.util.find_spec("rapidocr_onnxruntime") is None:
        return f"rapidocr-onnxruntime is not installed; {_INSTALL}."
    return None


@functools.cache
def _engine(min_side: int, text_score: float):
    reason = _unavailable()
    if reason:
        raise BackendUnavailableError(f"read_text needs an OCR engine: {reason}")
    from rapidocr_onnxruntime import RapidOCR

    # "min": enlarge only images smaller than min_side; larger ones are read at their own size (up to RapidOCR's
    # 2000 px cap). The 180-degree classifier is off: generated text is upright, and it costs a third of the time.
    return RapidOCR(det_limit_type="min", det_limit_side_len=min_side, text_score=text_score, use_cls=False)


def read_text(image, min_side: int = 256, text_score: float = 0.5) -> str:
    r"""
    The text in `image` (a PIL image, or an H x W x 3 / H x W array: uint8, or float in [0, 1]), read by RapidOCR's
    PP-OCRv4 models: its lines top to bottom, each left to right, joined by single spaces; `""` when none is found.

    Example:

    ```python
    >>> from PIL import Image, ImageDraw, ImageFont
    >>> image = Image.new("RGB", (256, 96), "white")
    >>> ImageDraw.Draw(image).text((20, 30), "community", fill="black", font=ImageFont.load_default(size=28))
    >>> read_text(image)
    'community'
    ```
    """
    from PIL import Image

    if not isinstance(image, Image.Image):
        array = to_uint8(image)
        if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (1, 3, 4)):
            raise InvalidArgumentError(
                f"read_text takes one image (H x W or H x W x 3), got an array of shape {array.shape}."
            )
        image = Image.fromarray(array.squeeze(-1) if array.ndim == 3 and array.shape[-1] == 1 else array)
    lines, _ = _engine(min_side, text_score)(image.convert("RGB"))
    return " ".join(line[1].strip() for line in lines or []).strip()


def quoted_text(prompt: str) -> str | None:
    r"""
    The text `prompt` asks to render: what stands between quotes (several quoted parts joined by spaces), or `None`.

    Example:

    ```python
    >>> quoted_text("An activist carrying a banner with words 'that's weird'.")
    "that's weird"
    >>> quoted_text("a red circle") is None
    True
    ```
    """
    parts = [next(g for g in match.groups() if g is not None) for match in _QUOTED.finditer(prompt)]
    return " ".join(parts) if parts else None


def _normalize(text: str) -> list[str]:
    """Case-folded words of `text`, punctuation dropped ("That's" -> "thats"): OCR is judged on what it spells."""
    return "".join(c for c in text.casefold() if c.isalnum() or c.isspace()).split()


def _edit_distance(a: str, b: str, substring: bool = False) -> int:
    """Levenshtein distance from `a` to `b`, or with `substring` to the closest substring of `b` (Sellers, 1980)."""
    previous = [0] * (len(b) + 1) if substring else list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return min(previous) if substring else previous[-1]


def text_accuracy(target: str, read: str) -> dict[str, float]:
    r"""
    How well `read` (OCR output) renders `target`, at three levels; both are case-folded and stripped of punctuation.

    - `char`: 1 - (edit distance from the target's characters to the closest run of the read characters) / (the
      target's length), at least 0; spaces are not drawn glyphs, so they are left out, and text read elsewhere in the
      image costs nothing at this level.
    - `word`: the fraction of the target's words that are among the words read (each read word matches once).
    - `sentence`: 1 if the target's words are read consecutively and in order, else 0. So a sentence read right has
      every word right; words read run together ("iremember") miss at both levels, not at `char`.

    The paper (arXiv 2503.19897) reports these three levels on CommonText without publishing their formulas or an
    evaluation script; these are the definitions used here.

    Example:

    ```python
    >>> text_accuracy("i remember", "I REMEMBER!")
    {'char': 1.0, 'word': 1.0, 'sentence': 1.0}
    >>> text_accuracy("i remember", "remember i")
    {'char': 0.8888888888888888, 'word': 1.0, 'sentence': 0.0}
    >>> text_accuracy("community", "comunity")
    {'char': 0.8888888888888888, 'word': 0.0, 'sentence': 0.0}
    ```
    """
    target_words, read_words = _normalize(target), _normalize(read)
    if not target_words:
        raise InvalidArgumentError(
            f"text_accuracy: the target {target!r} has no letters or digits to read; pass the text to render."
        )
    glyphs = "".join(target_words)
    char = max(0.0, 1 - _edit_distance(glyphs, "".join(read_words), substring=True) / len(glyphs))
    pool = list(read_words)
    found = 0
    for word in target_words:
        if word in pool:
            pool.remove(word)
            found += 1
    n = len(target_words)
    sentence = any(read_words[i:i + n] == target_words for i in range(len(read_words) - n + 1))
    return {"char": char, "word": found / len(target_words), "sentence": float(sentence)}


def _scored(prompts: list[str]) -> tuple[list[str | None], list[int]]:
    """Each prompt's quoted text, and the indices of the prompts whose quoted text has something to read."""
    targets = [quoted_text(p) for p in prompts]
    return targets, [i for i, t in enumerate(targets) if t is not None and _normalize(t)]


def _validate_ocr(config: OCRMetricConfig, prompts: list[str]) -> None:
    if not _scored(prompts)[1]:
        raise InvalidArgumentError(
            f"metric 'ocr' scores the text a prompt quotes (\"... a sign that says 'hello'\"); none of the "
            f"{len(prompts)} prompts quotes any; use CommonText prompts (encoder_shrink.data.generate_commontext)."
        )


def _score_ocr(config: OCRMetricConfig, images: np.ndarray, prompts: list[str]) -> dict:
    targets, scored = _scored(prompts)
    readings, levels = [], {"char": [], "word": [], "sentence": []}
    for i in tqdm(scored, desc="ocr", unit="image", leave=False):
        read = read_text(images[i], config.min_side, config.text_score)
        accuracy = text_accuracy(targets[i], read)
        for level, value in accuracy.items():
            levels[level].append(value)
        readings.append({"prompt": prompts[i], "target": targets[i], "read": read, **accuracy})
    result = {level: float(np.mean(values)) for level, values in levels.items()}
    return {**result, "prompts": len(scored), "without_quoted_text": len(prompts) - len(scored), "readings": readings}


register_metric(
    "ocr", OCRMetricConfig, _score_ocr, headline=("char", "word", "sentence"), unavailable=_unavailable,
    validate=_validate_ocr,
    description="text rendering: OCR accuracy of the quoted text at character, word and sentence level (RapidOCR)",
)

__all__ = ["OCRMetricConfig", "quoted_text", "read_text", "text_accuracy"]
