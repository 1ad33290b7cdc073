"""Pieces shared by the heads: an encoder layer whose positional term is added to the queries
and keys only (DETR style, as STTran's temporal decoder and RS-Net's temporal encoder use it),
padding of variable-length groups (frames, windows, videos), STTran's sliding windows of two
frames (:func:`frame_windows`), and STTran's relation representation of a pair
(:class:`PairRepresentation`, with the union branch: the union feature with the spatial-mask
convs), which STKET and DSG-DETR share."""

from __future__ import annotations

import copy

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn import functional as F

if TYPE_CHECKING:
    from stage2_relations.data import RelationBatch


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
        return self.residual(x, self.attn(qk, qk, x, key_padding_mask=pad, need_weights=False)[0])

    def residual(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """The rest of the layer after attention ``a``: add and norm, then the FFN (and its norm)."""
        x = self.norm1(x + self.drop(a))
        return self.norm2(x + self.drop(self.linear2(self.drop(F.relu(self.linear1(x))))))


def cloned(layer: nn.Module, n: int) -> nn.ModuleList:
    """``n`` deep copies of ``layer``: the layers start from the same weights, as STTran's and
    STKET's ``_get_clones`` (and ``nn.TransformerEncoder``) build their stacks."""
    return nn.ModuleList(copy.deepcopy(layer) for _ in range(n))


class PosEncoder(nn.Module):
    """A stack of :class:`PosEncoderLayer`; the same ``pos`` is added at every layer.

    ``clone_init``: the layers start as copies of one (the reference codes' ``_get_clones``);
    otherwise each layer is initialised on its own.
    """

    def __init__(self, d_model: int, num_heads: int, ffn_dim: int, num_layers: int, dropout: float = 0.1,
                 ffn_norm: bool = True, clone_init: bool = False) -> None:
        super().__init__()
        if clone_init:
            self.layers = cloned(PosEncoderLayer(d_model, num_heads, ffn_dim, dropout, ffn_norm), num_layers)
        else:
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


@dataclass(frozen=True)
class FrameWindows:
    """STTran's sliding windows of two consecutive frames over the pairs of a batch. T tokens, W windows.

    tokens:  (T,) int64 the pair of each token; the windows' tokens one after another, each
             window's earlier frame first.
    slots:   (T,) int64 0 for a token of the window's earlier frame, 1 for the later one.
    frames:  (T,) int64 the frame of each token (global in the batch).
    offsets: (W+1,) int64 half-open token ranges of the windows.
    readout: (M,) int64 the token whose output a pair takes (frame 0 of a video from window
             (0, 1), frame t > 0 from window (t-1, t)), -1 for none.
    All on the CPU.
    """

    tokens: torch.Tensor
    slots: torch.Tensor
    frames: torch.Tensor
    offsets: torch.Tensor
    readout: torch.Tensor


def frame_windows(batch: "RelationBatch", single_frame: bool = True) -> FrameWindows:
    """The windows (f, f+1) of every video of ``batch`` (:class:`FrameWindows`).

    A video of one frame gets a window of that frame alone (``single_frame``, this package's
    STTran) or none, its pairs reading out nothing (STKET: its temporal loop is empty).
    """
    po = batch.pair_offsets.tolist()
    vo = batch.video_frame_offsets.tolist()
    tokens, slots, token_frames, win_offsets = [], [], [], [0]
    take_window, take_shift = [-1] * batch.num_frames, [0] * batch.num_frames
    for v in range(batch.num_videos):
        frames = list(range(vo[v], vo[v + 1]))
        windows = [(frames[i], frames[i + 1]) for i in range(len(frames) - 1)]
        if not windows and single_frame:
            windows = [tuple(frames)]
        first_window = len(win_offsets) - 1
        for fr in windows:
            n = 0
            for slot, f in enumerate(fr):
                tokens.append(torch.arange(po[f], po[f + 1]))
                slots.append(torch.full((po[f + 1] - po[f],), slot))
                token_frames.append(torch.full((po[f + 1] - po[f],), f))
                n += po[f + 1] - po[f]
            win_offsets.append(win_offsets[-1] + n)
        if not windows:
            continue
        for i, f in enumerate(frames):
            if i == 0:
                take_window[f], take_shift[f] = first_window, 0
            else:
                take_window[f], take_shift[f] = first_window + i - 1, po[frames[i - 1] + 1] - po[frames[i - 1]]
    cat = lambda parts: torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)  # noqa: E731
    offsets = torch.tensor(win_offsets)
    frame = batch.pair_frame.cpu()
    window = torch.tensor(take_window, dtype=torch.long)[frame]
    local = torch.arange(frame.numel()) - batch.pair_offsets.cpu()[frame]
    start = offsets[window.clamp(min=0)] + torch.tensor(take_shift, dtype=torch.long)[frame]
    readout = torch.where(window >= 0, start + local, torch.full_like(local, -1))
    return FrameWindows(tokens=cat(tokens), slots=cat(slots), frames=cat(token_frames), offsets=offsets,
                        readout=readout)


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


class PairRepresentation:
    """STTran's relation representation of a pair (Eq. 1 of RS-Net), as a mixin of an nn.Module head.

    Built by :meth:`build_pair_layers`: ``subj_fc`` / ``obj_fc`` (feature_dim -> hidden) on the
    subject and object features, the union feature with the spatial masks (:class:`UnionBranch`),
    and two class-embedding tables ``subj_embed`` / ``obj_embed`` (num_classes x embed_dim),
    both initialised from ``class_embeddings`` when given. Width 3 * hidden + 2 * embed_dim.
    """

    def build_pair_layers(self, *, num_classes: int, feature_dim: int, union_shape: tuple[int, ...], hidden: int,
                          embed_dim: int, mask_channels: int, class_embeddings: torch.Tensor | None) -> int:
        """Create the layers on ``self``; returns the representation's width."""
        self.subj_fc = nn.Linear(feature_dim, hidden)
        self.obj_fc = nn.Linear(feature_dim, hidden)
        self.union = UnionBranch(tuple(union_shape), hidden, mask_channels)
        self.subj_embed = nn.Embedding(num_classes, embed_dim)
        self.obj_embed = nn.Embedding(num_classes, embed_dim)
        if class_embeddings is not None:
            with torch.no_grad():
                self.subj_embed.weight.copy_(class_embeddings)
                self.obj_embed.weight.copy_(class_embeddings)
        return 3 * hidden + 2 * embed_dim

    def pair_representation(self, batch: "RelationBatch", labels: torch.Tensor,
                            features: torch.Tensor | None = None) -> torch.Tensor:
        """(M, 3 * hidden + 2 * embed_dim) for the pairs of ``batch``; ``labels`` (N,) the boxes'
        labels for the class embeddings; ``features`` (N, feature_dim) the boxes' features when
        not ``batch.features`` (DSG-DETR's refined ones)."""
        feats = batch.features if features is None else features
        s, o = batch.pairs[:, 0], batch.pairs[:, 1]
        return torch.cat([
            self.subj_fc(feats[s]), self.obj_fc(feats[o]), self.union(batch.union, batch.masks),
            self.subj_embed(labels[s]), self.obj_embed(labels[o]),
        ], 1)
