"""The object side of every head: STTran's object classifier (:class:`ObjectClassifier`, which
STKET and DSG-DETR reuse), the object loss, and the rules that turn the classifier (or the
detector) into the labels and scores a mode scores triplets with (:func:`predict_objects`,
:func:`sgcls_test_objects`; ``object_scores`` ``sttran`` / ``classifier`` / ``detector``).
The table of each mode's training and test rule: docs/stage2.md, "Objects".
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from rules.modes import Mode
from stage2_relations.data import RelationBatch
from stage2_relations.view_options import ObjectScores


def center_size(boxes: torch.Tensor) -> torch.Tensor:
    """(N, 4) xyxy -> (N, 4) (cx, cy, w, h) with "+1" widths, as STTran's ``center_size``."""
    wh = boxes[:, 2:] - boxes[:, :2] + 1.0
    return torch.cat([boxes[:, :2] + 0.5 * wh, wh], 1)


def foreground_distribution(dists: torch.Tensor) -> torch.Tensor:
    """(N, C) class distributions with background -> (N, C-1) over the object classes
    (STTran's ``softmax(cls_score[:, 1:])`` is the detector's softmax renormalised without it)."""
    fg = dists[:, 1:]
    return fg / fg.sum(1, keepdim=True).clamp(min=1e-12)


class ObjectClassifier(nn.Module):
    """STTran's object classifier (``ObjectClassifier.decoder_lin``), for SGCLS and SGDET.

    input per box: RoI feature (D) ++ foreground distribution @ a (C-1, embed_dim) class
    embedding ++ box embedding (BatchNorm1d(4) -> Linear(4, box_dim) -> ReLU -> Dropout of
    (cx, cy, w, h) in pixels); then Linear -> BatchNorm1d(hidden) -> ReLU -> Linear(hidden, C).
    ``class_embeddings`` (C, embed_dim) initialises the table from its rows 1: (STTran: GloVe
    of the object names).
    """

    def __init__(self, *, num_classes: int, feature_dim: int, embed_dim: int = 200, box_dim: int = 128,
                 hidden: int = 1024, dropout: float = 0.1, class_embeddings: torch.Tensor | None = None) -> None:
        super().__init__()
        self.obj_embed = nn.Embedding(num_classes - 1, embed_dim)
        if class_embeddings is not None:
            with torch.no_grad():
                self.obj_embed.weight.copy_(class_embeddings[1:])
        self.pos_embed = nn.Sequential(nn.BatchNorm1d(4, momentum=0.001), nn.Linear(4, box_dim),
                                       nn.ReLU(inplace=True), nn.Dropout(dropout))
        self.decoder = nn.Sequential(nn.Linear(feature_dim + embed_dim + box_dim, hidden), nn.BatchNorm1d(hidden),
                                     nn.ReLU(), nn.Linear(hidden, num_classes))

    def forward(self, batch: RelationBatch) -> torch.Tensor:
        """Logits (N, C) of every box of ``batch``."""
        if self.training and batch.boxes.shape[0] < 2:  # BatchNorm needs two rows to normalise over
            self.eval()
            try:
                return self.forward(batch)
            finally:
                self.train()
        sem = foreground_distribution(batch.dists) @ self.obj_embed.weight
        box = self.pos_embed(center_size(batch.boxes))
        return self.decoder(torch.cat([batch.features, sem, box], 1))


def object_classifier_for(mode: Mode | str, **kwargs) -> ObjectClassifier | None:
    """STTran's object classifier for SGCLS and SGDET (keyword arguments of
    :class:`ObjectClassifier`); None in PREDCLS, where the GT labels are given."""
    return None if Mode(mode) is Mode.PREDCLS else ObjectClassifier(**kwargs)


@dataclass(frozen=True)
class ObjectPredictions:
    """The objects of a batch as a head uses them. N boxes.

    logits:       (N, C) classifier logits, or None (PREDCLS; SGDET test under STTran's rule).
    labels:       (N,) int64 labels the triplets are scored with; scores (N,) their scores.
    embed_labels: (N,) int64 labels of the pairs' class embeddings (GT or assigned in
                  training, predicted at test).
    pair_index:   (M',) int64 the batch pairs the head keeps (SGCLS test, STTran's rule), or
                  None for all of them.
    """

    logits: torch.Tensor | None
    labels: torch.Tensor
    scores: torch.Tensor
    embed_labels: torch.Tensor
    pair_index: torch.Tensor | None = None


def predict_objects(classifier: ObjectClassifier | None, batch: RelationBatch, *, person: int) -> ObjectPredictions:
    """Labels and scores of ``batch``'s boxes by the mode's rule (module docstring); the
    classifier runs only where the rule uses it. ``person``: the person's class id in the store's
    vocabulary (``Vocabulary.person_index``)."""
    if batch.mode is Mode.SGDET and not batch.train and batch.object_scores in (ObjectScores.STTRAN, ObjectScores.DETECTOR):
        return ObjectPredictions(None, batch.box_labels, batch.box_scores, batch.box_labels)
    needed = batch.mode is not Mode.PREDCLS and classifier is not None
    return objects_from_logits(classifier(batch) if needed else None, batch, person=person)


def objects_from_logits(logits: torch.Tensor | None, batch: RelationBatch, *, person: int) -> ObjectPredictions:
    """The rule of :func:`predict_objects` for given classifier logits (N, C) (None: a head
    without classifier, or PREDCLS), for a head that computes them its own way; SGDET test under
    STTran's rule takes the view's labels and never calls this."""
    given = batch.box_labels
    if batch.mode is Mode.PREDCLS:
        return ObjectPredictions(None, given, torch.ones_like(batch.box_scores), given)
    if batch.train:
        return ObjectPredictions(logits, given, batch.box_scores, batch.box_embed_labels)
    if batch.object_scores == ObjectScores.DETECTOR:  # SGDET: the view's labels and scores (a head that ran its classifier)
        if batch.mode is not Mode.SGDET:
            raise ValueError("object_scores 'detector' is an SGDET rule")
        return ObjectPredictions(logits, given, batch.box_scores, given)
    if batch.object_scores == ObjectScores.CLASSIFIER:
        if logits is None:
            return ObjectPredictions(None, given, batch.box_scores, given)
        score, label = logits.softmax(-1)[:, 1:].max(-1)
        return ObjectPredictions(logits, label + 1, score, label + 1)
    dist = (logits[:, 1:].softmax(-1) if logits is not None else foreground_distribution(batch.dists)).detach()
    labels, scores, pair_index = sgcls_test_objects(dist, batch, person=person)
    return ObjectPredictions(logits, labels, scores, labels, pair_index)


def sgcls_test_objects(dist: torch.Tensor, batch: RelationBatch, *,
                       person: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """STTran's SGCLS test rule (``ObjectClassifier.forward``, mode sgcls, eval) per frame.

    dist (N, C-1) foreground distribution (class c in column c - 1); ``person``: the person's
    class id (Action Genome: 1, column 0, as STTran writes it). Every box takes its most probable
    class other than the person; the box of highest person probability is the subject
    (person, scored with that probability); the frame's most frequent label (the smallest on a
    tie, as ``torch.mode``) is kept by its most probable box, the others lose it and take their
    most probable class left, possibly the person. Returns (labels (N,), scores (N,), the pairs
    kept (M',): subject first, object not labelled person), as STTran pairs them.
    """
    dist = dist.clone()
    p = person - 1  # the person's column
    # the best column but the person's (the same values, in the same order, as STTran's
    # ``dist[:, 1:]`` when p = 0: max and its first-index tie rule see the same row)
    scores, best = torch.cat([dist[:, :p], dist[:, p + 1:]], 1).max(-1)
    labels = torch.where(best >= p, best + 1, best) + 1
    n_frames = batch.num_frames
    subject = torch.full((n_frames,), -1, dtype=torch.long, device=dist.device)
    bo = batch.box_offsets.tolist()
    for f in range(n_frames):
        b0, b1 = bo[f], bo[f + 1]
        if b1 == b0:
            continue
        h = b0 + int(dist[b0:b1, p].argmax())
        subject[f] = h
        labels[h], scores[h] = person, dist[h, p]
        frame_labels = labels[b0:b1]
        dup = int(torch.mode(frame_labels.cpu()).values)
        pos = b0 + torch.nonzero(frame_labels == dup)[:, 0]
        order = torch.argsort(dist[pos, dup - 1], stable=True)[:-1]
        for j in order.tolist():
            i = int(pos[j])
            dist[i, dup - 1] = 0.0
            scores[i], best = dist[i].max(0)
            labels[i] = best + 1
    keep = (batch.pairs[:, 0] == subject[batch.pair_frame]) & (labels[batch.pairs[:, 1]] != person)
    return labels, scores, torch.nonzero(keep)[:, 0]


def object_loss(logits: torch.Tensor | None, batch: RelationBatch) -> torch.Tensor | None:
    """Cross-entropy of the classifier in training: SGCLS on the GT boxes (not RS-Net's extra
    detection boxes), SGDET on every box with its assigned label (background included), as
    STTran. None when there is nothing to classify."""
    if logits is None or not batch.train:
        return None
    keep = batch.box_is_gt if batch.mode is Mode.SGCLS else torch.ones_like(batch.box_is_gt)
    if not keep.any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits[keep], batch.box_labels[keep])
