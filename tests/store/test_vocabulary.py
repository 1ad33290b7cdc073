"""The vocabulary's predicate groups: ranges and widths in GROUP_ORDER, worked by hand; the
synthetic records follow their vocabulary's person."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from store.testing import synthetic_meta, synthetic_video
from store.vocabulary import ACTION_GENOME, GROUP_ORDER, PredicateGroup, Vocabulary


def test_action_genome_group_ranges_and_widths():
    # attention looking_at..unsure [0:3), spatial above..in [3:9), contacting carrying..writing_on [9:26)
    assert GROUP_ORDER == (PredicateGroup.ATTENTION, PredicateGroup.SPATIAL, PredicateGroup.CONTACTING)
    assert ACTION_GENOME.group_ranges == ((0, 3), (3, 9), (9, 26))
    assert ACTION_GENOME.group_widths == (3, 6, 17)
    assert ACTION_GENOME.group_of(8) is PredicateGroup.SPATIAL and ACTION_GENOME.group_of(9) is PredicateGroup.CONTACTING


def test_widths_follow_group_order_not_storage_order():
    # Five predicates stored spatial [0:2), attention [2:3), contacting [3:5): still (A, S, Cn).
    vocab = Vocabulary(objects=("__background__", "person"), predicates=("s1", "s2", "a1", "c1", "c2"),
                       predicate_groups=((PredicateGroup.SPATIAL, 0, 2), (PredicateGroup.ATTENTION, 2, 3),
                                         (PredicateGroup.CONTACTING, 3, 5)))
    assert vocab.group_ranges == ((2, 3), (0, 2), (3, 5))
    assert vocab.group_widths == (1, 2, 2)


def test_groups_must_be_contiguous():
    with pytest.raises(ValueError, match="not contiguous"):
        Vocabulary(objects=("__background__",), predicates=("a", "b"),
                   predicate_groups=((PredicateGroup.ATTENTION, 0, 1), (PredicateGroup.SPATIAL, 0, 2)))


def test_synthetic_records_take_the_person_from_the_vocabulary():
    # person and bag trade places: the person (2) is GT object 0 of every frame and no other
    # object; the bag (1) is drawn like any other object.
    objects = list(ACTION_GENOME.objects)
    objects[1], objects[2] = objects[2], objects[1]
    meta = synthetic_meta(vocabulary=dataclasses.replace(ACTION_GENOME, objects=tuple(objects)))
    rec = synthetic_video(meta, "v.mp4", seed=0, num_frames=40)
    first = rec.gt_offsets[:-1]
    assert (rec.gt_labels[first] == 2).all() and (np.delete(rec.gt_labels, first) != 2).all()
    assert 1 in np.delete(rec.gt_labels, first)
