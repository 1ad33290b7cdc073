"""Where and how this process runs, stated once for both stages: its place among torchrun's
processes, the device it computes on, and the code revision and package versions recorded
with every result (store root attributes, run folders, checkpoints).

torch is imported inside the functions that need it, so that ``store`` stays importable
without it.
"""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any

_SOURCE = Path(__file__).resolve().parents[1]


def distributed_rank() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) outside it."""
    return (int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")),
            int(os.environ.get("LOCAL_RANK", "0")))


def resolve_device(device: str):
    """``torch.device`` of a device name; 'auto' is CUDA when present, else the CPU. A name torch
    does not know, or a CUDA device this machine lacks (``cuda:7`` with one GPU), is a
    :class:`~common.errors.ConfigError` naming it."""
    import torch

    from common.errors import ConfigError

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"device {device!r}: not a device name ('cpu', 'cuda', 'cuda:1' or 'auto')") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if not count:
            raise ConfigError(f"device {device!r}: CUDA is not available on this machine")
        if dev.index is not None and dev.index >= count:
            raise ConfigError(f"device {device!r}: this machine has {count} CUDA device(s), cuda:0"
                              f"{f' to cuda:{count - 1}' if count > 1 else ''}")
    elif dev.type not in ("cpu", "meta") and dev.type != "mps":
        raise ConfigError(f"device {device!r}: this code runs on 'cpu' or 'cuda'")
    elif dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ConfigError(f"device {device!r}: MPS is not available on this machine")
    return dev


def cuda_missing(device: str) -> bool:
    """Whether ``device`` asks for CUDA on a machine without it."""
    import torch

    return device.startswith("cuda") and not torch.cuda.is_available()


def code_revision() -> str:
    """``git rev-parse HEAD`` of this source tree with '+dirty' when tracked files differ from
    it; '' outside a checkout, 'unknown' without git."""
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=_SOURCE, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=_SOURCE,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return rev + ("+dirty" if dirty else "") if rev else ""


def provenance() -> dict[str, Any]:
    """:func:`code_revision` and package versions, for run folders and checkpoints."""
    import numpy as np
    import torch

    versions = {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__}
    for name in ("h5py", "zarr", "yaml"):
        try:
            versions[name] = __import__(name).__version__
        except Exception:  # noqa: BLE001 - optional packages
            pass
    return {"git_revision": code_revision(), "versions": versions}
