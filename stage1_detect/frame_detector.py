"""The detector interface that extraction uses, whatever library computes it.

Stage 1 asks five things of a detector (:class:`FrameDetector`), all read from one encoding
of a batch of frames:

* ``encode(images) -> EncodedFrames``: run the backbone once; what it returns is the
  backend's own (feature maps, resize factors), opaque to extraction except for
  ``original_sizes``;
* ``detect(encoded, positions) -> list[FrameDetections]``: boxes, scores, labels, the full class
  distribution (background at column 0, the store's vocabulary order) and one feature per
  detection;
* ``pool(encoded, boxes) -> list[(features, class_dists)]``: the same feature and
  distribution for given boxes (GT boxes, union boxes);
* ``pool_map(encoded, boxes) -> list[maps]``: a RoIAlign map of given boxes (STTran's union
  maps), of shape ``describe().map_shape``;
* ``describe() -> DetectorDescription``: architecture name, feature size, class count, map
  shape and settings, as the store's root attributes record them.

Boxes are xyxy in pixels of the frame as given, everywhere. A backend is an ``nn.Module``
(``eval()``, ``to(device)``) and computes without gradients.

Implementations are registered by name in :mod:`stage1_detect.detector_backends` (torchvision's
and detectron2's); which imports which library: docs/stage1.md, "The detector interface".
"""

from __future__ import annotations

import abc
import importlib
import importlib.util
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from common.errors import UserError

DETECTRON2_INSTALL_URL = "https://detectron2.readthedocs.io/en/latest/tutorials/install.html"

DETECTION_FEATURES = ("proposal", "repool")
"""Where a detection's feature and class distribution come from: 'proposal', the proposal it
was regressed from (STTran's object detector), or 'repool', its final box pooled again."""


class MissingBackendError(UserError, ImportError):
    """An optional detector library is not installed (or does not import); one-line message."""


class DetectorLoadError(UserError, ValueError):
    """A detector that cannot be built or loaded as asked; the message names the file or setting."""


def require_detectron2() -> None:
    """Raise :class:`MissingBackendError`, saying how to get detectron2, unless it imports."""
    if importlib.util.find_spec("detectron2") is None:
        raise MissingBackendError(
            "the detectron2 backend needs detectron2, which is not installed (it is not on PyPI): build it "
            f"from source as its install guide says, {DETECTRON2_INSTALL_URL}")
    try:
        importlib.import_module("detectron2.modeling")
    except ImportError as e:  # e.g. a compiled extension built against another torch
        raise MissingBackendError(
            f"detectron2 is installed but does not import ({type(e).__name__}: {e}); rebuild it against this "
            f"torch ({torch.__version__}) as its install guide says, {DETECTRON2_INSTALL_URL}") from e


@dataclass(frozen=True)
class FrameDetections:
    """Detections of one frame.

    boxes: float32 (n, 4) xyxy, pixels of the original frame (past its right and bottom edge
    where STTran's detector step leaves a frame unclipped); scores: float32 (n,);
    labels: int64 (n,), 1..C-1; class_dists: float32 (n, C) softmax including background
    (column 0); features: float32 (n, D).
    """

    boxes: Tensor
    scores: Tensor
    labels: Tensor
    class_dists: Tensor
    features: Tensor

    def __len__(self) -> int:
        return len(self.boxes)


@dataclass
class EncodedFrames:
    """A backend's encoding of a batch of frames (subclassed by each backend).

    original_sizes: (h, w) of each frame as given, in batch order.
    """

    original_sizes: list[tuple[int, int]]

    def __len__(self) -> int:
        return len(self.original_sizes)


@dataclass(frozen=True)
class DetectorDescription:
    """What the store records of a detector besides its weights' hash.

    arch: registry name (``small``, ``r101-c4``, ``detectron2``, ...); feature_dim: D of
    :meth:`FrameDetector.pool` features; num_classes: C of the class distributions
    (background included); map_shape: (channels, h, w) of :meth:`FrameDetector.pool_map`;
    settings: everything else that decides the output (plain JSON).
    """

    arch: str
    feature_dim: int
    num_classes: int
    map_shape: tuple[int, int, int]
    settings: dict[str, Any] = field(default_factory=dict)


class FrameDetector(nn.Module, abc.ABC):
    """The interface of :mod:`stage1_detect.extract` (see the module docstring)."""

    @abc.abstractmethod
    def encode(self, images: Sequence[Tensor]) -> EncodedFrames:
        """Encode uint8 (3, H, W) RGB frames (sizes may differ) once for the calls below."""

    @abc.abstractmethod
    def detect(self, encoded: EncodedFrames, positions: Sequence[int] | None = None) -> list[FrameDetections]:
        """Detections of every frame of ``encoded``, in the backend's stored order.

        ``positions``: each frame's index in STTran's frame list of its video (-1: not in it),
        for a backend that reproduces STTran's detector step (which clips the boxes of some
        frames only, :mod:`stage1_detect.detection_step`); None: no such list (every frame alike).
        """

    @abc.abstractmethod
    def pool(self, encoded: EncodedFrames, boxes: Sequence[Tensor]) -> list[tuple[Tensor, Tensor]]:
        """Per frame, (features float32 (n, D), class_dists float32 (n, C)) of xyxy boxes float32 (n, 4)."""

    @abc.abstractmethod
    def pool_map(self, encoded: EncodedFrames, boxes: Sequence[Tensor]) -> list[Tensor]:
        """Per frame, RoIAlign maps float32 (n, *map_shape) of xyxy boxes float32 (n, 4)."""

    @abc.abstractmethod
    def describe(self) -> DetectorDescription:
        """Name, sizes and settings for the store's root attributes."""


def keep_one_person(labels: Tensor, scores: Tensor, person: int) -> Tensor:
    """Indices to keep: every non-person detection and the best-scoring person box (in order)."""
    is_person = labels == person
    keep = ~is_person
    if is_person.any():
        best = torch.where(is_person, scores, torch.full_like(scores, -1.0)).argmax()
        keep[best] = True
    return keep.nonzero().flatten()
