"""RS-Net (relation scoring network) wrapped around any registered head (paper 3.3-3.5).

:class:`RSNet` takes a built :class:`~.base.RelationHead` and uses only its interface
(``encode``, ``classify``, ``assemble``, ``loss``): the head's Eq. 1 representation (M, R_in)
projected to d_m, a spatial context encoder per frame, a temporal context encoder per video,
a relation scoring decoder giving p_{t,0} (``RelationOutput.pair_scores``), context fusion added
to the head's own classifiers, and the focal loss on top of the head's (Eq. 10). Ablations:
``temporal_token`` (learnable / mean / none), ``context_fusion``. d_m = 640 adds about 32 M
parameters to a full-size STTran (``python -m stage2_relations.heads`` prints the count).
See docs/stage2.md, "RS-Net" and "Parameter counts".
"""

from __future__ import annotations

import torch
from torch import nn

from stage2_relations.data import RelationBatch
from stage2_relations.heads.base import PredicateLogits, RelationHead, RelationOutput
from stage2_relations.heads.layers import PosEncoder, pad_groups
from stage2_relations.heads.losses import focal_loss

TEMPORAL_TOKENS = ("learnable", "mean", "none")


class RSNet(nn.Module):
    """RS-Net around ``head``. Keyword arguments (defaults = full size):

    d_model [640], ffn_dim [4 * d_model], num_heads [4], spatial_layers [2], temporal_layers [4],
    mlp_hidden [d_model], dropout [0.1], max_frames [1024] (rows of E_pos - 1; longer videos
    fail clearly), temporal_token ["learnable"], context_fusion [True],
    focal_alpha [(0.5, 0.5)] (positive, negative), focal_gamma [2.0], loss_weight [1.0].
    """

    def __init__(self, head: RelationHead, *, d_model: int = 640, ffn_dim: int | None = None, num_heads: int = 4,
                 spatial_layers: int = 2, temporal_layers: int = 4, mlp_hidden: int | None = None,
                 dropout: float = 0.1, max_frames: int = 1024, temporal_token: str = "learnable",
                 context_fusion: bool = True, focal_alpha: tuple[float, float] = (0.5, 0.5),
                 focal_gamma: float = 2.0, loss_weight: float = 1.0) -> None:
        super().__init__()
        if temporal_token not in TEMPORAL_TOKENS:
            raise ValueError(f"temporal_token must be one of {TEMPORAL_TOKENS}, got {temporal_token!r}")
        if temporal_token == "none" and context_fusion:
            raise ValueError("rsnet: temporal_token 'none' leaves no video context to fuse; "
                             "set context_fusion: false with it (Table 4 ablates them separately)")
        self.head = head
        self.temporal_token = temporal_token
        self.context_fusion = bool(context_fusion)
        self.focal_alpha = tuple(float(a) for a in focal_alpha)
        self.focal_gamma = float(focal_gamma)
        self.loss_weight = float(loss_weight)
        self.max_frames = max_frames
        ffn_dim = ffn_dim or 4 * d_model
        mlp_hidden = mlp_hidden or d_model
        self.input_proj = nn.Linear(head.pair_input_dim, d_model)
        self.frame_token = nn.Parameter(torch.randn(d_model) * 0.02)
        self.spatial_encoder = PosEncoder(d_model, num_heads, ffn_dim, spatial_layers, dropout)
        use_video = temporal_token != "none"
        if temporal_token == "learnable":
            self.temporal_encoder = PosEncoder(d_model, num_heads, ffn_dim, temporal_layers, dropout)
            self.pos_embed = nn.Parameter(torch.randn(max_frames + 1, d_model) * 0.02)
            self.video_token = nn.Parameter(torch.randn(d_model) * 0.02)
        dec_in = d_model * (2 if use_video else 1)
        self.decoder = nn.Sequential(nn.Linear(dec_in, mlp_hidden), nn.ReLU(inplace=True),
                                     nn.Linear(mlp_hidden, mlp_hidden // 2), nn.ReLU(inplace=True),
                                     nn.Linear(mlp_hidden // 2, 2))
        if self.context_fusion:
            a, s, c = head.vocabulary.group_widths
            self.fusion = nn.ModuleList([nn.Linear(d_model, a, bias=False), nn.Linear(d_model, s, bias=False),
                                         nn.Linear(d_model, c, bias=False)])

    @classmethod
    def from_config(cls, head: RelationHead, cfg: dict) -> "RSNet":
        cfg = dict(cfg)
        if "focal_alpha" in cfg:
            cfg["focal_alpha"] = tuple(cfg["focal_alpha"])
        return cls(head, **cfg)

    @property
    def mode(self):
        return self.head.mode

    def context(self, pair_input: torch.Tensor, batch: RelationBatch) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(x̂ (M, d_m), ĉ_tmp per pair (M, d_m) or None)."""
        x = self.input_proj(pair_input)
        f = batch.num_frames
        d = x.shape[-1]
        # spatial: prepend the frame token to each frame's pairs
        counts = batch.pair_offsets.diff().to(x.device)
        tok_offsets = torch.cat([batch.pair_offsets.new_zeros(1), torch.cumsum(batch.pair_offsets.diff() + 1, 0)])
        seq = x.new_zeros((int(tok_offsets[-1]), d))
        frame_first = tok_offsets[:-1].to(x.device)
        seq[frame_first] = self.frame_token.expand(f, d)
        pair_slot = torch.repeat_interleave(frame_first, counts) + 1 + (
            torch.arange(x.shape[0], device=x.device) - batch.pair_offsets.to(x.device)[batch.pair_frame.to(x.device)])
        seq[pair_slot] = x
        padded, pad, group, position = pad_groups(seq, tok_offsets)
        out = self.spatial_encoder(padded, None, pad)[group, position]
        frame_ctx = out[frame_first]  # (F, d)
        x_hat = out[pair_slot]
        if self.temporal_token == "none":
            return x_hat, None
        vo = batch.video_frame_offsets
        if self.temporal_token == "mean":  # the paper's ĉ_mean: no temporal encoder
            video = batch.frame_video.to(x.device)
            total = x.new_zeros((batch.num_videos, d)).index_add_(0, video, frame_ctx)
            video_ctx = total / vo.diff().clamp(min=1).to(x.device, x.dtype)[:, None]
            return x_hat, video_ctx[batch.pair_video.to(x.device)]
        longest = int(vo.diff().max())
        if longest > self.max_frames:
            raise ValueError(f"a video of {longest} frames exceeds RS-Net's max_frames={self.max_frames}")
        v = batch.num_videos
        t_offsets = torch.cat([vo.new_zeros(1), torch.cumsum(vo.diff() + 1, 0)])
        vseq = x.new_zeros((int(t_offsets[-1]), d))
        first = t_offsets[:-1].to(x.device)
        vseq[first] = self.video_token.expand(v, d)
        frame_slot = torch.repeat_interleave(first, vo.diff().to(x.device)) + 1 + (
            torch.arange(f, device=x.device) - vo.to(x.device)[batch.frame_video.to(x.device)])
        vseq[frame_slot] = frame_ctx
        padded, pad, group, position = pad_groups(vseq, t_offsets)
        pos = self.pos_embed[: padded.shape[1]].expand(padded.shape[0], -1, -1)
        enc = self.temporal_encoder(padded, pos, pad)
        return x_hat, enc[:, 0][batch.pair_video.to(x.device)]

    def forward(self, batch: RelationBatch) -> RelationOutput:
        f = self.head.encode(batch)
        x_hat, ctx = self.context(f.pair_input, f.batch)
        logits = self.head.classify(f.relation)
        if self.context_fusion:
            logits = PredicateLogits(logits.attention + self.fusion[0](ctx), logits.spatial + self.fusion[1](ctx),
                                     logits.contacting + self.fusion[2](ctx))
        pair_logits = self.decoder(x_hat if ctx is None else torch.cat([x_hat, ctx], 1))
        out = self.head.assemble(f, logits)
        return out.with_(pair_logits=pair_logits, pair_scores=pair_logits.softmax(-1)[:, 0])

    def loss(self, output: RelationOutput, batch: RelationBatch) -> dict[str, torch.Tensor]:
        losses = self.head.loss(output, batch)
        losses["relation_score"] = self.loss_weight * focal_loss(
            output.pair_logits, batch.pair_positive, alpha=self.focal_alpha, gamma=self.focal_gamma)
        return losses

