"""A run's model and checkpoints: the model a recipe builds for a store, reading a ``last.pth`` /
``best.pth`` (weights only unless trusted), and checking it against the store it was trained on.
``train`` writes them; ``eval``, ``compare`` and ``predict`` read them."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from common.errors import InputError
from common.torch_files import load_torch
from stage2_relations.heads import build_model
from stage2_relations.recipe import TrainConfig, check_config, head_context
from store import StoreError, open_store
from store.reader import identity_difference

CHECKPOINT_KEYS = ("model", "optimizer", "scheduler", "epoch", "history", "best_r20", "config")
"""What every relation-head checkpoint holds."""


def build_from_config(cfg: TrainConfig, meta, derived: dict[str, Any] | None = None) -> torch.nn.Module:
    """The model of a recipe for a store's metadata (vocabulary, feature and union sizes) and
    what :func:`stage2_relations.train.derive` computed."""
    return build_model(cfg.head, cfg.head_cfg, cfg.rsnet, head_context(cfg, meta, derived))


def read_checkpoint(path: str | Path, map_location: Any = "cpu", *, trust: bool = False) -> dict[str, Any]:
    """A relation-head checkpoint (``last.pth`` / ``best.pth``), or :class:`InputError` naming the
    file: empty, truncated, not a PyTorch file, another kind of checkpoint (a detector's), or one
    holding Python objects beyond tensors and plain values (refused unless ``trust``: loading
    them could run code)."""
    ckpt = load_torch(path, what="relation-head checkpoint", weights_only=not trust, map_location=map_location)
    missing = [k for k in CHECKPOINT_KEYS if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        kind = ("a detector checkpoint (stage 1)" if isinstance(ckpt, dict) and "arch" in ckpt
                else f"missing {', '.join(missing)}")
        raise InputError(f"{path}: not a relation-head checkpoint of `train` ({kind})")
    return ckpt


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu", store_path: str | None = None, *,
                    trust: bool = False, splits: tuple[str, ...] | None = None):
    """(model in eval mode, TrainConfig, checkpoint dict) from a ``last.pth`` / ``best.pth``;
    the model is built for the store named by the config (or ``store_path``), which must hold
    the run's videos of ``splits`` (those the caller reads; None: all) unchanged
    (:func:`check_run_store`). ``trust``: see :func:`read_checkpoint`."""
    ckpt = read_checkpoint(path, map_location=device, trust=trust)
    cfg = check_config(dict(ckpt["config"]), f"{path} (its config)")
    if store_path:
        cfg = dataclasses.replace(cfg, store=str(store_path))
    with open_store(cfg.store) as store:  # its identity and meta; the caller's data reads open their own
        check_run_store(ckpt, store.identity(), run=path, store_path=cfg.store, splits=splits)
        meta = store.meta
    model = build_from_config(cfg, meta, ckpt.get("derived", {})).to(device)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise InputError(f"{path}: its weights do not fit the model of its config and the store {cfg.store}: "
                         f"{str(e).splitlines()[0]}") from None
    model.eval()
    return model, cfg, ckpt


def check_run_store(ckpt: dict[str, Any], current: dict[str, Any], *, run: Path, store_path: str,
                    splits: tuple[str, ...] | None = None) -> None:
    """Refuse a store that is not the one the checkpoint was trained on (its recorded
    :meth:`~store.reader.Store.identity`): another extraction, or one missing videos of
    ``splits`` (those the caller reads; None: all). A checkpoint from before runs recorded
    their store is not checked."""
    recorded = ckpt.get("store")
    if not isinstance(recorded, dict):
        return
    why = identity_difference(recorded, current, splits)
    if why:
        raise StoreError(store_path, f"not the store {run} was trained on ({recorded.get('path')}): {why}; give "
                                     f"the run's store (--store), or train a new run on this one")


def run_checkpoint(run_dir: str | Path) -> Path:
    """The checkpoint a run folder is evaluated with: best.pth, else last.pth."""
    run_dir = Path(run_dir)
    for name in ("best.pth", "last.pth"):
        if (run_dir / name).exists():
            return run_dir / name
    raise InputError(f"{run_dir}: no best.pth or last.pth (not a `train` run folder, or no epoch finished yet)")


__all__ = ["CHECKPOINT_KEYS", "build_from_config", "check_run_store", "load_checkpoint", "read_checkpoint",
           "run_checkpoint"]
