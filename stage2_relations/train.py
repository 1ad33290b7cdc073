"""Stage-2 training: a relation head (optionally inside RS-Net) from the feature store.

A plain loop (:func:`train_one_epoch` / :func:`~stage2_relations.evaluation.predict.evaluate_model`):
loss dict -> sum -> finite check -> backward -> clip -> AdamW step. The learning rate follows
ReduceLROnPlateau on the **validation** split's R@20 (with constraint). Every epoch writes
``log.csv`` / ``log.json`` and ``last.pth``; the best validation R@20 also ``best.pth``.

Exact resume: the video order of epoch e is a permutation from (seed, e), the negatives of a
video are drawn from (seed, e, video), and the torch RNG (dropout) is reseeded from (seed, e)
at the start of each epoch, so an epoch depends only on the weights, optimiser and scheduler
state at its start, which ``last.pth`` holds. ``--resume`` therefore gives the same result as an
uninterrupted run (bit-for-bit on CPU with the same thread count).

DDP: under ``torchrun`` (``WORLD_SIZE`` > 1) each rank takes every world_size-th video of the
epoch's order (padded to equal length), gradients are averaged by DistributedDataParallel,
rank 0 evaluates, logs and writes checkpoints, and the validation R@20 is broadcast so every
rank steps its scheduler alike. Backend gloo on CPU, nccl on CUDA.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import os
import platform
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import yaml
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from stage2_relations.data import Collator, VideoDataset, epoch_order
from stage2_relations.heads import HeadContext, build_model, count_parameters, head_class
from stage2_relations.views import ViewOptions
from store import open_store
from store.vocabulary import Mode

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """A training recipe (``configs/*.yaml``); every field can be overridden on the CLI."""

    store: str = ""
    mode: str = "predcls"
    head: str = "sttran"
    head_cfg: dict = field(default_factory=dict)
    """Keyword arguments of the head (e.g. hidden, embed_dim, num_heads, ffn_dim)."""
    rsnet: dict | None = None
    """None: the bare head; a dict (possibly empty): RS-Net around it, with these arguments."""
    glove: str | None = None
    """GloVe text file to initialise the class embeddings (None: random, learnable)."""
    assignment: str = "sttran"
    """SGDET training assignment: 'sttran' (lib/funcs.py) or 'strict' (stage2_relations.views)."""
    sgdet_boxes: str = "sttran"
    """SGDET test boxes (validation here, and the default of eval): 'sttran' or 'raw'."""
    object_scores: str = "sttran"
    """SGCLS / SGDET test object labels and scores: 'sttran' (the protocol) or 'classifier'."""
    negatives: bool | None = None
    """Pairs without a relation in the training view; None: with RS-Net only (the baselines
    train on positives, as their papers do)."""
    negative_labels: str = "detector"
    """SGDET: the class of boxes only negatives use, 'detector' or 'assigned' (views.ViewOptions)."""
    epochs: int = 10
    lr: float = 1e-5
    weight_decay: float = 0.01
    grad_clip: float = 5.0
    videos_per_batch: int = 1
    num_workers: int = 0
    preload: bool = False
    seed: int = 0
    negative_ratio: float = 1.2
    negative_iou: float = 0.5
    plateau_factor: float = 0.5
    plateau_patience: int = 1
    plateau_threshold: float = 1e-4
    """ReduceLROnPlateau: an absolute gain below this is no gain (STTran: 1e-4, 'abs')."""
    min_lr: float = 1e-7
    train_split: str = "train"
    val_split: str = "val"
    max_videos: int = 0
    """Train on at most this many videos (0: all), for trials."""
    val_max_videos: int = 0
    device: str = "auto"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def view_options(self) -> ViewOptions:
        """The data views this recipe trains and validates on, with the fields the head requires
        (:meth:`~stage2_relations.heads.base.RelationHead.required_view_options`; DSG-DETR: the
        pair pool and, in SGDET, the raw detections, which a recipe naming other boxes contradicts)."""
        negatives = self.rsnet is not None if self.negatives is None else bool(self.negatives)
        required = head_class(self.head).required_view_options()
        if Mode(self.mode) is Mode.SGDET and required.get("sgdet_boxes", self.sgdet_boxes) != self.sgdet_boxes:
            raise ValueError(f"head {self.head!r} needs sgdet_boxes: {required['sgdet_boxes']} (it rebuilds the SGDET "
                             f"test boxes itself); the recipe says {self.sgdet_boxes!r}")
        options = ViewOptions(assignment=self.assignment, sgdet_boxes=self.sgdet_boxes,
                              object_scores=self.object_scores, negatives=negatives,
                              negative_labels=self.negative_labels,
                              negative_ratio=self.negative_ratio, negative_iou=self.negative_iou)
        return dataclasses.replace(options, **required)


def load_config(path: str | Path | None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """The recipe at ``path`` (YAML) with ``overrides`` applied; dotted keys reach into dicts
    (``head_cfg.hidden=64``, ``rsnet.temporal_token=mean``). Unknown keys raise ValueError."""
    data: dict[str, Any] = {}
    if path is not None:
        data = yaml.safe_load(Path(path).read_text()) or {}
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        top, _, rest = key.partition(".")
        if top not in known:
            raise ValueError(f"unknown config key {top!r}; known: {sorted(known)}")
        if rest:
            sub = dict(data.get(top) or {})
            sub[rest] = value
            data[top] = sub
        else:
            data[top] = value
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"unknown config key(s) {sorted(unknown)} in {path}")
    return TrainConfig(**data)


def parse_override(text: str) -> tuple[str, Any]:
    """``"key=value"`` with the value parsed as YAML (``lr=1e-4``, ``rsnet=null``)."""
    if "=" not in text:
        raise ValueError(f"override {text!r} is not KEY=VALUE")
    k, v = text.split("=", 1)
    return k.strip(), yaml.safe_load(v)


def provenance() -> dict[str, Any]:
    """Git revision (with a '+dirty' mark) and package versions, for run folders and checkpoints."""
    root = Path(__file__).resolve().parents[1]
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True,
                               text=True, timeout=10).stdout.strip()
        rev = rev + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        rev = "unknown"
    versions = {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__}
    for name in ("h5py", "zarr", "yaml"):
        try:
            versions[name] = __import__(name).__version__
        except Exception:  # noqa: BLE001 - optional packages
            pass
    return {"git_revision": rev, "versions": versions}


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def derive(cfg: TrainConfig, train_ds: VideoDataset) -> dict[str, Any]:
    """What the model takes from outside its recipe, computed once before training: class
    embeddings from ``cfg.glove``, and whatever the head derives from the training split
    (:meth:`~stage2_relations.heads.base.RelationHead.derive`). Saved in every checkpoint."""
    head = head_class(cfg.head)
    derived: dict[str, Any] = {}
    if cfg.glove:
        derived["class_embeddings"] = head.glove_class_embeddings(cfg.glove, dict(cfg.head_cfg), train_ds.vocabulary)
    derived.update(head.derive(dict(cfg.head_cfg), train_ds))
    return derived


def build_from_config(cfg: TrainConfig, meta, derived: dict[str, Any] | None = None) -> torch.nn.Module:
    """The model of a recipe for a store's metadata (vocabulary, feature and union sizes) and
    what :func:`derive` computed."""
    context = HeadContext(vocabulary=meta.vocabulary, mode=Mode(cfg.mode), feature_dim=meta.feature_dim,
                          union_shape=tuple(meta.union_shape), derived=derived or {})
    return build_model(cfg.head, cfg.head_cfg, cfg.rsnet, context)


def epoch_seed(seed: int, epoch: int) -> int:
    return (int(seed) * 1_000_003 + int(epoch) * 7919) % (2**31)


def train_one_epoch(model: torch.nn.Module, loss_fn: Callable, loader, optimizer, *, device: torch.device,
                    grad_clip: float, progress: bool = True, desc: str = "") -> dict[str, float]:
    """One pass over ``loader``; returns the mean of each loss term (and 'total'), frames/s."""
    model.train()
    sums: dict[str, float] = {}
    steps, frames, t0 = 0, 0, time.perf_counter()
    bar = tqdm(loader, desc=desc, disable=not progress, leave=False, dynamic_ncols=True)
    for batch in bar:
        batch = batch.to(device)
        out = model(batch)
        losses = loss_fn(out, batch)
        total = sum(losses.values())
        if not torch.isfinite(total):
            raise FloatingPointError(f"non-finite loss in {batch.video_names}: "
                                     f"{ {k: float(v) for k, v in losses.items()} }")
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        for k, v in losses.items():
            sums[k] = sums.get(k, 0.0) + float(v.detach())
        sums["total"] = sums.get("total", 0.0) + float(total.detach())
        steps += 1
        frames += batch.num_frames
        bar.set_postfix(loss=f"{sums['total'] / steps:.3f}")
    out = {k: v / max(steps, 1) for k, v in sums.items()}
    out["train_fps"] = frames / max(time.perf_counter() - t0, 1e-9)
    return out


def _dist_info() -> tuple[int, int, int]:
    ws = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), ws, int(os.environ.get("LOCAL_RANK", "0"))


def make_loader(dataset: VideoDataset, order: list[int], cfg: TrainConfig, train: bool, device: torch.device) -> DataLoader:
    st = dataset.store
    return DataLoader(dataset, batch_size=cfg.videos_per_batch, sampler=order, num_workers=cfg.num_workers,
                      collate_fn=Collator.of(dataset), pin_memory=device.type == "cuda",
                      multiprocessing_context=st.mp_context if cfg.num_workers else None,
                      persistent_workers=False)


def train(cfg: TrainConfig, out_dir: str | Path, *, resume: bool = False, progress: bool = True,
          echo: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Train per ``cfg`` into ``out_dir``; returns {'history': [...], 'best_r20', 'params'}.

    Run folder: config.yaml (resolved), run.json (provenance, parameter count), derived.pt
    (what :func:`derive` computed from the training split), log.csv, log.json, last.pth
    (model, optimizer, scheduler, epoch, history, config, provenance, derived) and best.pth
    (the best validation R@20 so far).
    """
    from stage2_relations.evaluation.predict import evaluate_model

    echo = echo or (lambda s: tqdm.write(s))
    rank, world, local_rank = _dist_info()
    distributed = world > 1
    device = resolve_device(cfg.device)
    if distributed:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        if device.type == "cuda":
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
    out_dir = Path(out_dir)
    is_main = rank == 0
    if is_main:
        out_dir.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(cfg.seed)
    store = open_store(cfg.store)
    meta = store.meta
    options = cfg.view_options()
    train_ds = VideoDataset(cfg.store, cfg.train_split, cfg.mode, train=True, seed=cfg.seed, options=options,
                            preload=cfg.preload, max_videos=cfg.max_videos)
    val_ds = VideoDataset(cfg.store, cfg.val_split, cfg.mode, train=False, options=options, preload=cfg.preload,
                          max_videos=cfg.val_max_videos) if store.videos(cfg.val_split) else None
    if val_ds is not None and not len(val_ds):
        val_ds = None
    if not len(train_ds):
        raise ValueError(f"{cfg.store}: no videos in split {cfg.train_split!r} for {cfg.mode}")

    ckpt = None
    if resume:
        ckpt_path = out_dir / "last.pth"
        if not ckpt_path.exists():
            raise FileNotFoundError(f"--resume: no {ckpt_path}")
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=False)
    derived = ckpt.get("derived", {}) if ckpt is not None else derive(cfg, train_ds)
    model = build_from_config(cfg, meta, derived).to(device)
    n_params = count_parameters(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="max", factor=cfg.plateau_factor, patience=cfg.plateau_patience,
        threshold=cfg.plateau_threshold, threshold_mode="abs", min_lr=cfg.min_lr)
    start_epoch, history, best = 0, [], -1.0
    prov = provenance()
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        start_epoch, history, best = int(ckpt["epoch"]), list(ckpt["history"]), float(ckpt["best_r20"])
    net: torch.nn.Module = model
    if distributed:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                      find_unused_parameters=True)
    if is_main:
        (out_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        torch.save(derived, out_dir / "derived.pt")
        (out_dir / "run.json").write_text(json.dumps({**prov, "parameters": n_params, "world_size": world,
                                                      "device": str(device)}, indent=2))
        echo(f"{cfg.head}{' + RS-Net' if cfg.rsnet is not None else ''} {cfg.mode}: {n_params / 1e6:.2f} M parameters, "
             f"{len(train_ds)} train / {len(val_ds) if val_ds else 0} val videos, world size {world}, {device}")

    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        torch.manual_seed(epoch_seed(cfg.seed, epoch))
        train_ds.set_epoch(epoch)
        order = epoch_order(len(train_ds), cfg.seed, epoch, rank=rank, world_size=world)
        loader = make_loader(train_ds, order, cfg, True, device)
        stats = train_one_epoch(net, model.loss, loader, optimizer, device=device, grad_clip=cfg.grad_clip,
                                progress=progress and is_main, desc=f"epoch {epoch + 1}/{cfg.epochs}")
        val: dict[str, float] = {}
        if is_main and val_ds is not None:
            results, _, _, speed = evaluate_model(model, val_ds, device=device, constraints=("with",),
                                                  videos_per_batch=cfg.videos_per_batch)
            r = results["with"] if "with" in results else next(iter(results.values()))
            val = {f"val_R@{k}": float(r.recall[k]) for k in (10, 20, 50)}
            val["val_fps"] = speed["fps"]
        r20 = val.get("val_R@20", -stats["total"])
        if distributed:
            import torch.distributed as dist

            box = [r20]
            dist.broadcast_object_list(box, src=0)
            r20 = box[0]
        scheduler.step(r20)
        row = {"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"], **{f"loss_{k}": v for k, v in stats.items()
                                                                            if k != "train_fps"},
               "train_fps": stats["train_fps"], **val, "time_s": time.perf_counter() - t0}
        history.append(row)
        improved = r20 > best
        best = max(best, r20)
        if is_main:
            ckpt = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "epoch": epoch + 1, "history": history, "best_r20": best,
                    "config": cfg.to_dict(), "provenance": prov, "parameters": n_params, "derived": derived}
            torch.save(ckpt, out_dir / "last.pth.tmp")
            os.replace(out_dir / "last.pth.tmp", out_dir / "last.pth")
            if improved:
                torch.save(ckpt, out_dir / "best.pth")
            _write_logs(out_dir, history)
            vtxt = (f"val R@10/20/50 {100 * val['val_R@10']:.1f}/{100 * val['val_R@20']:.1f}/{100 * val['val_R@50']:.1f}"
                    if val else "no val split")
            echo(f"epoch {epoch + 1}/{cfg.epochs}  loss {stats['total']:.4f}  {vtxt}  lr {row['lr']:.2e}  "
                 f"{stats['train_fps']:.0f} frames/s  {row['time_s']:.1f}s")
        if distributed:
            import torch.distributed as dist

            dist.barrier()
    return {"history": history, "best_r20": best, "parameters": n_params}


def _write_logs(out_dir: Path, history: list[dict]) -> None:
    (out_dir / "log.json").write_text(json.dumps(history, indent=2))
    keys: list[str] = []
    for row in history:
        keys += [k for k in row if k not in keys]
    with open(out_dir / "log.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        for row in history:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu", store_path: str | None = None):
    """(model in eval mode, TrainConfig, checkpoint dict) from a ``last.pth`` / ``best.pth``;
    the model is built for the store named by the config (or ``store_path``)."""
    ckpt = torch.load(path, map_location=device, weights_only=False)
    cfg = TrainConfig(**ckpt["config"])
    if store_path:
        cfg = dataclasses.replace(cfg, store=str(store_path))
    meta = open_store(cfg.store).meta
    model = build_from_config(cfg, meta, ckpt.get("derived", {})).to(device)
    model.load_state_dict(ckpt["model"])
    model.eval()
    return model, cfg, ckpt


def run_checkpoint(run_dir: str | Path) -> Path:
    """The checkpoint a run folder is evaluated with: best.pth, else last.pth."""
    run_dir = Path(run_dir)
    for name in ("best.pth", "last.pth"):
        if (run_dir / name).exists():
            return run_dir / name
    raise FileNotFoundError(f"{run_dir}: no best.pth or last.pth")


__all__ = ["TrainConfig", "load_config", "parse_override", "provenance", "train", "train_one_epoch",
           "load_checkpoint", "run_checkpoint", "build_from_config"]
