"""The options of the stage-2 views (:mod:`stage2_relations.views`), declared once.

:class:`ViewOptions` holds them with their documentation; each option that chooses among
rules is a ``str`` enum, so that recipes, run configs and metrics.json read and write the
same strings (``sttran``, ``raw`` ...). What can be derived from here is: the recipe's checks
of these fields (:data:`VIEW_RULES`, :mod:`stage2_relations.recipe`), the recipe fields that
set them (those of the same name, :meth:`~stage2_relations.recipe.TrainConfig.view_options`)
and the choices of the command-line options that mirror them (``cli.py eval``).
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass

from common.config import Rule, at_least, between, one_of
from rules.pairing import AssignmentRule, SgdetBoxes


class ObjectScores(str, enum.Enum):
    """The SGCLS / SGDET test object labels and scores.

    STTRAN:     the protocol: SGDET the detector's foreground distribution; SGCLS the classifier
                with STTran's subject and duplicate rules.
    CLASSIFIER: the trained classifier's softmax over every class, background included, its best
                object class; pairs with the GT person in SGCLS. Not the protocol: it gives the
                baseline a learned relevance score (docs/stage2.md).
    DETECTOR:   SGDET only: STTran's test boxes and the detector's distribution for every head,
                DSG-DETR included (which re-scores them under STTRAN), so that heads compare
                under one rule.
    """

    STTRAN = "sttran"
    CLASSIFIER = "classifier"
    DETECTOR = "detector"


class NegativeLabels(str, enum.Enum):
    """The class a box that only RS-Net's negative pairs use gets for the pairs' class
    embeddings in SGDET training. The sampling rule uses the assignment's classes either way.

    DETECTOR: its best class other than the person, as the SGDET test view labels it.
    ASSIGNED: the assignment's, background for most. The background label alone then tells a
              negative apart, a cue the test view never gives: RS-Net's scorer learns it and
              then fails to separate test pairs.
    """

    DETECTOR = "detector"
    ASSIGNED = "assigned"


@dataclass(frozen=True)
class ViewOptions:
    """How the views are built. Every field but ``pair_pool`` is set by the recipe field of the
    same name (``TrainConfig``); a rule given by its name (a string) becomes its enum.

    assignment:      :class:`~rules.pairing.AssignmentRule`, the SGDET training assignment.
    sgdet_boxes:     :class:`~rules.pairing.SgdetBoxes`, the SGDET test boxes.
    object_scores:   :class:`ObjectScores`, the SGCLS / SGDET test labels and scores.
    negatives:       add RS-Net's negatives to the training view.
    negative_labels: :class:`NegativeLabels`, the embedding class of boxes only negatives use.
    negative_ratio, negative_iou: RS-Net's sampling (paper 4.2).
    pair_pool:       the SGDET test view's batch also carries every union feature the store holds
                     for its frames (:mod:`stage2_relations.pool`), for a head that rebuilds boxes
                     and pairs (``RelationHead.needs_pair_pool``: DSG-DETR at SGDET test).
    """

    assignment: AssignmentRule = AssignmentRule.STTRAN
    sgdet_boxes: SgdetBoxes = SgdetBoxes.STTRAN
    object_scores: ObjectScores = ObjectScores.STTRAN
    negatives: bool = False
    negative_labels: NegativeLabels = NegativeLabels.DETECTOR
    negative_ratio: float = 1.2
    negative_iou: float = 0.5
    pair_pool: bool = False

    def __post_init__(self) -> None:
        for name, (ok, what) in VIEW_RULES.items():
            value = getattr(self, name)
            if not ok(value):
                raise ValueError(f"ViewOptions: {name}: must be {what}, got {value!r}")
        for name, kind in CHOICES.items():
            object.__setattr__(self, name, kind(getattr(self, name)))


CHOICES: dict[str, type[enum.Enum]] = {
    f.name: type(f.default) for f in dataclasses.fields(ViewOptions) if isinstance(f.default, enum.Enum)}
"""The options that choose among named rules, with their enum (the type of their default)."""

VIEW_RULES: dict[str, Rule] = {
    **{name: one_of(*(rule.value for rule in kind)) for name, kind in CHOICES.items()},
    "negative_ratio": at_least(0),
    "negative_iou": between(0, 1),
}
"""What each option's value must be, as the recipe's checks (:func:`common.config.check_fields`) take it."""


__all__ = ["AssignmentRule", "CHOICES", "NegativeLabels", "ObjectScores", "SgdetBoxes", "VIEW_RULES", "ViewOptions"]
