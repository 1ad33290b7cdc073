"""STTran's detector step (``stage1_detect.detection_step``) on hand-built detections.

Each rule is pinned on a case where STTran's behaviour (``lib/object_detector.py``, sgdet) and
the former one (still a named option) give different detections, the expected boxes worked
out by hand in the comments. Boxes are xyxy; IoUs with "+1" areas are the AG detector's.
"""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torch.testing import assert_close

from rules.pairing import SttranClasses, sttran_test_boxes
from stage1_detect.detection_step import (
    STTRAN_CHUNK,
    BoxScale,
    ClipRule,
    DetectionOrder,
    NmsSpace,
    clips_frame,
    detection_step,
    sttran_positions,
)
from stage1_detect.detectors import FeatureMaps, build_detector
from store.vocabulary import ACTION_GENOME

STTRAN = dict(clamp_at_zero=True, plus_one=True, score_thresh=0.1, nms_thresh=0.4, nms_space=NmsSpace.ORIGINAL,
              person_label=1, single_person=True, max_detections=0, order=DetectionOrder.CLASS)


def step(class_boxes, probs, *, image_size=(1000, 1000), scale=1.0, clip=True, **changes):
    """detection_step with STTran's settings (``changes`` override them), one scale ``scale``."""
    boxes = torch.as_tensor(class_boxes, dtype=torch.float32)
    probs = torch.as_tensor(probs, dtype=torch.float32)
    return detection_step(boxes, probs, image_size=image_size, to_resized=torch.full((4,), float(scale)),
                          clip=clip, **{**STTRAN, **changes})


def one_class(boxes, scores, num_classes=3, label=2):
    """(P, C, 4) class boxes and (P, C) probabilities: proposal p scores ``scores[p]`` for
    ``label`` (the rest on background), its ``label`` box ``boxes[p]``."""
    p = len(boxes)
    class_boxes = torch.zeros(p, num_classes, 4)
    class_boxes[:, label] = torch.as_tensor(boxes, dtype=torch.float32)
    probs = torch.zeros(p, num_classes)
    probs[:, label] = torch.as_tensor(scores, dtype=torch.float32)
    probs[:, 0] = 1 - probs[:, label]
    return class_boxes, probs


def test_nms_in_original_pixels_not_resized():
    # A frame resized by 4 (150x200 -> 600x800). In original pixels A = (0, 0, 9, 9) and
    # B = (4, 0, 13, 9): "+1" widths 10, overlap 9 - 4 + 1 = 6 columns of 10 rows, IoU
    # 60 / (100 + 100 - 60) = 0.4286 > 0.4: STTran (NMS after PRED_BOXES /= im_scale) drops B.
    # On the resized image A = (0, 0, 36, 36), B = (16, 0, 52, 36): widths 37, overlap
    # 36 - 16 + 1 = 21, IoU 21 * 37 / (2 * 1369 - 777) = 777 / 1961 = 0.3962 <= 0.4: both kept.
    boxes, probs = one_class([[0, 0, 36, 36], [16, 0, 52, 36]], [0.9, 0.8])
    sttran = step(boxes, probs, image_size=(600, 800), scale=4.0)
    assert sttran.proposal.tolist() == [0]
    assert_close(sttran.boxes, torch.tensor([[0.0, 0, 9, 9]]))
    resized = step(boxes, probs, image_size=(600, 800), scale=4.0, nms_space=NmsSpace.RESIZED)
    assert resized.proposal.tolist() == [0, 1]
    assert_close(resized.boxes, torch.tensor([[0.0, 0, 9, 9], [4, 0, 13, 9]]))  # the same boxes, /4 after


def test_no_cap_on_detections():
    # 120 disjoint 10x10 boxes on a 12 x 10 grid, 120 distinct scores > 0.1: NMS keeps them all.
    # STTran keeps every one; max_detections=100 keeps the best 100: scores rise with p, so the
    # 20 lowest are proposals 0..19.
    grid = [[20 * (p % 12), 20 * (p // 12), 20 * (p % 12) + 9, 20 * (p // 12) + 9] for p in range(120)]
    scores = [0.2 + p / 1000 for p in range(120)]
    boxes, probs = one_class(grid, scores)
    everything = step(boxes, probs)
    assert len(everything.labels) == 120
    capped = step(boxes, probs, max_detections=100)
    assert sorted(capped.proposal.tolist()) == list(range(20, 120))


def test_clipping_of_the_first_frame_of_each_chunk_only():
    # STTran's object_detector.py feeds frames [0, 10), [10, 20), ... of the video to the
    # detector and calls clip_boxes(pred_boxes, im_info, 1): batch size 1 clips frame 0 of the
    # chunk. Frames not in STTran's list (-1) are clipped; ClipRule.ALL clips every frame.
    assert STTRAN_CHUNK == 10
    assert [clips_frame(p, ClipRule.STTRAN) for p in (0, 1, 9, 10, 11, 20, -1)] == [
        True, False, False, True, False, True, True]
    assert all(clips_frame(p, ClipRule.ALL) for p in (0, 1, 9, 10, 11))


def test_unclipped_boxes_past_the_edge_take_part_in_nms():
    # A 100 x 200 image (W - 1 = 199), scale 1. Class 2: A = (150, 10, 260, 60) at 0.9 and
    # B = (190, 10, 250, 60) at 0.8; class 3: C = (-20, -5, 40, 30).
    # Clipped (frame 0 of a chunk): A -> (150, 10, 199, 60), B -> (190, 10, 199, 60); B lies
    # inside A: "+1" IoU = 10 * 51 / (50 * 51) = 0.2 <= 0.4, both kept.
    # Unclipped (frame 1): overlap 250 - 190 + 1 = 61 columns, IoU = 61 / 111 = 0.55 > 0.4: B
    # dropped, A kept past the right edge; C's negative corner set to 0 by the final clamp.
    class_boxes = torch.zeros(3, 4, 4)
    class_boxes[0, 2] = torch.tensor([150.0, 10, 260, 60])
    class_boxes[1, 2] = torch.tensor([190.0, 10, 250, 60])
    class_boxes[2, 3] = torch.tensor([-20.0, -5, 40, 30])
    probs = torch.tensor([[0.1, 0, 0.9, 0], [0.2, 0, 0.8, 0], [0.3, 0, 0, 0.7]])
    first = step(class_boxes, probs, image_size=(100, 200), clip=True)
    assert first.proposal.tolist() == [0, 1, 2]
    assert_close(first.boxes, torch.tensor([[150.0, 10, 199, 60], [190, 10, 199, 60], [0, 0, 40, 30]]))
    second = step(class_boxes, probs, image_size=(100, 200), clip=False)
    assert second.proposal.tolist() == [0, 2]
    assert_close(second.boxes, torch.tensor([[150.0, 10, 260, 60], [0, 0, 40, 30]]))


def test_positions_in_sttran_frame_list():
    # 12 frames, frame 5 without an object of _filtersmall: STTran's SGDET list has 11 frames;
    # positions 0..4, -, 5..10. Clipped: frames 0 (position 0), 5 (not in the list), 11 (10).
    kept = [True] * 5 + [False] + [True] * 6
    positions = sttran_positions(kept, min_frames=3)
    assert positions == [0, 1, 2, 3, 4, -1, 5, 6, 7, 8, 9, 10]
    assert [f for f, p in enumerate(positions) if clips_frame(p, ClipRule.STTRAN)] == [0, 5, 11]
    # Two such frames < min_frames 3: the video is not in STTran's dataset, every frame -1.
    assert sttran_positions([True, False, True], min_frames=3) == [-1, -1, -1]


def test_one_scale_for_both_axes():
    # A 480x270 frame at 600 / 270 = 2.2222 becomes 1067x600 (cv2 rounds 1066.67). STTran divides
    # by the one scale (float32 im_info): x2 = 1066 -> 1066 * 0.45 = 479.7; per axis, by 1067 / 480:
    # 1066 * 480 / 1067 = 511680 / 1067 = 479.5501. y by 600 / 270 either way: 600 -> 270.
    maps = FeatureMaps(original_sizes=[(270, 480)], features=OrderedDict(), batch=torch.zeros(1, 3, 600, 1067),
                       image_sizes=[(600, 1067)], scales=[600 / 270])
    box = [torch.tensor([[0.0, 0, 1066, 600]])]
    (one,) = maps.scale_boxes(box, to_original=True)
    assert_close(one, torch.tensor([[0.0, 0, 479.7, 270]]))
    maps.box_scale = BoxScale.PER_AXIS
    (per_axis,) = maps.scale_boxes(box, to_original=True)
    assert_close(per_axis, torch.tensor([[0.0, 0, 511680 / 1067, 270]]))


def test_encode_records_the_resize_scale():
    # The small detector at min_size 100 on a 120x160 frame: scale 100 / 120 = 0.8333;
    # torchvision's resize gives floor(160 * 0.8333) = 133 columns, a ratio of 133 / 160 = 0.83125.
    torch.manual_seed(0)
    det = build_detector("small", {"min_size": 100, "max_size": 1000}).eval()
    maps = det.encode([torch.zeros(3, 120, 160, dtype=torch.uint8)])
    assert maps.image_sizes == [(100, 133)] and maps.scales == [pytest.approx(100 / 120)]
    assert_close(maps.to_resized(0), torch.full((4,), 100 / 120))


def test_detections_in_class_order_and_the_sgdet_tie_they_decide():
    # AG's 37 classes. Proposal 0: a person (0.9). Proposal 1: one object with two detections of
    # its own, class 4 (0.3, box X) and class 6 (0.45, box Y); the other 34 classes share 0.18
    # (under 0.1 each). STTran stores class by class: person, X (4), Y (6); by score: person, Y, X.
    C = 37
    probs = torch.zeros(2, C)
    probs[0, 0], probs[0, 1], probs[0, 2:] = 0.05, 0.9, 0.05 / 35
    probs[1, 0], probs[1, 1], probs[1, 4], probs[1, 6] = 0.05, 0.02, 0.3, 0.45
    probs[1, [c for c in range(2, C) if c not in (4, 6)]] = 0.18 / 33
    class_boxes = torch.zeros(2, C, 4)
    class_boxes[0, 1] = torch.tensor([60.0, 0, 99, 99])
    class_boxes[1, 4] = torch.tensor([10.0, 10, 49, 49])  # X
    class_boxes[1, 6] = torch.tensor([12.0, 10, 51, 49])  # Y
    sttran = step(class_boxes, probs)
    assert sttran.labels.tolist() == [1, 4, 6] and sttran.proposal.tolist() == [0, 1, 1]
    by_score = step(class_boxes, probs, order=DetectionOrder.SCORE)
    assert by_score.labels.tolist() == [1, 6, 4]
    # STTran's ObjectClassifier (sgdet, eval): X and Y share proposal 1's distribution, whose
    # foreground argmax is class 6 (0.45 / 0.95 = 0.4737): one NMS group at 0.6 with equal
    # scores. "+1" IoU of X and Y: 38 * 40 / (2 * 1600 - 1520) = 1520 / 1680 = 0.905 > 0.6, so
    # the first in the group survives (a stable sort: torch.sort on <= 16 boxes): X in STTran's
    # order, Y in score order.
    kept = []
    for out in (sttran, by_score):
        dists = probs[out.proposal].numpy()
        ag = SttranClasses.from_objects(ACTION_GENOME.objects)
        t = sttran_test_boxes(out.boxes.numpy(), dists, person=ag.person, copy_classes=ag.copy_classes)
        assert t.subject == 0 and len(t.objects) == 1
        kept.append(out.boxes[int(t.source[t.objects[0]])].tolist())
    assert kept == [[10.0, 10, 49, 49], [12.0, 10, 51, 49]]
