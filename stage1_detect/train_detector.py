"""Fine-tune (or train from scratch) a detector on Action Genome frames and boxes.

A plain loop in the manner of torchvision's detection reference: AdamW, a warmup then
cosine learning-rate schedule (a function of the step), gradient clipping, a checkpoint
at the end of every epoch, exact resume, and mAP@0.5 on the validation split at the end.
The run folder follows the rules `train` follows (:class:`common.training_run.TrainingRun`).

The boxes are the reader's: the person box and every kept object of each frame.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from common.config import at_least, between, check_fields, load_yaml_mapping, one_of, positive
from common.errors import ConfigError, InputError, NonFiniteError
from common.files import write_json
from common.run_folder import same_file
from common.runtime import provenance as code_provenance
from common.torch_files import load_torch
from common.training_run import SeedRule, TrainingRun, loss_terms
from stage1_detect.action_genome import FrameAnnotation, ReaderOptions, load_action_genome
from stage1_detect.detection_metrics import DetectionMAP, detection_map
from stage1_detect.detectors import (
    ARCHITECTURES,
    Detector,
    DetectorSettings,
    build_detector,
    load_backbone_weights,
    load_weights,
    save_detector,
)
from stage1_detect.frames import FrameSource, open_frame_source

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DetectorTrainConfig:
    """A detector training recipe (``configs/detector_*.yaml``)."""

    arch: str = "small"
    settings: dict[str, Any] = field(default_factory=dict)
    """Overrides of the architecture's :class:`~stage1_detect.detectors.DetectorSettings`."""
    epochs: int = 10
    batch_size: int = 4
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 50
    min_lr_ratio: float = 0.05
    grad_clip: float = 10.0
    hflip: float = 0.5
    seed: int = 0
    num_workers: int = 1
    frame_source: str = "auto"
    backbone_weights: str | None = None
    """ImageNet classification weights (torchvision ResNet format) for the backbone."""
    init_weights: str | None = None
    """A detection checkpoint to start from (e.g. COCO); mismatched shapes are skipped."""
    filter_small: bool = False
    val_fraction: float = 0.05
    val_seed: int = 0
    max_val_frames: int = 0
    """Evaluate on at most this many validation frames (0: all)."""

    @classmethod
    def from_yaml(cls, path: Path | str | None, **overrides: Any) -> "DetectorTrainConfig":
        """The recipe at ``path`` with ``overrides`` (the command's options) applied, every field
        checked; a wrong one raises :class:`~common.errors.ConfigError` naming the file or the
        option (``--lr``) and the field."""
        data = load_yaml_mapping(path) if path is not None else {}
        origin = {k: str(path) for k in data}
        for k, v in overrides.items():
            if v is not None:
                data[k] = v
                origin[k] = "--" + k.replace("_", "-")
        where = lambda k: origin.get(k, str(path or "the recipe"))  # noqa: E731
        values = check_fields(cls, data, where=where, rules=DETECTOR_RULES)
        arch = values.get("arch", cls.arch)
        if arch not in ARCHITECTURES:
            raise ConfigError(f"{where('arch')}: arch: unknown architecture {arch!r}; known: "
                              f"{', '.join(sorted(ARCHITECTURES))}")
        known = {f.name for f in dataclasses.fields(DetectorSettings)}
        unknown = sorted(set(values.get("settings") or {}) - known)
        if unknown:
            raise ConfigError(f"{where('settings')}: settings: unknown key {unknown[0]!r}; known: "
                              f"{', '.join(sorted(known))}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


DETECTOR_RULES = {
    "epochs": at_least(1),
    "batch_size": at_least(1),
    "lr": positive(),
    "weight_decay": at_least(0),
    "warmup_steps": at_least(0),
    "min_lr_ratio": between(0, 1),
    "grad_clip": positive(),
    "hflip": between(0, 1),
    "seed": at_least(0),
    "num_workers": at_least(0),
    "frame_source": one_of("auto", "png", "mp4"),
    "val_fraction": between(0, 1, hi_open=True),
    "max_val_frames": at_least(0),
}


class DetectionFrames(Dataset):
    """Frames with their boxes: (uint8 (3, H, W) RGB, {'boxes': f32 (n, 4), 'labels': i64 (n,)}).

    A random horizontal flip is drawn from ``(seed, epoch, index)``, so an epoch sees the
    same flips whether or not the run was resumed.
    """

    def __init__(self, frames: Sequence[FrameAnnotation], source: FrameSource, person_index: int,
                 hflip: float = 0.0, seed: int = 0):
        self.frames = list(frames)
        self.source = source
        self.person_index = person_index
        self.hflip = hflip
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, i: int):
        frame = self.frames[i]
        (image,) = self.source.read(frame.video, [frame.frame_number])
        image = torch.from_numpy(np.array(image, copy=True)).permute(2, 0, 1)
        boxes = [o.box for o in frame.objects]
        labels = [o.label for o in frame.objects]
        if frame.has_person:
            boxes.insert(0, frame.person_box)
            labels.insert(0, self.person_index)
        boxes_t = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
        if self.hflip and np.random.default_rng([self.seed, self.epoch, i]).random() < self.hflip:
            width = image.shape[-1]
            image = image.flip(-1)
            boxes_t = torch.stack([width - boxes_t[:, 2], boxes_t[:, 1], width - boxes_t[:, 0], boxes_t[:, 3]], dim=1)
        return image, {"boxes": boxes_t, "labels": torch.tensor(labels, dtype=torch.int64)}, frame.name


def _collate(batch):
    return tuple(zip(*batch))


def lr_at(step: int, total: int, cfg: DetectorTrainConfig) -> float:
    """Linear warmup to ``cfg.lr``, then cosine down to ``cfg.lr * cfg.min_lr_ratio``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


@dataclass(frozen=True)
class TrainResult:
    checkpoint: Path
    epochs: int
    final_loss: float
    val: DetectionMAP | None
    seconds: float


RUN_FILES = ("detector.pth", "last.pth", "log.csv", "log.json", "config.yaml", "run.json", "val_map.json")
"""What ``train-detector`` writes into its run folder."""

RESUME_MAY_CHANGE = ("epochs", "num_workers", "max_val_frames")
"""The recipe fields ``--resume`` may change: more epochs (the schedule changes from there on, said
in a warning), the DataLoader workers and the validation frames (read after training)."""

EPOCH_SEEDS = SeedRule(seed_step=1000, epoch_step=1)
"""Epoch e reseeds torch's and Python's RNGs and the shuffling generator from ``seed * 1000 + e``."""

LOG_COLUMNS = ("epoch", "loss", "lr", "seconds")
"""A log row: the epoch (1-based), its mean loss per frame, the last learning rate, and the
seconds since the process started."""


def _same_weights(before: Any, now: Any) -> bool:
    """One weights file, named two ways (relative from another directory and absolute, a link)."""
    return bool(before) and bool(now) and same_file(before, now)


SAME = {"backbone_weights": _same_weights, "init_weights": _same_weights}
"""Config values that differ as written but name one file (see :func:`common.training_run.config_differences`)."""


def training_run(out: Path) -> TrainingRun:
    """``train-detector``'s run folder: its files, its lock's message, its resume rule (what a
    resume may change, the recipe's defaults, :data:`SAME`); no best.pth."""
    return TrainingRun(Path(out), RUN_FILES, what="a detector is being trained there", may_change=RESUME_MAY_CHANGE,
                       best=None, defaults=DetectorTrainConfig().to_dict(), same=SAME)


def train_detector(root: Path | str, out: Path | str, cfg: DetectorTrainConfig, *, device: str = "cpu",
                   resume: bool = False, overwrite: bool = False, progress: bool = True,
                   trust_checkpoint: bool = False) -> TrainResult:
    """Train ``cfg.arch`` on the train split of the AG root; write ``out/detector.pth``.

    ``out/last.pth`` holds everything needed to resume (model, optimizer, epoch (0-based), step,
    the log rows as ``history``); ``out/log.csv`` and ``out/log.json`` a row per epoch
    (:data:`LOG_COLUMNS`); ``out/config.yaml`` the resolved recipe (a recipe ``--config`` takes
    again) and ``out/run.json`` the detector, the data and the weights it started from. The
    folder's rules are `train`'s (:class:`common.training_run.TrainingRun`): one process at a
    time, a run continued only with ``resume`` (with the run's settings but
    :data:`RESUME_MAY_CHANGE`, never fewer epochs than it has completed) and replaced (its run
    files only) only with ``overwrite``; every file whole or not at all; a full disk one line.
    ``trust_checkpoint``: read ``last.pth`` with full pickle (it may run code; only for a file
    one trusts).
    """
    run = training_run(Path(out))
    with run.hold():
        run.claim(resume=resume, overwrite=overwrite)
        state = resume_state(run, cfg, device=device, trust_checkpoint=trust_checkpoint) if resume else None
        return _train_detector(root, run, cfg, state, device=device, progress=progress)


def resume_state(run: TrainingRun, cfg: DetectorTrainConfig, *, device: str,
                 trust_checkpoint: bool = False) -> dict[str, Any] | None:
    """The run's ``last.pth`` to continue from (None: no epoch finished yet), after the checks
    of :meth:`TrainingRun.check_resume`: the run's settings but :data:`RESUME_MAY_CHANGE`, and
    no fewer epochs than it has completed."""
    state = None
    if run.checkpoint.is_file():
        state = load_torch(run.checkpoint, what="detector training checkpoint (last.pth)",
                           weights_only=not trust_checkpoint, map_location=device)
        if not isinstance(state, dict) or not {"model", "optimizer", "epoch", "step"} <= set(state):
            raise InputError(f"{run.checkpoint}: not a train-detector checkpoint (no model, optimizer, epoch and step)")
    run.check_resume(cfg.to_dict(), checkpoint_config=state.get("config") if state is not None else None,
                     done=state["epoch"] + 1 if state is not None else 0, epochs=cfg.epochs)
    return state


def _train_detector(root: Path | str, run: TrainingRun, cfg: DetectorTrainConfig, state: dict[str, Any] | None, *,
                    device: str, progress: bool) -> TrainResult:
    start = time.time()
    out = run.folder
    ag = load_action_genome(root, ReaderOptions(filter_small=cfg.filter_small, val_fraction=cfg.val_fraction,
                                                val_seed=cfg.val_seed))
    source = open_frame_source(root, cfg.frame_source)
    person = ag.vocabulary.person_index
    train_frames = list(ag.frames("train"))
    if not train_frames:
        raise ValueError(f"{root}: the train split has no frames after filtering")
    val_frames = list(ag.frames("val"))
    if cfg.max_val_frames:
        val_frames = val_frames[: cfg.max_val_frames]

    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    try:
        detector = build_detector(cfg.arch, {"num_classes": ag.vocabulary.num_objects, "person_label": person,
                                             **cfg.settings})
    except KeyError as e:
        raise ConfigError(f"arch: {e.args[0] if e.args else e}") from None
    except (TypeError, ValueError) as e:
        raise ConfigError(f"settings: the {cfg.arch} detector cannot be built with them: {e}") from None
    provenance: dict[str, Any] = {}
    if cfg.backbone_weights:
        sha, missing = load_backbone_weights(detector, cfg.backbone_weights)
        provenance["backbone_weights"] = {"path": cfg.backbone_weights, "sha256": sha, "not_loaded": missing}
    if cfg.init_weights:
        provenance["init_weights"] = {"path": cfg.init_weights,
                                      "sha256": load_weights(detector, cfg.init_weights, skip_mismatched=True)}
    detector.to(device)
    params = [p for p in detector.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)

    dataset = DetectionFrames(train_frames, source, person, hflip=cfg.hflip, seed=cfg.seed)
    steps_per_epoch = math.ceil(len(dataset) / cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    first_epoch, step = 0, 0
    history: list[dict[str, Any]] = []
    if state is not None:
        # Checkpoints written before the log rows were dicts hold them as strings ("log_rows").
        history = list(state.get("history") or [dict(zip(LOG_COLUMNS, (int(r[0]), *map(float, r[1:]))))
                                                for r in state.get("log_rows", [])])
        detector.model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        first_epoch, step = state["epoch"] + 1, state["step"]
        saved_epochs = state.get("config", {}).get("epochs", cfg.epochs)
        if saved_epochs != cfg.epochs:
            log.warning("resuming a %d-epoch run with epochs=%d: the learning-rate schedule changes from here "
                        "on, so the result differs from a %d-epoch run from scratch", saved_epochs, cfg.epochs,
                        cfg.epochs)
        log.info("resuming %s at epoch %d (step %d)", run.checkpoint, first_epoch, step)
    run.write_config(cfg.to_dict(), {"detector": detector.info(), "root": str(root), **provenance,
                                     **code_provenance()})
    if state is not None:
        run.repair(history, done=first_epoch, best_epoch=None, echo=log.info)

    loss_value = float("nan")
    for epoch in range(first_epoch, cfg.epochs):
        detector.train()
        dataset.epoch = epoch
        # The RPN and RoI samplers draw from the global RNG: seed it per epoch, so that a run
        # resumed at this epoch draws what the uninterrupted run drew here.
        seed = EPOCH_SEEDS.epoch_seed(cfg.seed, epoch)
        torch.manual_seed(seed)
        random.seed(seed)
        generator = torch.Generator().manual_seed(seed)
        loader = DataLoader(dataset, batch_size=cfg.batch_size, shuffle=True, generator=generator,
                            num_workers=cfg.num_workers, collate_fn=_collate, drop_last=False,
                            persistent_workers=False)
        running, seen = 0.0, 0
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not progress, leave=False)
        for images, targets, _ in bar:
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, total_steps, cfg)
            images = [im.to(device) for im in images]
            targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
            losses = detector(images, targets)
            loss = sum(losses.values())
            if not torch.isfinite(loss):  # one line naming where, as stage 2's trainer says it
                raise NonFiniteError(f"{out}: the detector's loss is not finite at epoch {epoch + 1}, step {step + 1} "
                                     f"({loss_terms(losses)}): NaN in the frames or weights, or a learning rate ({cfg.lr:g}) "
                                     f"that blows the weights up; nothing of this epoch was saved")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            optimizer.step()
            step += 1
            running += loss.item() * len(images)
            seen += len(images)
            bar.set_postfix(loss=f"{running / seen:.3f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")
        loss_value = running / max(seen, 1)
        history.append(dict(zip(LOG_COLUMNS, (epoch + 1, loss_value, optimizer.param_groups[0]["lr"],
                                              time.time() - start))))
        # last.pth holds the log rows too: the logs are rebuilt from it, whole, every epoch
        run.save_epoch({"model": detector.model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
                        "step": step, "arch": detector.arch, "settings": detector.settings.to_dict(),
                        "config": cfg.to_dict(), "history": history}, history, epoch=epoch + 1)
        log.info("epoch %d/%d loss %.4f", epoch + 1, cfg.epochs, loss_value)
        if progress:
            tqdm.write(f"epoch {epoch + 1}/{cfg.epochs}: loss {loss_value:.4f}")

    checkpoint = out / "detector.pth"
    save_detector(detector.cpu(), checkpoint, config=cfg.to_dict())
    detector.to(device)
    val = evaluate_detector(detector, val_frames, source, person, device=device,
                            batch_size=cfg.batch_size, progress=progress) if val_frames else None
    if val is not None:
        write_json(out / "val_map.json", {"map50": val.map, "ap": val.ap, "num_gt": val.num_gt,
                                          "frames": len(val_frames)}, indent=2)
    return TrainResult(checkpoint=checkpoint, epochs=cfg.epochs, final_loss=loss_value, val=val,
                       seconds=time.time() - start)


@torch.no_grad()
def evaluate_detector(detector: Detector, frames: Sequence[FrameAnnotation], source: FrameSource,
                      person_index: int, *, device: str = "cpu", batch_size: int = 4,
                      progress: bool = True) -> DetectionMAP:
    """mAP@0.5 of ``detector`` on ``frames`` (person box and kept objects as ground truth)."""
    detector.eval()
    dataset = DetectionFrames(frames, source, person_index)
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=_collate)
    preds, gts = [], []
    for images, targets, _ in tqdm(loader, desc="val mAP", disable=not progress, leave=False):
        detections = detector.detect(detector.encode([im.to(device) for im in images]))
        for d, t in zip(detections, targets):
            preds.append((d.boxes.cpu().numpy(), d.scores.cpu().numpy(), d.labels.cpu().numpy()))
            gts.append((t["boxes"].numpy(), t["labels"].numpy()))
    return detection_map([p[0] for p in preds], [p[1] for p in preds], [p[2] for p in preds],
                         [g[0] for g in gts], [g[1] for g in gts])
