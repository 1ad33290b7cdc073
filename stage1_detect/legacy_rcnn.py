"""jwyang/faster-rcnn.pytorch's inference geometry as parts of torchvision's Faster R-CNN.

:func:`apply_legacy_conventions` swaps the parts of a torchvision r101-c4 ``FasterRCNN`` that
differ from jwyang's (the code of the Action Genome detector of every baseline): the caffe stem's
max-pool, a 512-channel RPN head, jwyang's anchors, "+1" box deltas, clipping to W - 1 / H - 1,
"+1" NMS, proposal filtering without a size filter, cv2's resize and unpadded input.
:func:`stage1_detect.detectors.build_r101_c4` calls it when its settings say
``legacy_rcnn=True``. Parameter names are unchanged: this module knows nothing of checkpoints
(:mod:`stage1_detect.ag_checkpoint`) nor of the detector interface. Each convention with the
jwyang / STTran file it comes from: docs/ag_detector.md, "Conventions reconciled".
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection._utils import BoxCoder
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform, resize_boxes
from torchvision.ops import boxes as box_ops
from torchvision.ops.misc import Conv2dNormActivation

JWYANG_BASE_SIZE = 16
"""``generate_anchors(base_size=16)``: the reference window is (0, 0, 15, 15)."""
JWYANG_FEAT_STRIDE = 16
"""``cfg.FEAT_STRIDE = [16]``: anchors shift by 16 pixels per feature cell."""
JWYANG_RPN_CHANNELS = 512
"""``RPN_Conv = Conv2d(1024, 512, 3, 1, 1)``."""


def jwyang_anchors(sizes: Sequence[float], aspect_ratios: Sequence[float],
                   base_size: int = JWYANG_BASE_SIZE) -> Tensor:
    """The cell anchors of ``generate_anchors.py``: float32 (len(ratios) * len(sizes), 4) xyxy.

    ``sizes`` are in pixels (scale * base_size, e.g. 128 for scale 8); ratio = h / w. Rows are
    ratio-major then size. For ratio 1, size 128: [-56, -56, 71, 71].
    """
    ratios = torch.as_tensor(aspect_ratios, dtype=torch.float64)
    scales = torch.as_tensor(sizes, dtype=torch.float64) / base_size
    centre = (base_size - 1) / 2.0
    # _ratio_enum: keep the base area, round w, then round h from the rounded w
    # (torch.round rounds half to even, as numpy's round does).
    ws = torch.round(torch.sqrt(base_size * base_size / ratios))
    hs = torch.round(ws * ratios)
    ws = (ws[:, None] * scales[None, :]).reshape(-1)
    hs = (hs[:, None] * scales[None, :]).reshape(-1)
    half_w, half_h = 0.5 * (ws - 1), 0.5 * (hs - 1)
    return torch.stack([centre - half_w, centre - half_h, centre + half_w, centre + half_h], dim=1).float()


class LegacyAnchorGenerator(AnchorGenerator):
    """torchvision's ``AnchorGenerator`` with jwyang's cell anchors and a fixed stride.

    Same anchor order as torchvision (location-major, then ratio, then size), so the RPN
    head's channels need no permutation.
    """

    def __init__(self, sizes: Sequence[float], aspect_ratios: Sequence[float],
                 stride: int = JWYANG_FEAT_STRIDE, base_size: int = JWYANG_BASE_SIZE):
        super().__init__(sizes=(tuple(sizes),), aspect_ratios=(tuple(aspect_ratios),))
        self.stride = stride
        self.cell_anchors = [jwyang_anchors(sizes, aspect_ratios, base_size)]

    def forward(self, image_list: ImageList, feature_maps: list[Tensor]) -> list[Tensor]:
        grid_sizes = [fm.shape[-2:] for fm in feature_maps]
        dtype, device = feature_maps[0].dtype, feature_maps[0].device
        stride = torch.tensor(self.stride, dtype=torch.int64, device=device)
        self.set_cell_anchors(dtype, device)
        per_map = self.grid_anchors(grid_sizes, [[stride, stride]] * len(grid_sizes))
        return [torch.cat(per_map) for _ in image_list.image_sizes]


class LegacyBoxCoder(BoxCoder):
    """Box deltas with the "+1" width convention of jwyang's ``bbox_transform.py``.

    Encode: w = x2 - x1 + 1, cx = x1 + 0.5 w; (dx, dy, dw, dh) = weights *
    ((gx - cx) / w, (gy - cy) / h, log(gw / w), log(gh / h)).
    Decode: cx' = cx + w dx / wx, w' = w exp(dw / ww); x1' = cx' - 0.5 w', x2' = cx' + 0.5 w'.
    dw, dh are clamped at ``bbox_xform_clip`` (log(1000 / 16)) as torchvision does; jwyang
    does not clamp, which only matters for boxes 62 times wider than their anchor.
    """

    def encode_single(self, reference_boxes: Tensor, proposals: Tensor) -> Tensor:
        wx, wy, ww, wh = self.weights
        pw, ph, pcx, pcy = _widths_centres(proposals)
        gw, gh, gcx, gcy = _widths_centres(reference_boxes)
        return torch.stack([wx * (gcx - pcx) / pw, wy * (gcy - pcy) / ph,
                            ww * torch.log(gw / pw), wh * torch.log(gh / ph)], dim=1)

    def decode_single(self, rel_codes: Tensor, boxes: Tensor) -> Tensor:
        boxes = boxes.to(rel_codes.dtype)
        w, h, cx, cy = (t[:, None] for t in _widths_centres(boxes))
        wx, wy, ww, wh = self.weights
        dx, dy = rel_codes[:, 0::4] / wx, rel_codes[:, 1::4] / wy
        dw = torch.clamp(rel_codes[:, 2::4] / ww, max=self.bbox_xform_clip)
        dh = torch.clamp(rel_codes[:, 3::4] / wh, max=self.bbox_xform_clip)
        pcx, pcy = dx * w + cx, dy * h + cy
        pw, ph = torch.exp(dw) * w, torch.exp(dh) * h
        return torch.stack([pcx - 0.5 * pw, pcy - 0.5 * ph, pcx + 0.5 * pw, pcy + 0.5 * ph], dim=2).flatten(1)


def _widths_centres(boxes: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    w = boxes[:, 2] - boxes[:, 0] + 1.0
    h = boxes[:, 3] - boxes[:, 1] + 1.0
    return w, h, boxes[:, 0] + 0.5 * w, boxes[:, 1] + 0.5 * h


def legacy_clip(boxes: Tensor, image_size: tuple[int, int]) -> Tensor:
    """Clip xyxy boxes (..., 4) to [0, W - 1] x [0, H - 1] (jwyang's ``clip_boxes``)."""
    h, w = image_size
    x = boxes[..., 0::2].clamp(0, w - 1)
    y = boxes[..., 1::2].clamp(0, h - 1)
    return torch.stack([x[..., 0], y[..., 0], x[..., 1], y[..., 1]], dim=-1)


_GROW = (0.0, 0.0, 1.0, 1.0)


def legacy_nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """NMS whose IoU counts pixels ("+1" widths and areas), as the AG detector's kernels.

    Growing x2, y2 by one makes torchvision's IoU equal that one exactly.
    Returns int64 indices, highest score first.
    """
    return box_ops.nms(boxes + boxes.new_tensor(_GROW), scores, iou_threshold)


class LegacyRegionProposalNetwork(RegionProposalNetwork):
    """torchvision's RPN with jwyang's proposal layer: top ``pre_nms_top_n`` by foreground
    probability, clip to W - 1 / H - 1, "+1" NMS, top ``post_nms_top_n``; no size filter."""

    @classmethod
    def like(cls, rpn: RegionProposalNetwork, *, anchor_generator: AnchorGenerator, head: nn.Module,
             box_coder: BoxCoder) -> "LegacyRegionProposalNetwork":
        new = cls(anchor_generator, head,
                  fg_iou_thresh=rpn.proposal_matcher.high_threshold,
                  bg_iou_thresh=rpn.proposal_matcher.low_threshold,
                  batch_size_per_image=rpn.fg_bg_sampler.batch_size_per_image,
                  positive_fraction=rpn.fg_bg_sampler.positive_fraction,
                  pre_nms_top_n=dict(rpn._pre_nms_top_n), post_nms_top_n=dict(rpn._post_nms_top_n),
                  nms_thresh=rpn.nms_thresh, score_thresh=rpn.score_thresh)
        new.box_coder = box_coder
        return new

    def filter_proposals(self, proposals: Tensor, objectness: Tensor, image_shapes: list[tuple[int, int]],
                         num_anchors_per_level: list[int]) -> tuple[list[Tensor], list[Tensor]]:
        num_images = proposals.shape[0]
        probs = torch.sigmoid(objectness.detach().reshape(num_images, -1))
        final_boxes, final_scores = [], []
        for boxes, scores, shape in zip(proposals, probs, image_shapes):
            order = scores.argsort(descending=True)[: self.pre_nms_top_n()]
            boxes, scores = legacy_clip(boxes[order], shape), scores[order]
            keep = legacy_nms(boxes, scores, self.nms_thresh)[: self.post_nms_top_n()]
            final_boxes.append(boxes[keep])
            final_scores.append(scores[keep])
        return final_boxes, final_scores


class LegacyTransform(GeneralizedRCNNTransform):
    """torchvision's transform with STTran's resize (``prep_im_for_blob``: ``cv2.resize(im,
    fx=s, fy=s, INTER_LINEAR)``) and no padding to a multiple of 32.

    s = min_size / short side (or max_size / long side if smaller); output size
    round(side * s) (cv2's dsize, half to even) where torchvision floors it, and bilinear
    samples at (dst + 0.5) / s - 0.5, clamped at the borders, as cv2 does (torchvision samples
    at out / in instead of s). For 480x270 at 600: 1067x600 (torchvision: 1066x600).
    """

    @classmethod
    def like(cls, transform: GeneralizedRCNNTransform) -> "LegacyTransform":
        return cls(transform.min_size, transform.max_size, transform.image_mean, transform.image_std,
                   size_divisible=1, fixed_size=transform.fixed_size, _skip_resize=transform._skip_resize)

    def resize(self, image: Tensor, target: dict[str, Tensor] | None = None):
        h, w = image.shape[-2:]
        if self.training:
            if self._skip_resize:
                return image, target
            size = self.torch_choice(self.min_size)
        else:
            size = self.min_size[-1]
        scale = min(float(size) / min(h, w), float(self.max_size) / max(h, w))
        out = [round(h * scale), round(w * scale)]
        image = torch.ops.aten.upsample_bilinear2d(image[None], out, False, scale, scale)[0]
        if target is not None:
            target["boxes"] = resize_boxes(target["boxes"], (h, w), image.shape[-2:])
        return image, target


def legacy_rpn_head(in_channels: int, num_anchors: int, mid_channels: int = JWYANG_RPN_CHANNELS) -> RPNHead:
    """torchvision's ``RPNHead`` (same parameter names) with jwyang's 512-channel 3x3 conv."""
    head = RPNHead(in_channels, num_anchors)
    head.conv = nn.Sequential(Conv2dNormActivation(in_channels, mid_channels, kernel_size=3, norm_layer=None))
    head.cls_logits = nn.Conv2d(mid_channels, num_anchors, kernel_size=1)
    head.bbox_pred = nn.Conv2d(mid_channels, num_anchors * 4, kernel_size=1)
    for layer in head.modules():
        if isinstance(layer, nn.Conv2d):
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.zeros_(layer.bias)
    return head


def apply_legacy_conventions(model: FasterRCNN, *, anchor_sizes: Sequence[float],
                             aspect_ratios: Sequence[float]) -> FasterRCNN:
    """Make an r101-c4 ``FasterRCNN`` compute what jwyang/faster-rcnn.pytorch computes (in place).

    ``model.backbone`` is the C4 body (``stem``: conv, bn, relu, max-pool). Replaces the
    stem's max-pool padding, the RPN (anchors of ``anchor_sizes`` x ``aspect_ratios``,
    512-channel head, "+1" box coder, proposal filtering), the box head's coder, and the
    transform's resize (cv2's sizes and sampling, no padding to a multiple of 32). Parameter
    names are unchanged; the RPN head's shapes change (512 channels). docs/ag_detector.md,
    "Conventions reconciled", gives each convention and its source.
    """
    stem_pool = model.backbone.stem[3]
    stem_pool.padding, stem_pool.ceil_mode = 0, True
    anchors = LegacyAnchorGenerator(anchor_sizes, aspect_ratios)
    head = legacy_rpn_head(model.backbone.out_channels, anchors.num_anchors_per_location()[0])
    model.rpn = LegacyRegionProposalNetwork.like(model.rpn, anchor_generator=anchors, head=head,
                                                 box_coder=LegacyBoxCoder(model.rpn.box_coder.weights))
    model.roi_heads.box_coder = LegacyBoxCoder(model.roi_heads.box_coder.weights)
    model.transform = LegacyTransform.like(model.transform)
    return model
