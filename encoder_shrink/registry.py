"""Registry: a name -> item table shared by pipeline families, losses, export formats and prompt sources."""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Iterator
from typing import Generic, TypeVar

from encoder_shrink.errors import (
    DuplicateRegistrationError,
    InvalidArgumentError,
    UnknownNameError,
    WrongModelTypeError,
)

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


class ConfigRegistry(Registry[T]):
    r"""
    A [`Registry`] whose items are each configured by a dataclass of their own (the item's `config_class`), so that a
    config instance finds its item (torchao's `quantize_(model, config)` pattern): export formats, metrics. A config
    class that is not a dataclass, or that already configures another item, is refused.

    Example:

    ```python
    >>> @dataclasses.dataclass
    ... class RedConfig:
    ...     pass
    >>> Colour = dataclasses.make_dataclass("Colour", ["name", "config_class"])
    >>> colours = ConfigRegistry("colour")
    >>> colours.register("red", Colour("red", RedConfig)).name
    'red'
    >>> colours.of(RedConfig()).name
    'red'
    ```
    """

    def __init__(self, kind: str):
        super().__init__(kind)
        self._by_config: dict[type, T] = {}

    def register(self, name: str, item: T) -> T:
        """Register `item` under `name` and under its `config_class`; a taken name or config class raises."""
        config_class = item.config_class
        if not dataclasses.is_dataclass(config_class):
            raise WrongModelTypeError(f"{self.kind} {name!r}: config_class must be a dataclass, got {config_class!r}.")
        if config_class in self._by_config:
            raise InvalidArgumentError(
                f"{self.kind} {name!r}: {config_class.__name__} already configures "
                f"{self._by_config[config_class].name!r}."
            )
        super().register(name, item)
        self._by_config[config_class] = item
        return item

    def of(self, config) -> T:
        """The item whose config class `config` is an instance of."""
        item = self._by_config.get(type(config))
        if item is None:
            raise UnknownNameError(
                f"{type(config).__name__} is not the config of a registered {self.kind}; pass the config of one "
                f"({', '.join(self.names())}), or register its {self.kind} first."
            )
        return item


def _article(noun: str) -> str:
    return "An" if noun[:1] in "aeiou" else "A"


def _describe(item) -> str:
    return getattr(item, "__qualname__", None) or type(item).__qualname__


__all__ = ["ConfigRegistry", "Registry", "nearest"]
