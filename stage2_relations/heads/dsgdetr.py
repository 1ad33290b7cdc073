"""DSG-DETR (Feng et al., WACV 2023, "Exploiting Long-Term Dependencies for Generating Dynamic
Scene Graphs") as a relation head, faithful to its public code (``Shengyu-Feng/DSG-DETR``,
``lib/sttran.py``, ``lib/track.py``): an object transformer over the video's object sequences
(:mod:`.tracking`) refines STTran's object-classifier input in every mode; STTran's relation
representation on the refined features, spatial message passing per frame and temporal message
passing over the pairs of one object class; at SGDET test the classifier re-scores the stored
detections and boxes and pairs are rebuilt from the pair pool. Every rule, quirk and line of
the code it follows: docs/stage2.md, "DSG-DETR".
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import torch
from torch import nn

from rules.modes import Mode
from rules.pairing import SgdetBoxes, select_test_boxes
from stage2_relations.data import RelationBatch
from stage2_relations.heads.base import (
    HeadContext,
    PredicateLogits,
    RelationFeatures,
    RelationHead,
    RelationOutput,
    register_head,
)
from stage2_relations.heads.layers import PairRepresentation, pad_groups
from stage2_relations.heads.objects import (
    ObjectClassifier,
    ObjectPredictions,
    center_size,
    foreground_distribution,
    objects_from_logits,
)
from stage2_relations.heads.sttran import STTran
from stage2_relations.view_options import ObjectScores
from stage2_relations.heads.tracking import (
    ACCEPT_COST,
    COST_WEIGHTS,
    EXPIRY_FRAMES,
    frame_number,
    frame_ranks,
    group_by_class,
    group_by_label,
    track_objects,
)
from store.vocabulary import Vocabulary


def sinusoid(positions: torch.Tensor, d: int) -> torch.Tensor:
    """(L,) int positions -> (L, d) float32 sinusoidal encodings (sin on even, cos on odd dims,
    base 10000), the rows of DSG-DETR's ``PositionalEncoding`` buffer (M:25-48)."""
    div = torch.exp(torch.arange(0, d, 2, device=positions.device) * (-math.log(10000.0) / d))
    angle = positions.to(torch.float32)[:, None] * div
    pe = angle.new_zeros((len(positions), d))
    pe[:, 0::2] = torch.sin(angle)
    pe[:, 1::2] = torch.cos(angle[:, : d // 2])
    return pe


def encoder(d: int, num_heads: int, ffn_dim: int, num_layers: int, dropout: float) -> nn.TransformerEncoder:
    """``nn.TransformerEncoder`` of post-LN ReLU layers, batch first, as the code builds them."""
    layer = nn.TransformerEncoderLayer(d, num_heads, dim_feedforward=ffn_dim, dropout=dropout, batch_first=True)
    return nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)


def run_sequences(stack: nn.TransformerEncoder, drop: nn.Dropout, x: torch.Tensor, index: torch.Tensor,
                  offsets: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
    """Rows of ``x`` (R, d) through ``stack`` as sequences: sequence s is ``x[index[o[s]:o[s+1]]]``
    with positions ``position`` (T,) (sinusoidal, added once, then ``drop``). Returns (R, d) with
    each row's output (zeros for rows in no sequence). Sequences of one row run apart, unpadded
    (the code does so in SGDET to save memory; the result is the same)."""
    out = x.new_zeros(x.shape)
    if not len(index):
        return out
    lengths = offsets.diff()
    single = torch.repeat_interleave(lengths == 1, lengths)
    pe = sinusoid(position, x.shape[1])
    if single.any():
        rows = index[single]
        out[rows] = stack(drop(x[rows] + pe[single])[:, None])[:, 0]
    if (~single).any():
        multi = lengths > 1
        sub_offsets = torch.cat([offsets.new_zeros(1), torch.cumsum(lengths[multi], 0)])
        padded, pad, group, slot = pad_groups(drop(x[index[~single]] + pe[~single]), sub_offsets)
        out[index[~single]] = stack(padded, src_key_padding_mask=pad)[group, slot]
    return out


def _flatten(groups: list[tuple[np.ndarray, np.ndarray]], device) -> tuple[torch.Tensor, ...]:
    """[(rows, positions)] -> (index (T,), offsets (S+1,), position (T,)) tensors."""
    if not groups:
        z = torch.zeros(0, dtype=torch.long, device=device)
        return z, torch.zeros(1, dtype=torch.long, device=device), z
    idx = torch.from_numpy(np.concatenate([g for g, _ in groups]).astype(np.int64)).to(device)
    pos = torch.from_numpy(np.concatenate([p for _, p in groups]).astype(np.int64)).to(device)
    offsets = torch.from_numpy(np.cumsum([0] + [len(g) for g, _ in groups]).astype(np.int64)).to(device)
    return idx, offsets, pos


class DSGObjectClassifier(nn.Module):
    """DSG-DETR's ``ObjectClassifier``: STTran's object embeddings (``obj_embed``, ``pos_embed``)
    and classifier (``decoder``, None in PREDCLS, where the code never uses it) around the object
    transformer ``encoder``. See the module docstring."""

    def __init__(self, *, num_classes: int, feature_dim: int, embed_dim: int, box_dim: int, hidden: int,
                 num_heads: int, ffn_dim: int, num_layers: int, dropout: float, classify: bool,
                 class_embeddings: torch.Tensor | None = None) -> None:
        super().__init__()
        sttran = ObjectClassifier(num_classes=num_classes, feature_dim=feature_dim, embed_dim=embed_dim,
                                  box_dim=box_dim, hidden=hidden, dropout=dropout, class_embeddings=class_embeddings)
        self.obj_embed, self.pos_embed = sttran.obj_embed, sttran.pos_embed
        self.decoder = sttran.decoder if classify else None
        self.dim = feature_dim + embed_dim + box_dim
        self.encoder = encoder(self.dim, num_heads, ffn_dim, num_layers, dropout)
        self.drop = nn.Dropout(dropout)

    def _eval(self, fn, x: torch.Tensor) -> torch.Tensor:
        """``fn(x)`` with the module in eval mode (BatchNorm's running statistics, no dropout)."""
        if not self.training:
            return fn(x)
        self.eval()
        try:
            return fn(x)
        finally:
            self.train()

    def _small(self, fn, x):
        """BatchNorm cannot normalise one row in training: run ``fn`` in eval mode then."""
        return self._eval(fn, x) if x.shape[0] < 2 else fn(x)

    def _apart(self, fn: nn.Sequential, x: torch.Tensor, extra: torch.Tensor | None) -> torch.Tensor:
        """``fn`` (a Sequential with BatchNorm1d) over the rows of ``x`` (N, D). With ``extra``
        (N,) bool in training, every BatchNorm1d normalises all rows with the batch statistics
        of the other rows alone and updates its running statistics from them alone, so those
        rows come out exactly as without the extra rows, and the extra rows are normalised as
        they are (same mode, same statistics: no train / test cue for RS-Net's scorer)."""
        if extra is None or not self.training:
            return self._small(fn, x)
        if int((~extra).sum()) < 2:  # the baseline runs eval mode on its rows: so do all rows
            return self._eval(fn, x)
        for layer in fn:
            if isinstance(layer, nn.BatchNorm1d):
                ref = x[~extra]
                out = x.new_empty(x.shape)
                out[~extra] = layer(ref)  # batch statistics; the running ones updated from these rows
                mean, var = ref.mean(0), ref.var(0, unbiased=False)
                out[extra] = (x[extra] - mean) / torch.sqrt(var + layer.eps) * layer.weight + layer.bias
                x = out
            else:
                x = layer(x)
        return x

    def tokens(self, batch: RelationBatch, extra: torch.Tensor | None = None) -> torch.Tensor:
        """(N, feature_dim + embed_dim + box_dim) input rows: one-hot GT class in PREDCLS (M:171),
        the detector's foreground distribution otherwise (M:186, 277). ``extra``: see
        :meth:`DSGDETR.extra_boxes`."""
        if batch.mode is Mode.PREDCLS:
            sem = self.obj_embed.weight[(batch.box_labels - 1).clamp(min=0)]
        else:
            sem = foreground_distribution(batch.dists) @ self.obj_embed.weight
        box = self._apart(self.pos_embed, center_size(batch.boxes), extra)
        return torch.cat([batch.features, sem, box], 1)

    def refine(self, x: torch.Tensor, index: torch.Tensor, offsets: torch.Tensor,
               position: torch.Tensor) -> torch.Tensor:
        """The rows ``x`` (N, d) refined over the sequences of :meth:`DSGDETR.object_sequences`."""
        return run_sequences(self.encoder, self.drop, x, index, offsets, position)

    def classify(self, refined: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
        return self._apart(self.decoder, refined, extra)


@register_head("dsgdetr")
class DSGDETR(PairRepresentation, RelationHead):
    """DSG-DETR. Keyword arguments (full-size defaults in brackets):

    vocabulary, mode, feature_dim (store), union_shape (store), class_embeddings ((C, embed_dim) or None);
    hidden [512], embed_dim [200], mask_channels [256], box_dim [128], object_hidden [1024]
    (classifier), object_layers [3], object_ffn_dim [1024], num_heads [8], ffn_dim [2048],
    spatial_layers [1], temporal_layers [3], dropout [0.1];
    the SGCLS tracker (:mod:`.tracking`): swap_hw [True] (the code's H/W swap in the box
    normaliser), cost_weights [(0.5, 1, 1, 0.5)], accept_cost [0.5], expiry_frames [50].
    """

    needs_pair_pool = True
    sgdet_test_boxes = SgdetBoxes.RAW

    def __init__(self, *, vocabulary: Vocabulary, mode: Mode | str, feature_dim: int, union_shape: tuple[int, ...],
                 hidden: int = 512, embed_dim: int = 200, mask_channels: int = 256, box_dim: int = 128,
                 object_hidden: int = 1024, object_layers: int = 3, object_ffn_dim: int = 1024, num_heads: int = 8,
                 ffn_dim: int = 2048, spatial_layers: int = 1, temporal_layers: int = 3, dropout: float = 0.1,
                 swap_hw: bool = True, cost_weights: tuple[float, ...] = COST_WEIGHTS,
                 accept_cost: float = ACCEPT_COST, expiry_frames: int = EXPIRY_FRAMES,
                 class_embeddings: torch.Tensor | None = None) -> None:
        super().__init__()
        self.vocabulary = vocabulary
        self.mode = Mode(mode)
        self.union_shape = tuple(union_shape)
        self.tracker = dict(swap_hw=bool(swap_hw), weights=tuple(float(w) for w in cost_weights),
                            accept=float(accept_cost), expiry=int(expiry_frames))
        c = vocabulary.num_objects
        na, ns, nc = vocabulary.group_widths
        self.object_classifier = DSGObjectClassifier(
            num_classes=c, feature_dim=feature_dim, embed_dim=embed_dim, box_dim=box_dim, hidden=object_hidden,
            num_heads=num_heads, ffn_dim=object_ffn_dim, num_layers=object_layers, dropout=dropout,
            classify=self.mode is not Mode.PREDCLS, class_embeddings=class_embeddings)
        # STTran's relation representation on the refined object features (subj/obj fc from their width)
        d = self.relation_dim = self.pair_input_dim = self.build_pair_layers(
            num_classes=c, feature_dim=self.object_classifier.dim, union_shape=self.union_shape, hidden=hidden,
            embed_dim=embed_dim, mask_channels=mask_channels, class_embeddings=class_embeddings)
        self.spatial_encoder = encoder(d, num_heads, ffn_dim, spatial_layers, dropout)
        self.temporal_encoder = encoder(d, num_heads, ffn_dim, temporal_layers, dropout)
        self.temporal_drop = nn.Dropout(dropout)
        self.attention_head = nn.Linear(d, na)
        self.spatial_head = nn.Linear(d, ns)
        self.contacting_head = nn.Linear(d, nc)

    @classmethod
    def from_config(cls, cfg: dict, context: HeadContext) -> "DSGDETR":
        cfg = dict(cfg)
        if "cost_weights" in cfg:
            cfg["cost_weights"] = tuple(cfg["cost_weights"])
        return cls(vocabulary=context.vocabulary, mode=context.mode, feature_dim=context.feature_dim,
                   union_shape=context.union_shape, class_embeddings=context.derived.get("class_embeddings"), **cfg)

    # -- objects ---------------------------------------------------------------------------

    @staticmethod
    def extra_boxes(batch: RelationBatch) -> torch.Tensor | None:
        """(N,) bool: the boxes RS-Net's negatives add to a PREDCLS / SGCLS training view (the
        detections beside the GT boxes), or None when there are none. The code's test views
        hold the GT boxes only, so these boxes never join a GT box's sequence or track
        (:meth:`object_sequences`: they form their own) nor its BatchNorm statistics
        (:meth:`DSGObjectClassifier._apart`: normalised by the GT boxes' statistics)."""
        if not batch.train or batch.mode is Mode.SGDET or bool(batch.box_is_gt.all()):
            return None
        return ~batch.box_is_gt

    def object_sequences(self, batch: RelationBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The object transformer's sequences over the batch's boxes, per video and by the mode's
        rule (:mod:`.tracking`): (index (T,), offsets (S+1,), position (T,)). The boxes of
        :meth:`extra_boxes` are sequenced by the same rule among themselves, apart from the GT
        boxes."""
        bo, vo = batch.box_offsets.tolist(), batch.video_frame_offsets.tolist()
        box_frame = batch.box_frame.cpu().numpy()
        extra = self.extra_boxes(batch)
        extra_np = np.zeros(len(box_frame), bool) if extra is None else extra.cpu().numpy()
        groups: list[tuple[np.ndarray, np.ndarray]] = []
        for v, part in ((v, part) for v in range(batch.num_videos) for part in (False, True)):
            b0, b1 = bo[vo[v]], bo[vo[v + 1]]
            rows = b0 + np.flatnonzero(extra_np[b0:b1] == part)  # the GT boxes, then the extra ones, apart
            if not len(rows):
                continue
            rt = torch.from_numpy(rows).to(batch.boxes.device)
            if batch.mode is Mode.PREDCLS:
                seqs = group_by_label(batch.box_labels[rt].cpu().numpy())
                groups += [(rows[g], np.arange(len(g))) for g in seqs]
            elif batch.mode is Mode.SGDET:
                singles, seqs = group_by_class(batch.dists[rt, 1:].cpu().numpy())
                groups += [(rows[singles[i:i + 1]], np.zeros(1, np.int64)) for i in range(len(singles))]
                groups += [(rows[g], frame_ranks(box_frame[rows[g]])) for g in seqs]
            else:
                sizes = batch.frame_sizes[vo[v]:vo[v + 1]].cpu().numpy().max(0)
                seqs = track_objects(
                    batch.boxes[rt].cpu().numpy(), box_frame[rows] - vo[v],
                    np.array([frame_number(n) for n in batch.frame_names[vo[v]:vo[v + 1]]]),
                    batch.features[rt].detach().cpu().numpy(), batch.dists[rt, 1:].cpu().numpy().argmax(1),
                    (sizes[0], sizes[1]), **self.tracker)
                groups += [(rows[g], np.arange(len(g))) for g in seqs]
        return _flatten(groups, batch.boxes.device)

    def _objects(self, batch: RelationBatch) -> tuple[ObjectPredictions, RelationBatch, torch.Tensor]:
        """(objects, the batch the pairs refer to, each box's refined feature (N', d))."""
        clf = self.object_classifier
        extra = self.extra_boxes(batch)
        refined = clf.refine(clf.tokens(batch, extra), *self.object_sequences(batch))
        logits = clf.classify(refined, extra) if batch.mode is not Mode.PREDCLS else None
        if batch.mode is Mode.SGDET and not batch.train and batch.object_scores == ObjectScores.STTRAN:
            return self._sgdet_test(batch, logits, refined)
        objects = objects_from_logits(logits, batch, person=self.vocabulary.person_index)
        if batch.train and batch.mode is Mode.SGCLS:  # the code embeds the predicted labels (M:204)
            objects = replace(objects, embed_labels=logits[:, 1:].argmax(1) + 1)
        if objects.pair_index is not None:
            batch = batch.select_pairs(objects.pair_index)
        return objects, batch, refined

    def _sgdet_test(self, batch: RelationBatch, logits: torch.Tensor,
                    refined: torch.Tensor) -> tuple[ObjectPredictions, RelationBatch, torch.Tensor]:
        """Re-score the stored detections and rebuild boxes and pairs (M:306-418)."""
        if batch.pool is None or batch.sgdet_boxes != "raw":
            raise ValueError("dsgdetr at SGDET test re-scores the stored detections: build the view with "
                             "ViewOptions(sgdet_boxes='raw', pair_pool=True) (the trainer and eval do so)")
        dist = logits.softmax(-1)[:, 1:].detach()  # over all 37 logits, not renormalised (M:328)
        boxes = batch.boxes.detach().cpu().numpy()
        dist_np = dist.cpu().double().numpy()
        bo = batch.box_offsets.tolist()
        classes = self.vocabulary.sttran_classes
        source, labels, scores, dists, pairs = [], [], [], [], []
        n = 0
        for f in range(batch.num_frames):
            if bo[f + 1] == bo[f]:
                continue
            t = select_test_boxes(boxes[bo[f]:bo[f + 1]], dist_np[bo[f]:bo[f + 1]], person=classes.person,
                                  copy_classes=classes.copy_classes)
            source.append(bo[f] + t.source)
            labels.append(t.labels)
            scores.append(t.scores)
            dists.append(t.dists)
            pairs.append(np.stack([np.full(len(t.objects), n + t.subject), n + t.objects], 1))
            n += len(t.source)
        dev = batch.boxes.device
        cat = lambda parts, shape, dtype: torch.from_numpy(  # noqa: E731
            np.concatenate(parts) if parts else np.zeros(shape)).to(dev, dtype)
        src = cat(source, (0,), torch.long)
        fg = cat(dists, (0, dist.shape[1]), torch.float32)
        new_labels, new_scores = cat(labels, (0,), torch.long), cat(scores, (0,), torch.float32)
        rebuilt = batch.with_boxes(src, new_labels, new_scores, torch.cat([fg.new_zeros((len(fg), 1)), fg], 1))
        rebuilt = rebuilt.with_pairs(cat(pairs, (0, 2), torch.long))
        return ObjectPredictions(logits[src], new_labels, new_scores, new_labels), rebuilt, refined[src]

    def objects(self, batch: RelationBatch) -> tuple[ObjectPredictions, RelationBatch]:
        objects, batch, _ = self._objects(batch)
        return objects, batch

    def rebuilds(self, batch: RelationBatch) -> bool:
        """Whether the output refers to a rebuilt batch (SGDET test under the protocol's rule)."""
        return batch.mode is Mode.SGDET and not batch.train and batch.object_scores == ObjectScores.STTRAN

    # -- relations -------------------------------------------------------------------------

    def _temporal(self, x: torch.Tensor, batch: RelationBatch, obj_class: torch.Tensor) -> torch.Tensor:
        """Sequences of the video's pairs sharing the object class (M:509-528)."""
        video = torch.searchsorted(batch.video_frame_offsets, batch.pair_frame, right=True) - 1
        key = video * (self.vocabulary.num_objects + 1) + obj_class
        _, seq, counts = torch.unique(key, return_inverse=True, return_counts=True)
        order = torch.argsort(seq, stable=True)
        offsets = torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)])
        seq_tok = seq[order]
        if batch.mode is Mode.SGDET:
            # the code's positions: within a sequence, the k-th pair takes the rank of the k-th
            # smallest subject box among the sequence's distinct subjects (the frame's rank)
            subj = batch.pairs[order, 0]
            vals = torch.sort(seq_tok * (batch.boxes.shape[0] + 1) + subj).values
            change = torch.cat([vals.new_ones(1, dtype=torch.bool), vals[1:] != vals[:-1]])
            c = torch.cumsum(change.long(), 0)
            position = c - c[offsets[:-1]][seq_tok]
        else:
            position = torch.arange(len(order), device=x.device) - offsets[seq_tok]
        return run_sequences(self.temporal_encoder, self.temporal_drop, x, order, offsets, position)

    def encode(self, batch: RelationBatch) -> RelationFeatures:
        objects, batch, feats = self._objects(batch)
        labels = objects.embed_labels
        o = batch.pairs[:, 1]
        x = self.pair_representation(batch, labels, feats)
        rel = x
        if x.shape[0]:
            padded, pad, group, position = pad_groups(x, batch.pair_offsets)
            keep = ~pad.all(1)  # frames without pairs stay out of attention (M:500-507 skips them)
            enc = padded.clone()
            enc[keep] = self.spatial_encoder(padded[keep], src_key_padding_mask=pad[keep])
            rel = self._temporal(enc[group, position], batch, labels[o])
        return RelationFeatures(pair_input=x, relation=rel, objects=objects, batch=batch)

    classify = STTran.classify  # the three predicate heads, as STTran

    def assemble(self, features: RelationFeatures, logits: PredicateLogits) -> RelationOutput:
        out = super().assemble(features, logits)
        return out.with_(batch=features.batch) if self.rebuilds(features.batch) else out

    relation_losses = STTran.relation_losses  # CE + multi-label margin, as STTran (train.py:122-139)
