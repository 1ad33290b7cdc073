"""The ground truth of a stored frame in a task mode, as the evaluation takes it.

Between the data (:mod:`stage2_relations.data` gives each video's GT) and the evaluation
(:mod:`stage2_relations.evaluation`), which imports neither the store's views nor the data.
"""

from __future__ import annotations

import numpy as np

from rules.modes import Mode
from stage2_relations.evaluation.structures import FrameGroundTruth
from stage2_relations.views import gt_selection
from store import VideoRecord

GT_FIELDS = ("gt_boxes", "gt_labels", "gt_small", "rel_subject", "rel_object", "rel_labels")
"""The arrays of a stored video that :func:`frame_ground_truth` reads."""


def frame_ground_truth(rec: VideoRecord, f: int, mode: Mode | str = Mode.PREDCLS) -> FrameGroundTruth:
    """The GT of frame ``f`` of a store record in ``mode``: the mode's GT objects (every one in
    PREDCLS, those of the _filtersmall annotations otherwise), their labels, and one
    (subject, object, predicate) row per set bit of each of their relations' labels."""
    g, r = rec.frame_rows("gt_objects", f), rec.frame_rows("gt_relations", f)
    sel = gt_selection(rec, f, Mode(mode))
    new = np.full(g.stop - g.start, -1, dtype=np.int64)
    new[sel] = np.arange(len(sel))
    subj, obj = new[rec.rel_subject[r]], new[rec.rel_object[r]]
    keep = (subj >= 0) & (obj >= 0)
    rows, preds = np.nonzero(rec.rel_labels[r][keep])
    rel = (np.stack([subj[keep][rows], obj[keep][rows], preds], 1) if len(rows) else np.zeros((0, 3), np.int64))
    return FrameGroundTruth(gt_boxes=rec.gt_boxes[g.start + sel], gt_labels=rec.gt_labels[g.start + sel],
                            gt_relations=rel)
