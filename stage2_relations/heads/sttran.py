"""STTran (Cong et al., ICCV 2021) as a relation head, faithful to section 6 of the reference.

Relation vector of a pair (Eq. 1 of RS-Net), 3 * hidden + 2 * embed_dim wide (1936 at full size):

* subject and object features through ``subj_fc`` / ``obj_fc`` (feature_dim -> hidden = 512);
* the union feature with the spatial-mask branch (:class:`~.layers.UnionBranch`: STTran's on a
  cached union map, a documented variant on the store's default pooled vector);
* 200-d class embeddings of the subject and the object (two 37-row tables, as STTran),
  optionally initialised from GloVe vectors (:func:`~.embeddings.glove_embeddings`), of the labels the
  mode's rule gives (:mod:`.objects`: GT or assigned in training, predicted at test).

Then a spatial encoder (1 layer, 8 heads, FFN 2048, dropout 0.1) over the pairs of each frame,
a temporal decoder (3 layers, no LayerNorm after the FFN, as ``lib/transformer.py``) over
sliding windows of 2 consecutive frames of a video with a learned 2-slot frame embedding
(initialised uniformly in [0, 1), as STTran) added to queries and keys (frame t > 0 takes its
output from window (t-1, t), frame 0 from window (0, 1)), and linear heads to attention (3,
softmax), spatial (6, sigmoid) and contacting (17, sigmoid). SGCLS / SGDET add STTran's object
classifier (:class:`~.objects.ObjectClassifier`).

Losses (summed by the trainer): cross-entropy on attention, multi-label margin on the sigmoid
spatial and contacting scores (STTran feeds probabilities to ``MultiLabelMarginLoss``), on
the pairs with a relation; the object loss of :func:`~.objects.object_loss`.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from stage2_relations.data import RelationBatch
from stage2_relations.heads.base import HeadContext, PredicateLogits, RelationFeatures, RelationHead, register_head
from stage2_relations.heads.layers import PosEncoder, UnionBranch, pad_groups
from stage2_relations.heads.losses import multilabel_margin_loss
from stage2_relations.heads.objects import ObjectClassifier
from store.vocabulary import Mode, PredicateGroup, Vocabulary


@register_head("sttran")
class STTran(RelationHead):
    """STTran. Keyword arguments (full-size defaults in brackets):

    vocabulary, mode: the store's vocabulary and the task.
    feature_dim (store), union_shape (store): ``(U,)`` pooled or ``(Cu, H, W)`` map.
    hidden [512], embed_dim [200], mask_channels [256], box_dim [128],
    object_hidden [1024], num_heads [8], ffn_dim [2048], spatial_layers [1], temporal_layers [3],
    dropout [0.1], class_embeddings: (C, embed_dim) tensor to initialise both tables, or None.
    """

    def __init__(self, *, vocabulary: Vocabulary, mode: Mode | str, feature_dim: int, union_shape: tuple[int, ...],
                 hidden: int = 512, embed_dim: int = 200, mask_channels: int = 256,
                 box_dim: int = 128, object_hidden: int = 1024, num_heads: int = 8, ffn_dim: int = 2048,
                 spatial_layers: int = 1, temporal_layers: int = 3, dropout: float = 0.1,
                 class_embeddings: torch.Tensor | None = None) -> None:
        super().__init__()
        self.vocabulary = vocabulary
        self.mode = Mode(mode)
        self.union_shape = tuple(union_shape)
        num_classes = vocabulary.num_objects
        self.groups = [vocabulary.group_range(g) for g in (PredicateGroup.ATTENTION, PredicateGroup.SPATIAL,
                                                           PredicateGroup.CONTACTING)]
        a, s, c = (e - b for b, e in self.groups)

        self.subj_fc = nn.Linear(feature_dim, hidden)
        self.obj_fc = nn.Linear(feature_dim, hidden)
        self.union = UnionBranch(self.union_shape, hidden, mask_channels)
        self.subj_embed = nn.Embedding(num_classes, embed_dim)
        self.obj_embed = nn.Embedding(num_classes, embed_dim)
        if class_embeddings is not None:
            with torch.no_grad():
                self.subj_embed.weight.copy_(class_embeddings)
                self.obj_embed.weight.copy_(class_embeddings)

        self.relation_dim = self.pair_input_dim = 3 * hidden + 2 * embed_dim
        d = self.relation_dim
        self.spatial_encoder = PosEncoder(d, num_heads, ffn_dim, spatial_layers, dropout)
        self.temporal_decoder = PosEncoder(d, num_heads, ffn_dim, temporal_layers, dropout, ffn_norm=False)
        self.frame_embed = nn.Embedding(2, d)
        nn.init.uniform_(self.frame_embed.weight)
        self.attention_head = nn.Linear(d, a)
        self.spatial_head = nn.Linear(d, s)
        self.contacting_head = nn.Linear(d, c)

        self.object_classifier = None
        if self.mode is not Mode.PREDCLS:
            self.object_classifier = ObjectClassifier(num_classes=num_classes, feature_dim=feature_dim,
                                                      embed_dim=embed_dim, box_dim=box_dim, hidden=object_hidden,
                                                      dropout=dropout, class_embeddings=class_embeddings)

    @classmethod
    def from_config(cls, cfg: dict, context: HeadContext) -> "STTran":
        return cls(vocabulary=context.vocabulary, mode=context.mode, feature_dim=context.feature_dim,
                   union_shape=context.union_shape, class_embeddings=context.derived.get("class_embeddings"), **cfg)

    # -- pieces ---------------------------------------------------------------------------

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
        objects, batch = self.objects(batch)
        labels = objects.embed_labels
        s, o = batch.pairs[:, 0], batch.pairs[:, 1]
        x = torch.cat([
            self.subj_fc(batch.features[s]), self.obj_fc(batch.features[o]), self.union(batch.union, batch.masks),
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
        return RelationFeatures(pair_input=x, relation=rel, objects=objects, batch=batch)

    def classify(self, relation: torch.Tensor) -> PredicateLogits:
        return PredicateLogits(self.attention_head(relation), self.spatial_head(relation),
                               self.contacting_head(relation))

    def relation_losses(self, output, batch: RelationBatch) -> dict[str, torch.Tensor]:
        pos = batch.pair_positive
        att_ok = pos & (batch.attention_labels >= 0)
        zero = output.attention_logits.sum() * 0.0
        return {
            "attention": F.cross_entropy(output.attention_logits[att_ok], batch.attention_labels[att_ok])
            if att_ok.any() else zero,
            "spatial": multilabel_margin_loss(output.spatial_logits[pos].sigmoid(), batch.spatial_labels[pos]),
            "contacting": multilabel_margin_loss(output.contacting_logits[pos].sigmoid(), batch.contacting_labels[pos]),
        }
