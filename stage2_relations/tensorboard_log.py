"""TensorBoard event files of a training run (optional: the ``tensorboard`` package, the
``dsgg-cache[tensorboard]`` extra).

:class:`TensorBoardLog` is the one object :func:`stage2_relations.train.train` calls from its
loop: each epoch's log row (the same numbers as ``log.csv`` / ``log.json``) becomes scalars in
``RUN/tensorboard/``: ``loss/<term>`` (every loss term and ``total``), ``lr``, ``val/R@K`` (the
validation split's recall with constraint, fractions), ``speed/train_fps``, ``speed/val_fps``
and ``time/epoch_s``, each at step = the epoch (1-based). ``tensorboard --logdir OUT`` shows
every run under OUT.

A resume opens the folder with ``purge_step`` = the first epoch it trains, so the events of
epochs that a kill left behind last.pth are hidden, not doubled; a run started again
(``--overwrite``) purges from epoch 1. Without the package: one line, once a process, and the
run goes on (log.csv and log.json hold the same values).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Mapping

log = logging.getLogger(__name__)

FOLDER = "tensorboard"
MISSING = ("TensorBoard is not installed: no event files (pip install 'dsgg-cache[tensorboard]' or "
           "pip install tensorboard); log.csv and log.json hold the same values")
_told = False


def scalar_tags(row: Mapping[str, Any]) -> dict[str, float]:
    """The TensorBoard tags and values of one epoch's log row (pure)."""
    out: dict[str, float] = {}
    for key, value in row.items():
        if key in ("epoch", "threads") or not isinstance(value, (int, float)):
            continue
        if key.startswith("loss_"):
            out[f"loss/{key[len('loss_'):]}"] = float(value)
        elif key.startswith("val_") and key != "val_fps":
            out[f"val/{key[len('val_'):]}"] = float(value)
        elif key in ("train_fps", "val_fps"):
            out[f"speed/{key}"] = float(value)
        elif key == "time_s":
            out["time/epoch_s"] = float(value)
        else:
            out[key] = float(value)
    return out


class TensorBoardLog:
    """Writes each epoch's scalars into ``run_dir/tensorboard``; a no-op without TensorBoard or
    when ``enabled`` is False (the ranks other than 0 under DDP)."""

    def __init__(self, run_dir: str | Path, *, first_epoch: int = 1, enabled: bool = True,
                 echo: Callable[[str], None] | None = None) -> None:
        self.writer = None
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            global _told
            if not _told:
                (echo or log.warning)(MISSING)
                _told = True
            return
        self.writer = SummaryWriter(str(Path(run_dir) / FOLDER), purge_step=first_epoch)

    def epoch(self, row: Mapping[str, Any]) -> None:
        if self.writer is None:
            return
        for tag, value in scalar_tags(row).items():
            self.writer.add_scalar(tag, value, int(row["epoch"]))
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


__all__ = ["TensorBoardLog", "scalar_tags", "FOLDER", "MISSING"]
