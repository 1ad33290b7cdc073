"""What the training-speed benchmarks share: one epoch's batches kept in memory, a fresh model
and optimiser for each timed run, and the training step (``bench/train_speed.py``,
``bench/loader_speed.py``)."""

from __future__ import annotations

import torch

from stage2_relations.data import Collator, VideoDataset, epoch_order
from stage2_relations.train import build_from_config, train_step


def epoch_batches(ds: VideoDataset, cfg) -> tuple[list[int], Collator, list, int]:
    """The first epoch of ``ds`` as ``train`` draws it: the video order, the collator, the
    batches (kept in memory) and their frames."""
    order = epoch_order(len(ds), cfg.seed, 0)
    collate = Collator.of(ds)
    vpb = cfg.videos_per_batch
    batches = [collate([ds[i] for i in order[j:j + vpb]]) for j in range(0, len(order), vpb)]
    return order, collate, batches, sum(b.num_frames for b in batches)


def fresh_model(cfg, meta, device: torch.device | str = "cpu") -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """The recipe's model (seeded) in training mode on ``device``, with its AdamW."""
    torch.manual_seed(cfg.seed)
    model = build_from_config(cfg, meta).to(device)
    model.train()
    return model, torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def step(model, optimizer, batch, clip: float) -> None:
    """One training step exactly as ``train`` takes it (:func:`stage2_relations.train.train_step`)."""
    train_step(model, model.loss, batch, optimizer, device=batch.boxes.device, grad_clip=clip, sums={})
