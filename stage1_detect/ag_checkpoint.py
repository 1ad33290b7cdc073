"""The Action Genome detector checkpoint (``faster_rcnn_ag.pth``) in our r101-c4 detector.

Every AG baseline (STTran, STKET, DSG-DETR, TEMPURA) loads the same Faster R-CNN, trained with
jwyang/faster-rcnn.pytorch and shipped with yrcong/STTran. :func:`convert_ag_checkpoint`
renames its parameters onto torchvision's Faster R-CNN (:data:`NAME_MAP`), turns the RPN's
two-way softmax into one sigmoid logit per anchor (``W[A + a] - W[a]``) and writes a
:func:`save_detector` checkpoint whose settings (:data:`LEGACY_SETTINGS`) say
``legacy_rcnn=True``, so that ``load_detector`` rebuilds it with jwyang's geometry
(:mod:`stage1_detect.legacy_rcnn`). Every convention with its source file, and what cannot be
made identical: docs/ag_detector.md, "Converting" and "Conventions reconciled".
"""

from __future__ import annotations

import logging
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from common.errors import UserError
from common.files import sha256_of
from common.run_folder import check_output_file
from common.torch_files import load_torch
from stage1_detect.detectors import build_r101_c4, save_detector

log = logging.getLogger(__name__)

AG_NUM_CLASSES = 37
"""Background plus Action Genome's 36 object classes."""
NO_LONG_SIDE_CAP = 100_000
"""``max_size`` that never binds: STTran's (and jwyang's) ``prep_im_for_blob`` scales the short
side to 600 with the MAX_SIZE test commented out, so a 480x270 AG frame becomes 1067x600."""
LEGACY_SETTINGS = {"legacy_rcnn": True, "roi_size": 7, "min_size": 600, "max_size": NO_LONG_SIDE_CAP,
                   "rpn_pre_nms_top_n_test": 6000, "rpn_post_nms_top_n_test": 100, "rpn_nms_thresh": 0.7}
"""Settings of a converted checkpoint: STTran's ``fasterRCNN/lib/model/utils/config.py``
(POOLING_SIZE 7, TEST.RPN_PRE_NMS_TOP_N 6000, TEST.RPN_POST_NMS_TOP_N 100, RPN_NMS_THRESH
0.7) and ``blob.py`` (short side 600, no cap on the long side)."""

# jwyang prefix -> our prefix. RCNN_base.2 (relu) and .3 (maxpool) have no parameters.
NAME_MAP: tuple[tuple[str, str], ...] = (
    ("RCNN_base.0.", "backbone.stem.0."),
    ("RCNN_base.1.", "backbone.stem.1."),
    ("RCNN_base.4.", "backbone.layer1."),
    ("RCNN_base.5.", "backbone.layer2."),
    ("RCNN_base.6.", "backbone.layer3."),
    ("RCNN_top.0.", "roi_heads.box_head.layer4."),
    ("RCNN_rpn.RPN_Conv.", "rpn.head.conv.0.0."),
    ("RCNN_rpn.RPN_cls_score.", "rpn.head.cls_logits."),
    ("RCNN_rpn.RPN_bbox_pred.", "rpn.head.bbox_pred."),
    ("RCNN_cls_score.", "roi_heads.box_predictor.cls_score."),
    ("RCNN_bbox_pred.", "roi_heads.box_predictor.bbox_pred."),
)
_RPN_CLS = "RCNN_rpn.RPN_cls_score."


class CheckpointError(UserError, ValueError):
    """A checkpoint that is not the jwyang-format AG detector; the message names the file."""


@dataclass(frozen=True)
class ConversionReport:
    """What :func:`convert_ag_checkpoint` did.

    tensors: tensors written; dropped: source names left out on purpose
    (``num_batches_tracked``); num_anchors: anchors per feature cell (A);
    source_meta: the source's 'epoch', 'session', 'pooling_mode', 'class_agnostic' where present.
    """

    src: Path
    dst: Path
    source_sha256: str
    tensors: int
    dropped: tuple[str, ...]
    num_classes: int
    num_anchors: int
    source_meta: dict[str, Any] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()

    def summary(self) -> str:
        meta = ", ".join(f"{k} {v}" for k, v in self.source_meta.items())
        warn = f"; {len(self.warnings)} warning(s): {' | '.join(self.warnings)}" if self.warnings else ""
        return (f"converted {self.src.name} ({meta or 'no metadata'}; sha256 {self.source_sha256[:12]}) -> "
                f"{self.dst}: {self.tensors} tensors, {self.num_classes} classes, {self.num_anchors} anchors "
                f"per cell, {len(self.dropped)} dropped{warn}")


# --- conversion ----------------------------------------------------------------------------


def _load_source(path: Path, allow_pickle: bool) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=not allow_pickle)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{path}: cannot be read as weights only ({e}); if you trust the file, "
                              "pass allow_pickle=True (--allow-pickle)") from e
    except Exception as e:  # torch raises RuntimeError and others for a file it cannot parse
        raise CheckpointError(f"{path}: not a torch checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("model"), dict):
        raise CheckpointError(f"{path}: expected jwyang/faster-rcnn.pytorch's dict with a 'model' state dict")
    return checkpoint


def map_jwyang_state_dict(state: dict[str, Tensor], path: Path | str = "<state dict>",
                          ) -> tuple[dict[str, Tensor], list[str]]:
    """jwyang names -> our r101-c4 names; returns (converted state dict, dropped names).

    The RPN's 2A softmax channels become A sigmoid logits (fg - bg); everything else is
    copied unchanged. Raises :class:`CheckpointError` naming ``path`` for an unknown name.
    """
    out: dict[str, Tensor] = {}
    dropped, unknown = [], []
    for name, value in state.items():
        name = name.removeprefix("module.")  # saved from nn.DataParallel
        if name.endswith("num_batches_tracked"):
            dropped.append(name)
            continue
        target = next((new + name[len(old):] for old, new in NAME_MAP if name.startswith(old)), None)
        if target is None:
            unknown.append(name)
            continue
        if name.startswith(_RPN_CLS):
            value = _softmax_pair_to_logit(value, path, name)
        out[target] = value.detach()
    if unknown:
        raise CheckpointError(f"{path}: {len(unknown)} parameter(s) with no place in the r101-c4 detector, "
                              f"e.g. {unknown[:5]}")
    return out, dropped


def _softmax_pair_to_logit(value: Tensor, path: Path | str, name: str) -> Tensor:
    if value.shape[0] % 2:
        raise CheckpointError(f"{path}: {name} has {value.shape[0]} channels; a two-way softmax needs an even count")
    a = value.shape[0] // 2
    return value[a:] - value[:a]  # [bg_0..bg_{A-1}, fg_0..fg_{A-1}] -> fg_a - bg_a


def _is_converted(path: Path) -> bool:
    """Whether ``path`` is a checkpoint this conversion wrote (rerunning it replaces it)."""
    try:
        saved = load_torch(path, what="detector checkpoint", mmap=True)
    except UserError:
        return False
    return isinstance(saved, dict) and saved.get("source_format") == "jwyang/faster-rcnn.pytorch"


def convert_ag_checkpoint(src_path: Path | str, dst_path: Path | str, *, allow_pickle: bool = False,
                          ) -> ConversionReport:
    """Convert jwyang's ``faster_rcnn_ag.pth`` into a ``load_detector`` checkpoint.

    The source is ``{'model': state dict, 'pooling_mode', 'class_agnostic', ...}`` as
    ``trainval_net.py`` saves it. Raises :class:`CheckpointError` (the message names the
    file) for a class-agnostic checkpoint, a class count other than 37, an anchor count
    other than the settings', a parameter with no place here, or one missing or misshapen.
    """
    src, dst = Path(src_path), Path(dst_path)
    check_output_file(dst, is_own=_is_converted, what="converted detector checkpoint", option="DST", inputs=[src])
    checkpoint = _load_source(src, allow_pickle)
    state = {k.removeprefix("module."): v for k, v in checkpoint["model"].items()}
    meta = {k: checkpoint[k] for k in ("epoch", "session", "pooling_mode", "class_agnostic")
            if k in checkpoint and isinstance(checkpoint[k], (int, float, str, bool))}
    warnings = []

    if checkpoint.get("class_agnostic"):
        raise CheckpointError(f"{src}: class-agnostic box regression (class_agnostic=True); the AG detector "
                              "regresses one box per class")
    for key in ("RCNN_cls_score.weight", "RCNN_bbox_pred.weight", _RPN_CLS + "weight"):
        if key not in state:
            raise CheckpointError(f"{src}: missing {key!r}; not a jwyang/faster-rcnn.pytorch ResNet checkpoint")
    num_classes = state["RCNN_cls_score.weight"].shape[0]
    if num_classes != AG_NUM_CLASSES:
        raise CheckpointError(f"{src}: {num_classes} classes; the AG detector has {AG_NUM_CLASSES} "
                              "(background and 36 objects)")
    box_rows = state["RCNN_bbox_pred.weight"].shape[0]
    if box_rows != 4 * num_classes:
        kind = "class-agnostic (4 outputs)" if box_rows == 4 else f"{box_rows} outputs"
        raise CheckpointError(f"{src}: RCNN_bbox_pred is {kind}; expected {4 * num_classes} (class-specific)")
    if meta.get("pooling_mode", "align") != "align":
        warnings.append(f"trained with pooling_mode {meta['pooling_mode']!r}; this detector uses RoIAlign")

    converted, dropped = map_jwyang_state_dict(state, src)
    # Built on the meta device: the shapes and names are all that is needed before the
    # converted tensors are assigned, and skipping the random init of 45M weights is faster.
    with torch.device("meta"):
        detector = build_r101_c4(**LEGACY_SETTINGS)
    num_anchors = detector.model.rpn.anchor_generator.num_anchors_per_location()[0]
    if state[_RPN_CLS + "weight"].shape[0] != 2 * num_anchors:
        raise CheckpointError(f"{src}: the RPN scores {state[_RPN_CLS + 'weight'].shape[0] // 2} anchors per cell; "
                              f"the settings give {num_anchors} (anchor_sizes {detector.settings.anchor_sizes}, "
                              f"aspect_ratios {detector.settings.aspect_ratios})")

    own = detector.model.state_dict()
    missing = sorted(set(own) - set(converted))
    if missing:
        raise CheckpointError(f"{src}: {len(missing)} parameter(s) of the r101-c4 detector are missing, "
                              f"e.g. {missing[:5]}")
    misshapen = [f"{k} {tuple(v.shape)} (expected {tuple(own[k].shape)})"
                 for k, v in converted.items() if v.shape != own[k].shape]
    if misshapen:
        raise CheckpointError(f"{src}: {len(misshapen)} parameter(s) have the wrong shape, e.g. {misshapen[:3]}")
    detector.model.load_state_dict({k: v.to(own[k].dtype) for k, v in converted.items()}, strict=True, assign=True)

    sha = sha256_of(src)
    save_detector(detector, dst, source_sha256=sha, source_format="jwyang/faster-rcnn.pytorch",
                  source_name=src.name)
    for w in warnings:
        log.warning("%s: %s", src, w)
    report = ConversionReport(src=src, dst=dst, source_sha256=sha, tensors=len(converted), dropped=tuple(dropped),
                              num_classes=num_classes, num_anchors=num_anchors, source_meta=meta,
                              warnings=tuple(warnings))
    log.info("%s", report.summary())
    return report
