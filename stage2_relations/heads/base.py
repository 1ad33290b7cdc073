"""The relation-head interface, its containers and the registry.

Every head is an ``nn.Module`` subclass of :class:`RelationHead`, registered by name with
:func:`register_head` and built by :func:`build_head` (keyword arguments) or :func:`from_config`.
The interface has two levels:

* what users call: ``forward(batch) -> RelationOutput`` and ``loss(output, batch) -> dict``;
* the seam that wrappers such as RS-Net use without touching a head's code:
  ``encode(batch) -> RelationFeatures`` (the Eq. 1 pair representation ``pair_input``, the
  final relation feature ``relation`` that feeds the predicate classifiers, object logits),
  ``classify(relation) -> PredicateLogits`` (the head's three predicate classifiers) and
  ``assemble(features, logits, batch) -> RelationOutput``. ``forward`` is exactly
  ``assemble(f, classify(f.relation), batch)`` with ``f = encode(batch)``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable

import torch
from torch import nn

from stage2_relations.data import RelationBatch
from store.vocabulary import Mode


@dataclass(frozen=True)
class PredicateLogits:
    """attention (M, A), spatial (M, S), contacting (M, Cn) raw scores (before softmax / sigmoid)."""

    attention: torch.Tensor
    spatial: torch.Tensor
    contacting: torch.Tensor


@dataclass(frozen=True)
class RelationFeatures:
    """What a head computes before its predicate classifiers.

    pair_input:    (M, R_in) the relation representation of Eq. 1 of the RS-Net paper
                   (projected subject/object features, union feature, class embeddings).
    relation:      (M, R) the head's final relation feature r_t^k (input of ``classify``).
    object_logits: (N, C) object class logits (SGCLS / SGDET), else None.
    """

    pair_input: torch.Tensor
    relation: torch.Tensor
    object_logits: torch.Tensor | None = None


@dataclass(frozen=True)
class RelationOutput:
    """A head's output for a :class:`RelationBatch` of N boxes and M pairs.

    attention_logits (M, A), spatial_logits (M, S), contacting_logits (M, Cn): raw scores.
    object_logits:  (N, C) or None (PREDCLS).
    object_labels:  (N,) int64 labels used for scoring (GT in PREDCLS, argmax over the
                    non-background classes otherwise); object_scores (N,) their probabilities
                    (1 in PREDCLS).
    pair_logits:    (M, 2) RS-Net relation-score logits (class 0 = positive) or None.
    pair_scores:    (M,) p_{t,0} = softmax(pair_logits)[:, 0], or None without RS-Net.
    """

    attention_logits: torch.Tensor
    spatial_logits: torch.Tensor
    contacting_logits: torch.Tensor
    object_logits: torch.Tensor | None
    object_labels: torch.Tensor
    object_scores: torch.Tensor
    pair_logits: torch.Tensor | None = None
    pair_scores: torch.Tensor | None = None

    def attention_probs(self) -> torch.Tensor:
        return self.attention_logits.softmax(-1)

    def spatial_probs(self) -> torch.Tensor:
        return self.spatial_logits.sigmoid()

    def contacting_probs(self) -> torch.Tensor:
        return self.contacting_logits.sigmoid()

    def with_(self, **changes: Any) -> "RelationOutput":
        return replace(self, **changes)


def object_predictions(object_logits: torch.Tensor | None, batch: RelationBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels and scores of the boxes: the given labels and score 1 in PREDCLS; the argmax over
    the non-background classes of the softmax and its probability when the head classifies
    objects; else (a head without classifier, SGCLS / SGDET) the given labels and box scores."""
    if batch.mode is Mode.PREDCLS:
        return batch.box_labels, torch.ones_like(batch.box_scores)
    if object_logits is None:
        return batch.box_labels, batch.box_scores
    prob = object_logits.softmax(-1)
    score, label = prob[:, 1:].max(-1)
    return label + 1, score


class RelationHead(nn.Module):
    """Base class of the relation heads (see the module docstring for the interface)."""

    relation_dim: int
    pair_input_dim: int

    def encode(self, batch: RelationBatch) -> RelationFeatures:
        raise NotImplementedError

    def classify(self, relation: torch.Tensor) -> PredicateLogits:
        raise NotImplementedError

    def assemble(self, features: RelationFeatures, logits: PredicateLogits, batch: RelationBatch) -> RelationOutput:
        labels, scores = object_predictions(features.object_logits, batch)
        return RelationOutput(
            attention_logits=logits.attention, spatial_logits=logits.spatial, contacting_logits=logits.contacting,
            object_logits=features.object_logits, object_labels=labels, object_scores=scores,
        )

    def forward(self, batch: RelationBatch) -> RelationOutput:
        f = self.encode(batch)
        return self.assemble(f, self.classify(f.relation), batch)

    def loss(self, output: RelationOutput, batch: RelationBatch) -> dict[str, torch.Tensor]:
        raise NotImplementedError


HEADS: dict[str, type[RelationHead]] = {}


def register_head(name: str) -> Callable[[type[RelationHead]], type[RelationHead]]:
    """Class decorator: make a head buildable by ``name``."""

    def deco(cls: type[RelationHead]) -> type[RelationHead]:
        if name in HEADS:
            raise ValueError(f"head {name!r} is already registered")
        HEADS[name] = cls
        cls.registered_name = name
        return cls

    return deco


def build_head(name: str, **kwargs: Any) -> RelationHead:
    """The registered head ``name`` built with keyword arguments."""
    try:
        cls = HEADS[name]
    except KeyError:
        raise KeyError(f"unknown head {name!r}; registered: {sorted(HEADS)}") from None
    return cls(**kwargs)
