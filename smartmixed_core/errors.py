"""Errors raised for bad input; the CLI turns them into one-line messages and exit status 2."""

from __future__ import annotations

from collections.abc import Iterable


class ConfigError(ValueError):
    """A user-supplied value is invalid. ``field`` names it; the message says what is allowed."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


def choice_error(field: str, value: object, allowed: Iterable[str]) -> ConfigError:
    """The standard "unknown X" error listing every allowed value."""
    return ConfigError(field, f"unknown value {value!r}; allowed: {', '.join(allowed)}")
