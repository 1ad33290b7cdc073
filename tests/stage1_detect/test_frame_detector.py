"""The seam between extraction and the detector libraries (runs without detectron2).

* extraction needs nothing but :class:`FrameDetector`: a backend of a few lines (mean colours)
  writes a valid store, with the sizes its ``describe()`` gives;
* the torchvision detectors describe themselves as they did before the seam existed;
* the import graph: no cycle in ``stage1_detect``, the legacy (jwyang) geometry apart from
  the checkpoint converter, and detectron2 imported by its backend only;
* ``detect --backend detectron2`` without detectron2 fails at once, in one line that says
  how to get it; the class map of a foreign detector, on hand-worked cases.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import Tensor
from torch.testing import assert_close
from torchvision.ops import roi_align

from stage1_detect import frame_detector
from stage1_detect.action_genome import ReaderOptions
from stage1_detect.class_map import ClassMap, read_class_map, resolve_class_map
from stage1_detect.detectors import Detector, build_detector
from stage1_detect.extract import ExtractConfig, extract, store_meta
from stage1_detect.frame_detector import (
    DETECTRON2_INSTALL_URL,
    DetectorDescription,
    DetectorLoadError,
    EncodedFrames,
    FrameDetections,
    FrameDetector,
    MissingBackendError,
    require_detectron2,
)
from stage1_detect.frames import PngFrames
from synth import SynthConfig, generate_synthetic_ag
from store import check_store, open_store
from store.vocabulary import ACTION_GENOME
from tests.helpers import REPO
from tests.test_layout import imported_modules, project_modules

CLI = [sys.executable, str(REPO / "cli.py")]


# --- a backend of a few lines ---------------------------------------------------------------


class ColourFrames(EncodedFrames):
    def __init__(self, original_sizes, images):
        super().__init__(original_sizes=original_sizes)
        self.images = images


class MeanColourDetector(FrameDetector):
    """Feature of a box: its mean RGB on 0..1 and its width and height / 100 (D = 5); class
    distribution: person 0.5, background 0.5; detections: the whole frame, as a person;
    maps: the frame RoIAligned to 7x7 (3 channels). Needs no detector library."""

    def encode(self, images):
        return ColourFrames([tuple(im.shape[-2:]) for im in images], [im.float() / 255 for im in images])

    def detect(self, encoded, positions=None):  # one box a frame: nothing to clip
        out = []
        for (h, w), image in zip(encoded.original_sizes, encoded.images):
            box = torch.tensor([[0.0, 0.0, w, h]])
            ((features, dists),) = self.pool(ColourFrames([(h, w)], [image]), [box])
            out.append(FrameDetections(boxes=box, scores=torch.ones(1), labels=torch.ones(1, dtype=torch.long),
                                       class_dists=dists, features=features))
        return out

    def pool(self, encoded, boxes):
        out = []
        for image, b in zip(encoded.images, boxes):
            rows = []
            for x1, y1, x2, y2 in b.tolist():
                crop = image[:, int(y1):max(int(y2), int(y1) + 1), int(x1):max(int(x2), int(x1) + 1)]
                rows.append(torch.cat([crop.mean(dim=(1, 2)), torch.tensor([(x2 - x1) / 100, (y2 - y1) / 100])]))
            dists = torch.zeros(len(b), 37)
            dists[:, :2] = 0.5
            out.append((torch.stack(rows) if rows else torch.zeros(0, 5), dists))
        return out

    def pool_map(self, encoded, boxes):
        return [roi_align(image[None], [b.float()], output_size=7, aligned=True) for image, b in
                zip(encoded.images, boxes)]

    def describe(self):
        return DetectorDescription(arch="mean-colour", feature_dim=5, num_classes=37, map_shape=(3, 7, 7),
                                   settings={"what": "mean RGB and size"})


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("seam") / "ag"
    generate_synthetic_ag(root, SynthConfig(videos=4, frames_per_video=4, width=160, height=120, seed=2),
                          progress=False)
    return root


@pytest.mark.parametrize("union", ["pooled", "map"])
def test_extraction_needs_only_the_interface(root, tmp_path, union):
    store = tmp_path / "colour.h5"
    config = ExtractConfig(num_workers=0, segment_mb=0, frame_source="png", batch_size=3, union_mode=union)
    summary = extract(root, store, MeanColourDetector(), weights_sha256="none", reader_options=ReaderOptions(),
                      config=config, progress=False)
    assert summary.videos_written >= 3 and summary.failed == []
    assert check_store(store) == []
    with open_store(store) as s:
        assert s.meta.detector.arch == "mean-colour" and s.meta.detector.settings == {"what": "mean RGB and size"}
        assert s.meta.feature_dim == 5 and s.meta.union_shape == ((5,) if union == "pooled" else (3, 7, 7))
        name = sorted(s.videos())[0]
        rec = s.read_video(name)
    (image,) = PngFrames(root).read(name, [int(rec.frame_names[0].rsplit("/", 1)[1][:-4])])
    x1, y1, x2, y2 = rec.gt_boxes[rec.frame_rows("gt_objects", 0)][0].astype(int)  # the person box
    by_hand = image[y1:y2, x1:x2].reshape(-1, 3).mean(0) / 255
    assert_close(rec.gt_features[rec.frame_rows("gt_objects", 0)][0, :3].astype(np.float32),
                 by_hand.astype(np.float32), rtol=0, atol=2e-3)
    assert rec.det_labels.tolist() == [1] * rec.num_frames


def test_torchvision_detector_through_the_interface():
    det = build_detector("small")
    assert isinstance(det, (FrameDetector, Detector))
    d = det.describe()
    assert (d.arch, d.feature_dim, d.num_classes, d.map_shape) == ("small", 256, 37, (128, 7, 7))
    assert d.settings == det.settings.to_dict()
    r101 = build_detector("r101-c4", {"legacy_rcnn": True, "roi_size": 7}).describe()
    assert (r101.feature_dim, r101.map_shape) == (2048, (1024, 7, 7)) and r101.settings["legacy_rcnn"] is True
    meta = store_meta(det, ACTION_GENOME, "sha", "map", {})
    assert (meta.feature_dim, meta.union_shape, meta.detector.arch) == (256, (128, 7, 7), "small")
    with pytest.raises(ValueError, match="distributions over 37 classes; the dataset's vocabulary has 38"):
        from dataclasses import replace

        store_meta(det, replace(ACTION_GENOME, objects=ACTION_GENOME.objects + ("extra",)), "sha", "pooled", {})


# --- the import graph -----------------------------------------------------------------------


def _imports(path: Path) -> set[str]:
    """Every module a file imports, at any depth (function-level imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return found


def _project_files() -> dict[str, Path]:
    files = {"cli": REPO / "cli.py"}
    for package in ("stage1_detect", "stage2_relations", "store"):
        for path in (REPO / package).rglob("*.py"):
            files[".".join(path.relative_to(REPO).with_suffix("").parts)] = path
    return files


def test_stage1_import_edges_and_detectron2_stays_in_its_backend():
    """The seam's edges (no cycle anywhere is tests/test_layout.py's): the legacy conventions
    import no other stage-1 module, detectors and the converter do not import each other both
    ways, and extraction sees only the interface."""
    modules = project_modules()
    graph = {name: imported_modules(name, modules[name], modules) for name in modules
             if name.startswith("stage1_detect.")}
    files = _project_files()
    assert "stage1_detect.ag_checkpoint" not in graph["stage1_detect.detectors"]
    assert "stage1_detect.detectors" in graph["stage1_detect.ag_checkpoint"]
    assert not {m for m in graph["stage1_detect.legacy_rcnn"] if m.startswith("stage1_detect.")}
    assert "stage1_detect.detectors" not in graph["stage1_detect.extract"]
    libraries = {name: {m.split(".")[0] for m in _imports(path)} for name, path in files.items()}
    assert not libraries["stage1_detect.frame_detector"] & {"torchvision", "detectron2"}
    assert not libraries["stage1_detect.extract"] & {"torchvision", "detectron2"}
    assert {name for name, libs in libraries.items() if "detectron2" in libs} == {"stage1_detect.detectron2_backend"}


_WITHOUT_DETECTRON2 = "import sys; sys.modules['detectron2'] = None; "


def test_everything_but_its_backend_imports_without_detectron2():
    modules = sorted(n for n in _project_files() if n != "stage1_detect.detectron2_backend"
                     and not n.endswith("__main__"))
    code = _WITHOUT_DETECTRON2 + "import importlib; [importlib.import_module(m) for m in %r]" % modules
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]


# --- detectron2 missing ---------------------------------------------------------------------


def test_require_detectron2_says_how_to_get_it(monkeypatch):
    monkeypatch.setattr(frame_detector.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(MissingBackendError, match="not installed .*" + DETECTRON2_INSTALL_URL.replace(".", r"\.")):
        require_detectron2()


def test_detect_with_detectron2_missing_fails_at_once_in_one_line(tmp_path):
    # An empty ROOT: the command must fail on the missing library before it reads anything.
    (tmp_path / "empty").mkdir()
    for name in ("cfg.yaml", "w.pkl"):
        (tmp_path / name).write_text("")
    args = ["detect", str(tmp_path / "empty"), "--store", str(tmp_path / "s.h5"), "--backend", "detectron2",
            "--config", str(tmp_path / "cfg.yaml"), "--weights", str(tmp_path / "w.pkl")]
    code = _WITHOUT_DETECTRON2 + "import runpy; sys.argv = ['cli.py'] + %r; runpy.run_path('cli.py', run_name='__main__')"
    run = subprocess.run([sys.executable, "-c", code % args], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert run.returncode == 1, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and DETECTRON2_INSTALL_URL in lines[0], run.stderr
    assert "not installed" in lines[0] and not (tmp_path / "s.h5").exists()


def test_detect_backend_options_belong_to_their_backend(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "w.pth").write_text("")
    (tmp_path / "cfg.yaml").write_text("")
    base = ["detect", str(tmp_path / "empty"), "--store", str(tmp_path / "s.h5"), "--weights", str(tmp_path / "w.pth")]
    run = subprocess.run(CLI + base + ["--config", str(tmp_path / "cfg.yaml")], capture_output=True, text=True,
                         cwd=REPO, timeout=120)
    assert run.returncode == 2 and "--config and --class-map are options of --backend detectron2" in run.stderr


# --- class maps, by hand --------------------------------------------------------------------


CUP, TABLE, BAG = (ACTION_GENOME.object_index(n) for n in ("cup", "table", "bag"))


def test_class_map_moves_background_to_column_0_and_adds_classes_mapped_together():
    # Model classes: 0 handbag, 1 backpack, 2 car (no AG object); column 3 is its background.
    m = resolve_class_map(3, ACTION_GENOME, model_classes=["handbag", "backpack", "car"],
                          mapping={"handbag": "bag", "backpack": "bag"}, mapping_source="map.yaml")
    assert m.columns == (BAG, BAG, 0, 0) and m.num_model_classes == 3
    probs = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.0, 0.0, 0.0, 1.0]])
    expected = torch.zeros(2, 37)
    expected[0, BAG], expected[0, 0] = 0.1 + 0.2, 0.3 + 0.4
    expected[1, 0] = 1.0
    assert_close(m.dists(probs), expected)
    assert m.labels(torch.tensor([2, 0, 1])).tolist() == [0, BAG, BAG]


def test_class_map_by_name_in_any_order_and_by_index():
    names = list(ACTION_GENOME.objects[1:])[::-1]
    names[names.index("cup")] = "cup/glass/bottle"  # AG's compound spelling is the same class
    m = resolve_class_map(36, ACTION_GENOME, model_classes=names)
    assert m.columns == tuple(range(36, 0, -1)) + (0,)
    by_index = resolve_class_map(3, ACTION_GENOME, mapping={0: "person", "2": "Table"})
    assert by_index.columns == (1, 0, TABLE, 0)
    assert resolve_class_map(36, ACTION_GENOME).columns == tuple(range(1, 37)) + (0,)


@pytest.mark.parametrize("kwargs, message", [
    (dict(k=2, model_classes=["person", "car"]),
     r"the model's 2 classes \(the checkpoint\) are not the vocabulary's 36 objects; 1 are no AG object \(car\); "
     r"35 AG objects have no model class"),
    (dict(k=5), r"the model has 5 classes and no class names .* pass a class map"),
    (dict(k=2, model_classes=["person", "car"], mapping={"truck": "bag"}), r"'truck' is not a class of the model"),
    (dict(k=2, model_classes=["person", "car"], mapping={"car": "vehicle"}), r"'vehicle' is not an object class"),
    (dict(k=2, mapping={7: "bag"}), r"model class index 7 outside 0..1"),
    (dict(k=2, mapping={"person": "person"}), r"the model's class names are unknown; key the map by 0-based"),
    (dict(k=2, model_classes=["person"]), r"names 1 classes; the model has 2"),
])
def test_class_map_errors_name_the_mismatch(kwargs, message):
    k = kwargs.pop("k")
    with pytest.raises(DetectorLoadError, match=message):
        resolve_class_map(k, ACTION_GENOME, **kwargs)


def test_read_class_map(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump({"cup": "cup", 3: None, "dining table": "table"}))
    assert read_class_map(good) == {"cup": "cup", 3: None, "dining table": "table"}
    for text in ("- cup\n- table\n", "cup: [a, b]\n", ""):
        (tmp_path / "bad.yaml").write_text(text)
        with pytest.raises(DetectorLoadError, match="bad.yaml: .*a class map is"):
            read_class_map(tmp_path / "bad.yaml")


def test_class_map_to_dict_is_plain_json():
    m = ClassMap(columns=(2, 0), num_classes=37, model_classes=("bag",), source="x")
    assert m.to_dict() == {"columns": [2, 0], "model_classes": ["bag"], "source": "x"}
    assert isinstance(m.index(), Tensor) and m.index().dtype == torch.long
