"""Pieces shared by the heads: an encoder layer whose positional term is added to the queries
and keys only (DETR style, as STTran's temporal decoder and RS-Net's temporal encoder use it),
padding of variable-length groups (frames, windows, videos), and STTran's union branch (the
union feature with the spatial-mask convs), which STKET and DSG-DETR share."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class PosEncoderLayer(nn.Module):
    """Post-norm self-attention layer: ``attn(q = k = x + pos, v = x)`` then a ReLU FFN.

    x (B, L, d), pos (B, L, d) or None, pad (B, L) bool, True = padding. Returns (B, L, d).
    ``ffn_norm=False`` leaves out the LayerNorm after the FFN, as STTran's temporal decoder
    layer (``lib/transformer.py::TransformerDecoderLayer``) does.
    """

    def __init__(self, d_model: int, num_heads: int, ffn_dim: int, dropout: float = 0.1, ffn_norm: bool = True) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(d_model, num_heads, dropout=dropout, batch_first=True)
        self.linear1 = nn.Linear(d_model, ffn_dim)
        self.linear2 = nn.Linear(ffn_dim, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model) if ffn_norm else nn.Identity()
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, pos: torch.Tensor | None = None, pad: torch.Tensor | None = None) -> torch.Tensor:
        qk = x if pos is None else x + pos
        a = self.attn(qk, qk, x, key_padding_mask=pad, need_weights=False)[0]
        x = self.norm1(x + self.drop(a))
        return self.norm2(x + self.drop(self.linear2(self.drop(F.relu(self.linear1(x))))))


class PosEncoder(nn.Module):
    """A stack of :class:`PosEncoderLayer`; the same ``pos`` is added at every layer."""

    def __init__(self, d_model: int, num_heads: int, ffn_dim: int, num_layers: int, dropout: float = 0.1,
                 ffn_norm: bool = True) -> None:
        super().__init__()
        self.layers = nn.ModuleList(PosEncoderLayer(d_model, num_heads, ffn_dim, dropout, ffn_norm)
                                    for _ in range(num_layers))

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


class MaskBranch(nn.Module):
    """STTran's spatial-mask convs: (M, 2, 27, 27) -> (M, channels, 7, 7)."""

    def __init__(self, channels: int = 256) -> None:
        super().__init__()
        half = max(channels // 2, 1)
        self.net = nn.Sequential(
            nn.Conv2d(2, half, kernel_size=7, stride=2, padding=3, bias=True), nn.ReLU(inplace=True),
            nn.BatchNorm2d(half, momentum=0.01), nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
            nn.Conv2d(half, channels, kernel_size=3, stride=1, padding=1, bias=True), nn.ReLU(inplace=True),
            nn.BatchNorm2d(channels, momentum=0.01),
        )

    def forward(self, masks: torch.Tensor) -> torch.Tensor:
        return self.net(masks)


class UnionBranch(nn.Module):
    """STTran's union feature of a pair, ``union`` (M, *U) and ``masks`` (M, 2, 27, 27) -> (M, hidden).

    With a cached union **map** ``(Cu, 7, 7)`` this is STTran's branch: a 1x1 conv Cu ->
    mask_channels on the map plus the mask convs' map, flattened, linear to hidden. With a
    **pooled** union vector (the store's default) there is no map to add the masks to: the
    vector and the flattened mask map each go through a linear layer to hidden, summed.
    """

    def __init__(self, union_shape: tuple[int, ...], hidden: int = 512, mask_channels: int = 256) -> None:
        super().__init__()
        self.union_shape = tuple(union_shape)
        self.is_map = len(self.union_shape) == 3
        self.mask_branch = MaskBranch(mask_channels)
        if self.is_map:
            cu, h, w = self.union_shape
            self.union_conv = nn.Conv2d(cu, mask_channels, kernel_size=1)
            self.union_fc = nn.Linear(mask_channels * h * w, hidden)
        else:
            self.union_fc = nn.Linear(self.union_shape[0], hidden)
            self.mask_fc = nn.Linear(mask_channels * 7 * 7, hidden)

    def forward(self, union: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        if masks.shape[0] == 0:  # BatchNorm cannot normalise an empty batch
            return union.new_zeros((0, self.union_fc.out_features))
        m = self.mask_branch(masks)  # (M, ch, 7, 7)
        if self.is_map:
            u = self.union_conv(union)
            if m.shape[-2:] != u.shape[-2:]:
                m = F.adaptive_avg_pool2d(m, u.shape[-2:])
            return self.union_fc((u + m).flatten(1))
        return self.union_fc(union) + self.mask_fc(m.flatten(1))
