"""The toy world's checker: finds an image's coloured objects, reads its text, and scores it against its prompt."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from itertools import permutations

import numpy as np

from encoder_shrink.errors import InvalidArgumentError
from encoder_shrink.toy.world import (
    ALPHABET,
    ATTRIBUTES,
    COLOURS,
    GLYPHS,
    IMAGE_SIZE,
    KINDS,
    ToyObject,
    ToyPrompt,
    parse_prompt,
    text_layout,
)

# Chroma (max - min channel, 0-255) a pixel needs to count as coloured: the least saturated palette colour (green,
# 140) keeps it when half blended with the white background, while sensor-like noise on white or grey stays far below.
MIN_CHROMA = 70
# A coloured pixel takes the nearest palette hue, but only within this many degrees of it: the palette's hues are
# 47-80 degrees apart, so an off-palette colour far from all of them (e.g. orange, pink) is ignored, not misnamed.
MAX_HUE_DISTANCE = 30.0
# Components smaller than this (at 32 px; scaled with the image area) are blur fringes or noise speckles: the smallest
# object drawn, an 8 px triangle, covers about 30 px.
MIN_AREA = 10
# A component's peak chroma is its 90th percentile, which a few noisy pixels cannot move; its object's edge is where
# the chroma falls to half of that (where a blurred edge crosses the drawn one).
PEAK_PERCENTILE = 90
HALF_MAXIMUM = 0.5
# Fill ratio (area / bounding-box area) boundaries: a square fills ~1, a disc ~pi/4 (0.80-0.81 drawn at 8-10 px), a
# triangle ~0.5; after blur (sigma 1 px) and noise (std 8) squares stayed >= 0.875 and circles in 0.72-0.84.
SQUARE_MIN_FILL = 0.86
CIRCLE_MIN_FILL = 0.65
# A triangle's mass sits low in its box (centroid 0.63 of the way down), circles' and squares' in the middle (0.5);
# after the same degradation triangles stayed >= 0.566, circles and squares <= 0.517.
TRIANGLE_MIN_DROP = 0.54
# Centroids must be this far apart along the relation's axis (at 32 px, scaled): left/right slots are 16 px apart.
POSITION_MARGIN = 4.0
# A cell reads as its best-correlated glyph only at this correlation or above: a rendered glyph correlates 1.0 with
# its template, >= 0.97 after blur of sigma 0.6 px and >= 0.74 after 1 px; distinct templates at most 0.62.
MIN_GLYPH_CORRELATION = 0.7
# ...and only if its darkest and lightest glyph pixels differ by this much (0-1): sharp glyphs span 1, glyphs blurred
# by sigma 1 px >= 0.3, while noise of std 16 on a blank cell spans under 0.05.
MIN_GLYPH_CONTRAST = 0.2
UNREADABLE = "?"


def _hue(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hue in degrees [0, 360) and chroma (0-255) of float RGB pixels `(..., 3)`."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    high, low = rgb.max(-1), rgb.min(-1)
    chroma = high - low
    safe = np.where(chroma > 0, chroma, 1.0)
    hue = np.where(high == r, ((g - b) / safe) % 6, np.where(high == g, (b - r) / safe + 2, (r - g) / safe + 4))
    return hue * 60.0, chroma


_NAMES = tuple(COLOURS)
_PALETTE_HUES = _hue(np.array(list(COLOURS.values()), dtype=np.float64))[0]
_TEMPLATES = np.array([[c == "#" for row in GLYPHS[letter] for c in row] for letter in ALPHABET], dtype=np.float64)
# Zero-mean, unit-norm templates: their dot product with a zero-mean cell over its norm is the correlation.
_UNIT_TEMPLATES = _TEMPLATES - _TEMPLATES.mean(1, keepdims=True)
_UNIT_TEMPLATES /= np.linalg.norm(_UNIT_TEMPLATES, axis=1, keepdims=True)


@dataclass(frozen=True)
class _Component:
    colour: str
    shape: str
    area: int
    x: float  # centroid, pixels from the left
    y: float  # centroid, pixels from the top


def _as_image(image) -> np.ndarray:
    if hasattr(image, "convert"):  # a PIL image
        image = np.asarray(image.convert("RGB"))
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] != image.shape[1]:
        raise InvalidArgumentError(
            f"expected a square RGB image of shape (H, H, 3), got shape {image.shape}; pass e.g. render(prompt)."
        )
    if image.shape[0] < IMAGE_SIZE:
        raise InvalidArgumentError(
            f"image is {image.shape[0]} px wide, smaller than the toy world's {IMAGE_SIZE}; render or resize to at "
            f"least {IMAGE_SIZE}."
        )
    if image.dtype == np.uint8:
        return image.astype(np.float64)
    floats = np.issubdtype(image.dtype, np.floating)
    if floats and np.isfinite(image).all() and 0.0 <= float(image.min()) and float(image.max()) <= 1.0:
        return image.astype(np.float64) * 255.0
    raise InvalidArgumentError(
        f"expected uint8 pixels or floats in [0, 1], got dtype {image.dtype}; convert with np.uint8 or divide by 255."
    )


def _colour_labels(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Palette index per pixel (-1 for background, ink and anything not close to a palette hue), and chroma."""
    hue, chroma = _hue(image)
    distance = np.abs(hue[..., None] - _PALETTE_HUES)
    distance = np.minimum(distance, 360.0 - distance)
    nearest = distance.argmin(-1)
    close = np.take_along_axis(distance, nearest[..., None], -1)[..., 0] <= MAX_HUE_DISTANCE
    return np.where((chroma >= MIN_CHROMA) & close, nearest, -1), chroma


def _classify_shape(fill: float, drop: float) -> str:
    if fill < CIRCLE_MIN_FILL or drop >= TRIANGLE_MIN_DROP:
        return "triangle"
    return "square" if fill >= SQUARE_MIN_FILL else "circle"


def _regions(labels: np.ndarray) -> list[np.ndarray]:
    """The `(y, x)` pixels of each 4-connected region of equal palette index (labels >= 0)."""
    size = labels.shape[0]
    owner = np.full(labels.shape, -1)
    regions = []
    for start in zip(*np.nonzero(labels >= 0)):
        if owner[start] >= 0:
            continue
        colour, index = labels[start], len(regions)
        owner[start] = index
        queue, pixels = deque([start]), []
        while queue:
            y, x = queue.popleft()
            pixels.append((y, x))
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= ny < size and 0 <= nx < size and owner[ny, nx] < 0 and labels[ny, nx] == colour:
                    owner[ny, nx] = index
                    queue.append((ny, nx))
        regions.append(np.array(pixels))
    return regions


def _components(image: np.ndarray) -> list[_Component]:
    """The significant 4-connected components of each palette colour, largest first."""
    labels, chroma = _colour_labels(image)
    size = labels.shape[0]
    min_area = MIN_AREA * (size / IMAGE_SIZE) ** 2
    regions = _regions(labels)
    found = []
    for pixels in regions:
        if len(pixels) < min_area:
            continue
        ys, xs = pixels.T
        strength = chroma[ys, xs]
        peak = np.percentile(strength, PEAK_PERCENTILE)
        # Measure the shape on the half-maximum contour, where a blurred edge crosses the drawn one: the low detection
        # threshold lets in blur fringes and noisy edge pixels, which would round squares and stretch boxes.
        core = strength >= HALF_MAXIMUM * peak
        ys, xs = ys[core], xs[core]
        height, width = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
        fill = len(ys) / (height * width)
        drop = (ys.mean() - ys.min() + 0.5) / height
        colour = _NAMES[labels[pixels[0][0], pixels[0][1]]]
        found.append(_Component(colour, _classify_shape(fill, drop), len(pixels), xs.mean() + 0.5, ys.mean() + 0.5))
    return sorted(found, key=lambda c: -c.area)


def read_sign(image) -> str:
    r"""
    Read the three glyph cells of the toy text layout (`text_layout`) by nearest-template matching: each cell is
    averaged down to 3x5 glyph pixels at the offset (within the renderer's jitter) where it correlates best with a
    glyph of `GLYPHS`, and reads as that glyph's letter. A cell that is blank or like no glyph reads as `"?"`.

    Example:

    ```python
    >>> from encoder_shrink.toy.world import render
    >>> read_sign(render("a sign that says 'cat'", seed=3))
    'cat'
    ```
    """
    return _read(_as_image(image))


def _read(pixels: np.ndarray) -> str:
    size = pixels.shape[0]
    high = pixels.max(-1)
    # Ink is dark and grey: black reads 1, white 0, and so does every palette colour, blurred or not (its brightest
    # channel plus its chroma exceeds 255), so coloured objects never read as letters.
    darkness = np.clip(1.0 - (2 * high - pixels.min(-1)) / 255.0, 0.0, 1.0)
    x0, y0, scale, pitch = text_layout(size)
    jitter = max(1, scale // 2)
    letters = []
    for k in range(3):
        best, letter = -np.inf, UNREADABLE
        for dy in range(-jitter, jitter + 1):
            for dx in range(-jitter, jitter + 1):
                top, left = y0 + dy, x0 + k * pitch + dx
                cell = darkness[top:top + 5 * scale, left:left + 3 * scale]
                glyph = cell.reshape(5, scale, 3, scale).mean(axis=(1, 3)).ravel()
                if glyph.max() - glyph.min() < MIN_GLYPH_CONTRAST:
                    continue
                centred = glyph - glyph.mean()
                correlations = _UNIT_TEMPLATES @ centred / np.linalg.norm(centred)
                index = int(correlations.argmax())
                if correlations[index] > best:
                    best, letter = correlations[index], ALPHABET[index]
        letters.append(letter if best >= MIN_GLYPH_CORRELATION else UNREADABLE)
    return "".join(letters)


def _match(obj: ToyObject, component: _Component) -> int:
    # Colour decides the assignment first (2), shape breaks ties (1): position is judged even if a shape is wrong.
    return 2 * (obj.colour == component.colour) + (obj.shape == component.shape)


def _best_pairs(prompt: ToyPrompt, components: list[_Component]) -> list[tuple[_Component, _Component]]:
    """The assignments of two components to a spatial prompt's two objects that match them best (each shares its
    object's colour or shape)."""
    first, second = prompt.objects
    best, pairs = 0, []
    for a, b in permutations(components, 2):
        value = _match(first, a) + _match(second, b)
        if _match(first, a) == 0 or _match(second, b) == 0 or value < best:
            continue
        if value > best:
            best, pairs = value, []
        pairs.append((a, b))
    return pairs


def _relation_holds(relation: str, a: _Component, b: _Component, margin: float) -> bool:
    if relation == "left of":
        return b.x - a.x > margin
    if relation == "right of":
        return a.x - b.x > margin
    if relation == "above":
        return b.y - a.y > margin
    return a.y - b.y > margin


def check(image, prompt: ToyPrompt | str) -> dict[str, bool]:
    r"""
    Whether `image` shows `prompt`: one bool per attribute the prompt tests (`prompt.attributes`).

    - colour: the colours of the image's objects are exactly the prompt's;
    - shape: single and count prompts: the objects of the prompt's colour (all objects, if none has that colour)
      all have its shape; spatial prompts: the two objects that best match the prompt's two (colour first, then
      shape) have their shapes;
    - count: the image has exactly `prompt.count` objects;
    - position: the centroids of those two best-matching objects satisfy the relation, by a margin (every
      assignment, when several match equally well);
    - text: `read_sign(image)` is the prompt's word.

    Objects are the 4-connected regions of one palette colour (by hue) of at least `MIN_AREA` pixels; shapes come
    from their fill ratio and how low their mass sits in their bounding box. `image` is a `(H, H, 3)` uint8 array
    (or floats in [0, 1], or a PIL image) with `H >= 32`.

    Example:

    ```python
    >>> from encoder_shrink.toy.world import render
    >>> check(render("two blue squares", seed=0), "three blue squares")
    {'colour': True, 'shape': True, 'count': False}
    ```
    """
    prompt = prompt if isinstance(prompt, ToyPrompt) else parse_prompt(prompt)
    pixels = _as_image(image)
    if prompt.kind == "text":
        return {"text": _read(pixels) == prompt.word}
    components = _components(pixels)
    result = {"colour": {c.colour for c in components} == {o.colour for o in prompt.objects}}
    if prompt.kind == "spatial":
        first, second = prompt.objects
        pairs = _best_pairs(prompt, components)
        result["shape"] = any(a.shape == first.shape and b.shape == second.shape for a, b in pairs)
        margin = POSITION_MARGIN * pixels.shape[0] / IMAGE_SIZE
        # Several equally good assignments (e.g. two red squares for a red square and a red circle) must all agree.
        result["position"] = bool(pairs) and all(_relation_holds(prompt.relation, a, b, margin) for a, b in pairs)
    else:
        target = prompt.objects[0]
        # Judge shape on the objects of the prompt's colour, or on all of them when that colour is missing, so that
        # a blue circle for "a red circle" is a colour error only.
        pool = [c for c in components if c.colour == target.colour] or components
        result["shape"] = bool(pool) and all(c.shape == target.shape for c in pool)
        result["count"] = len(components) == prompt.count
    return {attribute: bool(result[attribute]) for attribute in prompt.attributes}


def score(images, prompts) -> dict:
    r"""
    Check each image against its prompt and aggregate: for each attribute of `ATTRIBUTES` that some prompt tests, the
    fraction of the prompts testing it that got it right; `"overall"`, the fraction of prompts with every attribute
    right; `"prompts"`, their number; and `"by_kind"`, the same overall fraction and number per prompt kind.

    Example:

    ```python
    >>> from encoder_shrink.toy.world import render
    >>> result = score([render("a red circle"), render("a blue square")], ["a red circle", "a red square"])
    >>> result["colour"], result["shape"], result["overall"], result["prompts"]
    (0.5, 1.0, 0.5, 2)
    ```
    """
    images, prompts = list(images), list(prompts)
    if len(images) != len(prompts):
        raise InvalidArgumentError(
            f"score got {len(images)} images for {len(prompts)} prompts; pass one image per prompt."
        )
    if not prompts:
        raise InvalidArgumentError("score got no images; pass at least one image and its prompt.")
    prompts = [p if isinstance(p, ToyPrompt) else parse_prompt(p) for p in prompts]
    results = [check(image, prompt) for image, prompt in zip(images, prompts)]
    summary: dict = {}
    for attribute in ATTRIBUTES:
        outcomes = [r[attribute] for r in results if attribute in r]
        if outcomes:
            summary[attribute] = sum(outcomes) / len(outcomes)
    correct = [all(r.values()) for r in results]
    summary["overall"] = sum(correct) / len(correct)
    summary["prompts"] = len(prompts)
    summary["by_kind"] = {}
    for kind in KINDS:
        of_kind = [ok for ok, p in zip(correct, prompts) if p.kind == kind]
        if of_kind:
            summary["by_kind"][kind] = {"overall": sum(of_kind) / len(of_kind), "prompts": len(of_kind)}
    return summary
