"""The detectron2 backend: tiny detectron2 Faster R-CNNs (C4 and FPN, random weights) saved
with DetectionCheckpointer, run by `cli.py detect --backend detectron2` on synthetic data.

The store validates; the GT-box features and distributions, the detections and the union
maps equal what detectron2's own modules compute; the classes land on the vocabulary's
columns by the checkpoint's class names (saved in another order) or a class map; and the
same stage-2 training runs on a store of either backend. Skipped where detectron2 is not
installed (it is optional and not on PyPI: docs/detectron2.md).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from torch.testing import assert_close

pytest.importorskip("detectron2", reason="detectron2 is not installed (optional, built from source: see "
                                         "docs/detectron2.md); the seam tests in tests/stage1_detect/test_frame_detector.py run "
                                         "without it")

from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402
from detectron2.config import get_cfg  # noqa: E402
from detectron2.data import transforms as T  # noqa: E402
from detectron2.model_zoo import get_config_file  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.modeling.backbone.resnet import BottleneckBlock  # noqa: E402
from detectron2.modeling.poolers import ROIPooler  # noqa: E402
from detectron2.modeling.roi_heads import Res5ROIHeads  # noqa: E402
from detectron2.structures import Boxes  # noqa: E402

from rules.boxes import union_boxes  # noqa: E402
from stage1_detect.action_genome import ReaderOptions, load_action_genome, read_vocabulary  # noqa: E402
from stage1_detect.class_map import resolve_class_map  # noqa: E402
from stage1_detect.detectors import build_detector, save_detector  # noqa: E402
from stage1_detect.detectron2_backend import load_detectron2_detector  # noqa: E402
from stage1_detect.frame_detector import DetectorLoadError, keep_one_person  # noqa: E402
from stage1_detect.frames import PngFrames  # noqa: E402
from store import check_store, open_store  # noqa: E402
from store.vocabulary import ACTION_GENOME  # noqa: E402
from synth import SynthConfig, generate_synthetic_ag  # noqa: E402
from tests.helpers import REPO  # noqa: E402

CLI = [sys.executable, str(REPO / "cli.py")]
AG_OBJECTS = list(ACTION_GENOME.objects[1:])
# The checkpoint names its classes in reverse AG order, so that only mapping by name puts
# them in the right columns: model class k is AG object 36 - k (person is model class 35).
MODEL_CLASSES = AG_OBJECTS[::-1]
# Tiny widths (stem 16, res2 32 channels, 8 per group; FPN 32; fc 64), 120x160 input, at
# most 20 proposals and 16 detections, every score kept: seconds on a CPU.
TINY = ["MODEL.RESNETS.STEM_OUT_CHANNELS", 16, "MODEL.RESNETS.RES2_OUT_CHANNELS", 32,
        "MODEL.RESNETS.WIDTH_PER_GROUP", 8, "MODEL.FPN.OUT_CHANNELS", 32, "MODEL.ROI_BOX_HEAD.FC_DIM", 64,
        "MODEL.ROI_HEADS.NUM_CLASSES", 36, "MODEL.RPN.PRE_NMS_TOPK_TEST", 300, "MODEL.RPN.POST_NMS_TOPK_TEST", 20,
        "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0, "TEST.DETECTIONS_PER_IMAGE", 16,
        "INPUT.MIN_SIZE_TEST", 120, "INPUT.MAX_SIZE_TEST", 160]
ZOO = {"c4": "COCO-Detection/faster_rcnn_R_50_C4_1x.yaml", "fpn": "COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml"}
# res5 mean of the tiny C4 (32 x 8 channels); the tiny FPN box head's fc2 (FC_DIM).
FEATURE_DIM = {"c4": 256, "fpn": 64}
# Union maps: res4 (32 x 4 channels) for C4, the FPN levels (32 channels).
MAP_SHAPE = {"c4": (128, 7, 7), "fpn": (32, 7, 7)}
F16 = dict(rtol=2e-3, atol=2e-3)  # the store holds features and distributions in float16


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("d2data") / "ag"
    generate_synthetic_ag(root, SynthConfig(videos=6, frames_per_video=5, width=160, height=120, seed=0),
                          progress=False)
    return root


def tiny_model(layout: str, folder: Path, *, num_classes: int = 36, class_names=MODEL_CLASSES,
               person: int | None = 35) -> tuple[Path, Path]:
    """A detectron2 config file and a DetectionCheckpointer checkpoint of a random tiny model."""
    cfg = get_cfg()
    cfg.merge_from_file(get_config_file(ZOO[layout]))
    cfg.merge_from_list([str(v) for v in TINY])
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = num_classes
    cfg.MODEL.DEVICE = "cpu"
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / f"tiny_{layout}.yaml"
    config.write_text(cfg.dump())
    torch.manual_seed(0)
    model = build_model(cfg)
    with torch.no_grad():
        # Zero-initialised residual branches keep a random ResNet's activations near 1 (frozen
        # batch norm is the identity), so that features fit float16.
        for m in model.modules():
            if isinstance(m, BottleneckBlock):
                m.conv3.norm.weight.zero_()
        if person is not None:  # many person boxes, so that the one-person rule has work
            model.roi_heads.box_predictor.cls_score.bias[person] += 3.0
    extra = {"class_names": list(class_names)} if class_names is not None else {}
    DetectionCheckpointer(model, save_dir=str(folder)).save("model", **extra)
    return config, folder / "model.pth"


def detect(root: Path, store: Path, config: Path, weights: Path, *extra) -> subprocess.CompletedProcess:
    args = [root, "--store", store, "--backend", "detectron2", "--config", config, "--weights", weights,
            "--device", "cpu", "--workers", "0", "--batch-size", "3", "--segment-mb", "0", "--frames", "png", *extra]
    return subprocess.run(CLI + ["detect", *map(str, args)], capture_output=True, text=True, cwd=REPO, timeout=600)


@pytest.fixture(scope="module", params=["c4", "fpn"])
def d2(request, root, tmp_path_factory):
    layout = request.param
    base = tmp_path_factory.mktemp(f"d2_{layout}")
    config, weights = tiny_model(layout, base)
    store = base / "store.h5"
    run = detect(root, store, config, weights)
    assert run.returncode == 0, run.stderr[-3000:]
    detector, _ = load_detectron2_detector(config, weights, vocabulary=read_vocabulary(root))
    return {"layout": layout, "config": config, "weights": weights, "store": store, "stdout": run.stdout,
            "model": detector.model, "cfg_file": config}


def _frame(root: Path, store_path: Path, video: str | None = None, index: int = 0):
    with open_store(store_path) as s:
        name = video or sorted(s.videos())[0]
        rec = s.read_video(name)
    number = int(rec.frame_names[index].rsplit("/", 1)[1].removesuffix(".png"))
    (image,) = PngFrames(root).read(name, [number])
    return rec, image


def _d2_input(model, cfg_file: Path, image: np.ndarray):
    """detectron2's DefaultPredictor preprocessing of an RGB (H, W, 3) uint8 frame."""
    cfg = get_cfg()
    cfg.merge_from_file(str(cfg_file))
    bgr = image[:, :, ::-1] if cfg.INPUT.FORMAT == "BGR" else image
    transform = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST).get_transform(bgr)
    resized = torch.as_tensor(np.ascontiguousarray(transform.apply_image(bgr).transpose(2, 0, 1))).float()
    return {"image": resized, "height": image.shape[0], "width": image.shape[1]}, transform


def _d2_box_outputs(model, images, features, boxes: torch.Tensor):
    """(features, softmax with background last) of input-pixel boxes by detectron2's modules."""
    heads = model.roi_heads
    if isinstance(heads, Res5ROIHeads):
        x = heads.res5(heads.pooler([features[f] for f in heads.in_features], [Boxes(boxes)])).mean(dim=(2, 3))
    else:
        x = heads.box_head(heads.box_pooler([features[f] for f in heads.box_in_features], [Boxes(boxes)]))
    logits, _ = heads.box_predictor(x)
    return x, F.softmax(logits, dim=-1)


def _store_columns() -> torch.Tensor:
    """Store column of each model column: model class k is AG object 36 - k; background -> 0."""
    return torch.tensor([ACTION_GENOME.object_index(c) for c in MODEL_CLASSES] + [0])


def test_store_validates_and_records_the_detector(d2):
    assert check_store(d2["store"]) == []
    assert d2["stdout"].startswith("detect: 5 videos")
    with open_store(d2["store"]) as s:
        meta = s.meta
        assert meta.detector.arch == "detectron2" and meta.feature_dim == FEATURE_DIM[d2["layout"]]
        assert meta.union_shape == (FEATURE_DIM[d2["layout"]],)
        settings = meta.detector.settings
        assert settings["roi_heads"] == ("Res5ROIHeads" if d2["layout"] == "c4" else "StandardROIHeads")
        assert settings["class_map"]["columns"] == _store_columns().tolist()
        assert settings["class_map"]["source"] == "the checkpoint's 'class_names'"
        assert settings["config"]["MODEL"]["ROI_HEADS"]["NUM_CLASSES"] == 36
        for name in s.videos():
            rec = s.read_video(name)
            assert len(rec.det_boxes) > 0
            for i in range(rec.num_frames):
                d = rec.frame_rows("detections", i)
                assert (rec.det_labels[d] == 1).sum() <= 1 and d.stop - d.start <= 16
                assert np.isfinite(rec.det_features[d].astype(np.float32)).all()
            assert_close(rec.det_dists.astype(np.float32).sum(1), np.ones(len(rec.det_dists), np.float32), **F16)


def test_gt_features_equal_detectron2_pooling(d2, root):
    """The stored GT-box features and distributions are detectron2's pooler + box head (+ its
    softmax, columns moved by the class names) on the same boxes of the same frame."""
    rec, image = _frame(root, d2["store"])
    model = d2["model"]
    inputs, transform = _d2_input(model, d2["cfg_file"], image)
    g = rec.frame_rows("gt_objects", 0)
    with torch.no_grad():
        images = model.preprocess_image([inputs])
        features = model.backbone(images.tensor)
        boxes = torch.as_tensor(transform.apply_box(rec.gt_boxes[g].astype(np.float64)), dtype=torch.float32)
        feats, probs = _d2_box_outputs(model, images, features, boxes)
    assert_close(torch.from_numpy(rec.gt_features[g]).float(), feats, **F16)
    expected = torch.zeros(len(probs), 37).index_add_(1, _store_columns(), probs)
    assert_close(torch.from_numpy(rec.gt_dists[g]).float(), expected, **F16)
    # Every GT box's distribution is a permutation of detectron2's: person (model class 35) -> column 1.
    assert_close(torch.from_numpy(rec.gt_dists[g][:, 1]).float(), probs[:, 35], **F16)


def test_detections_are_detectron2_inference(d2, root):
    """Boxes, scores and classes are those of detectron2's own inference (GeneralizedRCNN in
    eval, with detector_postprocess) after the one-person rule and the cap of 16; each
    detection's distribution is its source proposal's, so it equals the score at its label."""
    rec, image = _frame(root, d2["store"], index=1)
    model = d2["model"]
    inputs, _ = _d2_input(model, d2["cfg_file"], image)
    predictor = model.roi_heads.box_predictor
    cap, predictor.test_topk_per_image = predictor.test_topk_per_image, 1000
    try:
        with torch.no_grad():
            (out,) = model([inputs])
    finally:
        predictor.test_topk_per_image = cap
    instances = out["instances"]
    labels = _store_columns()[instances.pred_classes]
    keep = keep_one_person(labels, instances.scores, 1)[:16]
    d = rec.frame_rows("detections", 1)
    assert d.stop - d.start == len(keep) > 0
    assert_close(torch.from_numpy(rec.det_boxes[d]), instances.pred_boxes.tensor[keep], rtol=0, atol=1e-3)
    assert_close(torch.from_numpy(rec.det_scores[d]), instances.scores[keep], rtol=0, atol=1e-6)
    assert rec.det_labels[d].tolist() == labels[keep].tolist()
    at_label = rec.det_dists[d][np.arange(len(keep)), rec.det_labels[d]].astype(np.float32)
    assert_close(torch.from_numpy(at_label), instances.scores[keep], **F16)


def test_union_maps_are_detectron2_roialign(d2, root, tmp_path):
    """--union map stores the box pooler's maps (res4 for C4, the FPN level of each union box)
    at 7x7, as an ROIPooler with the box pooler's settings gives them."""
    store = tmp_path / "map.h5"
    run = detect(root, store, d2["config"], d2["weights"], "--union", "map", "--split", "test")
    assert run.returncode == 0, run.stderr[-3000:]
    assert check_store(store) == []
    rec, image = _frame(root, store)
    with open_store(store) as s:
        assert s.meta.union_shape == MAP_SHAPE[d2["layout"]]
    model = d2["model"]
    cfg = get_cfg()
    cfg.merge_from_file(str(d2["cfg_file"]))
    names = cfg.MODEL.ROI_HEADS.IN_FEATURES
    shapes = model.backbone.output_shape()
    pooler = ROIPooler(7, tuple(1 / shapes[f].stride for f in names), cfg.MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO,
                       cfg.MODEL.ROI_BOX_HEAD.POOLER_TYPE)
    inputs, transform = _d2_input(model, d2["cfg_file"], image)
    p = rec.frame_rows("pairs", 0)
    g, dt = rec.frame_rows("gt_objects", 0), rec.frame_rows("detections", 0)
    boxes = np.concatenate([rec.gt_boxes[g], rec.det_boxes[dt]])
    unions = union_boxes(boxes[rec.pair_subject[p]], boxes[rec.pair_object[p]])
    with torch.no_grad():
        features = model.backbone(model.preprocess_image([inputs]).tensor)
        resized = torch.as_tensor(transform.apply_box(unions.astype(np.float64)), dtype=torch.float32)
        direct = pooler([features[f] for f in names], [Boxes(resized)])
    assert_close(torch.from_numpy(rec.pair_union[p]).float(), direct, **F16)


def test_no_detections_empty_boxes_and_repool(d2, root):
    """A frame may have no detection (every score under the threshold) and pooling may get no
    box; 'repool' features are those of the final boxes pooled again."""
    images = [torch.from_numpy(im).permute(2, 0, 1).contiguous()
              for im in PngFrames(root).read(*_first_frames(d2["store"]))]
    none, _ = load_detectron2_detector(d2["config"], d2["weights"], vocabulary=ACTION_GENOME,
                                       opts=["MODEL.ROI_HEADS.SCORE_THRESH_TEST", "1.0"])
    encoded = none.encode(images)
    assert [len(d) for d in none.detect(encoded)] == [0] * len(images)
    dim = FEATURE_DIM[d2["layout"]]
    empty = [torch.zeros(0, 4)] * len(images)
    assert [(f.shape, c.shape) for f, c in none.pool(encoded, empty)] == [((0, dim), (0, 37))] * len(images)
    assert [m.shape for m in none.pool_map(encoded, empty)] == [(0, *MAP_SHAPE[d2["layout"]])] * len(images)
    repool, _ = load_detectron2_detector(d2["config"], d2["weights"], vocabulary=ACTION_GENOME,
                                         detection_features="repool")
    encoded = repool.encode(images)
    detections = repool.detect(encoded)
    for d, (f, c) in zip(detections, repool.pool(encoded, [d.boxes for d in detections])):
        assert len(d) > 0
        assert_close(d.features, f, rtol=1e-3, atol=1e-3)
        assert_close(d.class_dists, c, rtol=1e-3, atol=1e-3)


def _first_frames(store_path: Path, n: int = 3) -> tuple[str, list[int]]:
    with open_store(store_path) as s:
        name = sorted(s.videos())[0]
        names = s.read_video(name).frame_names[:n]
    return name, [int(f.rsplit("/", 1)[1].removesuffix(".png")) for f in names]


def test_same_stage2_training_on_either_backend(d2, root, tmp_path):
    """configs/demo_sttran.yaml (SGDET, tiny STTran), one epoch, on this store and on a
    torchvision store of the same frames: both train and evaluate."""
    from stage2_relations.recipe import load_config
    from stage2_relations.train import train

    tv_store = tmp_path / "tv.h5"
    torch.manual_seed(0)
    small = build_detector("small", {"score_thresh": 0.0, "max_detections": 16, "rpn_post_nms_top_n_test": 10,
                                     "min_size": 120, "max_size": 160})
    with torch.no_grad():
        small.model.roi_heads.box_predictor.cls_score.bias[1] += 3.0
    save_detector(small, tmp_path / "small.pth")
    run = subprocess.run(CLI + ["detect", str(root), "--store", str(tv_store), "--weights", str(tmp_path / "small.pth"),
                                "--device", "cpu", "--workers", "0", "--segment-mb", "0", "--frames", "png"],
                         capture_output=True, text=True, cwd=REPO, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    for name, store in (("torchvision", tv_store), ("detectron2", d2["store"])):
        cfg = load_config(REPO / "configs" / "demo_sttran.yaml",
                          {"store": str(store), "epochs": 1, "device": "cpu", "num_workers": 0})
        result = train(cfg, tmp_path / f"run_{name}", progress=False, echo=lambda line: None)
        (epoch,) = result["history"]
        assert np.isfinite(epoch["loss_total"]), (name, epoch)
        assert "val_R@20" in epoch, (name, epoch)


def test_classes_that_are_not_ag_need_a_class_map(root, tmp_path):
    """A 5-class model (COCO-like names) fails naming the mismatch; with a class map its
    classes land on the mapped columns (two on one), the rest count as background."""
    names = ["person", "cup", "bottle", "car", "dining table"]
    config, weights = tiny_model("c4", tmp_path / "five", num_classes=5, class_names=names, person=0)
    with pytest.raises(DetectorLoadError, match=r"the model's 5 classes .* are not the vocabulary's 36 objects; "
                                                r"3 are no AG object \(bottle, car, dining table\); 34 AG objects have "
                                                r"no model class \(bag, bed"):
        load_detectron2_detector(config, weights, vocabulary=ACTION_GENOME)
    run = detect(root, tmp_path / "none.h5", config, weights)
    assert run.returncode == 1 and "pass a class map" in run.stderr and "Traceback" not in run.stderr
    class_map = tmp_path / "map.yaml"
    class_map.write_text(yaml.safe_dump({"person": "person", "cup": "cup/glass/bottle", "bottle": "cup",
                                         "dining table": "table"}))
    detector, _ = load_detectron2_detector(config, weights, vocabulary=ACTION_GENOME, class_map=class_map)
    cup, table = ACTION_GENOME.object_index("cup"), ACTION_GENOME.object_index("table")
    assert detector.class_map.columns == (1, cup, cup, 0, table, 0)
    store = tmp_path / "mapped.h5"
    run = detect(root, store, config, weights, "--class-map", class_map, "--split", "test")
    assert run.returncode == 0, run.stderr[-3000:]
    assert check_store(store) == []
    with open_store(store) as s:
        rec = s.read_video(s.videos()[0])
    assert set(np.unique(rec.det_labels)) <= {1, cup, table}
    unused = [c for c in range(37) if c not in (0, 1, cup, table)]
    assert float(np.abs(rec.gt_dists[:, unused].astype(np.float32)).max()) == 0.0


def test_a_checkpoint_that_does_not_fit_the_config_is_refused(tmp_path):
    config, _ = tiny_model("c4", tmp_path / "a")
    _, other = tiny_model("c4", tmp_path / "b", num_classes=5, class_names=None, person=None)
    with pytest.raises(DetectorLoadError, match=r"model.pth: does not fit the config's model: 4 parameter\(s\) of "
                                                r"another shape, e.g. roi_heads.box_predictor"):
        load_detectron2_detector(config, other, vocabulary=ACTION_GENOME)


def test_unnamed_classes_need_as_many_as_the_vocabulary(tmp_path):
    config, weights = tiny_model("c4", tmp_path / "unnamed", class_names=None)
    detector, _ = load_detectron2_detector(config, weights, vocabulary=ACTION_GENOME)
    assert detector.class_map.columns == tuple(range(1, 37)) + (0,)
    assert detector.class_map.source == "the vocabulary's order"
    assert resolve_class_map(36, ACTION_GENOME).columns == detector.class_map.columns


def test_reader_sees_the_same_videos(d2, root):
    """Both backends store every video the reader keeps (the store is the same contract)."""
    ag = load_action_genome(root, ReaderOptions(mark_small=True))
    with open_store(d2["store"]) as s:
        assert set(s.videos()) == {v.name for split in ("train", "val", "test") for v in ag.videos(split)}
