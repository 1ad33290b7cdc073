"""An untrained ``small`` detector that finds a person: the stage-1 tests' detector."""

from __future__ import annotations

from pathlib import Path

import torch


def person_finding_detector(path: Path, settings: dict, *, person: int = 1, seed: int = 0):
    """Build the ``small`` detector with ``settings`` from ``torch.manual_seed(seed)``, raise its
    person logit by 3 (untrained, it would score every class alike and the single-person rule
    would often have no person to keep), save it at ``path`` and load it back.

    Returns (detector, weights sha256), as :func:`stage1_detect.detectors.load_detector`.
    """
    from stage1_detect.detectors import build_detector, load_detector, save_detector

    torch.manual_seed(seed)
    detector = build_detector("small", settings)
    with torch.no_grad():
        detector.model.roi_heads.box_predictor.cls_score.bias[person] += 3.0
    save_detector(detector, path)
    return load_detector(path)
