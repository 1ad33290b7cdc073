"""The detectron2 backend of stage 1: a detectron2 Faster R-CNN behind the extraction interface.

:class:`Detectron2Detector` implements :class:`~stage1_detect.frame_detector.FrameDetector`
with detectron2's own parts (``build_model``, ``DetectionCheckpointer``, its test-time resize,
RPN, ``ROIPooler``, box head and ``fast_rcnn_inference``) for ``Res5ROIHeads`` (C4) and
``StandardROIHeads`` (FPN); its classes move to the store's columns by a
:class:`~stage1_detect.class_map.ClassMap`. detectron2 is optional: this is the only module
that imports it, and the registry (:mod:`stage1_detect.detector_backends`) imports this one
only when the backend is built. What each layout stores, where a detection's feature comes
from and how the classes map: docs/detectron2.md.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import detectron2
import numpy as np
import torch
import yaml
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode, get_cfg
from detectron2.data import MetadataCatalog
from detectron2.data import transforms as T
from detectron2.modeling import GeneralizedRCNN, build_model
from detectron2.modeling.poolers import ROIPooler
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.modeling.roi_heads import Res5ROIHeads, StandardROIHeads
from detectron2.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers, fast_rcnn_inference
from detectron2.structures import Boxes, ImageList, Instances
from torch import Tensor

from common.files import sha256_of
from stage1_detect.class_map import ClassMap, read_class_map, resolve_class_map
from stage1_detect.frame_detector import (
    DETECTION_FEATURES,
    DetectorDescription,
    DetectorLoadError,
    EncodedFrames,
    FrameDetections,
    FrameDetector,
    keep_one_person,
)
from store.vocabulary import Vocabulary

log = logging.getLogger(__name__)

MAP_SIZE = 7
"""Side of the union maps (STTran's 7x7)."""
CHECKPOINT_CLASS_KEYS = ("class_names", "thing_classes")
"""Entries of a checkpoint that may hold the model's class names (saved beside 'model')."""


@dataclass
class Detectron2Frames(EncodedFrames):
    """A batch as detectron2 sees it.

    images: the normalised, padded batch (``ImageList``, with each resized image's size);
    features: backbone output name -> float (B, C, H, W); transforms: each frame's resize
    (original pixels -> the model's input pixels); original_sizes: (h, w) of each frame.
    """

    images: ImageList
    features: dict[str, Tensor]
    transforms: list[Any]


class Detectron2Detector(FrameDetector):
    """A detectron2 ``GeneralizedRCNN`` (Faster R-CNN) behind :class:`FrameDetector`.

    ``model``: built by ``build_model`` and loaded; ``class_map``: its classes -> store columns;
    ``resize``: the test-time ``ResizeShortestEdge``; ``input_format``: 'BGR' or 'RGB' (the
    config's ``INPUT.FORMAT``); ``map_pooler``: the ``ROIPooler`` of :meth:`pool_map`;
    ``detections_per_img``: the cap after the one-person rule; ``settings``: what the store
    records besides these (plain JSON).
    """

    def __init__(self, *, model: GeneralizedRCNN, class_map: ClassMap, resize: T.Augmentation, input_format: str,
                 map_pooler: ROIPooler, map_channels: int, detections_per_img: int, person_label: int,
                 single_person: bool = True, detection_features: str = "proposal",
                 settings: dict[str, Any] | None = None):
        super().__init__()
        heads = model.roi_heads
        if detection_features not in DETECTION_FEATURES:
            raise ValueError(f"detection_features must be 'proposal' or 'repool', got {detection_features!r}")
        if class_map.num_model_classes != heads.num_classes:
            raise ValueError(f"the class map has {class_map.num_model_classes} model classes; the model has "
                             f"{heads.num_classes}")
        self.model = model
        self.class_map = class_map
        self.resize = resize
        self.input_format = input_format
        self.map_pooler = map_pooler
        self.map_channels = map_channels
        self.detections_per_img = detections_per_img
        self.person_label = person_label
        self.single_person = single_person
        self.detection_features = detection_features
        self.settings = dict(settings or {})
        self.feature_dim = int(heads.box_predictor.cls_score.in_features)
        self.box_in_features = box_in_features(heads)

    @classmethod
    def from_config(cls, cfg: CfgNode, *, model: GeneralizedRCNN, class_map: ClassMap, person_label: int,
                    single_person: bool = True, detection_features: str = "proposal",
                    settings: dict[str, Any] | None = None) -> "Detectron2Detector":
        """The detector of ``cfg`` around a built (and loaded) ``model``."""
        check_supported(model)
        shapes = model.backbone.output_shape()
        in_features = box_in_features(model.roi_heads)
        map_pooler = ROIPooler(output_size=MAP_SIZE, scales=tuple(1.0 / shapes[f].stride for f in in_features),
                               sampling_ratio=cfg.MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO,
                               pooler_type=cfg.MODEL.ROI_BOX_HEAD.POOLER_TYPE)
        resize = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MIN_SIZE_TEST], cfg.INPUT.MAX_SIZE_TEST)
        return cls(model=model, class_map=class_map, resize=resize, input_format=cfg.INPUT.FORMAT,
                   map_pooler=map_pooler, map_channels=shapes[in_features[0]].channels,
                   detections_per_img=cfg.TEST.DETECTIONS_PER_IMAGE, person_label=person_label,
                   single_person=single_person, detection_features=detection_features, settings=settings)

    @property
    def num_classes(self) -> int:
        return self.class_map.num_classes

    # --- the interface -----------------------------------------------------------------

    @torch.no_grad()
    def encode(self, images: Sequence[Tensor]) -> Detectron2Frames:
        """uint8 (3, H, W) RGB frames -> resized as ``DefaultPredictor`` does, normalised, backbone."""
        inputs, transforms, sizes = [], [], []
        for im in images:
            if im.dtype != torch.uint8:
                raise ValueError(f"the detectron2 backend takes uint8 frames, got {im.dtype}")
            array = im.permute(1, 2, 0).cpu().numpy()
            if self.input_format == "BGR":
                array = array[:, :, ::-1]
            transform = self.resize.get_transform(array)
            resized = np.ascontiguousarray(transform.apply_image(array).transpose(2, 0, 1))
            inputs.append({"image": torch.as_tensor(resized).float()})
            transforms.append(transform)
            sizes.append((int(im.shape[-2]), int(im.shape[-1])))
        batch = self.model.preprocess_image(inputs)
        features = self.model.backbone(batch.tensor)
        return Detectron2Frames(original_sizes=sizes, images=batch, features=features, transforms=transforms)

    @torch.no_grad()
    def detect(self, encoded: Detectron2Frames, positions: Sequence[int] | None = None) -> list[FrameDetections]:
        """detectron2's detections of every frame (see the module docstring), best first.

        detectron2 keeps its own inference: ``positions`` (STTran's per-chunk clipping) is not used."""
        predictor: FastRCNNOutputLayers = self.model.roi_heads.box_predictor
        proposals, _ = self.model.proposal_generator(encoded.images, encoded.features, None)
        features = self._box_features(encoded.features, [p.proposal_boxes for p in proposals])
        predictions = predictor(features)
        boxes = predictor.predict_boxes(predictions, proposals)
        probs = predictor.predict_probs(predictions, proposals)
        # No cap here (-1): it counts after the one-person rule, below.
        results, kept = fast_rcnn_inference(boxes, probs, [p.image_size for p in proposals],
                                            predictor.test_score_thresh, predictor.test_nms_thresh, -1)
        finals, labels = [], []
        for result, source, b, p, (h, w) in zip(results, kept, boxes, probs, encoded.original_sizes):
            # fast_rcnn_inference numbers the proposals after dropping those with a non-finite
            # box or score; map its indices back to all proposals.
            valid = torch.isfinite(b).all(dim=1) & torch.isfinite(p).all(dim=1)
            result.source = valid.nonzero()[:, 0][source] if not bool(valid.all()) else source
            result.input_boxes = result.pred_boxes.tensor.clone()  # postprocessing scales pred_boxes in place
            result = detector_postprocess(result, h, w)
            label = self.class_map.labels(result.pred_classes)
            result, label = result[label > 0], label[label > 0]
            keep = (keep_one_person(label, result.scores, self.person_label) if self.single_person
                    else torch.arange(len(result), device=label.device))[: self.detections_per_img]
            finals.append(result[keep])
            labels.append(label[keep])
        if self.detection_features == "proposal":
            counts = [len(p) for p in proposals]
            pooled = [(f[r.source].float(), self.class_map.dists(p[r.source]).float())
                      for r, f, p in zip(finals, features.split(counts), probs)]
        else:
            pooled = self._pool_input(encoded, [r.input_boxes for r in finals])
        return [FrameDetections(boxes=r.pred_boxes.tensor.float(), scores=r.scores.float(), labels=label.long(),
                                class_dists=d, features=f) for r, label, (f, d) in zip(finals, labels, pooled)]

    @torch.no_grad()
    def pool(self, encoded: Detectron2Frames, boxes: Sequence[Tensor]) -> list[tuple[Tensor, Tensor]]:
        """(features float32 (n, D), class_dists float32 (n, C)) of original-frame xyxy boxes."""
        return self._pool_input(encoded, self._to_input(encoded, boxes))

    @torch.no_grad()
    def pool_map(self, encoded: Detectron2Frames, boxes: Sequence[Tensor]) -> list[Tensor]:
        """RoIAlign maps float32 (n, map_channels, 7, 7) of original-frame xyxy boxes."""
        counts = [len(b) for b in boxes]
        maps = self.map_pooler([encoded.features[f] for f in self.box_in_features],
                               [Boxes(b) for b in self._to_input(encoded, boxes)])
        return list(maps.float().split(counts))

    def describe(self) -> DetectorDescription:
        return DetectorDescription(arch="detectron2", feature_dim=self.feature_dim, num_classes=self.num_classes,
                                   map_shape=(self.map_channels, MAP_SIZE, MAP_SIZE),
                                   settings={**self.settings, "detection_features": self.detection_features,
                                             "single_person": self.single_person, "person_label": self.person_label,
                                             "class_map": self.class_map.to_dict()})

    # --- parts -------------------------------------------------------------------------

    def _box_features(self, features: dict[str, Tensor], boxes: list[Boxes]) -> Tensor:
        """The box predictor's input (n, D) for boxes in the model's input pixels."""
        heads = self.model.roi_heads
        maps = [features[f] for f in self.box_in_features]
        if isinstance(heads, Res5ROIHeads):
            return heads.res5(heads.pooler(maps, boxes)).mean(dim=(2, 3))
        return torch.flatten(heads.box_head(heads.box_pooler(maps, boxes)), 1)

    def _to_input(self, encoded: Detectron2Frames, boxes: Sequence[Tensor]) -> list[Tensor]:
        """Original-frame boxes -> the model's input pixels, by each frame's resize."""
        out = []
        for b, transform in zip(boxes, encoded.transforms):
            resized = transform.apply_box(b.detach().cpu().double().numpy().reshape(-1, 4))
            out.append(torch.as_tensor(resized, dtype=torch.float32, device=encoded.images.tensor.device))
        return out

    def _pool_input(self, encoded: Detectron2Frames, boxes: Sequence[Tensor]) -> list[tuple[Tensor, Tensor]]:
        """Features and store distributions of boxes in the model's input pixels, per frame."""
        counts = [len(b) for b in boxes]
        device = encoded.images.tensor.device
        if sum(counts) == 0:
            return [(torch.zeros((0, self.feature_dim), device=device),
                     torch.zeros((0, self.num_classes), device=device)) for _ in boxes]
        box_lists = [Boxes(b) for b in boxes]
        feats = self._box_features(encoded.features, box_lists)
        predictor = self.model.roi_heads.box_predictor
        probs = predictor.predict_probs(predictor(feats), [Instances(size, proposal_boxes=b) for size, b in
                                                           zip(encoded.images.image_sizes, box_lists)])
        return [(f.float(), self.class_map.dists(p).float()) for f, p in zip(feats.split(counts), probs)]


def box_in_features(heads: Res5ROIHeads | StandardROIHeads) -> list[str]:
    """Names of the backbone maps the box head pools from."""
    return list(heads.in_features if isinstance(heads, Res5ROIHeads) else heads.box_in_features)


def check_supported(model: Any, where: str = "the model") -> None:
    """Raise :class:`DetectorLoadError` unless ``model`` is a Faster R-CNN this backend reads."""
    if not isinstance(model, GeneralizedRCNN):
        raise DetectorLoadError(f"{where}: META_ARCHITECTURE {type(model).__name__}; the detectron2 backend reads "
                                "GeneralizedRCNN (Faster R-CNN) models")
    if model.proposal_generator is None:
        raise DetectorLoadError(f"{where}: no proposal generator (precomputed proposals); the backend needs an RPN")
    heads = model.roi_heads
    if not isinstance(heads, (Res5ROIHeads, StandardROIHeads)) or not isinstance(heads.box_predictor,
                                                                                   FastRCNNOutputLayers):
        raise DetectorLoadError(f"{where}: ROI heads {type(heads).__name__}; the backend reads Res5ROIHeads (C4) and "
                                "StandardROIHeads (FPN, C5) with one box predictor (not cascades)")
    if heads.box_predictor.use_sigmoid_ce:
        raise DetectorLoadError(f"{where}: USE_SIGMOID_CE gives no class distribution; the store needs a softmax")


def detectron2_config(config_file: Path | str, opts: Sequence[str] = ()) -> CfgNode:
    """detectron2's default config, then ``config_file`` (yacs YAML), then ``opts`` (KEY VALUE ...); frozen."""
    config_file = Path(config_file)
    if config_file.suffix not in (".yaml", ".yml"):
        raise DetectorLoadError(f"{config_file}: the detectron2 backend reads yacs YAML configs (get_cfg), "
                                "not LazyConfig .py files")
    cfg = get_cfg()
    try:
        cfg.merge_from_file(str(config_file))
        cfg.merge_from_list(list(opts))
    except (KeyError, ValueError, AssertionError, OSError, yaml.YAMLError) as e:
        raise DetectorLoadError(f"{config_file}: not a detectron2 config ({type(e).__name__}: {e})") from None
    cfg.MODEL.DEVICE = "cpu"  # extraction moves the detector to its device
    cfg.freeze()
    return cfg


class _Checkpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` that keeps what did not fit, so that loading can refuse it."""

    incompatible = None

    def _log_incompatible_keys(self, incompatible) -> None:
        self.incompatible = incompatible
        super()._log_incompatible_keys(incompatible)


def load_checkpoint(model: GeneralizedRCNN, weights: Path | str) -> dict[str, Any]:
    """Load ``weights`` into ``model`` with ``DetectionCheckpointer``; returns the file's other entries.

    A parameter of the model that the file lacks, or has in another shape, is an error
    (the model would compute with random weights there); entries of the file that the model
    lacks (e.g. a mask head) are logged and ignored. detectron2 reads ``.pkl`` files with
    pickle: load only files you trust.
    """
    weights = Path(weights)
    checkpointer = _Checkpointer(model)
    try:
        extra = checkpointer.load(str(weights))
    except (OSError, RuntimeError, KeyError, ValueError, EOFError) as e:
        raise DetectorLoadError(f"{weights}: not a detectron2 checkpoint ({type(e).__name__}: {e})") from None
    bad = checkpointer.incompatible
    if bad is not None and (bad.missing_keys or bad.incorrect_shapes):
        parts = []
        if bad.incorrect_shapes:
            name, theirs, ours = bad.incorrect_shapes[0]
            parts.append(f"{len(bad.incorrect_shapes)} parameter(s) of another shape, e.g. {name} {tuple(theirs)} in "
                         f"the file, {tuple(ours)} in the model (is MODEL.ROI_HEADS.NUM_CLASSES the checkpoint's?)")
        shaped = {name for name, _, _ in bad.incorrect_shapes}
        missing = [k for k in bad.missing_keys if k not in shaped]
        if missing:
            parts.append(f"{len(missing)} parameter(s) missing, e.g. {missing[:3]}")
        raise DetectorLoadError(f"{weights}: does not fit the config's model: " + "; ".join(parts))
    return extra


def model_class_names(cfg: CfgNode, extra: dict[str, Any], num_classes: int) -> tuple[list[str] | None, str]:
    """The model's class names and where they came from: the checkpoint's ``class_names`` (or
    ``thing_classes``) entry, else the metadata of the config's first ``DATASETS.TEST`` set
    (e.g. COCO's 80 for the model zoo's configs), else None."""
    for key in CHECKPOINT_CLASS_KEYS:
        names = extra.get(key)
        if isinstance(names, (list, tuple)) and all(isinstance(n, str) for n in names):
            return list(names), f"the checkpoint's {key!r}"
    for dataset in cfg.DATASETS.TEST[:1]:
        names = MetadataCatalog.get(dataset).get("thing_classes", None)
        if names is not None and len(names) == num_classes:
            return list(names), f"detectron2's metadata of {dataset!r} (the config's DATASETS.TEST)"
    return None, "the checkpoint or the config's DATASETS.TEST metadata"


def load_detectron2_detector(config_file: Path | str, weights: Path | str, *, vocabulary: Vocabulary,
                             class_map: Path | str | None = None, opts: Sequence[str] = (),
                             single_person: bool = True, detection_features: str = "proposal",
                             ) -> tuple[Detectron2Detector, str]:
    """Build the model of ``config_file``, load ``weights``, map its classes onto ``vocabulary``;
    returns (detector, weights sha256).

    ``class_map``: a file (:func:`~stage1_detect.class_map.read_class_map`), needed when the
    model's classes are not exactly the vocabulary's objects. ``opts``: config overrides as
    detectron2's command lines take them (``["MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.1"]``).
    Raises :class:`DetectorLoadError` naming the file for a config, checkpoint or class map
    that does not fit.
    """
    cfg = detectron2_config(config_file, opts)
    model = build_model(cfg)
    check_supported(model, str(config_file))
    extra = load_checkpoint(model, weights)
    k = model.roi_heads.num_classes
    names, names_source = model_class_names(cfg, extra, k)
    mapping = read_class_map(class_map) if class_map is not None else None
    classes = resolve_class_map(k, vocabulary, model_classes=names, mapping=mapping, names_source=names_source,
                                mapping_source=str(class_map))
    heads = model.roi_heads
    settings = {
        "detectron2_version": detectron2.__version__,
        "config_file": str(config_file),
        "config": yaml.safe_load(cfg.dump()),
        "roi_heads": type(heads).__name__,
        "feature_layer": ("roi_heads.res5, mean over its output map" if isinstance(heads, Res5ROIHeads)
                          else f"roi_heads.box_head ({type(heads.box_head).__name__}) output"),
        "map_layer": f"{'/'.join(box_in_features(heads))} RoIAligned to {MAP_SIZE}x{MAP_SIZE} by an ROIPooler like the box "
                     "pooler's",
    }
    detector = Detectron2Detector.from_config(cfg, model=model.eval(), class_map=classes,
                                              person_label=vocabulary.person_index, single_person=single_person,
                                              detection_features=detection_features, settings=settings)
    return detector, sha256_of(weights)
