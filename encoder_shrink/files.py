"""Writing result files so that an interrupted run never leaves half of one behind."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from encoder_shrink.errors import NotWritableError


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """
    A temporary path beside `path` (same suffix, so writers that infer the format from it still work) to write to;
    renamed over `path` when the block succeeds, removed when it fails.

    Example:

    ```python
    >>> with atomic_path("out/grid.png") as tmp:  # doctest: +SKIP
    ...     image.save(tmp)
    ```
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def pyplot():
    """`matplotlib.pyplot` on the Agg backend: charts are written to files, no display is opened (or needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure, path: str | os.PathLike, dpi: int = 110) -> Path:
    r"""
    Lay out a matplotlib `figure`, write it as a PNG to `path` (temp name, then rename) and close it.

    Example:

    ```python
    >>> figure, axis = pyplot().subplots()  # doctest: +SKIP
    >>> save_figure(figure, "results.png")  # doctest: +SKIP
    ```
    """
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=dpi)
    pyplot().close(figure)
    return Path(path)


@contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """
    A temporary folder beside `path` to fill; it replaces `path` (and whatever was there) when the block succeeds, and
    is removed when it fails.

    Example:

    ```python
    >>> with atomic_dir("out/teacher") as tmp:  # doctest: +SKIP
    ...     pipe.save_pretrained(tmp)
    ```
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield staging
        if path.exists():
            shutil.rmtree(path)
        os.replace(staging, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """
    Write `text` to a temporary file beside `path`, then rename it over `path`.

    Example:

    ```python
    >>> atomic_write_text("out/results.json", "{}")  # doctest: +SKIP
    ```
    """
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_results(output: str | os.PathLike, results: dict, table: str, chart) -> Path:
    r"""
    A benchmark's results in `output`: `results.json`, `results.md` (the table) and `results.png` (`chart(results,
    path)` draws it), each written atomically. Returns the folder.

    Example:

    ```python
    >>> write_results("out", {"rows": []}, "| a |", _chart)  # doctest: +SKIP
    ```
    """
    import json

    output = Path(output)
    atomic_write_text(output / "results.json", json.dumps(results, indent=2))
    atomic_write_text(output / "results.md", table + "\n")
    chart(results, output / "results.png")
    return output


def require_writable(path: str | os.PathLike, what: str = "output") -> None:
    """
    Refuse, before any work, an output `path` that cannot be written: a read-only file system or folder, or a file
    standing where a folder must go. The check looks at `path` or, when it does not exist yet, at the nearest folder
    above it that does (where it would be created).

    Example:

    ```python
    >>> require_writable("out/student")  # doctest: +SKIP
    ```
    """
    path = Path(path).absolute()
    existing = path
    while not existing.exists():
        existing = existing.parent
    if existing != path and not existing.is_dir():
        raise NotWritableError(f"{what} {path} cannot be created: {existing} is a file; choose another location.")
    if not os.access(existing, os.W_OK | (os.X_OK if existing.is_dir() else 0)):
        raise NotWritableError(
            f"{what} {path} cannot be written ({existing} is read-only or not yours); choose a writable location or "
            "fix its permissions."
        )


def first_missing(path: str | os.PathLike) -> Path | None:
    """The topmost folder of `path` that does not exist yet (what creating `path` would add), or `None`."""
    path = Path(path).absolute()
    if path.exists():
        return None
    while not path.parent.exists():
        path = path.parent
    return path
