"""Evaluation of dynamic scene graphs on Action Genome: STTran's protocol, reproduced.

Pure, vectorised functions: triplet formation under the three constraints
(:mod:`.triplets`), R@K / mR@K / P@K (:mod:`.metrics`), the predictions file
(:mod:`.predictions_io`) and the tables, CSV, JSON and plots (:mod:`.report`).
The entry points are :func:`evaluate` (flat sets) and :func:`evaluate_frames` (per-frame
arrays). ``docs/evaluation.md`` defines every metric and option.
"""

from .metrics import (
    DEFAULT_KS,
    EvaluationResult,
    Matches,
    evaluate,
    evaluate_all,
    evaluate_frames,
    match_triplets,
)
from .predictions_io import PREDICTIONS_FORMAT, PREDICTIONS_FORMAT_VERSION, PredictionsFile, read_predictions, write_predictions
from .report import evaluate_predictions_file, format_table, write_report
from .structures import (
    Constraint,
    FrameGroundTruth,
    FramePredictions,
    GroundTruthSet,
    MeanRecall,
    PaddedCells,
    PrecisionDenominator,
    PredictionSet,
)
from .triplets import GroundTruthTriplets, RankedTriplets, ground_truth_triplets, rank_triplets

__all__ = [
    "DEFAULT_KS", "EvaluationResult", "Matches", "evaluate", "evaluate_all", "evaluate_frames", "match_triplets",
    "PREDICTIONS_FORMAT", "PREDICTIONS_FORMAT_VERSION", "PredictionsFile", "read_predictions", "write_predictions",
    "Constraint", "FrameGroundTruth", "FramePredictions", "GroundTruthSet", "MeanRecall", "PaddedCells",
    "PrecisionDenominator", "PredictionSet", "evaluate_predictions_file", "format_table", "write_report",
    "GroundTruthTriplets", "RankedTriplets", "ground_truth_triplets", "rank_triplets",
]
