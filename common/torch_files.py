"""PyTorch files: written as plain data, read weights-only, with one-line errors.

:func:`load_torch`: ``torch.load`` with one-line errors for an empty, truncated, text or
foreign file. It loads weights only (tensors and plain values): a file whose pickle names any
other Python callable is refused with one line naming it, before anything in it runs, unless
the caller trusts the file (``--trust-checkpoint``). :func:`save_torch` writes only such
content (:func:`plain_data`), so every file the project writes loads weights-only.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from common.errors import InputError
from common.files import atomic_write


def os_error_in(e: BaseException) -> OSError | None:
    """The OSError behind ``e`` (itself, or its cause or context): torch's zip writer turns a full
    disk into ``RuntimeError: [enforce fail at inline_container.cc] unexpected pos`` raised while
    handling the OSError."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, OSError):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def plain_data(obj: Any, where: str = "the checkpoint") -> Any:
    """``obj`` as tensors and plain values only (dict, list, tuple, str, int, float, bool, None),
    what a weights-only ``torch.load`` reads back without running code.

    Converts the harmless look-alikes a writer meets: a ``str`` subclass (``torch.__version__``)
    to ``str``, numpy scalars and 0-d arrays to Python numbers, numpy arrays to tensors, paths to
    ``str``, enums to their value. Anything else (a dataclass, a module, a function) is a
    ``TypeError`` naming where it sits: a bug of the writer, caught before the file is written.
    """
    import enum

    import numpy as np
    import torch

    if obj is None or type(obj) in (bool, int, float, str, bytes):
        return obj
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, enum.Enum):
        return plain_data(obj.value, where)
    for base in (bool, int, float, str):  # subclasses such as TorchVersion (a str) or np.float64 (a float)
        if isinstance(obj, base):
            return base(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj))
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, dict):
        return {plain_data(k, where): plain_data(v, f"{where}[{k!r}]") for k, v in obj.items()}
    if isinstance(obj, list):
        return [plain_data(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, tuple):
        return tuple(plain_data(v, f"{where}[{i}]") for i, v in enumerate(obj))
    raise TypeError(f"{where}: a {type(obj).__module__}.{type(obj).__qualname__} is not plain data; a "
                    f"checkpoint holds tensors, dicts, lists, str, int, float, bool and None only")


def save_torch(obj: Any, path: Path | str) -> None:
    """``torch.save`` of :func:`plain_data` ``(obj)`` through :func:`atomic_write`: the file is
    whole or not there, and loads weights-only."""
    import torch

    obj = plain_data(obj, str(path))
    with atomic_write(path) as fh:
        try:
            torch.save(obj, fh)
        except RuntimeError as e:
            cause = os_error_in(e)
            if cause is None:
                raise
            raise OSError(cause.errno, cause.strerror, str(path)) from e


# --- checked reads --------------------------------------------------------------------------


def _kind_of(path: Path) -> str:
    """What a file that torch cannot load looks like, for the message."""
    import zipfile

    with path.open("rb") as fh:
        head = fh.read(512)
    if head.startswith(b"PK\x03\x04"):
        return "a PyTorch file" if zipfile.is_zipfile(path) else "a truncated or damaged PyTorch zip file"
    if head[:1] == b"\x80":
        return "a legacy PyTorch (pickle) file"
    try:
        text = head.decode("utf-8")
        if text and all(c.isprintable() or c in "\r\n\t" for c in text):
            return "a text file"
    except UnicodeDecodeError:
        pass
    return "not a PyTorch file"


def _checkpoint_kind(path: Path) -> str | None:
    """Which of this project's checkpoints a PyTorch zip file is, from the key names in its
    pickle (without unpickling it), or None."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            name = next((n for n in z.namelist() if n.endswith("data.pkl")), None)
            data = z.read(name) if name else b""
    except (OSError, zipfile.BadZipFile):
        return None
    if b"best_r20" in data and b"history" in data:
        return "a relation-head checkpoint (stage 2, `train`)"
    if b"arch" in data and b"settings" in data:
        return "a detector checkpoint (stage 1)"
    return None


TRUST_HINT = "if you made it or trust its source, load it with --trust-checkpoint (that runs code from the file)"
"""What a refused file's message offers: the commands that read checkpoints take ``--trust-checkpoint``."""


def _safe_globals() -> list[Any]:
    """Harmless types that checkpoints written before :func:`plain_data` hold: ``torch.__version__``
    (a ``str`` subclass) in their provenance."""
    from torch.torch_version import TorchVersion

    return [TorchVersion]


def refused_global(e: BaseException) -> str | None:
    """The callable a weights-only load refused (``"posix.system"``), from torch's message."""
    import re as _re

    m = _re.search(r"(?:GLOBAL|global)\s+([\w.]+)", str(e)) or _re.search(r"Unsupported class ([\w.]+)", str(e))
    return m.group(1) if m else None


def load_torch(path: Path | str, *, what: str = "checkpoint", weights_only: bool = True,
               map_location: Any = "cpu", mmap: bool = False) -> Any:
    """``torch.load`` of ``path`` with an :class:`~common.errors.InputError` naming the file and
    what is wrong for a missing, empty (an interrupted write), truncated, text or foreign file.

    ``weights_only`` (the default, and what every reader passes unless its user trusts the file):
    tensors and plain values only; a pickle that names any other callable (``os.system`` in a
    crafted file) is refused, naming it, before anything of the file runs."""
    import pickle
    import zipfile

    import torch

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a folder, not a {what}")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: is empty (0 bytes), not a {what}: an interrupted write?")
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            return torch.load(path, map_location=map_location, weights_only=weights_only,
                              mmap=mmap and _is_zip(path))
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, zipfile.BadZipFile, OSError,
            AttributeError, ImportError, IndexError, KeyError, TypeError) as e:
        kind = _kind_of(path)
        if kind.startswith("a truncated"):
            raise InputError(f"{path}: not a readable {what}: {kind} (an interrupted write or copy?)") from None
        if kind != "a PyTorch file" and not kind.startswith("a legacy"):
            raise InputError(f"{path}: not a {what}: {kind}") from None
        if weights_only and "Weights only load failed" in str(e):
            name = refused_global(e)
            found = _checkpoint_kind(path)
            raise InputError(f"{path}: refused: it holds Python objects beyond tensors and plain values "
                             f"({name or 'unknown'}), which could run code when loaded"
                             + (f" (it looks like {found})" if found else f"; not a {what} this project wrote")
                             + f"; {TRUST_HINT}") from None
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(f"{path}: not a readable {what} ({kind}: {first[:100]})") from None


def _is_zip(path: Path) -> bool:
    with path.open("rb") as fh:
        return fh.read(4) == b"PK\x03\x04"


__all__ = ["TRUST_HINT", "load_torch", "os_error_in", "plain_data", "refused_global", "save_torch"]
