"""STTran (Cong et al., ICCV 2021) as a relation head, faithful to section 6 of the reference.

Relation vector of a pair (Eq. 1 of RS-Net), 3 * hidden + 2 * embed_dim wide (1936 at full size):

* subject and object features through ``subj_fc`` / ``obj_fc`` (feature_dim -> hidden = 512);
* the union feature with the spatial-mask branch (conv 2->128 k7 s2 -> ReLU -> BN -> maxpool ->
  conv 128->256 k3 -> ReLU -> BN). With a cached union **map** (``(Cu, 7, 7)``) this is STTran's
  branch: a 1x1 conv Cu->256 on the map, plus the mask map, flattened, linear to hidden. With a
  **pooled** union vector (the store's default) there is no map to add the masks to: the vector
  goes through a linear layer to hidden and the flattened mask map through another, summed;
* 200-d learnable class embeddings of the subject and the object (two tables, as STTran),
  optionally initialised from GloVe vectors (:func:`glove_embeddings`).

Then a spatial encoder (1 layer, 8 heads, FFN 2048, dropout 0.1) over the pairs of each frame,
a temporal decoder (3 layers) over sliding windows of 2 consecutive frames of a video with a
learned 2-slot frame embedding added to queries and keys (frame t > 0 takes its output from
window (t-1, t), frame 0 from window (0, 1)), and linear heads to attention (3, softmax),
spatial (6, sigmoid) and contacting (17, sigmoid). SGCLS / SGDET add the object classifier
(feature + distribution-weighted class embedding + 128-d box embedding -> 1024 -> C); the
class embeddings of a pair then use the predicted labels.

Losses (summed by the trainer): cross-entropy on attention, multi-label margin on the sigmoid
spatial and contacting scores (STTran feeds probabilities to ``MultiLabelMarginLoss``), on
the pairs with a relation; cross-entropy on object classes (SGCLS: GT boxes; SGDET training:
every box, with the assigned labels, background included).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from stage2_relations.data import RelationBatch
from stage2_relations.heads.base import PredicateLogits, RelationFeatures, RelationHead, register_head
from stage2_relations.heads.layers import PosEncoder, pad_groups
from stage2_relations.heads.losses import multilabel_margin_loss
from store.vocabulary import Mode, PredicateGroup, Vocabulary


def glove_embeddings(path: str | Path, vocabulary: Vocabulary, dim: int, seed: int = 0) -> torch.Tensor:
    """Class embeddings (C, dim) from a GloVe text file (``word v1 ... vdim`` per line).

    A class name of several words (``"doorknob"``, ``"on_the_side_of"``, ``"closet/cabinet"``)
    takes the mean of its words' vectors; a class with no known word gets a small random
    vector (from ``seed``), as does the background. Call this outside the head and pass the
    tensor as ``class_embeddings`` (heads do no I/O).
    """
    words = {w for name in vocabulary.objects for w in name.replace("/", " ").replace("_", " ").split()}
    vecs: dict[str, np.ndarray] = {}
    with open(path, encoding="utf8") as f:
        for line in f:
            parts = line.rstrip().split(" ")
            if parts[0] in words and len(parts) == dim + 1:
                vecs[parts[0]] = np.asarray(parts[1:], dtype=np.float32)
    rng = np.random.default_rng(seed)
    out = rng.normal(0, 0.1, size=(vocabulary.num_objects, dim)).astype(np.float32)
    for i, name in enumerate(vocabulary.objects):
        found = [vecs[w] for w in name.replace("/", " ").replace("_", " ").split() if w in vecs]
        if found:
            out[i] = np.mean(found, axis=0)
    return torch.from_numpy(out)


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


@register_head("sttran")
class STTran(RelationHead):
    """STTran. Keyword arguments (full-size defaults in brackets):

    vocabulary, mode: the store's vocabulary and the task.
    feature_dim (store), union_shape (store): ``(U,)`` pooled or ``(Cu, H, W)`` map.
    hidden [512], embed_dim [200], union_channels [256], mask_channels [256], box_dim [128],
    object_hidden [1024], num_heads [8], ffn_dim [2048], spatial_layers [1], temporal_layers [3],
    dropout [0.1], class_embeddings: (C, embed_dim) tensor to initialise both tables, or None.
    """

    def __init__(self, *, vocabulary: Vocabulary, mode: Mode | str, feature_dim: int, union_shape: tuple[int, ...],
                 hidden: int = 512, embed_dim: int = 200, union_channels: int = 256, mask_channels: int = 256,
                 box_dim: int = 128, object_hidden: int = 1024, num_heads: int = 8, ffn_dim: int = 2048,
                 spatial_layers: int = 1, temporal_layers: int = 3, dropout: float = 0.1,
                 class_embeddings: torch.Tensor | None = None) -> None:
        super().__init__()
        self.vocabulary = vocabulary
        self.mode = Mode(mode)
        self.union_shape = tuple(union_shape)
        self.union_is_map = len(self.union_shape) == 3
        num_classes = vocabulary.num_objects
        self.groups = [vocabulary.group_range(g) for g in (PredicateGroup.ATTENTION, PredicateGroup.SPATIAL,
                                                           PredicateGroup.CONTACTING)]
        a, s, c = (e - b for b, e in self.groups)

        self.subj_fc = nn.Linear(feature_dim, hidden)
        self.obj_fc = nn.Linear(feature_dim, hidden)
        self.mask_branch = MaskBranch(mask_channels)
        if self.union_is_map:
            cu, h, w = self.union_shape
            self.union_conv = nn.Conv2d(cu, mask_channels, kernel_size=1)
            self.union_fc = nn.Linear(mask_channels * h * w, hidden)
        else:
            self.union_fc = nn.Linear(self.union_shape[0], hidden)
            self.mask_fc = nn.Linear(mask_channels * 7 * 7, hidden)
        self.subj_embed = nn.Embedding(num_classes, embed_dim)
        self.obj_embed = nn.Embedding(num_classes, embed_dim)
        if class_embeddings is not None:
            with torch.no_grad():
                self.subj_embed.weight.copy_(class_embeddings)
                self.obj_embed.weight.copy_(class_embeddings)

        self.relation_dim = self.pair_input_dim = 3 * hidden + 2 * embed_dim
        d = self.relation_dim
        self.spatial_encoder = PosEncoder(d, num_heads, ffn_dim, spatial_layers, dropout)
        self.temporal_decoder = PosEncoder(d, num_heads, ffn_dim, temporal_layers, dropout)
        self.frame_embed = nn.Embedding(2, d)
        self.attention_head = nn.Linear(d, a)
        self.spatial_head = nn.Linear(d, s)
        self.contacting_head = nn.Linear(d, c)

        self.object_classifier = None
        if self.mode is not Mode.PREDCLS:
            self.class_embed = nn.Embedding(num_classes, embed_dim)
            if class_embeddings is not None:
                with torch.no_grad():
                    self.class_embed.weight.copy_(class_embeddings)
            self.box_embed = nn.Sequential(nn.Linear(5, box_dim), nn.ReLU(inplace=True))
            self.object_classifier = nn.Sequential(
                nn.Linear(feature_dim + embed_dim + box_dim, object_hidden), nn.ReLU(inplace=True),
                nn.Linear(object_hidden, num_classes))

    @classmethod
    def from_config(cls, cfg: dict, *, vocabulary: Vocabulary, mode: Mode | str, feature_dim: int,
                    union_shape: tuple[int, ...], class_embeddings: torch.Tensor | None = None) -> "STTran":
        kw = {k: v for k, v in cfg.items() if k != "glove"}
        return cls(vocabulary=vocabulary, mode=mode, feature_dim=feature_dim, union_shape=union_shape,
                   class_embeddings=class_embeddings, **kw)

    # -- pieces ---------------------------------------------------------------------------

    def _object_logits(self, batch: RelationBatch) -> torch.Tensor:
        wh = batch.frame_sizes[batch.box_frame].to(batch.boxes.dtype).clamp(min=1)
        b = batch.boxes / torch.cat([wh, wh], 1)
        area = ((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]))[:, None]
        box = self.box_embed(torch.cat([b, area], 1))
        sem = batch.dists @ self.class_embed.weight
        return self.object_classifier(torch.cat([batch.features, sem, box], 1))

    def _union(self, batch: RelationBatch) -> torch.Tensor:
        m = self.mask_branch(batch.masks)  # (M, ch, 7, 7)
        if self.union_is_map:
            u = self.union_conv(batch.union)
            if m.shape[-2:] != u.shape[-2:]:
                m = F.adaptive_avg_pool2d(m, u.shape[-2:])
            return self.union_fc((u + m).flatten(1))
        return self.union_fc(batch.union) + self.mask_fc(m.flatten(1))

    def _temporal(self, x: torch.Tensor, batch: RelationBatch) -> torch.Tensor:
        """Sliding windows of 2 frames per video; returns (M, d)."""
        po = batch.pair_offsets.tolist()
        vo = batch.video_frame_offsets.tolist()
        tokens, slots, win_offsets = [], [], [0]
        take_window, take_shift = [0] * batch.num_frames, [0] * batch.num_frames
        for v in range(batch.num_videos):
            frames = list(range(vo[v], vo[v + 1]))
            windows = [(frames[i], frames[i + 1]) for i in range(len(frames) - 1)] or [tuple(frames)]
            first_window = len(win_offsets) - 1
            for w, fr in enumerate(windows):
                n = 0
                for slot, f in enumerate(fr):
                    tokens.append(torch.arange(po[f], po[f + 1]))
                    slots.append(torch.full((po[f + 1] - po[f],), slot))
                    n += po[f + 1] - po[f]
                win_offsets.append(win_offsets[-1] + n)
            for i, f in enumerate(frames):
                if i == 0:
                    take_window[f], take_shift[f] = first_window, 0
                else:
                    w = first_window + i - 1
                    take_window[f], take_shift[f] = w, po[frames[i - 1] + 1] - po[frames[i - 1]]
        if not tokens or x.shape[0] == 0:
            return x
        tok = torch.cat(tokens).to(x.device)
        slot = torch.cat(slots).to(x.device)
        offs = torch.tensor(win_offsets)
        padded, pad, group, position = pad_groups(x[tok], offs)
        pos = padded.new_zeros(padded.shape)
        pos[group, position] = self.frame_embed(slot)
        # windows whose two frames have no pair are all padding: attention over nothing gives
        # NaN, so they stay out of the decoder
        keep = ~pad.all(1)
        out = padded.clone()
        out[keep] = self.temporal_decoder(padded[keep], pos[keep], pad[keep])
        # each pair: its frame's chosen window and its position there
        frame = batch.pair_frame.cpu()
        w_of = torch.tensor(take_window)[frame]
        shift = torch.tensor(take_shift)[frame]
        local = torch.arange(x.shape[0]) - batch.pair_offsets.cpu()[frame]
        return out[w_of.to(x.device), (shift + local).to(x.device)]

    # -- interface ------------------------------------------------------------------------

    def encode(self, batch: RelationBatch) -> RelationFeatures:
        object_logits = None
        labels = batch.box_labels
        if self.object_classifier is not None:
            object_logits = self._object_logits(batch)
            if batch.mode is not Mode.PREDCLS:  # a PREDCLS batch gives the labels
                labels = object_logits[:, 1:].argmax(-1).detach() + 1
        s, o = batch.pairs[:, 0], batch.pairs[:, 1]
        x = torch.cat([
            self.subj_fc(batch.features[s]), self.obj_fc(batch.features[o]), self._union(batch),
            self.subj_embed(labels[s]), self.obj_embed(labels[o]),
        ], 1)
        if x.shape[0]:
            padded, pad, group, position = pad_groups(x, batch.pair_offsets)
            # frames without pairs are all padding: leave them out of attention
            keep = ~pad.all(1)
            enc = padded.clone()
            enc[keep] = self.spatial_encoder(padded[keep], None, pad[keep])
            rel = self._temporal(enc[group, position], batch)
        else:
            rel = x
        return RelationFeatures(pair_input=x, relation=rel, object_logits=object_logits)

    def classify(self, relation: torch.Tensor) -> PredicateLogits:
        return PredicateLogits(self.attention_head(relation), self.spatial_head(relation),
                               self.contacting_head(relation))

    def loss(self, output, batch: RelationBatch) -> dict[str, torch.Tensor]:
        pos = batch.pair_positive
        att_ok = pos & (batch.attention_labels >= 0)
        zero = output.attention_logits.sum() * 0.0
        losses = {
            "attention": F.cross_entropy(output.attention_logits[att_ok], batch.attention_labels[att_ok])
            if att_ok.any() else zero,
            "spatial": multilabel_margin_loss(output.spatial_logits[pos].sigmoid(), batch.spatial_labels[pos]),
            "contacting": multilabel_margin_loss(output.contacting_logits[pos].sigmoid(), batch.contacting_labels[pos]),
        }
        if output.object_logits is not None:
            keep = batch.box_is_gt if batch.mode is Mode.SGCLS or not batch.train else torch.ones_like(batch.box_is_gt)
            if batch.mode is Mode.SGDET and not batch.train:
                keep = torch.zeros_like(batch.box_is_gt)  # test view: detections have no assigned labels
            losses["object"] = F.cross_entropy(output.object_logits[keep], batch.box_labels[keep]) if keep.any() \
                else output.object_logits.sum() * 0.0
        return losses
