"""The AG detector converter on a checkpoint written here in jwyang/faster-rcnn.pytorch's format.

The source state dict is built by hand from jwyang's ``resnet.py`` / ``rpn.py`` layer list
(ResNet-101 C4, 37 classes, 12 anchors), not from our model, so a renamed or misshapen
parameter on either side fails. Expected anchors, boxes and IoUs are worked by hand.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import nms

from stage1_detect.ag_checkpoint import CheckpointError, convert_ag_checkpoint
from stage1_detect.detection_step import DetectionOrder, NmsSpace, detection_step
from stage1_detect.detectors import load_detector
from stage1_detect.legacy_rcnn import (
    LegacyAnchorGenerator,
    LegacyBoxCoder,
    LegacyRegionProposalNetwork,
    LegacyTransform,
    jwyang_anchors,
    legacy_clip,
    legacy_nms,
)

A = 12  # ANCHOR_SCALES [4, 8, 16, 32] x ANCHOR_RATIOS [0.5, 1, 2]
C = 37

# generate_anchors(base_size=16, ratios=[0.5, 1, 2], scales=[4, 8, 16, 32]), worked by hand:
# base (0, 0, 15, 15), centre 7.5; ratio 0.5: w = round(sqrt(512)) = 23, h = round(11.5) = 12;
# ratio 1: 16 x 16; ratio 2: w = round(sqrt(128)) = 11, h = 22. Times the scale s, corners at
# 7.5 -+ (w s - 1) / 2. E.g. ratio 1, scale 8: 128 wide, 7.5 - 63.5 = -56, 7.5 + 63.5 = 71.
HAND_ANCHORS = torch.tensor([
    [-38, -16, 53, 31], [-84, -40, 99, 55], [-176, -88, 191, 103], [-360, -184, 375, 199],
    [-24, -24, 39, 39], [-56, -56, 71, 71], [-120, -120, 135, 135], [-248, -248, 263, 263],
    [-14, -36, 29, 51], [-36, -80, 51, 95], [-80, -168, 95, 183], [-168, -344, 183, 359],
], dtype=torch.float32)


def jwyang_resnet101_state_dict(seed: int = 0, num_classes: int = C, num_anchors: int = A) -> OrderedDict:
    """Random tensors named and shaped as jwyang's ``resnet(classes, 101).state_dict()``.

    Each tensor is a window at its own offset into a shared random pool, so that the file
    stays small (torch.save writes a shared storage once) and no two tensors are equal.
    """
    g = torch.Generator().manual_seed(seed)
    normal = torch.randn(512 * 1024 * 9 + 4099, generator=g)  # the largest: RPN_Conv
    pools = {"w": normal * 0.01, "bn": normal[:8192] * 0.1, "var": 0.5 + torch.rand(4099, generator=g)}
    sd: OrderedDict = OrderedDict()
    count = [0]

    def rand(*shape, pool="w"):
        numel, values = math.prod(shape), pools[pool]
        count[0] += 1
        offset = (count[0] * 7919) % (len(values) - numel + 1)
        return values[offset: offset + numel].view(shape)

    def conv(name, out, inp, k, bias=False):
        sd[f"{name}.weight"] = rand(out, inp, k, k)
        if bias:
            sd[f"{name}.bias"] = rand(out)

    def bn(name, c):
        sd[f"{name}.weight"] = 1 + rand(c, pool="bn")
        sd[f"{name}.bias"] = rand(c, pool="bn")
        sd[f"{name}.running_mean"] = rand(c, pool="bn")
        sd[f"{name}.running_var"] = rand(c, pool="var")
        sd[f"{name}.num_batches_tracked"] = torch.tensor(0)

    conv("RCNN_rpn.RPN_Conv", 512, 1024, 3, bias=True)
    conv("RCNN_rpn.RPN_cls_score", 2 * num_anchors, 512, 1, bias=True)
    conv("RCNN_rpn.RPN_bbox_pred", 4 * num_anchors, 512, 1, bias=True)
    conv("RCNN_base.0", 64, 3, 7)
    bn("RCNN_base.1", 64)
    inplanes = 64
    for prefix, planes, blocks in (("RCNN_base.4", 64, 3), ("RCNN_base.5", 128, 4), ("RCNN_base.6", 256, 23),
                                   ("RCNN_top.0", 512, 3)):
        for b in range(blocks):
            p = f"{prefix}.{b}"
            conv(f"{p}.conv1", planes, inplanes, 1)
            bn(f"{p}.bn1", planes)
            conv(f"{p}.conv2", planes, planes, 3)
            bn(f"{p}.bn2", planes)
            conv(f"{p}.conv3", 4 * planes, planes, 1)
            bn(f"{p}.bn3", 4 * planes)
            if b == 0:
                conv(f"{p}.downsample.0", 4 * planes, inplanes, 1)
                bn(f"{p}.downsample.1", 4 * planes)
            inplanes = 4 * planes
    sd["RCNN_cls_score.weight"], sd["RCNN_cls_score.bias"] = rand(num_classes, 2048), rand(num_classes)
    sd["RCNN_bbox_pred.weight"], sd["RCNN_bbox_pred.bias"] = rand(4 * num_classes, 2048), rand(4 * num_classes)
    return sd


def write_jwyang(path, model, **meta):
    torch.save({"session": 1, "epoch": 7, "model": model, "pooling_mode": "align", "class_agnostic": False,
                **meta}, path)
    return path


@pytest.fixture(scope="module")
def source():
    return jwyang_resnet101_state_dict()


@pytest.fixture(scope="module")
def converted(source, tmp_path_factory):
    root = tmp_path_factory.mktemp("ag_ckpt")
    src = write_jwyang(root / "faster_rcnn_ag.pth", source)
    report = convert_ag_checkpoint(src, root / "r101_c4_ag.pt")
    detector, sha = load_detector(report.dst, settings={"min_size": 128, "max_size": 160,
                                                        "rpn_pre_nms_top_n_test": 200,
                                                        "rpn_post_nms_top_n_test": 20})
    return report, detector.eval(), sha


def test_report_counts_and_settings(converted):
    report, detector, sha = converted
    # 634 jwyang tensors (stem 6, 33 blocks x 18, 4 downsamples x 6, RPN 6, RCNN 4);
    # the 104 batch norms' num_batches_tracked are dropped.
    assert (report.tensors, len(report.dropped)) == (530, 104)
    assert all(name.endswith("num_batches_tracked") for name in report.dropped)
    assert (report.num_classes, report.num_anchors) == (37, 12)
    assert report.source_meta == {"epoch": 7, "session": 1, "pooling_mode": "align", "class_agnostic": False}
    saved = torch.load(report.dst, map_location="cpu", weights_only=True)
    assert saved["source_sha256"] == report.source_sha256 and sha != report.source_sha256
    assert saved["settings"]["legacy_rcnn"] is True and saved["settings"]["roi_size"] == 7
    assert (saved["settings"]["min_size"], saved["settings"]["max_size"]) == (600, 100_000)
    assert (saved["settings"]["rpn_pre_nms_top_n_test"], saved["settings"]["rpn_post_nms_top_n_test"]) == (6000, 100)
    # STTran's detector step (lib/object_detector.py), as plain strings in the checkpoint.
    step = {k: saved["settings"][k] for k in ("nms_space", "max_detections", "clip", "box_scale", "detection_order")}
    assert step == {"nms_space": "original", "max_detections": 0, "clip": "sttran", "box_scale": "one",
                    "detection_order": "class"}
    assert detector.settings.legacy_rcnn and detector.settings.roi_size == 7
    assert "converted faster_rcnn_ag.pth" in report.summary()


@pytest.mark.parametrize("src_name, dst_name", [
    ("RCNN_base.0.weight", "backbone.stem.0.weight"),
    ("RCNN_base.1.running_var", "backbone.stem.1.running_var"),
    ("RCNN_base.4.0.downsample.0.weight", "backbone.layer1.0.downsample.0.weight"),
    ("RCNN_base.5.0.downsample.1.bias", "backbone.layer2.0.downsample.1.bias"),
    ("RCNN_base.6.5.conv2.weight", "backbone.layer3.5.conv2.weight"),
    ("RCNN_base.6.22.bn3.running_mean", "backbone.layer3.22.bn3.running_mean"),
    ("RCNN_top.0.0.conv1.weight", "roi_heads.box_head.layer4.0.conv1.weight"),
    ("RCNN_top.0.2.bn3.weight", "roi_heads.box_head.layer4.2.bn3.weight"),
    ("RCNN_rpn.RPN_Conv.weight", "rpn.head.conv.0.0.weight"),
    ("RCNN_rpn.RPN_bbox_pred.bias", "rpn.head.bbox_pred.bias"),
    ("RCNN_cls_score.weight", "roi_heads.box_predictor.cls_score.weight"),
    ("RCNN_bbox_pred.weight", "roi_heads.box_predictor.bbox_pred.weight"),
    ("RCNN_bbox_pred.bias", "roi_heads.box_predictor.bbox_pred.bias"),
])
def test_tensors_land_unchanged(source, converted, src_name, dst_name):
    own = converted[1].model.state_dict()
    assert torch.equal(own[dst_name], source[src_name])


def test_resize_as_cv2_by_hand(converted):
    transform = converted[1].model.transform
    assert isinstance(transform, LegacyTransform) and transform.size_divisible == 1
    legacy = LegacyTransform(3, 100, [0.0] * 3, [1.0] * 3).eval()
    # 2x3 -> scale 1.5 -> 3 x round(4.5) = 3x4 (cv2's dsize; half to even). cv2 INTER_LINEAR
    # samples row/column (dst + 0.5) / 1.5 - 0.5 clamped to [0, in - 1]: rows 0, 0.5, 1;
    # columns 0, 0.5, 7/6, 11/6. Pixel (r, c) = 10 r + c is linear, so exact.
    image = (10 * torch.arange(2.0)[:, None] + torch.arange(3.0)[None, :]).expand(3, 2, 3)
    resized, _ = legacy.resize(image)
    cols = torch.tensor([0, 0.5, 7 / 6, 11 / 6])
    assert_close(resized[0], torch.stack([cols, 5 + cols, 10 + cols]))
    # A 480x270 AG frame at 600 (no long-side cap): cv2 gives 1067x600, torchvision 1066x600.
    frame = torch.zeros(3, 270, 480)
    assert LegacyTransform(600, 100_000, [0.0] * 3, [1.0] * 3).eval()([frame])[0].image_sizes == [(600, 1067)]


def test_caffe_stem_and_c4_strides(converted):
    detector = converted[1]
    stem = detector.model.backbone.stem
    # jwyang's resnet.py: conv1 (600x1000 -> 300x500), MaxPool2d(3, 2, padding=0, ceil_mode=True):
    # ceil((300 - 3) / 2) + 1 = 150, ceil((500 - 3) / 2) + 1 = 250.
    with torch.no_grad():
        assert stem(torch.zeros(1, 3, 600, 1000)).shape[-2:] == (150, 250)
    # stride in the 1x1 convs, layer4 in the box head: 7x7 RoIs -> 4x4 -> mean.
    assert detector.model.backbone.layer3[0].conv1.stride == (2, 2)
    assert detector.model.roi_heads.box_head.layer4[0].conv1.stride == (2, 2)
    assert detector.model.roi_heads.box_roi_pool.output_size == (7, 7)


def test_rpn_sigmoid_equals_jwyang_softmax(source, converted):
    """sigmoid(our logit) == softmax over jwyang's (bg, fg) pair, anchor by anchor."""
    head = converted[1].model.rpn.head
    feat = torch.randn(1, 1024, 3, 5, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits, deltas = head([feat])
    # jwyang rpn.py, from the raw checkpoint tensors: conv-relu, 2A scores, reshape(x, 2)
    # -> (1, 2, A*H, W), softmax over dim 1, reshape back, keep the second A channels.
    conv1 = F.relu(F.conv2d(feat, source["RCNN_rpn.RPN_Conv.weight"], source["RCNN_rpn.RPN_Conv.bias"], padding=1))
    scores = F.conv2d(conv1, source["RCNN_rpn.RPN_cls_score.weight"], source["RCNN_rpn.RPN_cls_score.bias"])
    n, c2, h, w = scores.shape
    prob = F.softmax(scores.view(n, 2, c2 // 2 * h, w), dim=1).view(n, c2, h, w)
    fg = prob[:, A:]
    assert fg.shape == logits[0].shape == (1, A, 3, 5)
    assert_close(torch.sigmoid(logits[0]), fg, rtol=1e-5, atol=1e-6)
    bbox = F.conv2d(conv1, source["RCNN_rpn.RPN_bbox_pred.weight"], source["RCNN_rpn.RPN_bbox_pred.bias"])
    assert_close(deltas[0], bbox)


def test_jwyang_anchors_by_hand():
    assert_close(jwyang_anchors((64, 128, 256, 512), (0.5, 1.0, 2.0)), HAND_ANCHORS, rtol=0, atol=0)
    # scales [8, 16, 32]: the table printed in generate_anchors.py, less the matlab 1-based offset.
    assert_close(jwyang_anchors((128, 256, 512), (0.5, 1.0, 2.0))[0], torch.tensor([-84.0, -40, 99, 55]))


def test_anchor_grid_and_order(converted):
    generator = converted[1].model.rpn.anchor_generator
    assert isinstance(generator, LegacyAnchorGenerator)
    # An image padded to 40x56 with a 2x3 feature map: still 16 pixels per cell.
    images = ImageList(torch.zeros(1, 3, 40, 56), [(32, 48)])
    anchors = generator(images, [torch.zeros(1, 8, 2, 3)])[0]
    assert anchors.shape == (2 * 3 * A, 4)
    assert_close(anchors[:A], HAND_ANCHORS)
    # index (y * W + x) * A + a: cell (y=1, x=2), ratio 1 scale 8 -> shifted by (32, 16).
    assert_close(anchors[(1 * 3 + 2) * A + 5], torch.tensor([-56.0 + 32, -56 + 16, 71 + 32, 71 + 16]))


def test_plus_one_box_decoding_by_hand():
    # box (0, 0, 9, 19): w = 10, h = 20, centre (5, 10). Deltas (0.1, -0.2, log 2, 0):
    # centre (6, 6), size 20 x 20 -> (6 - 10, 6 - 10, 6 + 10, 6 + 10).
    box = torch.tensor([[0.0, 0, 9, 19]])
    expected = torch.tensor([[-4.0, -4, 16, 16]])
    assert_close(LegacyBoxCoder((1.0, 1.0, 1.0, 1.0)).decode_single(torch.tensor([[0.1, -0.2, math.log(2), 0]]), box),
                 expected)
    # RCNN deltas scaled by BBOX_NORMALIZE_STDS (0.1, 0.1, 0.2, 0.2) == weights (10, 10, 5, 5).
    rcnn = LegacyBoxCoder((10.0, 10.0, 5.0, 5.0))
    assert_close(rcnn.decode_single(torch.tensor([[1.0, -2, 5 * math.log(2), 0]]), box), expected)
    # Encoding measures "+1" widths too: (0, 0, 19, 19) is 20 wide, centre 10, against the
    # box's 10 x 20 at (5, 10): (0.5, 0, log 2, 0), times the weights. (jwyang's decode is not
    # its encode's inverse: the decoded (-4, -4, 16, 16) measures 21 wide.)
    assert_close(rcnn.encode_single(torch.tensor([[0.0, 0, 19, 19]]), box),
                 torch.tensor([[5.0, 0, 5 * math.log(2), 0]]))
    # Anchor (-56, -56, 71, 71): 128 wide, centre 8; doubled: 8 -+ 128 (torchvision: -119.5, 134.5).
    assert_close(LegacyBoxCoder((1.0, 1.0, 1.0, 1.0)).decode_single(
        torch.tensor([[0.0, 0, math.log(2), math.log(2)]]), torch.tensor([[-56.0, -56, 71, 71]])),
        torch.tensor([[-120.0, -120, 136, 136]]))


def test_both_heads_use_the_legacy_coder(converted):
    model = converted[1].model
    assert isinstance(model.rpn, LegacyRegionProposalNetwork)
    assert isinstance(model.rpn.box_coder, LegacyBoxCoder) and model.rpn.box_coder.weights == (1.0, 1.0, 1.0, 1.0)
    assert isinstance(model.roi_heads.box_coder, LegacyBoxCoder)
    assert model.roi_heads.box_coder.weights == (10.0, 10.0, 5.0, 5.0)


def test_clip_and_plus_one_nms_by_hand():
    assert_close(legacy_clip(torch.tensor([[-5.0, -5, 200, 300]]), (128, 160)), torch.tensor([[0.0, 0, 159, 127]]))
    # (0,0,1,1) and (1,0,2,1) share a column of pixels: IoU 2 / (4 + 4 - 2) = 1/3 (torchvision: 0).
    boxes, scores = torch.tensor([[0.0, 0, 1, 1], [1, 0, 2, 1]]), torch.tensor([0.9, 0.8])
    assert legacy_nms(boxes, scores, 0.3).tolist() == [0]
    assert legacy_nms(boxes, scores, 0.34).tolist() == [0, 1]
    assert nms(boxes, scores, 0.3).tolist() == [0, 1]


def test_proposal_filtering_by_hand(converted):
    rpn = converted[1].model.rpn
    proposals = torch.tensor([[[0.0, 0, 10, 10], [1, 0, 11, 10], [50, 50, 200, 200], [130, 5, 140, 20]]])
    logits = torch.tensor([[0.0, 1.0, -1.0, -2.0]])
    boxes, scores = rpn.filter_proposals(proposals, logits, [(100, 120)], [4])
    # Sorted by score: 1, 0, 2, 3. Box 0 vs box 1: 10 x 11 shared pixels of 121 each, IoU
    # 110 / 132 > 0.7 -> dropped. Box 2 clipped to x <= 119, y <= 99; box 3 clipped to zero
    # width and kept (jwyang has no size filter).
    assert_close(boxes[0], torch.tensor([[1.0, 0, 11, 10], [50, 50, 119, 99], [119, 5, 119, 20]]))
    assert_close(scores[0], torch.sigmoid(torch.tensor([1.0, -1.0, -2.0])))


def hand_nms(boxes: torch.Tensor, threshold: float) -> list[int]:
    """Greedy NMS over boxes sorted best first, IoU with "+1" pixel areas (maskrcnn-benchmark's
    legacy kernel), written out without torchvision."""
    keep: list[int] = []
    for i, b in enumerate(boxes.tolist()):
        area = (b[2] - b[0] + 1) * (b[3] - b[1] + 1)
        for j in keep:
            k = boxes[j].tolist()
            iw = max(0.0, min(b[2], k[2]) - max(b[0], k[0]) + 1)
            ih = max(0.0, min(b[3], k[3]) - max(b[1], k[1]) + 1)
            inter = iw * ih
            if inter / (area + (k[2] - k[0] + 1) * (k[3] - k[1] + 1) - inter) > threshold:
                break
        else:
            keep.append(i)
    return keep


def hand_decode(boxes: torch.Tensor, deltas: torch.Tensor) -> torch.Tensor:
    """jwyang's bbox_transform_inv for (n, 4) boxes and (n, 4k) deltas."""
    w = boxes[:, 2:3] - boxes[:, 0:1] + 1.0
    h = boxes[:, 3:4] - boxes[:, 1:2] + 1.0
    cx, cy = boxes[:, 0:1] + 0.5 * w, boxes[:, 1:2] + 0.5 * h
    pcx, pcy = deltas[:, 0::4] * w + cx, deltas[:, 1::4] * h + cy
    pw, ph = torch.exp(deltas[:, 2::4]) * w, torch.exp(deltas[:, 3::4]) * h
    return torch.stack([pcx - 0.5 * pw, pcy - 0.5 * ph, pcx + 0.5 * pw, pcy + 0.5 * ph], dim=2).flatten(1)


def test_rpn_proposals_equal_jwyang_proposal_layer(source, converted):
    """The whole RPN against proposal_layer.py redone from the raw checkpoint tensors."""
    rpn = converted[1].model.rpn  # pre_nms_top_n 200, post_nms_top_n 20 (fixture settings)
    feat = torch.randn(1, 1024, 6, 8, generator=torch.Generator().manual_seed(3))
    im_h, im_w = 96, 128
    with torch.no_grad():
        ours, _ = rpn(ImageList(torch.zeros(1, 3, im_h, im_w), [(im_h, im_w)]), {"0": feat})

    conv1 = F.relu(F.conv2d(feat, source["RCNN_rpn.RPN_Conv.weight"], source["RCNN_rpn.RPN_Conv.bias"], padding=1))
    scores = F.conv2d(conv1, source["RCNN_rpn.RPN_cls_score.weight"], source["RCNN_rpn.RPN_cls_score.bias"])
    fg = F.softmax(scores.view(1, 2, A * 6, 8), dim=1).view(1, 2 * A, 6, 8)[0, A:]
    deltas = F.conv2d(conv1, source["RCNN_rpn.RPN_bbox_pred.weight"], source["RCNN_rpn.RPN_bbox_pred.bias"])[0]
    shift_y, shift_x = torch.meshgrid(torch.arange(6) * 16.0, torch.arange(8) * 16.0, indexing="ij")
    shifts = torch.stack([shift_x, shift_y, shift_x, shift_y], dim=-1).reshape(-1, 1, 4)
    anchors = (HAND_ANCHORS[None] + shifts).reshape(-1, 4)  # (cell, anchor), cells row-major
    boxes = hand_decode(anchors, deltas.permute(1, 2, 0).reshape(-1, 4))
    boxes = torch.stack([boxes[:, 0].clamp(0, im_w - 1), boxes[:, 1].clamp(0, im_h - 1),
                         boxes[:, 2].clamp(0, im_w - 1), boxes[:, 3].clamp(0, im_h - 1)], dim=1)
    order = fg.permute(1, 2, 0).reshape(-1).argsort(descending=True)[:200]
    expected = boxes[order][hand_nms(boxes[order], 0.7)][:20]
    assert len(expected) == 20
    assert_close(ours[0], expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("first_of_chunk", [True, False])
def test_box_head_postprocessing_equals_sttran(converted, first_of_chunk):
    """Class-specific decoding then STTran's detector step against ``object_detector.py``'s loop
    redone by hand from random logits and deltas: clip_boxes(..., batch_size=1) clips only the
    chunk's first frame; PRED_BOXES /= im_scale; per class j: score > 0.1, sort, "+1" NMS 0.4 in
    original pixels; the person keeps its first box; classes concatenated in order; clamp at 0."""
    heads = converted[1].model.roi_heads
    g = torch.Generator().manual_seed(4)
    im_h, im_w, scale = 96, 128, torch.tensor(1.6)  # a 60x80 frame at 1.6 (float32, as im_info)
    xy = torch.rand(30, 2, generator=g) * torch.tensor([im_w - 20.0, im_h - 20.0])
    proposals = torch.cat([xy, xy + 5 + torch.rand(30, 2, generator=g) * 40], dim=1).clamp(max=torch.tensor(
        [im_w - 1.0, im_h - 1.0, im_w - 1.0, im_h - 1.0]))
    logits = torch.randn(30, C, generator=g) * 3
    regression = torch.randn(30, 4 * C, generator=g)
    probs = F.softmax(logits, dim=1)
    step = detection_step(heads.box_coder.decode(regression, [proposals]), probs, image_size=(im_h, im_w),
                          to_resized=scale.repeat(4), clip=first_of_chunk, clamp_at_zero=True, plus_one=True,
                          score_thresh=0.1, nms_thresh=0.4, nms_space=NmsSpace.ORIGINAL, person_label=1,
                          single_person=True, max_detections=0, order=DetectionOrder.CLASS)

    deltas = (regression.view(-1, 4) * torch.tensor([0.1, 0.1, 0.2, 0.2])).view(30, -1)
    pred = hand_decode(proposals, deltas)
    if first_of_chunk:
        pred[:, 0::2], pred[:, 1::2] = pred[:, 0::2].clamp(0, im_w - 1), pred[:, 1::2].clamp(0, im_h - 1)
    pred = pred / scale
    expected = []
    for j in range(1, C):
        inds = torch.nonzero(probs[:, j] > 0.1).view(-1)
        if len(inds):
            cls_scores, order = probs[inds, j].sort(descending=True)
            cls_boxes = pred[inds][order, 4 * j: 4 * j + 4]
            keep = hand_nms(cls_boxes, 0.4)[: 1 if j == 1 else None]
            expected += [(int(inds[order[k]]), j, float(cls_scores[k]), cls_boxes[k]) for k in keep]
    assert 5 < len(expected) < 100
    assert step.proposal.tolist() == [e[0] for e in expected]
    assert step.labels.tolist() == [e[1] for e in expected]  # class by class: non-decreasing
    assert_close(step.scores, torch.tensor([e[2] for e in expected]))
    want = torch.stack([e[3] for e in expected])
    assert_close(step.boxes, want.clamp(min=0), rtol=1e-5, atol=1e-4)
    # The unclipped frame has boxes past the right or bottom edge (kept, and NMS saw them),
    # and negative corners that the final clamp set to 0.
    past = (want[:, 2] > (im_w - 1) / scale) | (want[:, 3] > (im_h - 1) / scale)
    assert bool(past.any()) != first_of_chunk and bool((want < 0).any()) != first_of_chunk


def test_converted_detector_runs(converted):
    detector = converted[1]
    frame = torch.randint(0, 256, (3, 128, 160), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    maps = detector.encode([frame])
    assert maps.features["0"].shape == (1, 1024, 8, 10)  # no padding to a multiple of 32
    dets = detector.detect(maps)[0]
    assert dets.features.shape == (len(dets), 2048) and dets.class_dists.shape == (len(dets), 37)
    if len(dets):
        assert float(dets.boxes[:, 2].max()) <= 159 and float(dets.boxes[:, 3].max()) <= 127
        assert_close(dets.class_dists.sum(1), torch.ones(len(dets)))


# --- bad checkpoints -----------------------------------------------------------------------


def _small(source, **changes):
    """The keys the converter checks before building a detector, with ``changes``."""
    keys = ("RCNN_cls_score.weight", "RCNN_bbox_pred.weight", "RCNN_rpn.RPN_cls_score.weight")
    return {**{k: source[k] for k in keys}, **changes}


def test_class_agnostic_is_refused(source, tmp_path):
    path = write_jwyang(tmp_path / "agnostic.pth", _small(source), class_agnostic=True)
    with pytest.raises(CheckpointError, match="class-agnostic") as e:
        convert_ag_checkpoint(path, tmp_path / "out.pt")
    assert str(path) in str(e.value)
    four = {"RCNN_bbox_pred.weight": torch.zeros(4, 2048)}
    path = write_jwyang(tmp_path / "agnostic_shape.pth", _small(source, **four))
    with pytest.raises(CheckpointError, match="class-agnostic") as e:
        convert_ag_checkpoint(path, tmp_path / "out.pt")
    assert str(path) in str(e.value)


def test_wrong_class_count_is_refused(source, tmp_path):
    path = write_jwyang(tmp_path / "coco.pth", _small(source, **{"RCNN_cls_score.weight": torch.zeros(81, 2048)}))
    with pytest.raises(CheckpointError, match="81 classes") as e:
        convert_ag_checkpoint(path, tmp_path / "out.pt")
    assert str(path) in str(e.value)


def test_wrong_anchor_count_is_refused(source, tmp_path):
    rpn = torch.zeros(18, 512, 1, 1)  # jwyang's default [8, 16, 32]: 9 anchors
    path = write_jwyang(tmp_path / "nine.pth", _small(source, **{"RCNN_rpn.RPN_cls_score.weight": rpn}))
    with pytest.raises(CheckpointError, match="9 anchors") as e:
        convert_ag_checkpoint(path, tmp_path / "out.pt")
    assert str(path) in str(e.value)


def test_missing_and_unknown_keys_are_refused(source, tmp_path):
    path = write_jwyang(tmp_path / "no_cls.pth", {k: v for k, v in source.items() if k != "RCNN_cls_score.weight"})
    with pytest.raises(CheckpointError, match="missing 'RCNN_cls_score.weight'") as e:
        convert_ag_checkpoint(path, tmp_path / "out.pt")
    assert str(path) in str(e.value)
    path = write_jwyang(tmp_path / "extra.pth", _small(source, **{"RCNN_mask_head.weight": torch.zeros(1)}))
    with pytest.raises(CheckpointError, match="RCNN_mask_head.weight") as e:
        convert_ag_checkpoint(path, tmp_path / "out.pt")
    assert str(path) in str(e.value)


def test_missing_layer_is_refused(source, tmp_path):
    model = {k: v for k, v in source.items() if k != "RCNN_base.6.5.conv2.weight"}
    path = write_jwyang(tmp_path / "short.pth", model)
    with pytest.raises(CheckpointError, match=r"backbone\.layer3\.5\.conv2\.weight") as e:
        convert_ag_checkpoint(path, tmp_path / "out.pt")
    assert str(path) in str(e.value)
    assert not (tmp_path / "out.pt").exists()


def test_not_a_checkpoint_is_refused(tmp_path):
    path = tmp_path / "notes.pth"
    path.write_text("not a checkpoint")
    with pytest.raises(CheckpointError) as e:
        convert_ag_checkpoint(path, tmp_path / "out.pt")
    assert str(path) in str(e.value)


def test_cli_convert(source, tmp_path):
    from click.testing import CliRunner

    from cli import main

    src = write_jwyang(tmp_path / "faster_rcnn_ag.pth", source)
    result = CliRunner().invoke(main, ["convert-ag-detector", str(src), str(tmp_path / "ag.pt")])
    assert result.exit_code == 0, result.output
    assert "530 tensors, 37 classes, 12 anchors per cell" in result.output
    bad = write_jwyang(tmp_path / "agnostic.pth", _small(source), class_agnostic=True)
    result = CliRunner().invoke(main, ["convert-ag-detector", str(bad), str(tmp_path / "bad.pt")])
    assert result.exit_code != 0 and str(bad) in result.output
