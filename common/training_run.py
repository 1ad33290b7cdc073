"""A training run's folder, one set of rules for both trainers (``train-detector`` and ``train``).

A :class:`TrainingRun` names the folder, the files the trainer writes there and what a resume
may change; it holds every rule the two trainers share:

* **one writer**: the OS lock ``FOLDER/.lock`` (:meth:`TrainingRun.hold`);
* **claiming the folder** (:meth:`TrainingRun.claim`, :func:`common.run_folder.claim_run_folder`):
  a folder holding a run (finished or not) is continued only with ``resume`` and replaced (its run
  files, nothing else) only with ``overwrite``; otherwise one line naming what it holds;
* **resume checks** (:meth:`TrainingRun.check_resume`, or :meth:`TrainingRun.resume_check` to
  ask without raising, as ``compare`` does): the settings must be the run's (those of
  ``last.pth``, else of ``config.yaml`` when no epoch finished), but for the fields named in
  ``may_change``, each differing field named; and a run is never resumed with fewer epochs
  than it has completed;
* **files**, each written whole or not at all (:func:`common.files.atomic_write`):

  ``config.yaml``  the resolved recipe (a recipe ``--config`` takes again)
  ``run.json``     provenance: git revision, package versions, and what the trainer adds
  ``last.pth``     the source of truth, written first each epoch: weights, optimiser, epoch
                   and the log rows (``history``), with whatever else the trainer needs
  ``best.pth``     a copy of ``last.pth`` of the best epoch (trainers that select one)
  ``log.json``     the log rows, one dict per epoch (``epoch`` 1-based, then the trainer's
                   numbers); rebuilt whole from ``last.pth`` every epoch and on resume
  ``log.csv``      the same rows as CSV (floats to 6 significant digits)

* **a full disk** (any OS error) while an epoch is saved: one line naming the epoch and the
  last epoch intact in ``last.pth`` (:meth:`TrainingRun.save_epoch`);
* **repair on resume** (:meth:`TrainingRun.repair`): the logs and ``best.pth`` brought back in
  line with ``last.pth`` after a kill between two writes of one epoch;
* **seeds per epoch** (:class:`SeedRule`): each epoch reseeds from (seed, epoch), so a resumed
  epoch draws what the uninterrupted run drew. Each trainer keeps its own formula (its
  figures are pinned by tests and the demo).

A run's number of completed epochs, read without loading a checkpoint: :func:`epochs_done`; the
recipe ``--resume`` reads when not given one (the run's ``config.yaml``): :func:`resume_recipe`.
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import yaml

from common.config import load_yaml_mapping
from common.errors import ConfigError, UserError
from common.files import WriterLock, atomic_write, copy_file, describe_os_error, write_json, write_text
from common.run_folder import claim_run_folder
from common.torch_files import load_torch, save_torch

log = logging.getLogger(__name__)

CHECKPOINT = "last.pth"
CONFIG = "config.yaml"
RUN_INFO = "run.json"
LOGS = ("log.json", "log.csv")


@dataclass(frozen=True)
class SeedRule:
    """The seed of epoch ``e`` (0-based) of a run with seed ``s``:
    ``(s * seed_step + e * epoch_step) % modulus`` (no modulus: the plain sum)."""

    seed_step: int
    epoch_step: int
    modulus: int | None = None

    def epoch_seed(self, seed: int, epoch: int) -> int:
        value = int(seed) * self.seed_step + int(epoch) * self.epoch_step
        return value % self.modulus if self.modulus is not None else value


def config_differences(saved: Mapping[str, Any], now: Mapping[str, Any], defaults: Mapping[str, Any], *,
                       ignore: Sequence[str] = (),
                       same: Mapping[str, Callable[[Any, Any], bool]] | None = None) -> list[str]:
    """``"lr: run 0.001, now 0.01"`` for each field of ``now`` that differs from a run's ``saved``
    config (a field absent from ``saved`` counts as its value in ``defaults``), in ``now``'s
    order. ``same[field](before, now)`` says two differing values are one (e.g. one store
    given relative once and absolute once)."""
    out = []
    for k, value in now.items():
        if k in ignore:
            continue
        before = saved.get(k, defaults.get(k))
        if before != value and not (same and k in same and same[k](before, value)):
            out.append(f"{k}: run {before!r}, now {value!r}")
    return out


def loss_terms(losses: Mapping[str, Any]) -> str:
    """``"ce 0.693, box nan"``: a loss dict (scalar tensors) as a non-finite-loss message names it."""
    return ", ".join(f"{k} {float(v.detach()):.4g}" for k, v in losses.items())


def epochs_done(folder: Path | str) -> int:
    """How many epochs the run in ``folder`` has completed, from its logs: the rows of
    ``log.json`` when ``last.pth`` exists, else 0 (also for unreadable logs). ``last.pth`` may be
    one epoch ahead after a kill between two writes; ``--resume`` repairs the logs."""
    folder = Path(folder)
    if not (folder / CHECKPOINT).exists():
        return 0
    try:
        return len(json.loads((folder / LOGS[0]).read_text()))
    except (OSError, ValueError, TypeError):
        return 0


def resume_recipe(folder: Path | str, config_path: Path | None, *, resume: bool) -> Path | None:
    """The recipe a trainer's command reads: ``config_path`` when given; on ``resume`` without one,
    the run's own ``config.yaml`` when it has one (a resume needs the run's settings, which the
    user need not give again); else None (the defaults)."""
    if resume and config_path is None and (Path(folder) / CONFIG).exists():
        return Path(folder) / CONFIG
    return config_path


@dataclass(frozen=True)
class ResumeCheck:
    """What resuming a run with some settings meets (:meth:`TrainingRun.resume_check`):
    ``differences``, a line per field outside ``may_change`` where the settings differ from the
    run's (:func:`config_differences`); ``done``, the epochs of its ``last.pth``; ``epochs``, the
    epochs the settings ask for."""

    differences: tuple[str, ...]
    done: int
    epochs: int

    @property
    def shortens(self) -> bool:
        """Whether the settings ask for fewer epochs than the run has completed (a resume would not continue it)."""
        return self.epochs < self.done


@dataclass(frozen=True)
class TrainingRun:
    """The run folder ``folder`` of one trainer.

    ``run_files``: every file the trainer writes there (what ``overwrite`` removes and what makes
    the folder hold a run); ``what``: the lock's message (``"a run is being trained there"``);
    ``may_change``: the config fields a resume may change; ``best``: the file holding the best
    epoch's checkpoint (None: the trainer keeps none). ``defaults`` and ``same``: the trainer's
    config defaults (a field a run's config lacks has its default) and its rules for two values
    written two ways that name one thing, as :func:`config_differences` takes them.
    """

    folder: Path
    run_files: tuple[str, ...]
    what: str
    may_change: tuple[str, ...] = ()
    best: str | None = "best.pth"
    defaults: Mapping[str, Any] = field(default_factory=dict)
    same: Mapping[str, Callable[[Any, Any], bool]] = field(default_factory=dict)

    @property
    def checkpoint(self) -> Path:
        return self.folder / CHECKPOINT

    def hold(self) -> WriterLock:
        """The folder's lock (created with the folder), to be acquired by the one writer."""
        self.folder.mkdir(parents=True, exist_ok=True)
        return WriterLock(self.folder / ".lock", folder=self.folder, what=self.what)

    def claim(self, *, resume: bool, overwrite: bool) -> list[str]:
        """Check the folder (under its lock) before the run writes: see
        :func:`common.run_folder.claim_run_folder`. Returns the run files present."""
        return claim_run_folder(self.folder, self.run_files, resume=resume, overwrite=overwrite)

    def saved_config(self, checkpoint_config: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
        """The run's settings: those of its ``last.pth`` (``checkpoint_config``), else its
        ``config.yaml`` (a run killed in its first epoch), else None (no run)."""
        if checkpoint_config is not None:
            return checkpoint_config
        if (self.folder / CONFIG).exists():
            return load_yaml_mapping(self.folder / CONFIG)
        return None

    def resume_check(self, now: Mapping[str, Any], *, checkpoint_config: Mapping[str, Any] | None, done: int,
                     epochs: int) -> ResumeCheck:
        """What resuming this run (its settings: :meth:`saved_config`; ``done`` epochs in its
        ``last.pth``) with settings ``now`` for ``epochs`` epochs meets, nothing raised (a folder
        without a run: no differences)."""
        saved = self.saved_config(checkpoint_config)
        diffs = () if saved is None else tuple(config_differences(saved, now, self.defaults, ignore=self.may_change,
                                                                  same=self.same))
        return ResumeCheck(diffs, done=done, epochs=epochs)

    def check_resume(self, now: Mapping[str, Any], *, checkpoint_config: Mapping[str, Any] | None, done: int,
                     epochs: int) -> None:
        """Refuse to resume with settings ``now`` other than the run's (:meth:`resume_check`) in a
        field outside ``may_change``, naming each, or with ``epochs`` fewer than the ``done``
        epochs of its ``last.pth``: a :class:`ConfigError`."""
        check = self.resume_check(now, checkpoint_config=checkpoint_config, done=done, epochs=epochs)
        if check.differences:
            raise ConfigError(f"{self.folder}: --resume with settings other than the run's "
                              f"({'; '.join(check.differences)}): "
                              f"resume with the run's settings, or start a new run (--overwrite or another --out)")
        if check.shortens:
            raise ConfigError(f"{self.folder}: the run has completed {done} epochs; --resume with epochs {epochs} "
                              f"would not continue it")

    def write_config(self, config: Mapping[str, Any], info: Mapping[str, Any]) -> None:
        """``config.yaml`` (the resolved recipe, in field order) and ``run.json`` (``info``: the
        provenance and what the trainer adds)."""
        write_text(self.folder / CONFIG, yaml.safe_dump(dict(config), sort_keys=False))
        write_json(self.folder / RUN_INFO, dict(info), indent=2)

    def save_epoch(self, state: Mapping[str, Any], history: list[dict[str, Any]], *, epoch: int,
                   improved: bool = False) -> None:
        """The end of ``epoch`` (1-based): ``last.pth`` first (the source of truth a resume rebuilds
        the rest from), then ``best.pth`` when ``improved``, then the logs. An OS error (a full
        disk) is one :class:`UserError` line saying what is intact: ``last.pth`` of the epoch
        before, untouched."""
        try:
            save_torch(dict(state), self.checkpoint)
            if improved and self.best is not None:
                copy_file(self.checkpoint, self.folder / self.best)
            self.write_logs(history)
        except OSError as e:
            done = epoch - 1
            intact = (f"the run is intact up to epoch {done} ({CHECKPOINT})" if done
                      else "no epoch was saved yet (--resume starts from epoch 1)")
            raise UserError(f"{self.folder}: cannot write the checkpoint of epoch {epoch}: {describe_os_error(e)}; "
                            f"{intact}: fix that and --resume") from e

    def write_logs(self, history: list[dict[str, Any]]) -> None:
        """``log.json`` and ``log.csv`` from the rows, whole (the CSV's columns: every key, in
        order of first appearance)."""
        write_text(self.folder / LOGS[0], json.dumps(history, indent=2))
        keys: list[str] = []
        for row in history:
            keys += [k for k in row if k not in keys]
        with atomic_write(self.folder / LOGS[1], "w") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            for row in history:
                w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})

    def repair(self, history: list[dict[str, Any]], *, done: int, best_epoch: int | None,
               echo: Callable[[str], None]) -> None:
        """Bring the logs and ``best.pth`` in line with ``last.pth`` (its ``history`` and ``done``
        epochs), the source of truth, after a kill between the writes of one epoch: the logs are
        rewritten; ``best.pth`` is copied from ``last.pth`` when ``best_epoch`` (the epoch
        best.pth should hold) is the last one and best.pth holds another, nothing or a damaged file."""
        self.write_logs(history)
        if self.best is None or best_epoch is None:
            return
        best_path, have = self.folder / self.best, None
        if best_path.exists():
            try:
                have = int(load_torch(best_path, mmap=True)["epoch"])
            except (UserError, KeyError, TypeError):
                have = None
        if have == best_epoch:
            return
        held = f"epoch {have}" if have else "nothing usable"
        if best_epoch == done:
            copy_file(self.checkpoint, best_path)
            echo(f"repaired {self.best} from {CHECKPOINT} (epoch {best_epoch}; it held {held})")
        else:
            log.warning("%s holds %s, not epoch %d, the best; it cannot be rebuilt from %s (epoch %d)", best_path,
                        held, best_epoch, CHECKPOINT, done)


__all__ = ["CHECKPOINT", "CONFIG", "LOGS", "RUN_INFO", "ResumeCheck", "SeedRule", "TrainingRun", "config_differences",
           "epochs_done", "loss_terms", "resume_recipe"]
