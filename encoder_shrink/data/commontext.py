"""CommonText-style text-rendering prompts: "{subject} {action} '{text}'", generated deterministically, or read."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np

from encoder_shrink.data.readers import PromptFileError, _read_text
from encoder_shrink.data.sources import register_prompt_source
from encoder_shrink.errors import InvalidArgumentError

# Size of a generated CommonText set: the paper's 50 k training prompts (1 k for validation).
COMMONTEXT_SIZES = {"train": 50_000, "val": 1_000}

HUMANS = (
    "man", "woman", "boy", "girl", "child", "chef", "doctor", "nurse", "teacher", "student", "farmer", "pilot",
    "astronaut", "scientist", "engineer", "painter", "musician", "singer", "dancer", "athlete", "runner", "cyclist",
    "swimmer", "skater", "surfer", "climber", "explorer", "photographer", "journalist", "writer", "poet", "lawyer",
    "judge", "politician", "activist", "architect", "sculptor", "magician", "traveler", "firefighter", "waiter",
    "baker", "mechanic", "gardener", "fisherman", "soldier", "king", "queen", "wizard", "pirate",
)
ANIMALS = (
    "cat", "dog", "horse", "cow", "pig", "sheep", "goat", "rabbit", "squirrel", "fox", "wolf", "bear", "panda",
    "lion", "tiger", "elephant", "giraffe", "zebra", "monkey", "gorilla", "kangaroo", "koala", "penguin", "owl",
    "parrot", "duck", "frog", "turtle", "raccoon", "hedgehog", "deer", "camel", "llama", "unicorn", "dragon", "robot",
)
OBJECTS = (
    "t-shirt", "book", "car", "bus", "truck", "laptop screen", "phone screen", "mug", "bottle", "box", "bag", "cap",
    "wall", "door", "storefront", "billboard", "street sign", "flag", "cake", "chalkboard", "whiteboard",
    "notebook", "envelope", "poster", "neon sign", "boat", "train", "kite", "tree trunk", "rock", "mailbox",
)
# Actions that fit someone or something that can hold or show a sign.
HOLDING_ACTIONS = (
    "holding a sign that says", "holding a sign reading", "carrying a banner with the words",
    "displaying a placard saying", "presenting a board that says", "waving a poster stating",
    "pointing at a sign that reads", "wearing a t-shirt that says", "standing next to a sign reading",
)
# Actions that fit an object the text is written on.
WRITTEN_ACTIONS = (
    "with the inscription", "with the word", "displaying the word", "printed with the text", "labeled",
    "with a sticker that says",
)
PHRASES = (
    "thank you", "good morning", "good night", "happy birthday", "welcome home", "open now", "closed today",
    "see you soon", "stay calm", "keep going", "be kind", "dream big", "think twice", "take care", "well done",
    "no parking", "exit only", "push here", "hello world", "i love you", "good luck", "let it be", "just do it",
    "free coffee", "best friends", "fresh bread", "for sale", "sold out", "do not enter", "watch your step",
    "happy new year", "merry christmas", "good job", "try again", "nice to meet you", "where are you",
    "call me", "come in", "stay home", "save water", "love wins", "never give up", "one way", "slow down",
    "wet paint", "on air", "game over", "the end", "big sale", "lost dog", "fast food", "art gallery",
)
# Words of the text come from the most frequent English words, as in the paper; 1 in 20 is held out for validation.
TOP_WORDS = 5000
VALIDATION_EVERY = 20


@lru_cache(maxsize=1)
def frequent_words(n: int = TOP_WORDS) -> tuple[str, ...]:
    """The `n` most frequent English words (wordfreq), alphabetic and at least two letters long."""
    from wordfreq import top_n_list

    words = [w for w in top_n_list("en", 2 * n) if w.isascii() and w.isalpha() and len(w) > 1]
    return tuple(words[:n])


def _texts(split: str) -> list[str]:
    words = frequent_words()
    if split == "train":
        return [w for i, w in enumerate(words) if i % VALIDATION_EVERY] + list(PHRASES[:-5])
    if split == "val":
        return [w for i, w in enumerate(words) if not i % VALIDATION_EVERY] + list(PHRASES[-5:])
    raise InvalidArgumentError(f"split must be 'train' or 'val', got {split!r}.")


def _article(noun: str) -> str:
    return "An" if noun[0] in "aeiou" else "A"


def generate_commontext(n: int, split: str = "train", seed: int = 0) -> list[str]:
    r"""
    `n` CommonText-style prompts ("A chef holding a sign that says 'garden'."): subjects are humans, animals and
    common objects, each with an action that fits it; the text is one of the most frequent English words or a
    short phrase. Deterministic by `seed`; train and validation prompts use disjoint texts.

    Example:

    ```python
    >>> generate_commontext(2, seed=0)
    ["A monkey carrying a banner with the words 'authority'.", "A boy holding a sign reading 'blocked'."]
    ```
    """
    if n <= 0:
        raise InvalidArgumentError(f"n must be positive, got {n!r}.")
    texts = _texts(split)
    rng = np.random.default_rng([seed, 0 if split == "train" else 1])
    prompts = []
    for _ in range(n):
        kind = rng.choice(3, p=[0.45, 0.4, 0.15])  # CommonText leans on people and animals holding signs
        subjects = (HUMANS, ANIMALS, OBJECTS)[kind]
        subject = subjects[rng.integers(len(subjects))]
        actions = WRITTEN_ACTIONS if subjects is OBJECTS else HOLDING_ACTIONS
        action = actions[rng.integers(len(actions))]
        text = texts[rng.integers(len(texts))]
        prompts.append(f"{_article(subject)} {subject} {action} '{text}'.")
    return prompts


def read_commontext(path: str | Path, limit: int | None = None) -> list[str]:
    """Prompts of a CommonText json file (a JSON list of strings, as `CommonText_Train.json`)."""
    path = Path(path)
    try:
        data = json.loads(_read_text(path))
    except json.JSONDecodeError as error:
        raise PromptFileError(f"{path} is not valid JSON ({error.msg} at line {error.lineno}).") from None
    if not isinstance(data, list) or not all(isinstance(p, str) for p in data):
        raise PromptFileError(f"{path} must hold a JSON list of prompt strings.")
    prompts = [p.strip() for p in data if p.strip()]
    if not prompts:
        raise PromptFileError(f"{path} holds no prompts.")
    return prompts[:limit] if limit else prompts


def _commontext_source(source, path, seed: int) -> list[str]:
    """A CommonText json file when one is given, else generated prompts (the paper's 50 k / 1 k sizes)."""
    if path is None:
        return generate_commontext(source.limit or COMMONTEXT_SIZES[source.split], source.split, seed)
    return read_commontext(path, source.limit)


register_prompt_source("commontext", _commontext_source)
