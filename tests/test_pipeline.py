"""pipeline.py, the chains that join stage 1 and stage 2, where they decide without a trained
run (predict and the demo run them end to end: tests/stage2_relations/test_scene_graphs.py)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from common.errors import ConfigError
from pipeline import predict_scene_graphs
from stage1_detect.detectors import build_detector, load_detector, save_detector
from stage1_detect.extract import ExtractConfig
from stage1_detect.video_source import find_videos
from store.records import UnionMode
from store.vocabulary import ACTION_GENOME


@pytest.fixture
def detector(tmp_path):
    path = tmp_path / "d.pth"
    save_detector(build_detector("small", {"min_size": 120, "max_size": 160}), path)
    return load_detector(path)


def _run(sha: str):
    """What the chain reads of an SGDET run before its model: its store's detector and layout."""
    return SimpleNamespace(meta=SimpleNamespace(detector=SimpleNamespace(weights_sha256=sha, arch="small"),
                                                vocabulary=ACTION_GENOME, union_mode=UnionMode.POOLED),
                           config=SimpleNamespace(store="store.h5"))


def test_no_scene_graphs_when_no_video_reaches_the_store(detector, tmp_path):
    frame_detector, sha = detector
    (tmp_path / "broken.mp4").write_bytes(b"not a video " * 300)
    lines = []
    done = predict_scene_graphs(find_videos([tmp_path / "broken.mp4"]), tmp_path / "out", _run(sha), frame_detector,
                                weights_sha256=sha, config=ExtractConfig(num_workers=0, segment_mb=0),
                                progress=False, echo=lines.append)
    assert done.graphs is None and done.detected.videos_written == 0
    assert len(done.detected.failed) == 1 and "broken.mp4: undecodable video" in done.detected.failed[0]
    assert len(lines) == 1 and lines[0].startswith("predict: 1 videos, cpu, ")
    assert not list((tmp_path / "out").glob("*.json"))


def test_another_detector_is_refused_before_anything_is_detected(detector, tmp_path):
    frame_detector, sha = detector
    lines = []
    with pytest.raises(ConfigError, match="is not the one of the run's store"):
        predict_scene_graphs({"v.mp4": tmp_path / "v.mp4"}, tmp_path / "out", _run("0" * 64), frame_detector,
                             weights_sha256=sha, echo=lines.append)
    assert lines == [] and not (tmp_path / "out").exists()
