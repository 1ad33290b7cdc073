"""A small, valid predictions file (two PREDCLS frames: a person and a cup) and a way to spoil
it, for the tests and `bench/bad_inputs.py` of malformed `eval --predictions` inputs."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from rules.modes import Mode
from stage2_relations.evaluation import FrameGroundTruth, FramePredictions, GroundTruthSet, PredictionSet, write_predictions
from store.vocabulary import ACTION_GENOME as VOC

PERSON, CUP = VOC.person_index, VOC.object_index("cup")
FRAMES = ["A.mp4/000001.png", "A.mp4/000002.png"]


def write_tiny_predictions(path: Path, tamper: dict[str, Callable[[np.ndarray], np.ndarray]] | None = None) -> Path:
    """Write the file to ``path``; ``tamper`` maps an array's name to a function of (a copy of)
    that array whose result replaces it."""
    boxes = np.array([[0, 0, 99, 199], [10, 10, 29, 29]], float)
    gt = FrameGroundTruth(boxes, [PERSON, CUP], [[0, 1, 0]])
    p = FramePredictions(boxes, [PERSON, CUP], np.ones(2), [[0, 1]], [[0.7, 0.2, 0.1]], np.full((1, 6), 0.5),
                         np.full((1, 17), 0.5))
    write_predictions(path, PredictionSet.from_frames([p, p], FRAMES), mode=Mode.PREDCLS,
                      ground_truth=GroundTruthSet.from_frames([gt, gt], FRAMES))
    if tamper:
        with np.load(path) as z:
            arrays = {k: z[k] for k in z.files}
        for k, f in tamper.items():
            arrays[k] = f(arrays[k].copy())
        with open(path, "wb") as fh:
            np.savez(fh, **arrays)
    return path
