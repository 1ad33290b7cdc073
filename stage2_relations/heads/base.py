"""The relation-head interface, its containers and the registry.

Every head is an ``nn.Module`` subclass of :class:`RelationHead`, registered by name with
:func:`register_head` and built by :func:`build_head` (keyword arguments) or :func:`from_config`.
The interface has two levels:

* what users call: ``forward(batch) -> RelationOutput`` and ``loss(output, batch) -> dict``;
* the seam that wrappers such as RS-Net use without touching a head's code:
  ``encode(batch) -> RelationFeatures`` (the Eq. 1 pair representation ``pair_input``, the
  final relation feature ``relation`` that feeds the predicate classifiers, the objects, and
  the batch the rows refer to: a head may keep only some of the batch's pairs, as STTran does
  at SGCLS test), ``classify(relation) -> PredicateLogits`` (the head's three predicate
  classifiers) and ``assemble(features, logits) -> RelationOutput``. ``forward`` is exactly
  ``assemble(f, classify(f.relation))`` with ``f = encode(batch)``.

What every head shares lives beside it: the object classifier and the per-mode object rules
(:mod:`.objects`), transformer layers (:mod:`.layers`), losses (:mod:`.losses`), and
:class:`HeadContext`, what a head is built from besides its recipe (the store's sizes and
vocabulary, and what was derived from the training split, such as class embeddings or priors).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping

import torch
from torch import nn

from rules.modes import Mode
from rules.pairing import SgdetBoxes
from stage2_relations.data import RelationBatch
from stage2_relations.heads.objects import ObjectPredictions, object_loss, predict_objects
from stage2_relations.view_options import ObjectScores
from store.vocabulary import Vocabulary


@dataclass(frozen=True)
class HeadContext:
    """What a head is built from besides its own recipe (``head_cfg``).

    vocabulary, mode: the store's vocabulary and the task; feature_dim: D of the RoI features;
    union_shape: ``(U,)`` pooled or ``(Cu, H, W)`` map.
    derived: tensors computed once from the training split before training (see
    :meth:`RelationHead.derive`; ``class_embeddings`` (C, E) from a GloVe file, STKET's
    priors, ...), saved with the run and in every checkpoint, so that evaluation never needs
    the training split.
    """

    vocabulary: Vocabulary
    mode: Mode
    feature_dim: int
    union_shape: tuple[int, ...]
    derived: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PredicateLogits:
    """attention (M, A), spatial (M, S), contacting (M, Cn) raw scores (before softmax / sigmoid)."""

    attention: torch.Tensor
    spatial: torch.Tensor
    contacting: torch.Tensor


@dataclass(frozen=True)
class RelationFeatures:
    """What a head computes before its predicate classifiers, for the M pairs of ``batch``.

    pair_input: (M, R_in) the relation representation of Eq. 1 of the RS-Net paper
                (projected subject/object features, union feature, class embeddings).
    relation:   (M, R) the head's final relation feature r_t^k (input of ``classify``).
    objects:    the boxes' labels, scores and classifier logits (:class:`ObjectPredictions`).
    batch:      the batch the rows refer to: the input batch, or the pairs of it the head
                kept (``objects.pair_index``).
    aux:        whatever else the head's loss needs (e.g. the logits of auxiliary branches,
                computed in ``encode``); :meth:`RelationHead.assemble` passes it on to the output.
    """

    pair_input: torch.Tensor
    relation: torch.Tensor
    objects: ObjectPredictions
    batch: RelationBatch
    aux: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RelationOutput:
    """A head's output for a :class:`RelationBatch` of N boxes and M pairs.

    attention_logits (M, A), spatial_logits (M, S), contacting_logits (M, Cn): raw scores.
    object_logits:  (N, C) or None (PREDCLS, SGDET test).
    object_labels:  (N,) int64 labels used for scoring and object_scores (N,) their scores, by
                    the mode's rule (:mod:`.objects`).
    pair_logits:    (M, 2) RS-Net relation-score logits (class 0 = positive) or None.
    pair_scores:    (M,) p_{t,0} = softmax(pair_logits)[:, 0], or None without RS-Net.
    batch:          the batch these outputs refer to when the head changed it (SGCLS test:
                    only its subject's pairs, :meth:`RelationBatch.select_pairs`; a head may
                    also rebuild boxes and pairs), or None: the input batch.
    aux:            head-specific outputs (:attr:`RelationFeatures.aux`), e.g. auxiliary branches'
                    logits for the loss. The predicate logits above are the head's main branch,
                    the one RS-Net's context fusion adds to.
    """

    attention_logits: torch.Tensor
    spatial_logits: torch.Tensor
    contacting_logits: torch.Tensor
    object_logits: torch.Tensor | None
    object_labels: torch.Tensor
    object_scores: torch.Tensor
    pair_logits: torch.Tensor | None = None
    pair_scores: torch.Tensor | None = None
    batch: RelationBatch | None = None
    aux: Mapping[str, Any] = field(default_factory=dict)

    def attention_probs(self) -> torch.Tensor:
        return self.attention_logits.softmax(-1)

    def spatial_probs(self) -> torch.Tensor:
        return self.spatial_logits.sigmoid()

    def contacting_probs(self) -> torch.Tensor:
        return self.contacting_logits.sigmoid()

    def with_(self, **changes: Any) -> "RelationOutput":
        return replace(self, **changes)


class RelationHead(nn.Module):
    """Base class of the relation heads (see the module docstring for the interface).

    A subclass sets ``relation_dim``, ``pair_input_dim`` and ``vocabulary`` (its predicate
    groups give the classifiers' widths, :attr:`~store.vocabulary.Vocabulary.group_widths`),
    builds ``object_classifier`` (an :class:`~.objects.ObjectClassifier`, or None in PREDCLS)
    and implements ``encode``, ``classify`` and ``from_config``; objects, assembly and the
    object loss are shared.
    """

    relation_dim: int
    pair_input_dim: int
    vocabulary: Vocabulary
    object_classifier: nn.Module | None  # set in __init__ (a class-level default would hide the submodule)
    needs_pair_pool: bool = False
    """The head rebuilds boxes and pairs and needs every stored union feature of its frames
    (``ViewOptions.pair_pool``; DSG-DETR at SGDET test)."""
    sgdet_test_boxes: SgdetBoxes | None = None
    """The SGDET test boxes the head needs (``ViewOptions.sgdet_boxes``), None for either."""
    context_arguments: tuple[str, ...] = ("vocabulary", "mode", "feature_dim", "union_shape", "class_embeddings")
    """Constructor arguments that :meth:`from_config` takes from the :class:`HeadContext`; every
    other keyword argument of ``__init__`` is a recipe key (``head_cfg``)."""

    @classmethod
    def required_view_options(cls, object_scores: ObjectScores | str = ObjectScores.STTRAN) -> dict[str, Any]:
        """The :class:`~stage2_relations.view_options.ViewOptions` fields the head needs under the
        object-scores rule ``object_scores``; the trainer and the evaluation apply them over the
        recipe's. The ``detector`` rule takes STTran's SGDET test boxes for every head."""
        out: dict[str, Any] = {"pair_pool": True} if cls.needs_pair_pool else {}
        if ObjectScores(object_scores) is ObjectScores.DETECTOR:
            out["sgdet_boxes"] = SgdetBoxes.STTRAN
        elif cls.sgdet_test_boxes is not None:
            out["sgdet_boxes"] = cls.sgdet_test_boxes
        return out

    @classmethod
    def derive(cls, cfg: dict, dataset) -> dict[str, Any]:
        """What this head computes from the training split before it is built (a
        :class:`~stage2_relations.data.VideoDataset`, training view); it reaches the head as
        ``context.derived`` and is saved with the run. Default: nothing."""
        return {}

    @classmethod
    def glove_class_embeddings(cls, path: str, cfg: dict, vocabulary: Vocabulary) -> torch.Tensor:
        """Class embeddings (C, E) from a GloVe file (the recipe's ``glove``), E = the head's
        embedding width (``embed_dim`` of its recipe, 200 by default, as the baselines);
        they reach the head as ``context.derived["class_embeddings"]``."""
        from stage2_relations.heads.embeddings import glove_embeddings

        return glove_embeddings(path, vocabulary, int(cfg.get("embed_dim", 200)))

    @classmethod
    def placeholder_derived(cls, cfg: dict, context: HeadContext) -> dict[str, Any]:
        """Values of :meth:`derive`'s shapes for building the head without a training split
        (parameter counts, shape checks); never for training. Default: nothing."""
        return {}

    @classmethod
    def from_config(cls, cfg: dict, context: HeadContext) -> "RelationHead":
        raise NotImplementedError

    def objects(self, batch: RelationBatch) -> tuple[ObjectPredictions, RelationBatch]:
        """The boxes' labels and scores by the mode's rule, and the batch narrowed to the pairs
        the rule keeps (:func:`~.objects.predict_objects`)."""
        objects = predict_objects(getattr(self, "object_classifier", None), batch, person=self.vocabulary.person_index)
        return objects, batch if objects.pair_index is None else batch.select_pairs(objects.pair_index)

    def encode(self, batch: RelationBatch) -> RelationFeatures:
        raise NotImplementedError

    def classify(self, relation: torch.Tensor) -> PredicateLogits:
        raise NotImplementedError

    def assemble(self, features: RelationFeatures, logits: PredicateLogits) -> RelationOutput:
        o = features.objects
        return RelationOutput(
            attention_logits=logits.attention, spatial_logits=logits.spatial, contacting_logits=logits.contacting,
            object_logits=o.logits, object_labels=o.labels, object_scores=o.scores,
            batch=features.batch if o.pair_index is not None else None, aux=dict(features.aux),
        )

    def forward(self, batch: RelationBatch) -> RelationOutput:
        f = self.encode(batch)
        return self.assemble(f, self.classify(f.relation))

    def relation_losses(self, output: RelationOutput, batch: RelationBatch) -> dict[str, torch.Tensor]:
        """The head's predicate losses, on positive pairs."""
        raise NotImplementedError

    def loss(self, output: RelationOutput, batch: RelationBatch) -> dict[str, torch.Tensor]:
        """Predicate losses (:meth:`relation_losses`) plus the object loss of SGCLS / SGDET training."""
        losses = self.relation_losses(output, batch)
        obj = object_loss(output.object_logits, batch)
        if obj is not None:
            losses["object"] = obj
        return losses


def count_parameters(module: nn.Module, *, trainable_only: bool = True) -> int:
    """Parameters of a head or of RS-Net around it: the trainable ones (those the run folder,
    the evaluation and the paper's tables report), or every one with ``trainable_only=False``."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


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
