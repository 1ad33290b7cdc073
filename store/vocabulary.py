"""Object and predicate vocabularies.

A :class:`Vocabulary` travels with the data: the reader builds it from the dataset's class
files, the store writes it into its root attributes, and stage 2 reads it back from there.
Code downstream of the reader never hard-codes a class id; it asks the vocabulary.

Index conventions are those of every Action Genome baseline (STTran and its successors):

* objects: index 0 is ``__background__``, then ``object_classes.txt`` in file order, so that
  ``person`` is 1 and there are 37 entries;
* predicates: the 26 lines of ``relationship_classes.txt`` in file order, split into three
  contiguous groups, attention ``[0:3]``, spatial ``[3:9]`` and contacting ``[9:26]``.

Relation labels everywhere in the project are *global* predicate ids (0..25), never ids
local to a group.
"""

from __future__ import annotations

import enum
import functools
from dataclasses import dataclass

from rules.pairing import SttranClasses


class PredicateGroup(str, enum.Enum):
    """The three kinds of Action Genome relation."""

    ATTENTION = "attention"
    SPATIAL = "spatial"
    CONTACTING = "contacting"


GROUP_ORDER: tuple[PredicateGroup, ...] = (PredicateGroup.ATTENTION, PredicateGroup.SPATIAL, PredicateGroup.CONTACTING)
"""The order of the groups wherever they come as three: a head's classifiers, the predictions'
probability blocks, :attr:`Vocabulary.group_ranges` and :attr:`Vocabulary.group_widths`."""

BACKGROUND = "__background__"

# Action Genome's objects in file order, with the five compound names normalised to the
# short names that the baselines use (closet/cabinet -> closet at index 9, and so on).
AG_OBJECT_CLASSES: tuple[str, ...] = (
    BACKGROUND, "person", "bag", "bed", "blanket", "book", "box", "broom", "chair",
    "closet", "clothes", "cup", "dish", "door", "doorknob", "doorway", "floor", "food",
    "groceries", "laptop", "light", "medicine", "mirror", "paper", "phone", "picture",
    "pillow", "refrigerator", "sandwich", "shelf", "shoe", "sofa", "table", "television",
    "towel", "vacuum", "window",
)

AG_PREDICATE_CLASSES: tuple[str, ...] = (
    # attention [0:3]
    "looking_at", "not_looking_at", "unsure",
    # spatial [3:9]
    "above", "beneath", "in_front_of", "behind", "on_the_side_of", "in",
    # contacting [9:26]
    "carrying", "covered_by", "drinking_from", "eating", "have_it_on_the_back", "holding",
    "leaning_on", "lying_on", "not_contacting", "other_relationship", "sitting_on",
    "standing_on", "touching", "twisting", "wearing", "wiping", "writing_on",
)

AG_PREDICATE_GROUPS: dict[PredicateGroup, tuple[int, int]] = {
    PredicateGroup.ATTENTION: (0, 3),
    PredicateGroup.SPATIAL: (3, 9),
    PredicateGroup.CONTACTING: (9, 26),
}


@dataclass(frozen=True)
class Vocabulary:
    """Object classes (index 0 = background) and predicates split into groups.

    ``predicate_groups`` maps each :class:`PredicateGroup` to a half-open range of
    predicate ids; the ranges are contiguous and cover ``predicates`` in the order
    attention, spatial, contacting.
    """

    objects: tuple[str, ...]
    predicates: tuple[str, ...]
    predicate_groups: tuple[tuple[PredicateGroup, int, int], ...]

    def __post_init__(self) -> None:
        if not self.objects or self.objects[0] != BACKGROUND:
            raise ValueError(f"object vocabulary must start with {BACKGROUND!r}, got {self.objects[:1]}")
        if len(set(self.objects)) != len(self.objects):
            raise ValueError("object vocabulary has duplicate names")
        if len(set(self.predicates)) != len(self.predicates):
            raise ValueError("predicate vocabulary has duplicate names")
        expected_start = 0
        for group, start, end in self.predicate_groups:
            if start != expected_start or end <= start:
                raise ValueError(f"predicate group {group.value} [{start}:{end}) is not contiguous")
            expected_start = end
        if expected_start != len(self.predicates):
            raise ValueError(
                f"predicate groups cover {expected_start} predicates, vocabulary has {len(self.predicates)}"
            )

    @property
    def num_objects(self) -> int:
        return len(self.objects)

    @property
    def num_predicates(self) -> int:
        return len(self.predicates)

    @functools.cached_property
    def sttran_classes(self) -> SttranClasses:
        """The person and STTran's copied classes (book, chair, food) by their ids here, as
        STTran's rules take them (:class:`rules.pairing.SttranClasses`); computed once."""
        return SttranClasses.from_objects(self.objects)

    @property
    def person_index(self) -> int:
        return self.object_index("person")

    def object_index(self, name: str) -> int:
        try:
            return self.objects.index(name)
        except ValueError:
            raise KeyError(f"unknown object class {name!r}") from None

    def predicate_index(self, name: str) -> int:
        try:
            return self.predicates.index(name)
        except ValueError:
            raise KeyError(f"unknown predicate {name!r}") from None

    def group_range(self, group: PredicateGroup) -> tuple[int, int]:
        """Half-open range ``(start, end)`` of the predicate ids of ``group``."""
        for g, start, end in self.predicate_groups:
            if g == group:
                return start, end
        raise KeyError(group)

    @property
    def group_ranges(self) -> tuple[tuple[int, int], ...]:
        """Half-open ranges ``(start, end)`` of the three groups, in :data:`GROUP_ORDER`."""
        return tuple(self.group_range(g) for g in GROUP_ORDER)

    @property
    def group_widths(self) -> tuple[int, ...]:
        """Predicate counts ``(A, S, Cn)`` of the three groups, in :data:`GROUP_ORDER`: the widths
        of a head's classifiers and of the predictions' probability blocks."""
        return tuple(end - start for start, end in self.group_ranges)

    def group_of(self, predicate: int) -> PredicateGroup:
        for g, start, end in self.predicate_groups:
            if start <= predicate < end:
                return g
        raise IndexError(f"predicate id {predicate} outside 0..{self.num_predicates - 1}")

    def to_dict(self) -> dict:
        """Plain-JSON form, as written into a store's root attributes."""
        return {
            "objects": list(self.objects),
            "predicates": list(self.predicates),
            "predicate_groups": [[g.value, s, e] for g, s, e in self.predicate_groups],
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Vocabulary":
        return cls(
            objects=tuple(d["objects"]),
            predicates=tuple(d["predicates"]),
            predicate_groups=tuple((PredicateGroup(g), int(s), int(e)) for g, s, e in d["predicate_groups"]),
        )


ACTION_GENOME = Vocabulary(
    objects=AG_OBJECT_CLASSES,
    predicates=AG_PREDICATE_CLASSES,
    predicate_groups=tuple((g, s, e) for g, (s, e) in AG_PREDICATE_GROUPS.items()),
)
