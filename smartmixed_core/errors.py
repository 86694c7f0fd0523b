"""Errors raised for bad input; the CLI turns them into one-line messages and exit status 2."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path


class ConfigError(ValueError):
    """A user-supplied value is invalid. ``field`` names it; the message says what is allowed."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when empty), for error lines."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def choice_error(field: str, value: object, allowed: Iterable[str]) -> ConfigError:
    """The standard "unknown X" error listing every allowed value."""
    return ConfigError(field, f"unknown value {value!r}; allowed: {', '.join(allowed)}")


def check_output_dir(field: str, path: str | Path) -> Path:
    """``path`` if a command may write its results there: an existing folder it can write, or
    one it can create (the nearest existing folder above it is writable).  Checked before any
    work, so a location that cannot be used (a regular file on the way, ``/proc``, a broken or
    looping link, no permission) is a :class:`ConfigError` naming ``field``, and nothing is
    created.  The write test makes and removes an empty folder there."""
    out = Path(path).expanduser()
    target = out
    try:
        while not target.exists():
            if target.is_symlink():
                raise ConfigError(field, f"{target} is a broken or looping symbolic link")
            if target.parent == target:
                break
            target = target.parent if target.is_absolute() else target.absolute().parent
        if not target.is_dir():
            what = "is not a directory" if target == out else f"cannot be created: {target} " \
                "is not a directory"
            raise ConfigError(field, f"{out} {what}")
        os.rmdir(tempfile.mkdtemp(prefix=".smartmixed-write-test-", dir=target))
    except OSError as exc:
        raise ConfigError(field, f"cannot write in {target}: "
                          f"{exc.strerror or type(exc).__name__}") from None
    return out
