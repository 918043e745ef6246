"""EncoderShrinkError and its subclasses: every error encoder-shrink raises on purpose derives from one base."""

from __future__ import annotations


class EncoderShrinkError(Exception):
    r"""
    Base of every error encoder-shrink raises on purpose: a bad input, a missing file or backend, a model that does not
    fit. Its message is one line that names the problem and the fix; the CLI prints it without a traceback. Each
    subclass also derives from the matching built-in exception (`ValueError`, `FileExistsError`, ...), so existing
    `except ValueError` code keeps working.

    Example:

    ```python
    >>> from encoder_shrink import EncoderShrinkError, load_recipe
    >>> try:
    ...     load_recipe("flux-t5bse")
    ... except EncoderShrinkError as error:
    ...     print(type(error).__name__)
    RecipeError
    ```
    """


class InvalidArgumentError(EncoderShrinkError, ValueError):
    """An argument or option whose value encoder-shrink cannot use."""


class UnknownNameError(InvalidArgumentError):
    """A name (pipeline family, loss, export format, prompt source, ...) that nothing is registered under."""


class DuplicateRegistrationError(EncoderShrinkError, ValueError):
    """A second registration under a name that is already taken."""


class IncompatibleModelError(EncoderShrinkError, ValueError):
    """A student, encoder or pipeline that does not fit what it is combined with (width, vocabulary, family)."""


class WrongModelTypeError(EncoderShrinkError, TypeError):
    """An object or folder of another kind than the one asked for (e.g. a CLIP where a T5 is needed)."""


class OutputExistsError(EncoderShrinkError, FileExistsError):
    """An output folder that exists and is not empty, where overwriting was not asked for."""


class InputNotFoundError(EncoderShrinkError, FileNotFoundError):
    """An input file or folder that does not exist or is incomplete."""


class NotWritableError(EncoderShrinkError, PermissionError):
    """An output location that cannot be written (read-only, no permission, a file where a folder must go)."""


class BackendUnavailableError(EncoderShrinkError, RuntimeError):
    """An optional package or hardware (onnxruntime, TensorRT, a CUDA GPU) that the requested work needs."""


class BenchmarkFailedError(EncoderShrinkError, RuntimeError):
    """A benchmark variant whose measuring process failed (its own traceback is in the message or above it)."""


__all__ = [
    "BackendUnavailableError",
    "BenchmarkFailedError",
    "DuplicateRegistrationError",
    "EncoderShrinkError",
    "IncompatibleModelError",
    "InputNotFoundError",
    "InvalidArgumentError",
    "NotWritableError",
    "OutputExistsError",
    "UnknownNameError",
    "WrongModelTypeError",
]
