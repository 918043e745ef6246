"""Readers of local prompt files: T2I-CompBench txt files and LAION-style caption files (txt, json, jsonl, parquet)."""

from __future__ import annotations

import json
from pathlib import Path

from encoder_shrink.data.sources import register_prompt_source, require_path
from encoder_shrink.errors import EncoderShrinkError

# The paper's semantics training set: T2I-CompBench train split, 700 prompts per category.
COMPBENCH_CATEGORIES = ("color", "shape", "texture", "spatial", "3d_spatial", "numeracy")
# Column/key names caption files use for the text (LAION parquet: TEXT; others: caption, text, prompt).
CAPTION_KEYS = ("TEXT", "caption", "text", "prompt")


class PromptFileError(EncoderShrinkError, ValueError):
    """A prompt file or folder that is missing, empty or cannot be decoded."""


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise PromptFileError(f"prompt file {path} does not exist.")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise PromptFileError(
            f"{path} is not UTF-8 text ({error.reason} at byte {error.start}); re-encode it as UTF-8."
        ) from None


def _lines(path: Path) -> list[str]:
    prompts = [line.strip() for line in _read_text(path).splitlines() if line.strip()]
    if not prompts:
        raise PromptFileError(f"{path} holds no prompts (one per line expected).")
    return prompts


def read_compbench(path: str | Path, categories=COMPBENCH_CATEGORIES, split: str = "train",
                   limit: int | None = None) -> list[str]:
    r"""
    Prompts of T2I-CompBench: `path` is the dataset folder (reads `{category}_{split}.txt` per category) or one txt
    file (one prompt per line).

    Example:

    ```python
    >>> prompts = read_compbench("T2I-CompBench", categories=["color"], split="val")  # doctest: +SKIP
    ```
    """
    path = Path(path)
    if path.is_file():
        prompts = _lines(path)
    elif path.is_dir():
        prompts = []
        for category in categories:
            file = path / f"{category}_{split}.txt"
            if not file.is_file():
                raise PromptFileError(
                    f"{path} has no {file.name}; expected T2I-CompBench's {{category}}_{split}.txt files."
                )
            prompts += _lines(file)
    else:
        raise PromptFileError(f"T2I-CompBench path {path} does not exist.")
    return prompts[:limit] if limit else prompts


def _caption(record, path: Path) -> str:
    if isinstance(record, str):
        return record
    if isinstance(record, dict):
        for key in CAPTION_KEYS:
            if isinstance(record.get(key), str):
                return record[key]
    raise PromptFileError(f"{path}: records must be strings or objects with one of {', '.join(CAPTION_KEYS)}.")


def read_captions(path: str | Path, limit: int | None = None) -> list[str]:
    r"""
    Captions from a LAION-style file: `.txt` (one per line), `.json` (a list of strings or objects), `.jsonl` (one
    string or object per line) or `.parquet` (a `TEXT`/`caption`/`text`/`prompt` column; needs pyarrow).

    Example:

    ```python
    >>> captions = read_captions("laion_aesthetics_6.5.parquet", limit=100_000)  # doctest: +SKIP
    ```
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".txt":
        captions = _lines(path)
    elif suffix == ".json":
        try:
            data = json.loads(_read_text(path))
        except json.JSONDecodeError as error:
            raise PromptFileError(f"{path} is not valid JSON ({error.msg} at line {error.lineno}).") from None
        if not isinstance(data, list):
            raise PromptFileError(f"{path} must hold a JSON list of captions.")
        captions = [_caption(record, path) for record in data]
    elif suffix == ".jsonl":
        captions = []
        for number, line in enumerate(_read_text(path).splitlines(), 1):
            if line.strip():
                try:
                    captions.append(_caption(json.loads(line), path))
                except json.JSONDecodeError as error:
                    raise PromptFileError(f"{path}:{number} is not valid JSON ({error.msg}).") from None
    elif suffix == ".parquet":
        captions = _read_parquet(path)
    else:
        raise PromptFileError(
            f"{path}: unsupported caption file type {suffix!r}; use .txt, .json, .jsonl or .parquet."
        )
    captions = [c.strip() for c in captions if c and c.strip()]
    if not captions:
        raise PromptFileError(f"{path} holds no captions.")
    return captions[:limit] if limit else captions


def _read_parquet(path: Path) -> list[str]:
    if not path.is_file():
        raise PromptFileError(f"prompt file {path} does not exist.")
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise PromptFileError(f"reading {path} needs pyarrow: pip install pyarrow.") from None
    try:
        table = pq.read_table(path)
    except Exception as error:  # pyarrow raises its own ArrowInvalid for corrupt files
        raise PromptFileError(f"{path} is not a readable parquet file ({error}).") from None
    for key in CAPTION_KEYS:
        if key in table.column_names:
            return [c for c in table.column(key).to_pylist() if isinstance(c, str)]
    raise PromptFileError(
        f"{path} has no caption column ({', '.join(CAPTION_KEYS)}); it has {', '.join(table.column_names)}."
    )


def _compbench_source(source, path, seed: int) -> list[str]:
    require_path("compbench", path, "the T2I-CompBench folder")
    return read_compbench(path, source.categories or COMPBENCH_CATEGORIES, source.split, source.limit)


def _caption_source(kind: str):
    def read(source, path, seed: int) -> list[str]:
        require_path(kind, path, "a caption file (txt, json, jsonl or parquet)")
        return read_captions(path, source.limit)

    return read


register_prompt_source("compbench", _compbench_source)
# LAION-Aesthetics captions (image quality), and any caption file the user gives as the `prompts` source.
register_prompt_source("laion", _caption_source("laion"))
register_prompt_source("prompts", _caption_source("prompts"))
# JourneyDB captions (TiUE's training prompts): a caption file like the others.
register_prompt_source("journeydb", _caption_source("journeydb"))
