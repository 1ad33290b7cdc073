"""Synthetic Action Genome: a small dataset written in exactly the real AG layout.

Not stage 1: the generator makes the *input* of stage 1 (frames and AG annotations) and
imports nothing of it.

``generate_synthetic_ag(out, SynthConfig(...))`` writes::

    out/frames/VIDEO.mp4/NNNNNN.png       the annotated frames (all frames with png_all_frames)
    out/videos/VIDEO.mp4                  every frame, lossless H.264 (libx264rgb, qp 0)
    out/annotations/person_bbox.pkl
    out/annotations/object_bbox_and_relationship.pkl
    out/annotations/object_bbox_and_relationship_filtersmall.pkl
    out/annotations/object_classes.txt    36 raw names
    out/annotations/relationship_classes.txt  26 raw names
    out/annotations/frame_list.txt
    out/synth_meta.json                   generator truth; NOT part of the AG layout

``NNNNNN`` is the decoded frame index in ``videos/VIDEO.mp4``; only every
``frame_stride``-th frame or so is annotated, as in AG.

What is drawn and why (see ``docs/synthetic.md`` for the full rules):

* a person (head with a visible facing direction, torso, legs, one arm with a hand) and
  objects of 15 Action Genome classes, each with its own shape, colours and texture
  (:mod:`synth.draw`), over a room background;
* every video has an *activity* (kitchen, living room, bedroom, office). The activity
  decides which of the objects present the person interacts with: those are annotated in
  every frame; the other objects of the video ("bystanders") belong to other activities'
  classes and are drawn but never annotated. The room's wall pattern, the only global
  cue to the activity, is in view in only part of the video's frames (the camera pans),
  and the interactions happen in only part of the frames, so a model that sees the whole
  video can tell meaningful pairs from bystanders better than one that sees two frames;
* relation labels are computed from the drawn geometry by the pure rule functions
  :func:`attention_label`, :func:`spatial_labels` and :func:`contact_labels`.

Generation is deterministic: video ``i`` draws from ``numpy.random.default_rng([seed, i])``
only, so it does not depend on the number of videos asked for.

The package, in the order a video is made:

* :mod:`synth.world`     the raw class names, the activities, object sizes (constants);
* :mod:`synth.config`    :class:`SynthConfig` (what to generate), :class:`SynthSummary`;
* :mod:`synth.plan`      one video's split, edge cases, activity, objects and room;
* :mod:`synth.simulate`  the person's episodes, frame by frame, in phases;
* :mod:`synth.rules`     the labelling rules, pure functions of the drawn geometry;
* :mod:`synth.annotate`  AG's object entries of one annotated frame;
* :mod:`synth.draw`, :mod:`synth.render`  pixels;
* :mod:`synth.write`     :func:`generate_synthetic_ag`, which writes everything.
"""

from synth.config import SynthConfig, SynthSummary
from synth.plan import edge_case_plan, is_test_video
from synth.rules import ContactState, attention_label, contact_labels, spatial_labels
from synth.world import (
    ACTIVITIES,
    ACTIVITY_BY_NAME,
    PICKLE_CLASS_NAME,
    RAW_OBJECT_CLASSES,
    RAW_PREDICATE_CLASSES,
    SMALL_EDGE,
    Activity,
    Role,
)
from synth.write import META_FILE, generate_synthetic_ag

__all__ = [
    "ACTIVITIES", "ACTIVITY_BY_NAME", "META_FILE", "PICKLE_CLASS_NAME", "RAW_OBJECT_CLASSES", "RAW_PREDICATE_CLASSES", "SMALL_EDGE",
    "Activity", "ContactState", "Role", "SynthConfig", "SynthSummary", "attention_label", "contact_labels",
    "edge_case_plan", "generate_synthetic_ag", "is_test_video", "spatial_labels",
]
