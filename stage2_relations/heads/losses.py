"""Losses of the heads and of RS-Net, written out so that tests can pin them by hand."""

from __future__ import annotations

import torch


def multilabel_margin_loss(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Multi-label margin loss (RS-Net Eq. 8, as ``nn.MultiLabelMarginLoss``, which STTran uses).

    scores (M, K) predicted scores (STTran feeds sigmoid probabilities); targets (M, K) multi-hot.
    Per row: sum over positives m and negatives n of max(0, 1 - s_m + s_n), divided by K
    (torch's normalisation); the mean over rows. Rows without any positive contribute 0.
    Returns a scalar (0 for M = 0).
    """
    if scores.shape[0] == 0:
        return scores.sum() * 0.0
    pos = targets > 0
    margins = (1.0 - scores[:, :, None] + scores[:, None, :]).clamp(min=0)  # [m, n] = 1 - s_m + s_n
    mask = pos[:, :, None] & ~pos[:, None, :]
    per_row = (margins * mask).sum((1, 2)) / scores.shape[1]
    return per_row.mean()


def focal_loss(logits: torch.Tensor, positive: torch.Tensor, *, alpha: tuple[float, float] = (0.5, 0.5),
               gamma: float = 2.0) -> torch.Tensor:
    """RS-Net's relation-scoring loss (Eq. 9): the focal loss of the 2-way softmax.

    logits (M, 2), class 0 = positive relation (the paper's p_{t,0}), class 1 = negative;
    positive (M,) bool. For each pair with target class c: -alpha_c (1 - p_c)^gamma log p_c
    (the one-hot target of Eq. 9 keeps only the true class's term). The mean over pairs
    (the paper writes a sum; the mean keeps its scale independent of the number of pairs).
    """
    if logits.shape[0] == 0:
        return logits.sum() * 0.0
    target = (~positive.bool()).long()  # 0 positive, 1 negative
    logp = logits.log_softmax(-1).gather(1, target[:, None])[:, 0]
    p = logp.exp()
    a = torch.tensor(alpha, dtype=logits.dtype, device=logits.device)[target]
    return (-a * (1 - p).pow(gamma) * logp).mean()
