"""Registry: a name -> item table shared by pipeline families, losses, export formats and prompt sources."""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from typing import Generic, TypeVar

from encoder_shrink.errors import DuplicateRegistrationError, UnknownNameError

T = TypeVar("T")


def nearest(value: str, choices) -> str:
    """` Did you mean 'x'?` for the closest of `choices`, or an empty string."""
    close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
    return f" Did you mean {close[0]!r}?" if close else ""


class Registry(Generic[T]):
    r"""
    What is registered under each name of one kind (`"pipeline family"`, `"loss"`, ...). Registering a name twice
    raises [`DuplicateRegistrationError`]; looking up an unknown one raises [`UnknownNameError`] listing the registered
    names and the nearest. Items keep their registration order.

    Example:

    ```python
    >>> colours = Registry("colour")
    >>> colours.register("red", (255, 0, 0))
    (255, 0, 0)
    >>> colours.get("red")
    (255, 0, 0)
    >>> colours.get("rde")
    Traceback (most recent call last):
    ...
    encoder_shrink.errors.UnknownNameError: Unknown colour 'rde'; registered: red. Did you mean 'red'?
    ```
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str, item: T) -> T:
        """Register `item` under `name` and return it; a name already taken raises."""
        if not isinstance(name, str) or not name:
            raise DuplicateRegistrationError(f"A {self.kind} needs a non-empty string name, got {name!r}.")
        if name in self._items:
            raise DuplicateRegistrationError(
                f"{_article(self.kind)} {self.kind} named {name!r} is already registered "
                f"({_describe(self._items[name])}); "
                "choose another name."
            )
        self._items[name] = item
        return item

    def get(self, name: str) -> T:
        """The item registered under `name`."""
        if name not in self._items:
            raise UnknownNameError(
                f"Unknown {self.kind} {name!r}; registered: {', '.join(self.names())}.{nearest(name, self._items)}"
            )
        return self._items[name]

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self._items)

    def items(self):
        return self._items.items()

    def values(self):
        return self._items.values()

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)


def _article(noun: str) -> str:
    return "An" if noun[:1] in "aeiou" else "A"


def _describe(item) -> str:
    return getattr(item, "__qualname__", None) or type(item).__qualname__


__all__ = ["Registry", "nearest"]
