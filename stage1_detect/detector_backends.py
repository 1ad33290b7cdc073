"""The detector backends, one registry: each names itself, says in a line what it is, which
detector options it reads (:class:`DetectorOption`) and builds a
:class:`~stage1_detect.frame_detector.FrameDetector` with its weights' sha256.

``cli.py`` only reads the registry: ``--backend``'s choices and help come from
:data:`DETECTOR_BACKENDS`, and ``detect`` / ``predict`` call :func:`load_frame_detector`. A new
backend is a module with its ``FrameDetector`` and one ``@register_backend`` builder here.
A builder imports its library inside the function, so listing the backends imports no
detector library (detectron2 is optional: only building its backend imports it).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from common.errors import UserError

if TYPE_CHECKING:
    from stage1_detect.frame_detector import FrameDetector
    from store.vocabulary import Vocabulary


class DetectorOption(enum.Enum):
    """A detector option a backend may read: (its :class:`DetectorRequest` field, its command-line flag)."""

    WEIGHTS = ("weights", "--weights")
    ARCH = ("arch", "--arch")
    CONFIG = ("config", "--config")
    CLASS_MAP = ("class_map", "--class-map")
    NMS_SPACE = ("nms_space", "--nms-space")
    MAX_DETECTIONS = ("max_detections", "--max-detections")
    CLIP = ("clip", "--clip")
    SCALE = ("box_scale", "--scale")
    DETECTION_ORDER = ("detection_order", "--detection-order")

    @property
    def field(self) -> str:
        return self.value[0]

    @property
    def flag(self) -> str:
        return self.value[1]


STEP_OPTIONS = (DetectorOption.NMS_SPACE, DetectorOption.MAX_DETECTIONS, DetectorOption.CLIP, DetectorOption.SCALE,
                DetectorOption.DETECTION_ORDER)
"""The options of STTran's detector step (:mod:`stage1_detect.detection_step`); each field is
the :class:`~stage1_detect.detectors.DetectorSettings` field it overrides."""


@dataclass(frozen=True)
class DetectorRequest:
    """The detector options as given (None: not given).

    weights: the checkpoint; arch: a bare torchvision state dict's architecture; config: a
    detectron2 config file; class_map: a model class -> AG object file; the step options
    override a checkpoint's detector step settings; vocabulary: gives the AG vocabulary, read
    only by a backend that maps a foreign model's classes onto it.
    """

    weights: Path
    arch: str | None = None
    config: Path | None = None
    class_map: Path | None = None
    nms_space: str | None = None
    max_detections: int | None = None
    clip: str | None = None
    box_scale: str | None = None
    detection_order: str | None = None
    vocabulary: Callable[[], Vocabulary] | None = None

    def given(self) -> list[DetectorOption]:
        """The options given, in :class:`DetectorOption` order."""
        return [o for o in DetectorOption if getattr(self, o.field) is not None]

    def step_settings(self) -> dict[str, str | int]:
        """The step options given, as detector settings."""
        return {o.field: getattr(self, o.field) for o in STEP_OPTIONS if getattr(self, o.field) is not None}


Builder = Callable[[DetectorRequest], "tuple[FrameDetector, str]"]


@dataclass(frozen=True)
class DetectorBackend:
    """A registered backend: ``build(request) -> (detector, weights sha256)`` reads the
    options in ``reads`` and needs those in ``requires``; ``check_installed`` raises
    :class:`~stage1_detect.frame_detector.MissingBackendError` unless its library imports."""

    name: str
    description: str
    reads: frozenset[DetectorOption]
    requires: frozenset[DetectorOption]
    build: Builder
    check_installed: Callable[[], None] | None = None


DETECTOR_BACKENDS: dict[str, DetectorBackend] = {}
"""Every backend by name, in registration order (the first is the default)."""


class BackendOptionError(UserError, ValueError):
    """An option the chosen backend does not read, or one it needs missing; one line."""


def register_backend(name: str, description: str, *, reads: tuple[DetectorOption, ...],
                     requires: tuple[DetectorOption, ...] = (DetectorOption.WEIGHTS,),
                     check_installed: Callable[[], None] | None = None) -> Callable[[Builder], Builder]:
    """Function decorator: register a builder as the backend ``name``."""

    def deco(build: Builder) -> Builder:
        if name in DETECTOR_BACKENDS:
            raise ValueError(f"detector backend {name!r} is already registered")
        DETECTOR_BACKENDS[name] = DetectorBackend(name, description, frozenset(reads), frozenset(requires), build,
                                                  check_installed)
        return build

    return deco


def _flags(options: list[DetectorOption]) -> str:
    flags = [o.flag for o in options]
    return flags[0] if len(flags) == 1 else ", ".join(flags[:-1]) + " and " + flags[-1]


def check_options(backend: DetectorBackend, request: DetectorRequest) -> None:
    """Raise :class:`BackendOptionError` for a given option ``backend`` does not read (naming the
    options of the backend that reads it) or an option it needs that is missing."""
    given = request.given()
    foreign = [o for o in given if o not in backend.reads]
    if foreign:
        owner = next((b for b in DETECTOR_BACKENDS.values() if foreign[0] in b.reads), None)
        if owner is None:
            raise BackendOptionError(f"{foreign[0].flag} is an option of no detector backend")
        theirs = [o for o in DetectorOption if o in owner.reads and o not in backend.reads]
        raise BackendOptionError(f"{_flags(theirs)} {'is an option' if len(theirs) == 1 else 'are options'} of "
                                 f"--backend {owner.name}")
    missing = [o for o in DetectorOption if o in backend.requires and o not in given]
    if missing:
        raise BackendOptionError(f"--backend {backend.name} takes {_flags(missing)}")


def load_frame_detector(backend: str, request: DetectorRequest) -> tuple[FrameDetector, str]:
    """(detector, weights sha256) of the registered ``backend`` for ``request``: first whether
    its library is installed, then its options (:func:`check_options`), then the build."""
    if backend not in DETECTOR_BACKENDS:
        raise BackendOptionError(f"unknown detector backend {backend!r}; registered: {', '.join(DETECTOR_BACKENDS)}")
    chosen = DETECTOR_BACKENDS[backend]
    if chosen.check_installed is not None:
        chosen.check_installed()  # before anything is read: one line saying how to get it
    check_options(chosen, request)
    return chosen.build(request)


def _require_detectron2() -> None:
    from stage1_detect.frame_detector import require_detectron2

    require_detectron2()


@register_backend("torchvision", "a Faster R-CNN of torchvision's parts (small, r50-fpn, r101-c4, the converted AG "
                  "detector), then STTran's detector step",
                  reads=(DetectorOption.WEIGHTS, DetectorOption.ARCH, *STEP_OPTIONS))
def _torchvision(request: DetectorRequest) -> tuple[FrameDetector, str]:
    from stage1_detect.detectors import load_detector

    return load_detector(request.weights, arch=request.arch, settings=request.step_settings())


@register_backend("detectron2", "a detectron2 Faster R-CNN (C4 or FPN) with its own inference, optional and built "
                  "from source (docs/detectron2.md)",
                  reads=(DetectorOption.WEIGHTS, DetectorOption.CONFIG, DetectorOption.CLASS_MAP),
                  requires=(DetectorOption.WEIGHTS, DetectorOption.CONFIG), check_installed=_require_detectron2)
def _detectron2(request: DetectorRequest) -> tuple[FrameDetector, str]:
    from stage1_detect.detectron2_backend import load_detectron2_detector

    if request.vocabulary is None:
        raise ValueError("the detectron2 backend maps its classes onto a vocabulary: the request needs one")
    return load_detectron2_detector(request.config, request.weights, vocabulary=request.vocabulary(),
                                    class_map=request.class_map)
