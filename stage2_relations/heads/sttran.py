"""STTran (Cong et al., ICCV 2021) as a relation head, faithful to section 6 of the reference.

Relation vector of a pair (Eq. 1 of RS-Net), 3 * hidden + 2 * embed_dim wide (1936 at full size):

* subject and object features through ``subj_fc`` / ``obj_fc`` (feature_dim -> hidden = 512);
* the union feature with the spatial-mask branch (:class:`~.layers.UnionBranch`: STTran's on a
  cached union map, a documented variant on the store's default pooled vector);
* 200-d class embeddings of the subject and the object (two 37-row tables, as STTran),
  optionally initialised from GloVe vectors (:func:`~.embeddings.glove_embeddings`), of the labels the
  mode's rule gives (:mod:`.objects`: GT or assigned in training, predicted at test).

Then a spatial encoder (1 layer, 8 heads, FFN 2048, dropout 0.1) over the pairs of each frame,
a temporal decoder (3 layers, no LayerNorm after the FFN, as ``lib/transformer.py``; the layers
of each stack start as copies of one, as its ``_get_clones``) over
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

from rules.modes import Mode
from stage2_relations.data import RelationBatch
from stage2_relations.heads.base import HeadContext, PredicateLogits, RelationFeatures, RelationHead, register_head
from stage2_relations.heads.layers import PairRepresentation, PosEncoder, frame_windows, pad_groups
from stage2_relations.heads.losses import multilabel_margin_loss
from stage2_relations.heads.objects import object_classifier_for
from store.vocabulary import Vocabulary


@register_head("sttran")
class STTran(PairRepresentation, RelationHead):
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
        a, s, c = vocabulary.group_widths

        self.relation_dim = self.pair_input_dim = self.build_pair_layers(
            num_classes=num_classes, feature_dim=feature_dim, union_shape=self.union_shape, hidden=hidden,
            embed_dim=embed_dim, mask_channels=mask_channels, class_embeddings=class_embeddings)
        d = self.relation_dim
        self.spatial_encoder = PosEncoder(d, num_heads, ffn_dim, spatial_layers, dropout, clone_init=True)
        self.temporal_decoder = PosEncoder(d, num_heads, ffn_dim, temporal_layers, dropout, ffn_norm=False,
                                           clone_init=True)
        self.frame_embed = nn.Embedding(2, d)
        nn.init.uniform_(self.frame_embed.weight)
        self.attention_head = nn.Linear(d, a)
        self.spatial_head = nn.Linear(d, s)
        self.contacting_head = nn.Linear(d, c)

        self.object_classifier = object_classifier_for(
            self.mode, num_classes=num_classes, feature_dim=feature_dim, embed_dim=embed_dim, box_dim=box_dim,
            hidden=object_hidden, dropout=dropout, class_embeddings=class_embeddings)

    @classmethod
    def from_config(cls, cfg: dict, context: HeadContext) -> "STTran":
        return cls(vocabulary=context.vocabulary, mode=context.mode, feature_dim=context.feature_dim,
                   union_shape=context.union_shape, class_embeddings=context.derived.get("class_embeddings"), **cfg)

    # -- pieces ---------------------------------------------------------------------------

    def _temporal(self, x: torch.Tensor, batch: RelationBatch) -> torch.Tensor:
        """Sliding windows of 2 frames per video (:func:`~.layers.frame_windows`); returns (M, d)."""
        w = frame_windows(batch)
        if not w.tokens.numel() or x.shape[0] == 0:
            return x
        padded, pad, group, position = pad_groups(x[w.tokens.to(x.device)], w.offsets)
        pos = padded.new_zeros(padded.shape)
        pos[group, position] = self.frame_embed(w.slots.to(x.device))
        # windows whose two frames have no pair are all padding: attention over nothing gives
        # NaN, so they stay out of the decoder
        keep = ~pad.all(1)
        out = padded.clone()
        out[keep] = self.temporal_decoder(padded[keep], pos[keep], pad[keep])
        return out[group, position][w.readout.to(x.device)]

    # -- interface ------------------------------------------------------------------------

    def encode(self, batch: RelationBatch) -> RelationFeatures:
        objects, batch = self.objects(batch)
        x = self.pair_representation(batch, objects.embed_labels)
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
