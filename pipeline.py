"""The chains that join stage 1 and stage 2, which may not import each other: each is one
function that ``cli.py`` and ``demo.py`` both call."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from stage1_detect.extract import ExtractConfig, ExtractSummary
from stage1_detect.frame_detector import FrameDetector
from stage1_detect.video_source import FrameSelection, detect_videos
from stage2_relations.scene_graphs import PredictSummary, SgdetRun, check_detector, write_scene_graphs

DETECTIONS = "detections.h5"
"""The store ``predict`` detects into, inside its output folder."""


@dataclass(frozen=True)
class Prediction:
    """What :func:`predict_scene_graphs` did: ``detected``, the detection into the store
    (its ``failed`` lists the videos that could not be read); ``graphs``, the scene graphs
    written (None when no video reached the store)."""

    detected: ExtractSummary
    graphs: PredictSummary | None


def predict_scene_graphs(paths: dict[str, Path], out: Path, run: SgdetRun, detector: FrameDetector, *,
                         weights_sha256: str, selection: FrameSelection = FrameSelection(),
                         config: ExtractConfig = ExtractConfig(), device: str = "cpu", progress: bool = True,
                         echo: Callable[[str], None] = lambda line: None) -> Prediction:
    """``cli.py predict``: the selected frames of the videos ``paths`` (from
    :func:`stage1_detect.video_source.find_videos`) detected into ``out/detections.h5`` (a store
    without GT, as the run's store was extracted), then the run's SGDET test view and model on
    it: ``out/VIDEO.json`` and ``.csv`` per video (:func:`stage2_relations.scene_graphs.write_scene_graphs`).
    Resumable. ``detector`` must be the one the run's store was extracted with (ConfigError);
    ``echo`` gets one line when the checks passed and the detection starts."""
    check_detector(run, weights_sha256, detector.describe().arch)
    echo(f"predict: {len(paths)} videos, {device}, {torch.get_num_threads()} torch threads")
    store = out / DETECTIONS
    detected = detect_videos(paths, store, detector, weights_sha256=weights_sha256, vocabulary=run.meta.vocabulary,
                             union_mode=run.meta.union_mode.value, selection=selection, config=config, device=device,
                             progress=progress)
    if not (detected.videos_written or detected.videos_skipped_committed):
        return Prediction(detected, None)
    return Prediction(detected, write_scene_graphs(store, run, out, sources=paths, device=device, progress=progress))
