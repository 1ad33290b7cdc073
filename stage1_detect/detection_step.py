"""STTran's detector step after the network: from class boxes and scores to stored detections.

:meth:`stage1_detect.detectors.Detector.detect` hands each frame's class boxes and
probabilities to :func:`detection_step`, which does by default what STTran's
``lib/object_detector.py`` (mode sgdet) does: clipping of the first frame of each chunk of 10
only (:class:`ClipRule`), one scale for both axes (:class:`BoxScale`), per-class NMS 0.4 in
original pixels (:class:`NmsSpace`), score > 0.1 and the person's best box only, no cap,
class-by-class order (:class:`DetectionOrder`), negative coordinates clamped at 0. Each rule
with STTran's line, its option and the architectures' geometry: docs/ag_detector.md, "STTran's
detector step" and "Differences from STTran's detector step".
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor
from torchvision.ops import boxes as box_ops

from stage1_detect.frame_detector import keep_one_person
from stage1_detect.legacy_rcnn import legacy_clip, legacy_nms

STTRAN_CHUNK = 10
"""Frames STTran's ``object_detector.py`` gives the detector at a time (``counter += 10``)."""
TORCHVISION_MIN_BOX = 1e-2
"""torchvision's ``RoIHeads.postprocess_detections`` drops boxes narrower or lower than this (px)."""


class NmsSpace(str, enum.Enum):
    """Where the per-class NMS takes its IoUs."""

    ORIGINAL = "original"
    """Pixels of the original frame (STTran divides the boxes by the scale first)."""
    RESIZED = "resized"
    """Pixels of the resized image the network saw (torchvision's post-processing)."""


class ClipRule(str, enum.Enum):
    """Which frames' boxes are clipped to the image."""

    STTRAN = "sttran"
    """The first frame of each of STTran's chunks of 10 (``clip_boxes(..., batch_size=1)``), and
    the frames STTran's detector never sees; then every box's coordinates clamped at 0."""
    ALL = "all"
    """Every frame."""


class BoxScale(str, enum.Enum):
    """How boxes map between the resized image and the original frame."""

    ONE = "one"
    """One scale for both axes (STTran's ``im_info[0, 2]``, float32)."""
    PER_AXIS = "per-axis"
    """Resized / original size of each axis (torchvision's ``resize_boxes``)."""


class DetectionOrder(str, enum.Enum):
    """The order of a frame's stored detections."""

    CLASS = "class"
    """Class by class (ascending id, the person first), each class by descending score (STTran)."""
    SCORE = "score"
    """By descending score."""


@dataclass(frozen=True)
class StepOutput:
    """The detections of one frame (n of them) in stored order.

    proposal: int64 (n,) the proposal each detection was regressed from (its row in the box
    head's input); labels: int64 (n,) 1..C-1; scores: float32 (n,) the proposal's softmax
    probability of the label; boxes: float32 (n, 4) xyxy, pixels of the original frame.
    """

    proposal: Tensor
    labels: Tensor
    scores: Tensor
    boxes: Tensor


def clips_frame(position: int, rule: ClipRule, chunk: int = STTRAN_CHUNK) -> bool:
    """Whether the detections of a frame at ``position`` in STTran's frame list of its video are
    clipped. -1: a frame STTran's detector never sees (not in its SGDET frame list): clipped.

    STTran's chunks are frames [0, 10), [10, 20), ...; ``clip_boxes`` with batch size 1 clips
    the chunk's frame 0 only: positions 0, 10, 20, ...
    """
    rule = ClipRule(rule)
    return rule is ClipRule.ALL or position < 0 or position % chunk == 0


def sttran_positions(kept: Sequence[bool], min_frames: int) -> list[int]:
    """Each frame's index in STTran's SGDET frame list of its video, -1 for frames not in it.

    ``kept[f]``: frame f has an object of the ``_filtersmall`` annotations (STTran's SGDET
    dataset keeps such frames, ``filter_small_box=True``); a video with fewer than
    ``min_frames`` such frames is not in STTran's dataset at all (every frame -1).
    """
    positions, k = [], 0
    for keep in kept:
        positions.append(k if keep else -1)
        k += bool(keep)
    return positions if k >= min_frames else [-1] * len(positions)


def per_class_nms(boxes: Tensor, scores: Tensor, labels: Tensor, threshold: float, plus_one: bool) -> Tensor:
    """NMS within each label, one class at a time as STTran's loop (no coordinate offsets:
    torchvision's ``batched_nms`` trick assumes boxes at >= 0, which unclipped boxes are not).
    Returns indices class by class (ascending), each class by descending score."""
    nms = legacy_nms if plus_one else box_ops.nms
    kept = []
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c).flatten()
        kept.append(idx[nms(boxes[idx], scores[idx], threshold)])
    return torch.cat(kept) if kept else labels.new_zeros(0)


def detection_step(boxes: Tensor, probs: Tensor, *, image_size: tuple[int, int], to_resized: Tensor,
                   clip: bool, clamp_at_zero: bool, plus_one: bool, score_thresh: float, nms_thresh: float,
                   nms_space: NmsSpace, person_label: int, single_person: bool, max_detections: int,
                   order: DetectionOrder) -> StepOutput:
    """One frame's detections from the box head's output (see the module docstring).

    boxes: float (P, C, 4) each proposal's class-specific boxes, xyxy in pixels of the resized
    image; probs: float (P, C) softmax over the C classes (background at 0); image_size: (h, w)
    of the resized image; to_resized: float (4,) resized / original factor of x1, y1, x2, y2;
    clip: clip this frame (:func:`clips_frame`); clamp_at_zero: clamp the final coordinates at
    0 (STTran's last step); plus_one: the AG detector's geometry (clip to W - 1, "+1" IoU, no
    size filter) rather than torchvision's.
    """
    num_proposals, num_classes = probs.shape
    if clip:
        boxes = (legacy_clip(boxes, image_size) if plus_one
                 else box_ops.clip_boxes_to_image(boxes.reshape(-1, 4), image_size).reshape(boxes.shape))
    labels = torch.arange(num_classes, device=probs.device).expand(num_proposals, -1)
    proposal = torch.arange(num_proposals, device=probs.device)[:, None].expand(-1, num_classes)
    boxes, scores = boxes[:, 1:].reshape(-1, 4), probs[:, 1:].reshape(-1)
    labels, proposal = labels[:, 1:].reshape(-1), proposal[:, 1:].reshape(-1)
    keep = scores > score_thresh
    if not plus_one:
        keep &= ((boxes[:, 2] - boxes[:, 0]) >= TORCHVISION_MIN_BOX) & ((boxes[:, 3] - boxes[:, 1]) >= TORCHVISION_MIN_BOX)
    boxes, scores, labels, proposal = boxes[keep], scores[keep], labels[keep], proposal[keep]
    original = boxes / to_resized
    kept = per_class_nms(original if NmsSpace(nms_space) is NmsSpace.ORIGINAL else boxes, scores, labels,
                         nms_thresh, plus_one)
    if single_person:
        kept = kept[keep_one_person(labels[kept], scores[kept], person_label)]
    by_score = torch.sort(-scores[kept], stable=True).indices
    if max_detections > 0:  # the cap keeps the best, counted after the one-person rule
        by_score = by_score[:max_detections]
    kept = kept[by_score.sort().values] if DetectionOrder(order) is DetectionOrder.CLASS else kept[by_score]
    out = original[kept]
    if clamp_at_zero:
        out = out.clamp(min=0)
    return StepOutput(proposal=proposal[kept], labels=labels[kept], scores=scores[kept], boxes=out)
