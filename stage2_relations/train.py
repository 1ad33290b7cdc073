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

Run folder (one writer: the OS lock ``OUT/.lock``; every file written whole or not at all):
``last.pth`` is the source of truth. ``train`` refuses a folder that holds a run unless told to
continue it (``resume``, which refuses settings that differ from the run's, naming them) or to
replace it (``overwrite``). A resume first repairs what a kill between two writes can leave:
``log.csv`` / ``log.json`` are rebuilt from ``last.pth``'s history, and ``best.pth`` from
``last.pth`` when the last epoch was the best and best.pth is older, missing or unreadable.

DDP: under ``torchrun`` (``WORLD_SIZE`` > 1) each rank takes every world_size-th video of the
epoch's order (padded to equal length), gradients are averaged by DistributedDataParallel,
rank 0 evaluates, logs and writes checkpoints, and the validation R@20 is broadcast so every
rank steps its scheduler alike. Backend gloo on CPU, nccl on CUDA.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable

import torch
import yaml
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from common.config import load_yaml_mapping
from common.errors import ConfigError, InputError, NonFiniteError, UserError
from common.files import WriterLock, atomic_write, copy_file, describe_os_error, die_with_parent, write_json, write_text
from common.run_folder import claim_run_folder
from common.runtime import distributed_rank, provenance, resolve_device
from common.threads import torch_threads
from common.torch_files import load_torch, save_torch
from stage2_relations.checkpoints import build_from_config, check_run_store, read_checkpoint
from stage2_relations.data import Collator, VideoDataset, epoch_order
from stage2_relations.heads import count_parameters, head_class
from stage2_relations.recipe import BUILD_ERRORS, RESUME_MAY_CHANGE, TrainConfig, check_config, check_run_inputs
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


def epoch_seed(seed: int, epoch: int) -> int:
    return (int(seed) * 1_000_003 + int(epoch) * 7919) % (2**31)


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
        terms = ", ".join(f"{k} {float(v.detach()):.4g}" for k, v in losses.items())
        raise NonFiniteError(f"{where + ': ' if where else ''}the loss is not finite ({terms}) in "
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


def config_differences(saved: dict[str, Any], cfg: TrainConfig, ignore: tuple[str, ...] = ()) -> list[str]:
    """``"lr: run 0.001, now 0.01"`` for each field where ``cfg`` differs from a run's ``saved``
    config (fields absent from ``saved`` count as their defaults)."""
    defaults = TrainConfig().to_dict()
    now = cfg.to_dict()
    out = []
    for k in now:
        if k in ignore:
            continue
        before = saved.get(k, defaults[k])
        if k == "store" and before and now[k] and store_location(before) == store_location(now[k]):
            continue  # one store, given relative once and absolute once
        if before != now[k]:
            out.append(f"{k}: run {before!r}, now {now[k]!r}")
    return out


def prepare_run_folder(out_dir: Path, cfg: TrainConfig, *, resume: bool, overwrite: bool,
                       trust: bool = False) -> dict[str, Any] | None:
    """Check ``out_dir`` (held under its lock) for a run; returns the checkpoint to resume from.

    Removes temporaries of killed writes. Without ``resume`` or ``overwrite`` a folder holding
    a run is an error; ``overwrite`` removes the run's files (nothing else); ``resume`` loads
    ``last.pth`` (None when the run has none yet: it starts from epoch 1) and refuses a config
    that differs from the run's in a field other than :data:`RESUME_MAY_CHANGE`.
    """
    claim_run_folder(out_dir, RUN_FILES, resume=resume, overwrite=overwrite)
    if not resume:
        return None
    ckpt, saved = None, None
    if (out_dir / "last.pth").exists():
        ckpt = read_checkpoint(out_dir / "last.pth", trust=trust)
        saved = ckpt["config"]
    elif (out_dir / "config.yaml").exists():
        saved = load_yaml_mapping(out_dir / "config.yaml")
    if saved is not None:
        diffs = config_differences(saved, cfg, ignore=RESUME_MAY_CHANGE)
        if diffs:
            raise ConfigError(f"{out_dir}: --resume with settings other than the run's ({'; '.join(diffs)}): resume "
                              f"with the run's settings, or start a new run (--overwrite or another --out)")
    if ckpt is not None and cfg.epochs < int(ckpt["epoch"]):
        raise ConfigError(f"{out_dir}: the run has completed {int(ckpt['epoch'])} epochs; --resume with epochs "
                          f"{cfg.epochs} would not continue it")
    return ckpt


def repair_run_folder(out_dir: Path, ckpt: dict[str, Any], echo: Callable[[str], None]) -> None:
    """Make the logs and best.pth agree with ``last.pth`` (``ckpt``), the source of truth: a kill
    between the writes of one epoch leaves them behind it."""
    history = list(ckpt["history"])
    _write_logs(out_dir, history)
    want = best_epoch(history)
    if want is None:
        return
    best_path, have = out_dir / "best.pth", None
    if best_path.exists():
        try:
            have = int(load_torch(best_path, mmap=True)["epoch"])
        except (UserError, KeyError, TypeError):
            have = None
    if have == want:
        return
    if want == int(ckpt["epoch"]):
        copy_file(out_dir / "last.pth", best_path)
        echo(f"repaired best.pth from last.pth (epoch {want}; it held {'epoch ' + str(have) if have else 'nothing usable'})")
    else:
        log.warning("%s holds %s, not epoch %d, the best; it cannot be rebuilt from last.pth (epoch %d)", best_path,
                    f"epoch {have}" if have else "nothing usable", want, int(ckpt["epoch"]))


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
        out_dir.mkdir(parents=True, exist_ok=True)
        lock = WriterLock(out_dir / ".lock", folder=out_dir, what="a run is being trained there").acquire()
    try:
        with torch_threads(cfg.threads, cfg.num_workers) as threads:
            return _train(cfg, out_dir, resume=resume, overwrite=overwrite, progress=progress,
                          echo=echo or (lambda s: tqdm.write(s)), threads=threads, trust=trust_checkpoint)
    finally:
        if lock is not None:
            lock.release()


def _train(cfg: TrainConfig, out_dir: Path, *, resume: bool, overwrite: bool, progress: bool,
           echo: Callable[[str], None], threads: int, trust: bool = False) -> dict[str, Any]:
    from stage2_relations.scoring import score_model

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
    store = open_store(cfg.store, verify=cfg.verify_checksums)
    meta = store.meta
    # Before any work, --overwrite's removal included; a resumed run has its embeddings in last.pth.
    check_run_inputs(cfg, store, glove=overwrite or not (resume and (out_dir / "last.pth").exists()))
    ckpt = None
    if is_main:
        ckpt = prepare_run_folder(out_dir, cfg, resume=resume, overwrite=overwrite, trust=trust)
    elif resume and (out_dir / "last.pth").exists():
        ckpt = read_checkpoint(out_dir / "last.pth", trust=trust)

    torch.manual_seed(cfg.seed)
    store_id = store.identity()
    if ckpt is not None:
        check_run_store(ckpt, store_id, run=out_dir / "last.pth", store_path=cfg.store,
                        splits=(cfg.train_split, cfg.val_split))
    options = cfg.view_options()
    train_ds = VideoDataset(cfg.store, cfg.train_split, cfg.mode, train=True, seed=cfg.seed, options=options,
                            preload=cfg.preload, max_videos=cfg.max_videos, verify=cfg.verify_checksums)
    val_ds = VideoDataset(cfg.store, cfg.val_split, cfg.mode, train=False, options=options, preload=cfg.preload,
                          max_videos=cfg.val_max_videos, verify=cfg.verify_checksums) if store.videos(cfg.val_split) else None
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
            raise InputError(f"{out_dir / 'last.pth'}: does not fit the model of its own config: "
                             f"{str(e).splitlines()[0]}") from None
        start_epoch, history, best = int(ckpt["epoch"]), list(ckpt["history"]), float(ckpt["best_r20"])
    net: torch.nn.Module = model
    if distributed:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                      find_unused_parameters=True)
    if is_main:
        write_text(out_dir / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        save_torch(derived, out_dir / "derived.pt")
        write_json(out_dir / "run.json", {**prov, "parameters": n_params, "world_size": world, "device": str(device),
                                        "threads": threads, "store": {"path": store_id["path"],
                                                                      "compat": store_id["compat"],
                                                                      "videos": len(store_id["videos"])}},
                   indent=2)
        if ckpt is not None:
            repair_run_folder(out_dir, ckpt, echo)
        echo(f"{cfg.head}{' + RS-Net' if cfg.rsnet is not None else ''} {cfg.mode}: {n_params / 1e6:.2f} M parameters, "
             f"{len(train_ds)} train / {len(val_ds) if val_ds else 0} val videos, world size {world}, {device}, "
             f"{threads} threads"
             + (f"; resuming at epoch {start_epoch + 1} of {cfg.epochs}" if ckpt is not None else ""))

    board = TensorBoardLog(out_dir, first_epoch=start_epoch + 1, enabled=is_main, echo=echo)  # optional event files
    try:
        for epoch in range(start_epoch, cfg.epochs):
            t0 = time.perf_counter()
            torch.manual_seed(epoch_seed(cfg.seed, epoch))
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
                _save_epoch(out_dir, ckpt, history, improved)
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


def _save_epoch(out_dir: Path, ckpt: dict[str, Any], history: list[dict], improved: bool) -> None:
    """last.pth first (the source of truth a resume rebuilds the rest from), then best.pth and
    the logs; an OS error (a full disk) is one line that says what is intact."""
    try:
        save_torch(ckpt, out_dir / "last.pth")
        if improved:
            copy_file(out_dir / "last.pth", out_dir / "best.pth")
        _write_logs(out_dir, history)
    except OSError as e:
        done = int(ckpt["epoch"]) - 1
        intact = (f"the run is intact up to epoch {done} (last.pth)" if done
                  else "no epoch was saved yet (--resume starts from epoch 1)")
        raise UserError(f"{out_dir}: cannot write the checkpoint of epoch {ckpt['epoch']}: {describe_os_error(e)}; "
                        f"{intact}: fix that and --resume") from e


def _write_logs(out_dir: Path, history: list[dict]) -> None:
    write_text(out_dir / "log.json", json.dumps(history, indent=2))
    keys: list[str] = []
    for row in history:
        keys += [k for k in row if k not in keys]
    with atomic_write(out_dir / "log.csv", "w") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        for row in history:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})


__all__ = ["train", "train_one_epoch"]
