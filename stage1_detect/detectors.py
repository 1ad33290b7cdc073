"""The torchvision backend of stage 1: detectors built from torchvision's Faster R-CNN parts.

:class:`Detector` implements :class:`~stage1_detect.frame_detector.FrameDetector` for every
architecture of :data:`ARCHITECTURES` (``r101-c4``, the AG detector's layout; ``r50-fpn``, for
COCO weights; ``small``, trained from scratch on the synthetic data) and, after the network,
runs STTran's detector step (:mod:`stage1_detect.detection_step`), each part a named setting.
What each architecture is, and where a detection's score, feature and class distribution come
from: docs/ag_detector.md, "The torchvision backend".

Over 500 lines on purpose: :class:`Detector` and the architectures it is built from are one
unit (each builder sets the :class:`DetectorSettings` that the forward passes rely on).
"""

from __future__ import annotations

import dataclasses
import enum
import logging
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import resnet50, resnet101
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.misc import FrozenBatchNorm2d

from common.errors import InputError
from common.files import sha256_of
from common.torch_files import load_torch, save_torch
from stage1_detect.detection_step import (
    BoxScale,
    ClipRule,
    DetectionOrder,
    NmsSpace,
    clips_frame,
    detection_step,
)
from stage1_detect.frame_detector import (
    DetectorDescription,
    EncodedFrames,
    FrameDetections,
    FrameDetector,
)
from stage1_detect.legacy_rcnn import apply_legacy_conventions

log = logging.getLogger(__name__)

# Caffe's BGR pixel means, on 0..255 pixels (jwyang/faster-rcnn.pytorch cfg.PIXEL_MEANS).
CAFFE_BGR_MEANS = (102.9801, 115.9465, 122.7717)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class DetectorSettings:
    """Everything that decides a detector's output besides its weights (written into the store)."""

    num_classes: int = 37
    """Object classes including background at index 0."""
    person_label: int = 1
    min_size: int = 600
    max_size: int = 1000
    pixel_format: str = "bgr255"
    """'bgr255': BGR on 0..255 minus ``pixel_mean`` (caffe); 'rgb01': RGB on 0..1, (x - mean) / std."""
    pixel_mean: tuple[float, ...] = CAFFE_BGR_MEANS
    pixel_std: tuple[float, ...] = (1.0, 1.0, 1.0)
    anchor_sizes: tuple[int, ...] = (64, 128, 256, 512)
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    rpn_pre_nms_top_n_test: int = 6000
    rpn_post_nms_top_n_test: int = 100
    rpn_pre_nms_top_n_train: int = 12000
    rpn_post_nms_top_n_train: int = 2000
    rpn_nms_thresh: float = 0.7
    score_thresh: float = 0.1
    nms_thresh: float = 0.4
    single_person: bool = True
    """Keep only the highest-scoring person box (the AG protocol has one person)."""
    nms_space: NmsSpace = NmsSpace.ORIGINAL
    """Per-class NMS on boxes in original-frame pixels (STTran) or in the resized image's."""
    max_detections: int = 0
    """Detections kept per frame, best first; 0 keeps every one (STTran)."""
    clip: ClipRule = ClipRule.STTRAN
    """Which frames' boxes are clipped: STTran's (the first of each chunk of 10) or all."""
    box_scale: BoxScale = BoxScale.ONE
    """Boxes map between the original frame and the resized image (detections, and the GT and
    union boxes pooled) by one scale (STTran) or by one ratio per axis."""
    detection_order: DetectionOrder = DetectionOrder.CLASS
    """A frame's detections class by class, each by score (STTran), or by score."""
    detection_features: str = "proposal"
    """Feature and class distribution of a detection: 'proposal', those of the proposal it
    was regressed from (STTran's object detector), or 'repool', pooled again from the final
    box (so that a detection and the same GT box get the same feature)."""
    roi_size: int = 14
    map_size: int = 7
    """Output size of :meth:`Detector.pool_map` (STTran: 7x7 union maps)."""
    stride_in_1x1: bool = True
    """ResNet bottlenecks with the stride on the 1x1 conv (caffe, as the AG checkpoint)."""
    legacy_rcnn: bool = False
    """jwyang/faster-rcnn.pytorch's anchors and '+1' box decoding (:mod:`stage1_detect.legacy_rcnn`),
    for the converted AG checkpoint (see :mod:`stage1_detect.ag_checkpoint`)."""

    def __post_init__(self) -> None:
        # From a checkpoint or a store the options come back as their strings.
        for name, kind in (("nms_space", NmsSpace), ("clip", ClipRule), ("box_scale", BoxScale),
                           ("detection_order", DetectionOrder)):
            object.__setattr__(self, name, kind(getattr(self, name)))
        if self.max_detections < 0:
            raise ValueError(f"max_detections must be >= 0 (0: no cap), got {self.max_detections}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values (the options as their strings), for checkpoints and the store."""
        return {k: v.value if isinstance(v, enum.Enum) else v for k, v in dataclasses.asdict(self).items()}


@dataclass
class FeatureMaps(EncodedFrames):
    """The backbone's output for a batch of frames.

    features: name -> float (B, C, H, W) maps of the resized, padded batch;
    batch: the resized, padded input batch (B, 3, H', W'), whose size places the anchors;
    image_sizes: (h, w) of each resized image inside the batch;
    original_sizes: (h, w) of each frame as given;
    scales: the resize's one scale of each frame (min(min_size / short side, max_size / long side));
    box_scale: how boxes map to the original frame (:class:`BoxScale`).
    """

    features: "OrderedDict[str, Tensor]"
    batch: Tensor
    image_sizes: list[tuple[int, int]]
    scales: list[float]
    box_scale: BoxScale = BoxScale.ONE

    def to_resized(self, i: int, device: torch.device | str = "cpu") -> Tensor:
        """float32 (4,) resized / original factor of x1, y1, x2, y2 for frame ``i``: the one
        scale as float32 (STTran's ``im_info``), or each axis's ratio of sizes."""
        if BoxScale(self.box_scale) is BoxScale.ONE:
            return torch.full((4,), self.scales[i], dtype=torch.float32, device=device)
        (h, w), (oh, ow) = self.image_sizes[i], self.original_sizes[i]
        return torch.tensor([w / ow, h / oh, w / ow, h / oh], dtype=torch.float32, device=device)

    def scale_boxes(self, boxes: Sequence[Tensor], to_original: bool) -> list[Tensor]:
        """Map boxes between original-frame pixels and resized-image pixels."""
        out = []
        for i, b in enumerate(boxes):
            factor = self.to_resized(i, b.device).to(b.dtype)
            out.append(b / factor if to_original else b * factor)
        return out


class Detector(FrameDetector):
    """A torchvision ``FasterRCNN`` plus the feature and distribution outputs stage 2 needs.

    ``model`` is a plain torchvision ``FasterRCNN``; its ``state_dict`` is the
    torchvision checkpoint format, so torchvision checkpoints load into it by path
    (:func:`load_weights`).
    """

    def __init__(self, *, model: FasterRCNN, arch: str, settings: DetectorSettings, feature_dim: int,
                 map_channels: int):
        super().__init__()
        self.model = model
        self.arch = arch
        self.settings = settings
        self.feature_dim = feature_dim
        self.map_channels = map_channels
        featmap_names = list(model.roi_heads.box_roi_pool.featmap_names)
        self.map_pool = MultiScaleRoIAlign(featmap_names, output_size=settings.map_size, sampling_ratio=2)

    @property
    def num_classes(self) -> int:
        return self.settings.num_classes

    def _prepare(self, images: Sequence[Tensor]) -> list[Tensor]:
        """uint8 (3, H, W) RGB or float (3, H, W) RGB on 0..1 -> the model's input convention."""
        out = []
        for im in images:
            im = im.float() / 255.0 if im.dtype == torch.uint8 else im.float()
            if self.settings.pixel_format == "bgr255":
                im = im.flip(0) * 255.0
            out.append(im)
        return out

    def forward(self, images: Sequence[Tensor], targets: list[dict[str, Tensor]] | None = None):
        """Training: torchvision's loss dict. Boxes in ``targets`` are original-frame xyxy.

        (In eval mode this is torchvision's own inference, which the project does not use:
        detections come from :meth:`encode` then :meth:`detect`, which runs STTran's step.)"""
        return self.model(self._prepare(images), targets)

    @torch.no_grad()
    def encode(self, images: Sequence[Tensor]) -> FeatureMaps:
        """Run the backbone on a batch of uint8 (3, H, W) RGB frames."""
        original_sizes = [tuple(im.shape[-2:]) for im in images]
        batch, _ = self.model.transform(self._prepare(images))
        features = self.model.backbone(batch.tensors)
        if isinstance(features, Tensor):
            features = OrderedDict([("0", features)])
        t = self.model.transform
        # The scale both transforms resize by (LegacyTransform: cv2's fx = fy; torchvision's:
        # interpolate's scale_factor): min_size / short side, capped by max_size / long side
        # (no cap in the AG checkpoint's settings: STTran's prep_im_for_blob, 600 / short side).
        scales = [min(float(t.min_size[-1]) / min(h, w), float(t.max_size) / max(h, w)) for h, w in original_sizes]
        return FeatureMaps(features=features, batch=batch.tensors, image_sizes=list(batch.image_sizes),
                           original_sizes=original_sizes, scales=scales, box_scale=self.settings.box_scale)

    @torch.no_grad()
    def detect(self, maps: FeatureMaps, positions: Sequence[int] | None = None) -> list[FrameDetections]:
        """Detections of every frame of ``maps`` (see the module docstring).

        ``positions``: each frame's index in STTran's frame list of its video (-1: not in it),
        which decides whether STTran's step clips its boxes (:func:`clips_frame`); None: every
        frame is clipped.
        """
        from torchvision.models.detection.image_list import ImageList

        s = self.settings
        m = self.model
        heads = m.roi_heads
        images = ImageList(maps.batch, maps.image_sizes)
        proposals, _ = m.rpn(images, maps.features)
        proposal_features = heads.box_head(heads.box_roi_pool(maps.features, proposals, maps.image_sizes))
        logits, deltas = heads.box_predictor(proposal_features)
        counts = [len(p) for p in proposals]
        class_boxes = heads.box_coder.decode(deltas, proposals).reshape(sum(counts), -1, 4).split(counts)
        probs = F.softmax(logits, dim=-1)
        positions = [-1] * len(maps) if positions is None else list(positions)
        if len(positions) != len(maps):
            raise ValueError(f"detect: {len(positions)} frame positions for {len(maps)} frames")
        steps = [detection_step(b, p, image_size=size, to_resized=maps.to_resized(i, p.device),
                                clip=clips_frame(pos, s.clip), clamp_at_zero=s.clip is ClipRule.STTRAN,
                                plus_one=s.legacy_rcnn, score_thresh=s.score_thresh, nms_thresh=s.nms_thresh,
                                nms_space=s.nms_space, person_label=s.person_label, single_person=s.single_person,
                                max_detections=s.max_detections, order=s.detection_order)
                 for i, (b, p, size, pos) in enumerate(zip(class_boxes, probs.split(counts), maps.image_sizes,
                                                           positions))]
        boxes = [st.boxes for st in steps]
        if s.detection_features == "repool":
            pooled = self.pool(maps, boxes)
        elif s.detection_features == "proposal":
            pooled = [(f[st.proposal].float(), p[st.proposal].float()) for f, p, st in
                      zip(proposal_features.split(counts), probs.split(counts), steps)]
        else:
            raise ValueError(f"detection_features must be 'proposal' or 'repool', got {s.detection_features!r}")
        return [
            FrameDetections(boxes=st.boxes.float(), scores=st.scores.float(), labels=st.labels.long(),
                            class_dists=d, features=f)
            for st, (f, d) in zip(steps, pooled)
        ]

    @torch.no_grad()
    def pool(self, maps: FeatureMaps, boxes: Sequence[Tensor]) -> list[tuple[Tensor, Tensor]]:
        """(features float32 (n, D), class_dists float32 (n, C)) of original-frame xyxy boxes."""
        return self._pool_resized(maps, maps.scale_boxes([b.float() for b in boxes], to_original=False))

    def _pool_resized(self, maps: FeatureMaps, boxes: Sequence[Tensor]) -> list[tuple[Tensor, Tensor]]:
        counts = [len(b) for b in boxes]
        if sum(counts) == 0:
            empty = next(iter(maps.features.values())).new_zeros
            return [(empty((0, self.feature_dim)), empty((0, self.num_classes))) for _ in boxes]
        heads = self.model.roi_heads
        pooled = heads.box_roi_pool(maps.features, list(boxes), maps.image_sizes)
        features = heads.box_head(pooled)
        logits, _ = heads.box_predictor(features)
        dists = F.softmax(logits, dim=-1)
        return list(zip(features.float().split(counts), dists.float().split(counts)))

    @torch.no_grad()
    def pool_map(self, maps: FeatureMaps, boxes: Sequence[Tensor]) -> list[Tensor]:
        """RoIAlign maps float32 (n, map_channels, map_size, map_size) of original-frame boxes."""
        counts = [len(b) for b in boxes]
        resized = maps.scale_boxes([b.float() for b in boxes], to_original=False)
        if sum(counts) == 0:
            s = self.settings.map_size
            return [next(iter(maps.features.values())).new_zeros((0, self.map_channels, s, s)) for _ in boxes]
        out = self.map_pool(maps.features, resized, maps.image_sizes)
        return list(out.float().split(counts))

    def describe(self) -> DetectorDescription:
        s = self.settings.map_size
        return DetectorDescription(arch=self.arch, feature_dim=self.feature_dim, num_classes=self.num_classes,
                                   map_shape=(self.map_channels, s, s), settings=self.settings.to_dict())

    def info(self) -> dict[str, Any]:
        return {"arch": self.arch, "settings": self.settings.to_dict(), "feature_dim": self.feature_dim}


# --- architectures -----------------------------------------------------------------------


class ResNetC4Body(nn.Module):
    """conv1 .. layer3 of a torchvision ResNet: 1024 channels at stride 16."""

    def __init__(self, resnet: nn.Module):
        super().__init__()
        self.stem = nn.Sequential(resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool)
        self.layer1, self.layer2, self.layer3 = resnet.layer1, resnet.layer2, resnet.layer3
        self.out_channels = 1024

    def forward(self, x: Tensor) -> Tensor:
        return self.layer3(self.layer2(self.layer1(self.stem(x))))


class ResNetC4Head(nn.Module):
    """layer4 then a spatial mean: (n, 1024, 14, 14) RoIs -> (n, 2048) features."""

    def __init__(self, resnet: nn.Module):
        super().__init__()
        self.layer4 = resnet.layer4

    def forward(self, x: Tensor) -> Tensor:
        return self.layer4(x).mean(dim=(2, 3))


def _move_stride_to_1x1(resnet: nn.Module) -> None:
    """Caffe ResNets stride in the first 1x1 conv of a stage, torchvision's in the 3x3."""
    for layer in (resnet.layer2, resnet.layer3, resnet.layer4):
        block = layer[0]
        block.conv1.stride, block.conv2.stride = block.conv2.stride, (1, 1)


def _faster_rcnn(backbone: nn.Module, box_head: nn.Module, feature_dim: int, s: DetectorSettings,
                 featmap_names: list[str], anchors: AnchorGenerator | None = None) -> FasterRCNN:
    anchors = anchors or AnchorGenerator(sizes=(s.anchor_sizes,), aspect_ratios=(s.aspect_ratios,))
    return FasterRCNN(
        backbone,
        num_classes=None,
        min_size=s.min_size,
        max_size=s.max_size,
        image_mean=list(s.pixel_mean),
        image_std=list(s.pixel_std),
        rpn_anchor_generator=anchors,
        rpn_pre_nms_top_n_train=s.rpn_pre_nms_top_n_train,
        rpn_pre_nms_top_n_test=s.rpn_pre_nms_top_n_test,
        rpn_post_nms_top_n_train=s.rpn_post_nms_top_n_train,
        rpn_post_nms_top_n_test=s.rpn_post_nms_top_n_test,
        rpn_nms_thresh=s.rpn_nms_thresh,
        box_roi_pool=MultiScaleRoIAlign(featmap_names, output_size=s.roi_size, sampling_ratio=0),
        box_head=box_head,
        box_predictor=FastRCNNPredictor(feature_dim, s.num_classes),
        box_score_thresh=s.score_thresh,
        box_nms_thresh=s.nms_thresh,
        # Class-specific deltas scaled by [0.1, 0.1, 0.2, 0.2], as the AG detector.
        bbox_reg_weights=(10.0, 10.0, 5.0, 5.0),
    )


def build_r101_c4(settings: DetectorSettings | None = None, **overrides) -> Detector:
    s = dataclasses.replace(settings or DetectorSettings(), **overrides)
    resnet = resnet101(weights=None, norm_layer=FrozenBatchNorm2d)
    if s.stride_in_1x1:
        _move_stride_to_1x1(resnet)
    if s.stride_in_1x1:
        # The caffe ResNet of the AG checkpoint pools the stem without padding, rounding up
        # (jwyang's resnet.py); torchvision pads by 1 and rounds down.
        resnet.maxpool.ceil_mode = True
        resnet.maxpool.padding = 0
    body, head = ResNetC4Body(resnet), ResNetC4Head(resnet)
    model = _faster_rcnn(body, head, 2048, s, ["0"])
    if s.legacy_rcnn:
        apply_legacy_conventions(model, anchor_sizes=s.anchor_sizes, aspect_ratios=s.aspect_ratios)
    return Detector(model=model, arch="r101-c4", settings=s, feature_dim=2048, map_channels=1024)


R50_FPN_SETTINGS = DetectorSettings(
    min_size=800, max_size=1333, pixel_format="rgb01", pixel_mean=IMAGENET_MEAN, pixel_std=IMAGENET_STD,
    anchor_sizes=(32, 64, 128, 256, 512), rpn_pre_nms_top_n_test=1000, rpn_post_nms_top_n_test=1000,
    rpn_pre_nms_top_n_train=2000, rpn_post_nms_top_n_train=2000, score_thresh=0.1, nms_thresh=0.4,
    roi_size=7, stride_in_1x1=False,
)


def build_r50_fpn(settings: DetectorSettings | None = None, **overrides) -> Detector:
    s = dataclasses.replace(settings or R50_FPN_SETTINGS, **overrides)
    resnet = resnet50(weights=None, norm_layer=FrozenBatchNorm2d)
    backbone = _resnet_fpn_extractor(resnet, trainable_layers=3)
    names = ["0", "1", "2", "3"]
    anchors = AnchorGenerator(sizes=tuple((a,) for a in s.anchor_sizes),
                              aspect_ratios=(s.aspect_ratios,) * len(s.anchor_sizes))
    head = TwoMLPHead(backbone.out_channels * s.roi_size**2, 1024)
    model = _faster_rcnn(backbone, head, 1024, s, names, anchors)
    return Detector(model=model, arch="r50-fpn", settings=s, feature_dim=1024, map_channels=backbone.out_channels)


class SmallBody(nn.Module):
    """Four conv stages (strides 2, 2, 2, 1): 128 channels at stride 8, with BatchNorm.

    A GroupNorm, stride-16 variant at full resolution trained about twice as slowly on the
    synthetic data (val mAP@0.5 0.68 after 6 epochs, where this layout at half resolution
    had 0.75 after 6 and 0.85 after 9, on a shared 2-core machine)."""

    def __init__(self, widths: tuple[int, ...] = (16, 32, 64, 128), strides: tuple[int, ...] = (2, 2, 2, 1)):
        super().__init__()
        layers, c_in = [], 3
        for c, stride in zip(widths, strides):
            layers += [nn.Conv2d(c_in, c, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(c),
                       nn.ReLU(inplace=True),
                       nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
            c_in = c
        self.body = nn.Sequential(*layers)
        self.out_channels = c_in

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


class SmallHead(nn.Module):
    """(n, 128, 7, 7) RoIs -> stride-2 conv -> mean -> (n, dim)."""

    def __init__(self, in_channels: int = 128, dim: int = 256):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, dim, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(dim), nn.ReLU(inplace=True),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).mean(dim=(2, 3))


# Three-quarter resolution for the synthetic 320x240 frames: a stride-8 map of 30x23
# cells. On the synthetic data (10 epochs, 46 val frames) half resolution reached val
# mAP@0.5 0.71 and three quarters 0.79 (cups and food, the smallest objects, gain most)
# for 25 % more time.
SMALL_SETTINGS = DetectorSettings(
    min_size=180, max_size=240, pixel_format="rgb01", pixel_mean=IMAGENET_MEAN, pixel_std=IMAGENET_STD,
    anchor_sizes=(8, 16, 32, 64), rpn_pre_nms_top_n_test=1000, rpn_post_nms_top_n_test=100,
    rpn_pre_nms_top_n_train=1000, rpn_post_nms_top_n_train=256, roi_size=7, stride_in_1x1=False,
)


def build_small(settings: DetectorSettings | None = None, **overrides) -> Detector:
    s = dataclasses.replace(settings or SMALL_SETTINGS, **overrides)
    body = SmallBody()
    model = _faster_rcnn(body, SmallHead(body.out_channels, 256), 256, s, ["0"])
    model.roi_heads.fg_bg_sampler.batch_size_per_image = 64
    return Detector(model=model, arch="small", settings=s, feature_dim=256, map_channels=body.out_channels)


ARCHITECTURES: dict[str, Callable[..., Detector]] = {
    "r101-c4": build_r101_c4,
    "r50-fpn": build_r50_fpn,
    "small": build_small,
}


def build_detector(arch: str, settings: dict[str, Any] | None = None) -> Detector:
    """A detector by registry name, with settings overriding the architecture's defaults."""
    if arch not in ARCHITECTURES:
        raise KeyError(f"unknown detector architecture {arch!r}; known: {sorted(ARCHITECTURES)}")
    settings = dict(settings or {})
    if "detections_per_img" in settings:
        # A checkpoint written before the detector step had options: that key was torchvision's
        # cap of 100 per frame, not a choice; STTran's step has no cap (``max_detections``).
        log.info("detector settings: detections_per_img=%s (an older checkpoint's cap) ignored; max_detections "
                 "is the cap now (default 0: none, as STTran)", settings.pop("detections_per_img"))
    for key in ("pixel_mean", "pixel_std", "anchor_sizes", "aspect_ratios"):
        if key in settings:
            settings[key] = tuple(settings[key])
    return ARCHITECTURES[arch](**settings)


# --- weights -----------------------------------------------------------------------------


def _state_dict_from(checkpoint: Any, path: Path) -> dict[str, Tensor]:
    if isinstance(checkpoint, dict) and "model" in checkpoint and isinstance(checkpoint["model"], dict):
        checkpoint = checkpoint["model"]
    if not isinstance(checkpoint, dict) or not all(isinstance(v, Tensor) for v in checkpoint.values()):
        raise InputError(f"{path}: not a torchvision-format state dict (or a dict with one under 'model')")
    return checkpoint


def load_weights(detector: Detector, path: Path | str, *, skip_mismatched: bool = False) -> str:
    """Load a torchvision-format detection checkpoint into ``detector.model``; returns its sha256.

    ``skip_mismatched`` keeps the detector's own parameters where the checkpoint's shapes
    differ (e.g. COCO's 91-class predictor into a 37-class detector) and says which.
    """
    path = Path(path)
    state = _state_dict_from(torch.load(path, map_location="cpu", weights_only=True), path)
    own = detector.model.state_dict()
    if skip_mismatched:
        state = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    missing, unexpected = detector.model.load_state_dict(state, strict=not skip_mismatched)
    if not skip_mismatched and (missing or unexpected):
        raise ValueError(f"{path}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return sha256_of(path)


def load_backbone_weights(detector: Detector, path: Path | str) -> tuple[str, list[str]]:
    """Load ImageNet classification weights (torchvision ResNet format) into the backbone
    (and, for C4 layouts, the layer4 box head). Returns (sha256, names not found)."""
    path = Path(path)
    state = _state_dict_from(torch.load(path, map_location="cpu", weights_only=True), path)
    own = detector.model.state_dict()
    prefixes = ("backbone.body.", "backbone.stem.", "backbone.", "roi_heads.box_head.")
    renames = {"conv1.": "stem.0.", "bn1.": "stem.1."}
    loaded, missing = {}, []
    for name, value in state.items():
        if name.startswith("fc.") or name.endswith("num_batches_tracked"):
            continue  # the classifier, and a BatchNorm counter that frozen norms do not have
        candidates = [name] + [new + name[len(old):] for old, new in renames.items() if name.startswith(old)]
        target = next((p + c for c in candidates for p in prefixes if p + c in own), None)
        if target is None or own[target].shape != value.shape:
            missing.append(name)
        else:
            loaded[target] = value
    if not loaded:
        raise ValueError(f"{path}: no parameter matches the {detector.arch} backbone")
    detector.model.load_state_dict(loaded, strict=False)
    return sha256_of(path), missing


def save_detector(detector: Detector, path: Path | str, **extra: Any) -> None:
    """Write a detector checkpoint: the torchvision-format ``model`` state dict plus the
    architecture and settings that rebuild it (and anything in ``extra``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_torch({"model": detector.model.state_dict(), "arch": detector.arch,
                "settings": detector.settings.to_dict(), **extra}, path)


def load_detector(path: Path | str, arch: str | None = None, settings: dict[str, Any] | None = None,
                  ) -> tuple[Detector, str]:
    """Build and load a detector from a checkpoint; returns (detector, weights sha256).

    A checkpoint written by :func:`save_detector` (or ``train-detector``, or
    ``convert-ag-detector``) names its architecture and settings; a bare torchvision state
    dict needs ``arch``. ``settings`` override the checkpoint's.
    """
    path = Path(path)
    checkpoint = load_torch(path, what="detector checkpoint")  # one-line errors: empty, truncated, text
    if isinstance(checkpoint, dict) and {"optimizer", "history", "config"} <= set(checkpoint):
        raise InputError(f"{path}: not a detector checkpoint: it is a relation-head checkpoint (stage 2, `train`)")
    saved = checkpoint if isinstance(checkpoint, dict) and "arch" in checkpoint else {}
    arch = arch or saved.get("arch")
    if arch is None:
        raise InputError(f"{path}: the checkpoint does not name its architecture; pass one of {sorted(ARCHITECTURES)}")
    merged = {**saved.get("settings", {}), **(settings or {})}
    detector = build_detector(arch, merged)
    state = _state_dict_from(checkpoint, path)
    missing, unexpected = detector.model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise InputError(f"{path}: does not fit {arch}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return detector, sha256_of(path)
