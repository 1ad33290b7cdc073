"""Stage-2 training: a relation head (optionally inside RS-Net) from the feature store.

A plain loop (:func:`train_one_epoch` / :func:`~stage2_relations.scoring.score_model`):
loss dict -> sum -> finite check -> backward -> clip -> AdamW step. The learning rate follows
ReduceLROnPlateau on the **validation** split's R@20 (with constraint). Every epoch writes
``log.csv`` / ``log.json`` and ``last.pth``; the best validation R@20 also ``best.pth``; with the
optional ``tensorboard`` package also event files in ``tensorboard/``
(:mod:`stage2_relations.tensorboard_log`).

Exact resume: the video order of epoch e is a permutation from (seed, e), the negatives of a
video are drawn from (seed, e, video), and the torch RNG (dropout) is reseeded from (seed, e)
at the start of each epoch, so an epoch depends only on the weights, optimiser and scheduler
state at its start, which ``last.pth`` holds. ``--resume`` therefore gives the same result as an
uninterrupted run (bit-for-bit on CPU with the same thread count).

Run folder: the rules both trainers share (:class:`common.training_run.TrainingRun`): one
writer, a run continued only with ``resume`` (same settings but :data:`RESUME_MAY_CHANGE`) and
replaced only with ``overwrite``, ``last.pth`` the source of truth that a resume repairs
``log.csv`` / ``log.json`` and ``best.pth`` from, a full disk one line.

DDP: under ``torchrun`` (``WORLD_SIZE`` > 1) each rank takes every world_size-th video of the
epoch's order (padded to equal length), gradients are averaged by DistributedDataParallel,
rank 0 evaluates, logs and writes checkpoints, and the validation R@20 is broadcast so every
rank steps its scheduler alike. Backend gloo on CPU, nccl on CUDA.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from common.errors import ConfigError, InputError, NonFiniteError
from common.files import die_with_parent
from common.runtime import distributed_rank, provenance, resolve_device
from common.threads import torch_threads
from common.torch_files import save_torch
from common.training_run import SeedRule, TrainingRun, loss_terms
from stage2_relations.checkpoints import build_from_config, check_run_store, read_checkpoint
from stage2_relations.data import Collator, VideoDataset, epoch_order
from stage2_relations.heads import count_parameters, head_class
from stage2_relations.recipe import BUILD_ERRORS, RESUME_MAY_CHANGE, TrainConfig, check_config, check_run_inputs
from stage2_relations.scoring import score_model
from stage2_relations.tensorboard_log import TensorBoardLog
from store import StoreError, open_store
from store.reader import store_location

log = logging.getLogger(__name__)


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


EPOCH_SEEDS = SeedRule(seed_step=1_000_003, epoch_step=7919, modulus=2**31)
"""Epoch e reseeds torch's RNG (dropout) from ``(seed * 1000003 + e * 7919) % 2**31``."""


def train_one_epoch(model: torch.nn.Module, loss_fn: Callable, loader, optimizer, *, device: torch.device,
                    grad_clip: float, progress: bool = True, desc: str = "", epoch: int | None = None) -> dict[str, float]:
    """One pass over ``loader``; returns the mean of each loss term (and 'total'), frames/s.
    ``epoch`` (1-based) names the epoch in a :class:`NonFiniteError`."""
    model.train()
    sums: dict[str, float] = {}
    steps, frames, t0 = 0, 0, time.perf_counter()
    batches = iter(loader)
    bar = tqdm(batches, total=len(loader), desc=desc, disable=not progress, leave=False, dynamic_ncols=True)
    try:
        for batch in bar:
            train_step(model, loss_fn, batch, optimizer, device=device, grad_clip=grad_clip, sums=sums,
                       where=f"{'epoch ' + str(epoch) + ', ' if epoch is not None else ''}step {steps + 1}")
            steps += 1
            frames += batch.num_frames
            bar.set_postfix(loss=f"{sums['total'] / steps:.3f}")
    finally:  # an error mid-epoch: stop the DataLoader workers now, not when the traceback is freed
        bar.close()
        shutdown = getattr(batches, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()
    out = {k: v / max(steps, 1) for k, v in sums.items()}
    out["train_fps"] = frames / max(time.perf_counter() - t0, 1e-9)
    return out


def train_step(model: torch.nn.Module, loss_fn: Callable, batch, optimizer, *, device: torch.device,
               grad_clip: float, sums: dict[str, float], where: str = "") -> None:
    """Loss dict -> sum -> finite check -> backward -> finite gradient check -> clip -> step; adds
    the losses to ``sums``. A non-finite loss or gradient is a :class:`NonFiniteError` naming
    ``where`` (epoch and step), the videos and the likely cause (:func:`non_finite_cause`)."""
    batch = batch.to(device)
    out = model(batch)
    losses = loss_fn(out, batch)
    total = sum(losses.values())
    if not torch.isfinite(total):
        raise NonFiniteError(f"{where + ': ' if where else ''}the loss is not finite ({loss_terms(losses)}) in "
                             f"{', '.join(batch.video_names)}: {non_finite_cause(model, batch, optimizer)}")
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    # The norm is needed for the check; max_norm inf scales by 1, which changes no value.
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip if grad_clip > 0 else float("inf"))
    if not torch.isfinite(norm):
        raise NonFiniteError(f"{where + ': ' if where else ''}the gradients are not finite (the loss was "
                             f"{float(total.detach()):.4g}) in {', '.join(batch.video_names)}: "
                             f"{non_finite_cause(model, batch, optimizer)}")
    optimizer.step()
    for k, v in losses.items():
        sums[k] = sums.get(k, 0.0) + float(v.detach())
    sums["total"] = sums.get("total", 0.0) + float(total.detach())


def non_finite_cause(model: torch.nn.Module, batch, optimizer) -> str:
    """Why a step went non-finite, looked for only once it has: inputs of the batch (the store's
    features), weights (an earlier step, a learning rate too large), or else the step itself."""
    for f in dataclasses.fields(batch):
        value = getattr(batch, f.name)
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not torch.isfinite(value).all():
            return (f"its input {f.name} holds {int((~torch.isfinite(value)).sum())} non-finite values: the store's "
                    f"data is not finite (`cli.py store check` names each video)")
    bad = [n for n, p in model.named_parameters() if not torch.isfinite(p).all()]
    lr = optimizer.param_groups[0]["lr"]
    if bad:
        return (f"the weights are not finite ({bad[0]}{f' and {len(bad) - 1} more' if len(bad) > 1 else ''}) after "
                f"an earlier step: a learning rate too large (lr {lr:g})?")
    largest = max((float(p.detach().abs().max()) for p in model.parameters() if p.numel()), default=0.0)
    if largest > 1e6:  # trained weights of these heads stay within a few units
        return (f"the weights have grown to |w| = {largest:.3g} in earlier steps: a learning rate too large "
                f"(lr {lr:g})?")
    return f"the inputs and weights are finite: the step overflowed (lr {lr:g}; try a lower lr or grad_clip)"


def make_loader(dataset: VideoDataset, order: list[int], cfg: TrainConfig, train: bool, device: torch.device) -> DataLoader:
    st = dataset.store
    return DataLoader(dataset, batch_size=cfg.videos_per_batch, sampler=order, num_workers=cfg.num_workers,
                      collate_fn=Collator.of(dataset), pin_memory=device.type == "cuda",
                      multiprocessing_context=st.mp_context if cfg.num_workers else None,
                      persistent_workers=False,
                      worker_init_fn=functools.partial(die_with_parent, parent=os.getpid()))


RUN_FILES = ("config.yaml", "run.json", "derived.pt", "log.csv", "log.json", "last.pth", "best.pth")
"""What ``train`` writes into a run folder (``eval`` adds its own subfolders)."""


def epoch_score(row: dict[str, Any]) -> float:
    """What selects the learning rate and best.pth: validation R@20, or minus the training loss
    without a validation split."""
    return float(row["val_R@20"]) if "val_R@20" in row else -float(row["loss_total"])


def best_epoch(history: list[dict[str, Any]]) -> int | None:
    """The epoch (1-based) whose checkpoint best.pth holds: the last strict improvement of
    :func:`epoch_score` over the running best (None: no epoch yet)."""
    best, epoch = float("-inf"), None
    for row in history:
        if epoch_score(row) > best:
            best, epoch = epoch_score(row), int(row["epoch"])
    return epoch


def _same_store(before: Any, now: Any) -> bool:
    """One store, given relative once and absolute once."""
    return bool(before) and bool(now) and store_location(before) == store_location(now)


SAME = {"store": _same_store}
"""Config values that differ as written but name one thing (see :func:`common.training_run.config_differences`)."""


def training_run(out_dir: Path) -> TrainingRun:
    """``train``'s run folder: its files, its lock's message and its resume rule (what a resume
    may change, the recipe's defaults, :data:`SAME`)."""
    return TrainingRun(Path(out_dir), RUN_FILES, what="a run is being trained there", may_change=RESUME_MAY_CHANGE,
                       defaults=TrainConfig().to_dict(), same=SAME)


def prepare_run_folder(out_dir: Path, cfg: TrainConfig, *, resume: bool, overwrite: bool,
                       trust: bool = False) -> dict[str, Any] | None:
    """Check ``out_dir`` (held under its lock) for a run; returns the checkpoint to resume from.

    :meth:`TrainingRun.claim` (a run is continued only with ``resume``, replaced only with
    ``overwrite``); ``resume`` loads ``last.pth`` (None when the run has none yet: it starts
    from epoch 1) and refuses a config that differs from the run's in a field other than
    :data:`RESUME_MAY_CHANGE`, or fewer epochs than it has completed
    (:meth:`TrainingRun.check_resume`).
    """
    run = training_run(out_dir)
    run.claim(resume=resume, overwrite=overwrite)
    if not resume:
        return None
    ckpt = read_checkpoint(run.checkpoint, trust=trust) if run.checkpoint.exists() else None
    run.check_resume(cfg.to_dict(), checkpoint_config=ckpt["config"] if ckpt is not None else None,
                     done=int(ckpt["epoch"]) if ckpt is not None else 0, epochs=cfg.epochs)
    return ckpt


def train(cfg: TrainConfig, out_dir: str | Path, *, resume: bool = False, overwrite: bool = False,
          progress: bool = True, echo: Callable[[str], None] | None = None,
          trust_checkpoint: bool = False) -> dict[str, Any]:
    """Train per ``cfg`` into ``out_dir``; returns {'history': [...], 'best_r20', 'params'}.

    Run folder: config.yaml (resolved), run.json (provenance, parameter count), derived.pt
    (what :func:`derive` computed from the training split), log.csv, log.json, last.pth
    (model, optimizer, scheduler, epoch, history, config, provenance, derived) and best.pth
    (the best validation R@20 so far), each written whole or not at all. One process trains
    into a folder at a time (its lock ``.lock``). A folder that holds a run is an error unless
    ``resume`` (continue it: same settings, see :func:`prepare_run_folder`; without last.pth it
    starts from epoch 1) or ``overwrite`` (replace it). ``trust_checkpoint``: load the run's
    ``last.pth`` with full pickle (it may run code; only for a file one trusts).
    """
    cfg = check_config(cfg.to_dict(), "the training config")
    if cfg.store:  # the run names its store absolutely: evaluable from any directory
        cfg = dataclasses.replace(cfg, store=store_location(cfg.store))
    if resume and overwrite:
        raise ConfigError("give --resume or --overwrite, not both")
    out_dir = Path(out_dir)
    rank = distributed_rank()[0]
    lock = None
    if rank == 0:
        lock = training_run(out_dir).hold().acquire()
    try:
        with torch_threads(cfg.threads, cfg.num_workers) as threads:
            return _train(cfg, out_dir, resume=resume, overwrite=overwrite, progress=progress,
                          echo=echo or (lambda s: tqdm.write(s)), threads=threads, trust=trust_checkpoint)
    finally:
        if lock is not None:
            lock.release()


def _train(cfg: TrainConfig, out_dir: Path, *, resume: bool, overwrite: bool, progress: bool,
           echo: Callable[[str], None], threads: int, trust: bool = False) -> dict[str, Any]:
    rank, world, local_rank = distributed_rank()
    distributed = world > 1
    device = resolve_device(cfg.device)
    if distributed:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        if device.type == "cuda":
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
    is_main = rank == 0
    run = training_run(out_dir)
    # The store's identity, meta and splits; the datasets (and their DataLoader workers) open their own.
    with open_store(cfg.store, verify=cfg.verify_checksums) as store:
        meta = store.meta
        # Before any work, --overwrite's removal included; a resumed run has its embeddings in last.pth.
        check_run_inputs(cfg, store, glove=overwrite or not (resume and run.checkpoint.exists()))
        ckpt = None
        if is_main:
            ckpt = prepare_run_folder(out_dir, cfg, resume=resume, overwrite=overwrite, trust=trust)
        elif resume and run.checkpoint.exists():
            ckpt = read_checkpoint(run.checkpoint, trust=trust)

        torch.manual_seed(cfg.seed)
        store_id = store.identity()
        if ckpt is not None:
            check_run_store(ckpt, store_id, run=run.checkpoint, store_path=cfg.store,
                            splits=(cfg.train_split, cfg.val_split))
        options = cfg.view_options()
        train_ds = VideoDataset(cfg.store, cfg.train_split, cfg.mode, train=True, seed=cfg.seed, options=options,
                                preload=cfg.preload, max_videos=cfg.max_videos, verify=cfg.verify_checksums)
        val_ds = VideoDataset(cfg.store, cfg.val_split, cfg.mode, train=False, options=options, preload=cfg.preload,
                              max_videos=cfg.val_max_videos,
                              verify=cfg.verify_checksums) if store.videos(cfg.val_split) else None
        if val_ds is not None and not len(val_ds):
            val_ds = None
        if not len(train_ds):
            n = len(store.videos(cfg.train_split))
            why = (f"none of its {n} {cfg.train_split!r} videos keeps {train_ds.min_frames}+ frames in {cfg.mode} "
                   f"(SGCLS and SGDET see only the objects of the _filtersmall annotations)" if n
                   else f"it has no {cfg.train_split!r} videos (splits: "
                        f"{', '.join(sorted({store.split_of(v) for v in store.videos()})) or 'none'})")
            raise StoreError(cfg.store, f"cannot train {cfg.mode}: {why}")

    derived = ckpt.get("derived", {}) if ckpt is not None else derive(cfg, train_ds)
    try:
        model = build_from_config(cfg, meta, derived).to(device)
    except BUILD_ERRORS as e:
        raise ConfigError(f"the recipe's head_cfg / rsnet: the model cannot be built: {str(e).splitlines()[0]}") from e
    n_params = count_parameters(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="max", factor=cfg.plateau_factor, patience=cfg.plateau_patience,
        threshold=cfg.plateau_threshold, threshold_mode="abs", min_lr=cfg.min_lr)
    start_epoch, history, best = 0, [], float("-inf")
    prov = provenance()
    if ckpt is not None:
        try:
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise InputError(f"{run.checkpoint}: does not fit the model of its own config: "
                             f"{str(e).splitlines()[0]}") from None
        start_epoch, history, best = int(ckpt["epoch"]), list(ckpt["history"]), float(ckpt["best_r20"])
    net: torch.nn.Module = model
    if distributed:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                      find_unused_parameters=True)
    if is_main:
        run.write_config(cfg.to_dict(), {**prov, "parameters": n_params, "world_size": world, "device": str(device),
                                         "threads": threads, "store": {"path": store_id["path"],
                                                                       "compat": store_id["compat"],
                                                                       "videos": len(store_id["videos"])}})
        save_torch(derived, out_dir / "derived.pt")
        if ckpt is not None:
            run.repair(list(ckpt["history"]), done=int(ckpt["epoch"]), best_epoch=best_epoch(ckpt["history"]),
                       echo=echo)
        echo(f"{cfg.head}{' + RS-Net' if cfg.rsnet is not None else ''} {cfg.mode}: {n_params / 1e6:.2f} M parameters, "
             f"{len(train_ds)} train / {len(val_ds) if val_ds else 0} val videos, world size {world}, {device}, "
             f"{threads} threads"
             + (f"; resuming at epoch {start_epoch + 1} of {cfg.epochs}" if ckpt is not None else ""))

    board = TensorBoardLog(out_dir, first_epoch=start_epoch + 1, enabled=is_main, echo=echo)  # optional event files
    try:
        for epoch in range(start_epoch, cfg.epochs):
            t0 = time.perf_counter()
            torch.manual_seed(EPOCH_SEEDS.epoch_seed(cfg.seed, epoch))
            train_ds.set_epoch(epoch)
            order = epoch_order(len(train_ds), cfg.seed, epoch, rank=rank, world_size=world)
            loader = make_loader(train_ds, order, cfg, True, device)
            stats = train_one_epoch(net, model.loss, loader, optimizer, device=device, grad_clip=cfg.grad_clip,
                                    progress=progress and is_main, desc=f"epoch {epoch + 1}/{cfg.epochs}", epoch=epoch + 1)
            val: dict[str, float] = {}
            if is_main and val_ds is not None:
                results, _, _, speed = score_model(model, val_ds, device=device, constraints=("with",),
                                                    videos_per_batch=cfg.videos_per_batch)
                r = results["with"] if "with" in results else next(iter(results.values()))
                val = {f"val_R@{k}": float(r.recall[k]) for k in (10, 20, 50)}
                val["val_fps"] = speed["fps"]
            r20 = epoch_score({"loss_total": stats["total"], **val})
            if distributed:
                import torch.distributed as dist

                box = [r20]
                dist.broadcast_object_list(box, src=0)
                r20 = box[0]
            scheduler.step(r20)
            row = {"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"], **{f"loss_{k}": v for k, v in stats.items()
                                                                                if k != "train_fps"},
                   "train_fps": stats["train_fps"], **val, "time_s": time.perf_counter() - t0, "threads": threads}
            history.append(row)
            improved = r20 > best
            best = max(best, r20)
            if is_main:
                ckpt = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(), "epoch": epoch + 1, "history": history, "best_r20": best,
                        "config": cfg.to_dict(), "provenance": prov, "parameters": n_params, "derived": derived,
                        "store": store_id}
                run.save_epoch(ckpt, history, epoch=epoch + 1, improved=improved)
                board.epoch(row)
                vtxt = (f"val R@10/20/50 {100 * val['val_R@10']:.1f}/{100 * val['val_R@20']:.1f}/{100 * val['val_R@50']:.1f}"
                        if val else "no val split")
                echo(f"epoch {epoch + 1}/{cfg.epochs}  loss {stats['total']:.4f}  {vtxt}  lr {row['lr']:.2e}  "
                     f"{stats['train_fps']:.0f} frames/s  {row['time_s']:.1f}s")
            if distributed:
                import torch.distributed as dist

                dist.barrier()
    finally:  # the event files closed whatever ends the loop (a non-finite step, a full disk, Ctrl-C)
        board.close()
    return {"history": history, "best_r20": best, "parameters": n_params}


__all__ = ["train", "train_one_epoch"]
