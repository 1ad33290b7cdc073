"""Transformer pieces shared by the heads: an encoder layer whose positional term is added to
the queries and keys only (DETR style, as STTran's temporal decoder and RS-Net's temporal
encoder use it), and padding of variable-length groups (frames, windows, videos)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class PosEncoderLayer(nn.Module):
    """Post-norm self-attention layer: ``attn(q = k = x + pos, v = x)`` then a ReLU FFN.

    x (B, L, d), pos (B, L, d) or None, pad (B, L) bool, True = padding. Returns (B, L, d).
    """

    def __init__(self, d_model: int, num_heads: int, ffn_dim: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(d_model, num_heads, dropout=dropout, batch_first=True)
        self.linear1 = nn.Linear(d_model, ffn_dim)
        self.linear2 = nn.Linear(ffn_dim, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, pos: torch.Tensor | None = None, pad: torch.Tensor | None = None) -> torch.Tensor:
        qk = x if pos is None else x + pos
        a = self.attn(qk, qk, x, key_padding_mask=pad, need_weights=False)[0]
        x = self.norm1(x + self.drop(a))
        return self.norm2(x + self.drop(self.linear2(self.drop(F.relu(self.linear1(x))))))


class PosEncoder(nn.Module):
    """A stack of :class:`PosEncoderLayer`; the same ``pos`` is added at every layer."""

    def __init__(self, d_model: int, num_heads: int, ffn_dim: int, num_layers: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.layers = nn.ModuleList(PosEncoderLayer(d_model, num_heads, ffn_dim, dropout) for _ in range(num_layers))

    def forward(self, x: torch.Tensor, pos: torch.Tensor | None = None, pad: torch.Tensor | None = None) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, pos, pad)
        return x


def pad_groups(x: torch.Tensor, offsets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows of ``x`` (M, d) grouped by half-open ``offsets`` (G+1,) -> padded (G, L, d).

    Returns (padded, pad mask (G, L) True = padding, group of each row (M,), position (M,)),
    so that ``padded[group, position] == x``.
    """
    counts = offsets.diff()
    g = offsets.numel() - 1
    length = int(counts.max()) if g and counts.numel() else 0
    group = torch.repeat_interleave(torch.arange(g, device=x.device), counts.to(x.device))
    position = torch.arange(x.shape[0], device=x.device) - offsets.to(x.device)[group]
    padded = x.new_zeros((g, max(length, 1), x.shape[-1]))
    padded[group, position] = x
    pad = torch.ones((g, max(length, 1)), dtype=torch.bool, device=x.device)
    pad[group, position] = False
    return padded, pad, group, position
