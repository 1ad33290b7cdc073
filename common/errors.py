"""Errors a user can fix: one line each, naming the file, video or field.

:class:`UserError` is the base of every error that describes bad input rather than a bug: a
store that cannot be used (:class:`~store.records.StoreError`), a recipe with a wrong field
(:class:`ConfigError`), a file that is not what a command expects (:class:`InputError`), a
folder another process is writing (:class:`~common.files.LockedError`). Stage 1's
``AnnotationError`` and ``FrameError`` derive from it too. The CLI prints such an error as one
line and exits 1; ``-vv`` shows the traceback.

A ``UserError`` raised inside a DataLoader worker reaches the main process as the same class
built from torch's message (``"Caught StoreError in DataLoader worker process 0. Original
Traceback ..."``); :class:`UserError` keeps only the original one-line message from it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

_WORKER_PREFIX = "Caught "


def _unwrap_worker_message(message: str) -> str:
    """The original message of an exception that torch re-raises from a DataLoader worker."""
    if not message.startswith(_WORKER_PREFIX) or "Original Traceback" not in message:
        return message
    lines = [ln for ln in message.rstrip().splitlines() if ln.strip()]
    last = lines[-1] if lines else message
    # "store.records.StoreError: path: problem" -> "path: problem"
    head, sep, rest = last.partition(": ")
    return rest if sep and "." in head and " " not in head else last


class UserError(Exception):
    """An error the user can fix (bad input, a busy folder, a full disk): shown as one line."""

    def __init__(self, message: str = "") -> None:
        super().__init__(_unwrap_worker_message(str(message)))

    def __reduce__(self) -> tuple[Any, ...]:
        # Subclasses take other arguments (a file and a problem): rebuild without __init__.
        return (_rebuild, (type(self), str(self), dict(self.__dict__)))


def _rebuild(cls: type, message: str, state: dict[str, Any]) -> UserError:
    obj = cls.__new__(cls)
    Exception.__init__(obj, message)
    obj.__dict__.update(state)
    return obj


def split_message(message: str) -> tuple[str, str]:
    """``"file: problem"`` (a worker's re-raised message unwrapped first) as (file, problem)."""
    file, _, problem = _unwrap_worker_message(str(message)).partition(": ")
    return file, problem


class FileError(UserError):
    """An error about one file: ``"FILE: PROBLEM"``. Built from one message as well (``problem``
    None), as torch re-raises an error from a DataLoader worker with its message alone."""

    def __init__(self, file: str | Path, problem: str | None = None) -> None:
        if problem is None:
            file, problem = split_message(str(file))
        self.file = str(file)
        self.problem = problem
        super().__init__(f"{self.file}: {problem}")


class ConfigError(UserError, ValueError):
    """A recipe (YAML file, ``--set`` or an option) with a wrong field; names where and which."""


class InputError(UserError, ValueError):
    """An input file that is not what the command expects (garbage, truncated, another kind)."""


class NonFiniteError(UserError, FloatingPointError):
    """A NaN or an infinity where numbers enter: a detector's outputs, a store's features, a
    training step's loss or gradients. Names where (the video, the epoch and step)."""


__all__ = ["ConfigError", "FileError", "InputError", "NonFiniteError", "UserError", "split_message"]
