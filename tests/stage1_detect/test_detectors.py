"""Detector interface of stage 1 (``stage1_detect.detectors``) with tiny untrained models.

An untrained ``small`` detector scores every class near 1/37, so these tests build it with
``score_thresh=0`` (every proposal x class is a detection) and, where a person box must be
detected, raise the person logit's bias.
"""

from __future__ import annotations

import dataclasses

import hashlib
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close
from torchvision.ops import roi_align

from stage1_detect.detectors import (
    build_detector,
    load_backbone_weights,
    load_detector,
    load_weights,
    save_detector,
)
from stage1_detect.frame_detector import keep_one_person as _keep_one_person
from stage1_detect.frames import PngFrames
from synth import SynthConfig, generate_synthetic_ag

PERSON = 1
# 160x120 frames processed at their own size (scale 1); stride 8 maps of 20x16 (padded).
TINY = {"score_thresh": 0.0, "min_size": 120, "max_size": 160, "max_detections": 30}


def _small(seed: int = 0, **settings):
    torch.manual_seed(seed)
    return build_detector("small", {**TINY, **settings}).eval()


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    """Three uint8 (3, 120, 160) RGB frames of the synthetic AG."""
    import json

    root = tmp_path_factory.mktemp("det") / "ag"
    generate_synthetic_ag(root, SynthConfig(videos=1, frames_per_video=3, width=160, height=120, seed=1),
                          progress=False)
    ((video, meta),) = json.loads((root / "synth_meta.json").read_text())["videos"].items()
    images = PngFrames(root).read(video, meta["frame_numbers"][:3])
    return [torch.from_numpy(im).permute(2, 0, 1).contiguous() for im in images]


def _boxes():
    # Original-frame xyxy boxes of two frames, fractional on purpose.
    return [torch.tensor([[10.0, 12.0, 90.5, 100.0], [0.0, 0.0, 160.0, 120.0], [40.25, 30.0, 41.0, 70.0]]),
            torch.tensor([[5.0, 5.0, 50.0, 60.0]])]


def test_encode_sizes(frames):
    det = _small()
    maps = det.encode(frames[:2])
    assert maps.original_sizes == [(120, 160), (120, 160)]
    assert maps.image_sizes == [(120, 160), (120, 160)]
    # Padded to a multiple of 32, stride 8, 128 channels.
    assert maps.features["0"].shape == (2, 128, 16, 20)
    big = build_detector("small", {"min_size": 240, "max_size": 320}).eval().encode(frames[:1])
    assert big.image_sizes == [(240, 320)] and big.original_sizes == [(120, 160)]


def test_pool_equals_roi_align_and_box_head(frames):
    det = _small(min_size=240, max_size=320)  # resized 2x: pool must scale the boxes
    maps = det.encode(frames[:2])
    boxes = _boxes()
    pooled = det.pool(maps, boxes)
    heads = det.model.roi_heads
    with torch.no_grad():
        rois = roi_align(maps.features["0"], [b * 2 for b in boxes], output_size=7, spatial_scale=1 / 8,
                         sampling_ratio=0, aligned=False)
        features = heads.box_head(rois)
        dists = F.softmax(heads.box_predictor(features)[0], dim=-1)
        maps_direct = roi_align(maps.features["0"], [b * 2 for b in boxes], output_size=7, spatial_scale=1 / 8,
                                sampling_ratio=2, aligned=False)
    assert [f.shape for f, _ in pooled] == [(3, 256), (1, 256)]
    assert [d.shape for _, d in pooled] == [(3, 37), (1, 37)]
    assert_close(torch.cat([f for f, _ in pooled]), features, rtol=0, atol=1e-6)
    assert_close(torch.cat([d for _, d in pooled]), dists, rtol=0, atol=1e-6)
    assert_close(torch.cat([d for _, d in pooled]).sum(1), torch.ones(4))
    pooled_maps = det.pool_map(maps, boxes)
    assert [m.shape for m in pooled_maps] == [(3, 128, 7, 7), (1, 128, 7, 7)]
    assert_close(torch.cat(pooled_maps), maps_direct, rtol=0, atol=1e-6)


def test_pool_of_no_boxes(frames):
    det = _small()
    maps = det.encode(frames[:2])
    empty = [torch.zeros((0, 4)), torch.zeros((0, 4))]
    assert [(f.shape, d.shape) for f, d in det.pool(maps, empty)] == [((0, 256), (0, 37))] * 2
    assert [m.shape for m in det.pool_map(maps, empty)] == [(0, 128, 7, 7)] * 2


def test_detection_features_of_the_final_box_when_repooled(frames):
    det = _small(detection_features="repool")
    maps = det.encode(frames[:2])
    detections = det.detect(maps)
    assert [len(d) for d in detections] == [30, 30]
    again = det.pool(maps, [d.boxes for d in detections])
    for d, (f, dist) in zip(detections, again):
        assert d.boxes.dtype == torch.float32 and d.labels.dtype == torch.int64
        assert d.features.shape == (30, 256) and d.class_dists.shape == (30, 37)
        assert_close(d.features, f, rtol=0, atol=1e-5)
        assert_close(d.class_dists, dist, rtol=0, atol=1e-6)
        assert bool((d.labels >= 1).all()) and bool((d.labels < 37).all())
        assert bool((d.scores[:-1] >= d.scores[1:]).all())  # sorted by score


def test_detection_features_of_the_source_proposal(frames):
    """By default a detection keeps its proposal's feature and distribution (STTran): its
    score is that distribution at its label, and its feature is one of the proposals'."""
    det = _small()
    maps = det.encode(frames[:2])
    detections = det.detect(maps)
    repooled = _small(detection_features="repool").detect(maps)
    from torchvision.models.detection.image_list import ImageList

    with torch.no_grad():
        proposals, _ = det.model.rpn(ImageList(maps.batch, maps.image_sizes), maps.features)
        heads = det.model.roi_heads
        proposal_features = heads.box_head(heads.box_roi_pool(maps.features, proposals, maps.image_sizes))
    for d, r, pf in zip(detections, repooled, proposal_features.split([len(p) for p in proposals])):
        assert torch.equal(d.boxes, r.boxes) and torch.equal(d.scores, r.scores)
        assert_close(d.class_dists.gather(1, d.labels[:, None])[:, 0], d.scores, rtol=0, atol=0)
        distance = torch.cdist(d.features, pf)  # (n_det, n_proposals)
        assert float(distance.min(dim=1).values.max()) < 1e-5
        assert not torch.allclose(d.features, r.features)  # a proposal is not its regressed box
    with pytest.raises(ValueError, match="detection_features must be 'proposal' or 'repool'"):
        _small(detection_features="box").detect(maps)


def test_detect_boxes_are_in_original_pixels(frames):
    """The same picture at 160x120 and upscaled 2x (resized back to 160x120 by the model):
    identical network input, so identical detections with boxes twice as large."""
    det = _small()
    image = frames[0]
    doubled = image.repeat_interleave(2, dim=1).repeat_interleave(2, dim=2)
    maps = det.encode([image, doubled])
    assert maps.image_sizes == [(120, 160), (120, 160)]
    assert maps.original_sizes == [(120, 160), (240, 320)]
    small, large = det.detect(maps)
    assert len(small) == len(large) == 30
    assert_close(large.boxes, small.boxes * 2, rtol=0, atol=1e-4)
    assert_close(large.scores, small.scores, rtol=0, atol=0)
    assert torch.equal(large.labels, small.labels)
    assert float((large.boxes - small.boxes).abs().max()) > 20  # the scale shows
    assert float(large.boxes[:, 2].max()) <= 320 and float(large.boxes[:, 3].max()) <= 240


def _person_biased(single_person: bool):
    # Detections by score, so that the cap's cut reads as a prefix.
    det = _small(single_person=single_person, detection_order="score")
    with torch.no_grad():
        det.model.roi_heads.box_predictor.cls_score.bias[PERSON] += 4.0
    return det


def test_single_person_rule(frames):
    maps = _person_biased(False).encode(frames[:2])
    every = _person_biased(False).detect(maps)
    one = _person_biased(True).detect(maps)
    for all_d, d in zip(every, one):
        persons = all_d.labels == PERSON
        assert int(persons.sum()) > 1  # the rule has something to remove
        assert int((d.labels == PERSON).sum()) == 1
        best = int(torch.where(persons, all_d.scores, torch.tensor(-1.0)).argmax())
        kept = int((d.labels == PERSON).nonzero())
        assert_close(d.boxes[kept], all_d.boxes[best], rtol=0, atol=0)
        assert d.scores[kept] == all_d.scores[best]
        # Every other class is untouched, and the per-image cap counts after the rule: the
        # budget the dropped person boxes used goes to the next best other detections.
        others = d.boxes[d.labels != PERSON]
        assert_close(others[: int((~persons).sum())], all_d.boxes[~persons], rtol=0, atol=0)
    cap = _person_biased(True).settings.max_detections
    uncapped = _person_biased(False)
    uncapped.settings = dataclasses.replace(uncapped.settings, max_detections=0)
    for d, u in zip(one, uncapped.detect(maps)):
        u_others = u.boxes[u.labels != PERSON]
        assert len(u) > cap  # the cap has something to cut
        assert_close(d.boxes[d.labels != PERSON], u_others[: cap - 1], rtol=0, atol=0)


def test_keep_one_person_hand_case():
    labels = torch.tensor([1, 5, 1, 1, 7])
    scores = torch.tensor([0.3, 0.9, 0.8, 0.5, 0.1])
    assert _keep_one_person(labels, scores, 1).tolist() == [1, 2, 4]
    assert _keep_one_person(torch.tensor([5, 7]), torch.tensor([0.2, 0.1]), 1).tolist() == [0, 1]
    assert _keep_one_person(torch.zeros(0, dtype=torch.long), torch.zeros(0), 1).tolist() == []


def _outputs(det, frames):
    maps = det.encode(frames[:2])
    return det.detect(maps), det.pool(maps, _boxes())


def _assert_same_outputs(a, b):
    (det_a, pool_a), (det_b, pool_b) = a, b
    for x, y in zip(det_a, det_b):
        for field in ("boxes", "scores", "labels", "class_dists", "features"):
            assert torch.equal(getattr(x, field), getattr(y, field)), field
    for (fa, da), (fb, db) in zip(pool_a, pool_b):
        assert torch.equal(fa, fb) and torch.equal(da, db)


def test_save_and_load_detector_round_trip(frames, tmp_path):
    det = _small(seed=5, nms_thresh=0.5)
    path = tmp_path / "d.pth"
    save_detector(det, path, note="x")
    loaded, sha = load_detector(path)
    assert sha == hashlib.sha256(path.read_bytes()).hexdigest()
    assert loaded.arch == "small" and loaded.settings == det.settings
    assert torch.load(path, weights_only=True)["note"] == "x"
    _assert_same_outputs(_outputs(loaded.eval(), frames), _outputs(det, frames))
    # Settings given to load_detector override the saved ones.
    assert load_detector(path, settings={"score_thresh": 0.2})[0].settings.score_thresh == 0.2


def test_a_checkpoint_from_before_the_step_options_runs_sttran_step(tmp_path):
    """A checkpoint saved before the detector step had options carries torchvision's cap
    (``detections_per_img: 100``) and none of the step's keys: the cap is dropped and STTran's
    step applies (no cap, NMS in original pixels, per-chunk clipping, one scale, class order)."""
    path = tmp_path / "old.pth"
    save_detector(_small(seed=3), path)
    checkpoint = torch.load(path, weights_only=True)
    for key in ("nms_space", "max_detections", "clip", "box_scale", "detection_order"):
        del checkpoint["settings"][key]
    checkpoint["settings"]["detections_per_img"] = 100
    torch.save(checkpoint, path)
    loaded, _ = load_detector(path)
    s = loaded.settings
    assert (s.max_detections, s.nms_space.value, s.clip.value, s.box_scale.value, s.detection_order.value) == (
        0, "original", "sttran", "one", "class")
    assert "detections_per_img" not in s.to_dict()


def test_load_weights_of_a_torchvision_state_dict(frames, tmp_path):
    source = _small(seed=1)
    path = tmp_path / "tv.pth"
    torch.save(source.model.state_dict(), path)  # bare torchvision format, no arch
    target = _small(seed=2)
    before = _outputs(target, frames)
    sha = load_weights(target, path)
    assert sha == hashlib.sha256(path.read_bytes()).hexdigest()
    _assert_same_outputs(_outputs(target, frames), _outputs(source, frames))
    with pytest.raises(AssertionError):
        _assert_same_outputs(before, _outputs(source, frames))  # seed 2 really differed
    with pytest.raises(ValueError, match="does not name its architecture"):
        load_detector(path)
    loaded, _ = load_detector(path, arch="small", settings=TINY)
    _assert_same_outputs(_outputs(loaded.eval(), frames), _outputs(source, frames))


def test_load_weights_skips_mismatched_shapes(tmp_path):
    path = tmp_path / "coco.pth"
    coco_like = _small(seed=1, num_classes=91)
    torch.save({"model": coco_like.model.state_dict()}, path)
    target = _small(seed=2)
    with pytest.raises(RuntimeError, match="size mismatch"):
        load_weights(target, path)
    load_weights(target, path, skip_mismatched=True)
    own, theirs = target.model.state_dict(), coco_like.model.state_dict()
    assert torch.equal(own["backbone.body.0.weight"], theirs["backbone.body.0.weight"])
    assert own["roi_heads.box_predictor.cls_score.weight"].shape == (37, 256)  # kept its own
    with pytest.raises(ValueError, match="not a torchvision-format state dict"):
        torch.save({"model": {"a": 1}}, tmp_path / "bad.pth")
        load_weights(target, tmp_path / "bad.pth")


@pytest.mark.parametrize("arch", ["r50-fpn", "r101-c4"])
def test_load_backbone_weights(arch, tmp_path):
    from torchvision.models import resnet50, resnet101

    start = time.perf_counter()
    torch.manual_seed(0)
    resnet = (resnet50 if arch == "r50-fpn" else resnet101)(weights=None)
    with torch.no_grad():  # distinctive BN statistics, so a skipped buffer shows
        for m in resnet.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    state = resnet.state_dict()
    path = tmp_path / "resnet.pth"
    torch.save(state, path)
    det = build_detector(arch)
    sha, missing = load_backbone_weights(det, path)
    assert sha == hashlib.sha256(path.read_bytes()).hexdigest()
    own = det.model.state_dict()
    if arch == "r50-fpn":
        where = {"conv1.weight": "backbone.body.conv1.weight", "bn1.running_var": "backbone.body.bn1.running_var",
                 "layer1.0.conv1.weight": "backbone.body.layer1.0.conv1.weight",
                 "layer4.2.bn3.bias": "backbone.body.layer4.2.bn3.bias"}
    else:
        where = {"conv1.weight": "backbone.stem.0.weight", "bn1.running_var": "backbone.stem.1.running_var",
                 "layer3.22.conv2.weight": "backbone.layer3.22.conv2.weight",
                 "layer4.2.bn3.bias": "roi_heads.box_head.layer4.2.bn3.bias"}
    for name, target in where.items():
        assert torch.equal(own[target], state[name]), name
    # Every backbone tensor is placed; the classifier and BatchNorm's step counters (which
    # FrozenBatchNorm2d does not have) are ignored, not reported as missing.
    assert missing == []
    if arch == "r101-c4":
        assert time.perf_counter() - start < 30


def test_build_detector_errors():
    with pytest.raises(KeyError, match="unknown detector architecture 'yolo'"):
        build_detector("yolo")
    det = build_detector("small", {"pixel_mean": [0.5, 0.5, 0.5], "anchor_sizes": [8, 16]})
    assert det.settings.pixel_mean == (0.5, 0.5, 0.5) and det.settings.anchor_sizes == (8, 16)
    assert np.isclose(det.model.transform.image_mean, [0.5, 0.5, 0.5]).all()
