"""The toy text-to-image world: its vocabulary, prompt grammar, train/held-out split and scene renderer."""

from __future__ import annotations

import hashlib
import itertools
import re
from dataclasses import dataclass
from functools import cache, lru_cache

import numpy as np

from encoder_shrink.errors import InvalidArgumentError

# Images are tiny so that a small model can learn to draw them; every layout below is given at this size and scales.
IMAGE_SIZE = 32
# Sizes below this squeeze the 3-glyph text block and the 8 px count objects into touching each other.
MIN_IMAGE_SIZE = 32

# Hues 47-80 degrees apart and saturated (chroma >= 140 of 255), so blur toward white or noise leaves each one
# nearest its own hue; none is close to white, black or grey.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "yellow": (230, 210, 0),
    "green": (30, 170, 30),
    "cyan": (0, 190, 200),
    "blue": (30, 60, 220),
    "purple": (150, 30, 210),
}
SHAPES = ("circle", "square", "triangle")
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles"}
NUMBERS = {2: "two", 3: "three"}
RELATIONS = ("left of", "right of", "above", "below")
KINDS = ("single", "count", "spatial", "text")
# The checker's categories, in the fixed order `ToyPrompt.attributes` lists them.
ATTRIBUTES = ("colour", "shape", "count", "position", "text")
KIND_ATTRIBUTES = {
    "single": ("colour", "shape"),
    "count": ("colour", "shape", "count"),
    "spatial": ("colour", "shape", "position"),
    "text": ("text",),
}

# 3 wide x 5 tall bitmaps, lowercase where 3x5 allows; every pair differs in at least 3 of the 15 cells (and their
# correlation is at most 0.62) so that nearest-template reading survives blur and noise.
GLYPHS: dict[str, list[str]] = {
    "a": [".#.", "#.#", "###", "#.#", "#.#"],
    "c": ["...", "###", "#..", "#..", "###"],
    "d": ["..#", "..#", "###", "#.#", "###"],
    "e": ["###", "#..", "###", "#..", "###"],
    "i": [".#.", "...", ".#.", ".#.", ".#."],
    "n": ["...", "##.", "#.#", "#.#", "#.#"],
    "o": ["###", "#.#", "#.#", "#.#", "###"],
    "p": ["###", "#.#", "###", "#..", "#.."],
    "r": ["...", "#.#", "##.", "#..", "#.."],
    "s": [".##", "#..", ".#.", "..#", "##."],
    "t": [".#.", "###", ".#.", ".#.", ".##"],
    "u": ["...", "#.#", "#.#", "#.#", "###"],
}
ALPHABET = tuple(sorted(GLYPHS))
# The length of every sign's text: three glyph cells fill the 32 px image width at 2x scale.
TEXT_LENGTH = 3
# The 100 most frequent English words (wordfreq's list, in its order) spelled from ALPHABET alone, less acronyms,
# names and abbreviations. A fifth of them are held out: they are how text rendering is evaluated.
WORDS = (
    "and", "are", "not", "one", "can", "out", "its", "our", "see", "did", "too", "use", "end", "put", "set", "top",
    "run", "car", "per", "air", "due", "red", "act", "art", "son", "cut", "eat", "cup", "add", "die", "sea", "sir",
    "ten", "ice", "sun", "dad", "sit", "pop", "ran", "sad", "cat", "nor", "net", "aid", "tea", "era", "sat", "tip",
    "cap", "tie", "rid", "pet", "ear", "odd", "pot", "pan", "pen", "cop", "ate", "ton", "pin", "tap", "pit", "rip",
    "pat", "arc", "pie", "rat", "rod", "rap", "ace", "ore", "duo", "inn", "toe", "dip", "dot", "nut", "tin", "den",
    "pad", "tan", "spa", "cod", "ant", "nap", "tee", "nod", "pod", "rot", "apt", "sip", "nun", "pup", "tar", "sap",
    "pun", "pea", "ape", "ode",
)
TEXT_PREFIX = "a sign that says"
# The fraction of each kind's prompts held out of training; for the text kind, the fraction of WORDS (every other
# three-glyph string is trained on, so each letter is seen in each cell and held-out words test composition).
HELDOUT_FRACTION = 0.2
# Shown in the error for a prompt outside the grammar: one example of each kind.
EXAMPLE_PROMPTS = (
    "'a red circle', 'two blue squares', 'a red circle left of a blue square' or \"a sign that says 'cat'\""
)


@dataclass(frozen=True)
class ToyObject:
    r"""
    One object of a toy scene: a named colour and a shape.

    Example:

    ```python
    >>> ToyObject("red", "circle")
    ToyObject(colour='red', shape='circle')
    ```
    """

    colour: str
    shape: str

    def __post_init__(self):
        if self.colour not in COLOURS:
            raise InvalidArgumentError(f"ToyObject: unknown colour {self.colour!r}; use one of {', '.join(COLOURS)}.")
        if self.shape not in SHAPES:
            raise InvalidArgumentError(f"ToyObject: unknown shape {self.shape!r}; use one of {', '.join(SHAPES)}.")

    @property
    def text(self) -> str:
        """The object as prompts name it, e.g. `"red circle"`."""
        return f"{self.colour} {self.shape}"


@dataclass(frozen=True)
class ToyPrompt:
    r"""
    A prompt of the toy grammar, in one of four kinds (the checker's categories in brackets):

    - `"single"`: "a red circle" (colour, shape);
    - `"count"`: "two blue squares", "three green triangles" (colour, shape, count), `count` copies of `objects[0]`;
    - `"spatial"`: "a red circle left of a blue square" (colour, shape, position), relation one of `RELATIONS`;
    - `"text"`: "a sign that says 'cat'" (text), `word` any `TEXT_LENGTH` letters of `ALPHABET` (a sign may say
      'tnc' as well as 'cat'; the English `WORDS` are what held-out prompts are drawn from).

    Example:

    ```python
    >>> p = ToyPrompt("spatial", (ToyObject("red", "circle"), ToyObject("blue", "square")), relation="above")
    >>> p.text, p.attributes
    ('a red circle above a blue square', ('colour', 'shape', 'position'))
    ```
    """

    kind: str
    objects: tuple[ToyObject, ...] = ()
    count: int = 1
    relation: str | None = None
    word: str | None = None

    def __post_init__(self):
        object.__setattr__(self, "objects", tuple(self.objects))
        if self.kind not in KINDS:
            raise InvalidArgumentError(f"ToyPrompt: unknown kind {self.kind!r}; use one of {', '.join(KINDS)}.")
        expected = {"single": 1, "count": 1, "spatial": 2, "text": 0}[self.kind]
        if len(self.objects) != expected or not all(isinstance(o, ToyObject) for o in self.objects):
            raise InvalidArgumentError(
                f"ToyPrompt: a {self.kind!r} prompt takes {expected} ToyObject(s), got {self.objects!r}."
            )
        counts = tuple(NUMBERS) if self.kind == "count" else (1,)
        if self.count not in counts:
            raise InvalidArgumentError(f"ToyPrompt: a {self.kind!r} prompt has count in {counts}, got {self.count!r}.")
        if (self.relation is not None) != (self.kind == "spatial") or self.relation not in RELATIONS + (None,):
            raise InvalidArgumentError(
                f"ToyPrompt: relation {self.relation!r} is wrong for a {self.kind!r} prompt; spatial prompts take "
                f"one of {RELATIONS}, others None."
            )
        if self.kind == "spatial" and self.objects[0] == self.objects[1]:
            raise InvalidArgumentError(
                "ToyPrompt: the two objects of a spatial prompt must differ in colour or shape, got "
                f"{self.objects[0].text!r} twice."
            )
        if (self.word is not None) != (self.kind == "text") or (self.word is not None and not _spellable(self.word)):
            raise InvalidArgumentError(
                f"ToyPrompt: word {self.word!r} is wrong for a {self.kind!r} prompt; text prompts take {TEXT_LENGTH} "
                f"letters of {''.join(ALPHABET)!r} (e.g. 'cat'), others None."
            )

    @property
    def text(self) -> str:
        """The canonical prompt string, e.g. `"two blue squares"`; `parse_prompt` inverts it."""
        if self.kind == "single":
            return f"a {self.objects[0].text}"
        if self.kind == "count":
            obj = self.objects[0]
            return f"{NUMBERS[self.count]} {obj.colour} {PLURALS[obj.shape]}"
        if self.kind == "spatial":
            return f"a {self.objects[0].text} {self.relation} a {self.objects[1].text}"
        return f"{TEXT_PREFIX} '{self.word}'"

    @property
    def attributes(self) -> tuple[str, ...]:
        """The categories this prompt tests, in the order of `ATTRIBUTES`."""
        return KIND_ATTRIBUTES[self.kind]


def _spellable(word) -> bool:
    return isinstance(word, str) and len(word) == TEXT_LENGTH and set(word) <= set(ALPHABET)


def _objects() -> list[ToyObject]:
    return [ToyObject(colour, shape) for colour in COLOURS for shape in SHAPES]


@cache
def _all_prompts(kind: str) -> tuple[ToyPrompt, ...]:
    if kind == "single":
        return tuple(ToyPrompt("single", (o,)) for o in _objects())
    if kind == "count":
        return tuple(ToyPrompt("count", (o,), count=n) for n in NUMBERS for o in _objects())
    if kind == "spatial":
        pairs = [(a, b) for a in _objects() for b in _objects() if a != b]
        return tuple(ToyPrompt("spatial", pair, relation=r) for r in RELATIONS for pair in pairs)
    return tuple(ToyPrompt("text", word="".join(w)) for w in itertools.product(ALPHABET, repeat=TEXT_LENGTH))


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise InvalidArgumentError(f"unknown prompt kind {kind!r}; use one of {', '.join(KINDS)} (or None for all).")


def all_prompts(kind: str | None = None) -> list[ToyPrompt]:
    r"""
    Every prompt of the toy grammar (or of one kind), in a fixed order: kinds as in `KINDS`, then relation, colour,
    shape as listed in `RELATIONS`, `COLOURS`, `SHAPES`, and text in alphabetical order of its letters.

    Example:

    ```python
    >>> [len(all_prompts(kind)) for kind in KINDS]
    [18, 36, 1224, 1728]
    >>> all_prompts("count")[0].text
    'two red circles'
    ```
    """
    if kind is not None:
        _check_kind(kind)
        return list(_all_prompts(kind))
    return [p for k in KINDS for p in _all_prompts(k)]


@lru_cache(maxsize=1)
def _canonical() -> dict[str, ToyPrompt]:
    return {p.text: p for p in all_prompts()}


def parse_prompt(text: str) -> ToyPrompt:
    r"""
    The `ToyPrompt` whose canonical text is `text`, ignoring case and runs of whitespace (also inside the quotes, so
    the spelled form "a sign that says ' c a t '" parses too).

    Raises a one-line `ValueError` quoting `text` when it is not a prompt of the grammar.

    Example:

    ```python
    >>> parse_prompt("  Two BLUE   squares ")
    ToyPrompt(kind='count', objects=(ToyObject(colour='blue', shape='square'),), count=2, relation=None, word=None)
    ```
    """
    if not isinstance(text, str):
        raise InvalidArgumentError(
            f"parse_prompt takes a string, got {type(text).__name__}; pass e.g. 'a red circle'."
        )
    normal = " ".join(text.lower().split())
    normal = re.sub(r"'([^']*)'", lambda m: "'" + "".join(m.group(1).split()) + "'", normal)
    prompt = _canonical().get(normal)
    if prompt is not None:
        return prompt
    quoted = re.fullmatch(re.escape(TEXT_PREFIX) + r" '([^']*)'", normal)
    if quoted:
        raise InvalidArgumentError(
            f"prompt {text!r}: the sign's text {quoted.group(1)!r} is not {TEXT_LENGTH} letters of "
            f"{''.join(ALPHABET)!r}; write e.g. \"{TEXT_PREFIX} 'cat'\"."
        )
    raise InvalidArgumentError(f"prompt {text!r} is outside the toy grammar; write e.g. {EXAMPLE_PROMPTS}.")


def _as_prompt(prompt: ToyPrompt | str) -> ToyPrompt:
    return prompt if isinstance(prompt, ToyPrompt) else parse_prompt(prompt)


def _digest(text: str) -> str:
    # sha256, not hash(): Python salts str hashes per process, and the split must be the same everywhere.
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@lru_cache(maxsize=1)
def _heldout_words() -> frozenset[str]:
    ranked = sorted(WORDS, key=_digest)
    return frozenset(ranked[:round(HELDOUT_FRACTION * len(WORDS))])


@cache
def _heldout_texts(kind: str) -> frozenset[str]:
    # Rank by digest and hold out the first 20 % (rounded): the fraction holds for every kind, however few its prompts.
    ranked = sorted((p.text for p in _all_prompts(kind)), key=_digest)
    return frozenset(ranked[:round(HELDOUT_FRACTION * len(ranked))])


def split_of(prompt: ToyPrompt | str) -> str:
    r"""
    `"train"` or `"heldout"`: 20 % of each kind's prompts, chosen by the sha256 of their canonical text, are held out
    (for the text kind, 20 % of `WORDS`; every other string of `TEXT_LENGTH` letters is trained on, so a held-out word
    is a new combination of letters the model has drawn in every cell). The same on every machine.

    Example:

    ```python
    >>> sorted({split_of(p) for p in all_prompts("single")})
    ['heldout', 'train']
    ```
    """
    prompt = _as_prompt(prompt)
    if prompt.kind == "text":
        return "heldout" if prompt.word in _heldout_words() else "train"
    return "heldout" if prompt.text in _heldout_texts(prompt.kind) else "train"


@cache
def _split_pool(kind: str, split: str) -> tuple[ToyPrompt, ...]:
    return tuple(p for p in _all_prompts(kind) if split_of(p) == split)


def sample_prompts(
    n: int, split: str = "train", seed: int = 0, kinds: tuple[str, ...] | list[str] | None = None
) -> list[ToyPrompt]:
    r"""
    `n` prompts of `split`, balanced across `kinds` (round-robin in the order given, default `KINDS`; a kind listed
    twice is drawn twice as often) and drawn at random within a kind: each kind's prompts are shuffled with
    `numpy.random.default_rng(seed)` and used in turn, all before any repeats. The same `seed` gives the same list.

    Example:

    ```python
    >>> [p.kind for p in sample_prompts(5, seed=0)]
    ['single', 'count', 'spatial', 'text', 'single']
    ```
    """
    if split not in ("train", "heldout"):
        raise InvalidArgumentError(f"split must be 'train' or 'heldout', got {split!r}.")
    if not isinstance(n, (int, np.integer)) or n < 0:
        raise InvalidArgumentError(f"n must be a non-negative integer, got {n!r}.")
    kinds = KINDS if kinds is None else (kinds,) if isinstance(kinds, str) else tuple(kinds)
    if not kinds:
        raise InvalidArgumentError("kinds is empty; pass None for all kinds or a subset such as ('single', 'text').")
    for kind in kinds:
        _check_kind(kind)
    rng = np.random.default_rng(seed)
    pools = {kind: _split_pool(kind, split) for kind in dict.fromkeys(kinds)}
    queues: dict[str, list[ToyPrompt]] = {kind: [] for kind in pools}
    prompts = []
    for i in range(n):
        kind = kinds[i % len(kinds)]
        if not queues[kind]:
            pool = pools[kind]
            queues[kind] = [pool[j] for j in rng.permutation(len(pool))]
        prompts.append(queues[kind].pop())
    return prompts


def spell_quoted(text: str | ToyPrompt) -> str:
    r"""
    The tokenizer input of a prompt: each quoted word is spelled out as letters between spaced quotes, so that words
    held out of training are still made of known tokens. Text without quotes is returned unchanged.

    Example:

    ```python
    >>> spell_quoted("a sign that says 'cat'")
    "a sign that says ' c a t '"
    ```
    """
    text = text.text if isinstance(text, ToyPrompt) else text
    return re.sub(r"'([^']*)'", lambda m: " ".join(["'", *m.group(1).replace(" ", ""), "'"]), text)


def vocabulary() -> list[str]:
    r"""
    Every whitespace-separated token of the spelled prompts (`spell_quoted`) of the grammar, plus every letter of
    `ALPHABET`, sorted: what a tokenizer for the toy world needs.

    Example:

    ```python
    >>> words = vocabulary()
    >>> "circle" in words, "triangles" in words, "'" in words, "cat" in words
    (True, True, True, False)
    ```
    """
    tokens = {token for p in all_prompts() for token in spell_quoted(p.text).split()}
    return sorted(tokens | set(ALPHABET))


def text_layout(size: int = IMAGE_SIZE) -> tuple[int, int, int, int]:
    r"""
    Where the renderer puts the text at `size`: `(x0, y0, scale, pitch)`, the top-left corner of the first glyph
    cell, the glyph scale (cells are `3 * scale` wide, `5 * scale` tall) and the distance between cell starts.
    The renderer shifts the whole block by at most `max(1, scale // 2)` pixels each way.

    Example:

    ```python
    >>> text_layout(32)
    (5, 11, 2, 8)
    ```
    """
    _check_size(size)
    # Glyphs are 2x at 32 px (6x10 cells), with a one-glyph-pixel (2 px) gap between cells.
    scale = size // 16
    pitch = 4 * scale
    width = 3 * pitch - scale
    return (size - width) // 2, (size - 5 * scale) // 2, scale, pitch


def _check_size(size: int) -> None:
    if not isinstance(size, (int, np.integer)) or size < MIN_IMAGE_SIZE:
        raise InvalidArgumentError(
            f"image size must be an integer of at least {MIN_IMAGE_SIZE} pixels, got {size!r}; use e.g. "
            f"size={IMAGE_SIZE}."
        )


def _shape_mask(shape: str, cx: float, cy: float, diameter: float, size: int) -> np.ndarray:
    # Hard-edged masks sampled at pixel centres: no anti-aliasing, so colours stay pure and the checker simple.
    ys, xs = np.mgrid[0:size, 0:size] + 0.5
    r = diameter / 2
    if shape == "circle":
        return (xs - cx) ** 2 + (ys - cy) ** 2 <= r * r
    if shape == "square":
        return (np.abs(xs - cx) <= r) & (np.abs(ys - cy) <= r)
    top = cy - r
    inside_rows = (ys >= top) & (ys <= cy + r)
    return inside_rows & (np.abs(xs - cx) <= (ys - top) / 2)  # upright isosceles: base = height = diameter


def _jitter(rng: np.random.Generator, amount: int) -> int:
    return int(rng.integers(-amount, amount + 1))


def _placements(prompt: ToyPrompt, rng: np.random.Generator, size: int) -> list[tuple[ToyObject, float, float, float]]:
    unit = size / IMAGE_SIZE
    mid = size / 2
    if prompt.kind == "single":
        # A third of the image wide, centred within +-3 px: big enough that the three shapes stay distinct.
        j = round(3 * unit)
        return [(prompt.objects[0], mid + _jitter(rng, j), mid + _jitter(rng, j), 10 * unit)]
    if prompt.kind == "count":
        # 8 px objects in fixed slots 11 px (three) or 12 px (two) apart leave >= 3 px of white between them; the
        # row moves as a whole by +-1 px sideways so the gaps never shrink, each object +-2 px up or down.
        step = 11 * unit if prompt.count == 3 else 12 * unit
        row_x = mid + _jitter(rng, round(unit))
        row_y = mid + _jitter(rng, round(3 * unit))
        first = row_x - step * (prompt.count - 1) / 2
        return [
            (prompt.objects[0], first + k * step, row_y + _jitter(rng, round(2 * unit)), 8 * unit)
            for k in range(prompt.count)
        ]
    # Spatial: 10 px objects at the centres of the left/right (or top/bottom) halves, each +-2 px along the relation
    # axis (>= 2 px of white between them), and across it +-3 px together plus +-1 px each.
    first, second = prompt.objects
    if prompt.relation in ("right of", "below"):
        first, second = second, first
    near, far = size / 4, 3 * size / 4
    across = mid + _jitter(rng, round(3 * unit))
    along_j, across_j = round(2 * unit), round(unit)
    placed = []
    for obj, along in ((first, near), (second, far)):
        a, b = along + _jitter(rng, along_j), across + _jitter(rng, across_j)
        x, y = (a, b) if prompt.relation in ("left of", "right of") else (b, a)
        placed.append((obj, x, y, 10 * unit))
    return placed


def render(prompt: ToyPrompt | str, seed: int | np.random.Generator = 0, size: int = IMAGE_SIZE) -> np.ndarray:
    r"""
    Draw the scene of `prompt` on a white `size` x `size` RGB image (`numpy.uint8`, shape `(size, size, 3)`).

    Objects are hard-edged filled circles, axis-aligned squares and upright isosceles triangles in their named
    colour; text is the word's `GLYPHS` in black at the fixed `text_layout`. Positions get a small random jitter
    from `seed` (an int or a `numpy.random.Generator`): the same int seed gives the same image.

    Example:

    ```python
    >>> image = render("a red circle", seed=0)
    >>> image.shape, image.dtype, image[0, 0].tolist()
    ((32, 32, 3), dtype('uint8'), [255, 255, 255])
    ```
    """
    prompt = _as_prompt(prompt)
    _check_size(size)
    if isinstance(seed, np.random.Generator):
        rng = seed
    elif isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
        rng = np.random.default_rng(int(seed))
    else:
        raise InvalidArgumentError(
            f"seed must be an int or a numpy.random.Generator, got {type(seed).__name__}; pass e.g. seed=0."
        )
    image = np.full((size, size, 3), 255, dtype=np.uint8)
    if prompt.kind == "text":
        x0, y0, scale, pitch = text_layout(size)
        j = max(1, scale // 2)  # +-1 px at 32: less than a glyph pixel, so the checker's fixed cells still hold it
        x0, y0 = x0 + _jitter(rng, j), y0 + _jitter(rng, j)
        for k, letter in enumerate(prompt.word):
            bitmap = np.array([[c == "#" for c in row] for row in GLYPHS[letter]])
            cell = np.kron(bitmap, np.ones((scale, scale), dtype=bool))
            region = image[y0:y0 + 5 * scale, x0 + k * pitch:x0 + k * pitch + 3 * scale]
            region[cell] = 0
        return image
    for obj, x, y, diameter in _placements(prompt, rng, size):
        image[_shape_mask(obj.shape, x, y, diameter, size)] = COLOURS[obj.colour]
    return image
