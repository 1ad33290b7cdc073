"""The detector backend registry: what each backend reads, the one-line option errors worked
out by hand, a backend added by one decorator, and listing the backends without importing a
detector library."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from stage1_detect import detector_backends
from stage1_detect.detector_backends import (
    DETECTOR_BACKENDS,
    BackendOptionError,
    DetectorOption,
    DetectorRequest,
    check_options,
    load_frame_detector,
    register_backend,
)
from stage1_detect.detectors import build_detector, save_detector
from tests.helpers import REPO

W = Path("w.pth")


def test_the_registered_backends_and_what_they_read():
    assert list(DETECTOR_BACKENDS) == ["torchvision", "detectron2"]  # the first is --backend's default
    tv, d2 = DETECTOR_BACKENDS["torchvision"], DETECTOR_BACKENDS["detectron2"]
    assert DetectorOption.ARCH in tv.reads and DetectorOption.DETECTION_ORDER in tv.reads
    assert tv.reads & d2.reads == {DetectorOption.WEIGHTS}
    assert d2.requires == {DetectorOption.WEIGHTS, DetectorOption.CONFIG}
    assert all(b.description for b in DETECTOR_BACKENDS.values())


def test_request_lists_what_was_given_and_the_step_settings():
    request = DetectorRequest(weights=W, arch="small", clip="all", max_detections=0)
    assert request.given() == [DetectorOption.WEIGHTS, DetectorOption.ARCH, DetectorOption.MAX_DETECTIONS,
                               DetectorOption.CLIP]
    # 0 is given (no cap), not absent; the fields are DetectorSettings' names
    assert request.step_settings() == {"max_detections": 0, "clip": "all"}


@pytest.mark.parametrize(("backend", "request_", "message"), [
    # torchvision given --class-map: every option of detectron2's that torchvision does not read
    ("torchvision", DetectorRequest(weights=W, class_map=Path("m.yaml")),
     "--config and --class-map are options of --backend detectron2"),
    # detectron2 given a step option: torchvision's options (weights aside)
    ("detectron2", DetectorRequest(weights=W, config=Path("c.yaml"), nms_space="resized"),
     "--arch, --nms-space, --max-detections, --clip, --scale and --detection-order are options of "
     "--backend torchvision"),
    ("detectron2", DetectorRequest(weights=W), "--backend detectron2 takes --config"),
])
def test_an_option_the_backend_does_not_take_is_one_line(backend, request_, message):
    with pytest.raises(BackendOptionError) as e:
        check_options(DETECTOR_BACKENDS[backend], request_)
    assert str(e.value) == message


def test_a_new_backend_is_one_decorator(monkeypatch):
    monkeypatch.setattr(detector_backends, "DETECTOR_BACKENDS", dict(DETECTOR_BACKENDS))
    built = []

    @register_backend("fake", "a detector of nothing", reads=(DetectorOption.WEIGHTS, DetectorOption.ARCH))
    def _fake(request):
        built.append(request)
        return "detector", "sha"

    assert load_frame_detector("fake", DetectorRequest(weights=W, arch="x")) == ("detector", "sha")
    assert built == [DetectorRequest(weights=W, arch="x")]
    # --clip belongs to torchvision: the options it reads that "fake" does not
    with pytest.raises(BackendOptionError, match="^--nms-space, --max-detections, --clip, --scale and "
                                                 "--detection-order are options of --backend torchvision$"):
        load_frame_detector("fake", DetectorRequest(weights=W, clip="all"))
    with pytest.raises(ValueError, match="'fake' is already registered"):
        register_backend("fake", "again", reads=())(_fake)
    with pytest.raises(BackendOptionError, match="unknown detector backend 'other'; registered: torchvision, "
                                                 "detectron2, fake"):
        load_frame_detector("other", DetectorRequest(weights=W))


def test_the_torchvision_backend_loads_a_checkpoint_with_the_step_options(tmp_path):
    path = tmp_path / "d.pth"
    save_detector(build_detector("small", {"min_size": 120, "max_size": 160}), path)
    detector, sha = load_frame_detector("torchvision", DetectorRequest(weights=path, max_detections=5,
                                                                       detection_order="score"))
    assert sha == hashlib.sha256(path.read_bytes()).hexdigest()
    settings = detector.describe().settings
    assert detector.describe().arch == "small" and settings["max_detections"] == 5
    assert settings["detection_order"] == "score" and settings["min_size"] == 120


def test_listing_the_backends_imports_no_detector_library():
    code = ("import sys; import stage1_detect.detector_backends as b; assert list(b.DETECTOR_BACKENDS); "
            "print(sorted(m for m in ('torch', 'torchvision', 'detectron2') if m in sys.modules))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert run.returncode == 0 and run.stdout.strip() == "[]", run.stderr
