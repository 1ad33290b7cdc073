"""What ``cli.py eval`` is asked, as one value: :class:`EvalRequest` (a source and its options)
with its :class:`Protocol`; :func:`score_predictions` carries out a request for a predictions
file. A model's request goes to :func:`stage2_relations.evaluate_checkpoint.evaluate_checkpoint`.
No torch here: scoring a predictions file needs none.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from rules.modes import Mode
from stage2_relations.evaluation import MeanRecall, format_table, write_report
from stage2_relations.evaluation.report import evaluate_predictions_file
from stage2_relations.evaluation.structures import Constraint, PaddedCells, PrecisionDenominator
from stage2_relations.view_options import ObjectScores, SgdetBoxes


@dataclass(frozen=True)
class Protocol:
    """The Action Genome protocol's options of one evaluation, each as
    :func:`~stage2_relations.evaluation.metrics.evaluate` documents it; ``mean_recall`` is the
    definition of the printed table and the plot (every definition is written)."""

    constraints: tuple[Constraint, ...] = tuple(Constraint)
    semi_threshold: float = 0.9
    mean_recall: MeanRecall = MeanRecall.DATASET
    padded_cells: PaddedCells = PaddedCells.RANK
    precision_denominator: PrecisionDenominator = PrecisionDenominator.K
    iou_threshold: float = 0.5

    def __post_init__(self) -> None:
        object.__setattr__(self, "constraints", tuple(Constraint(c) for c in self.constraints))
        for name, kind in (("mean_recall", MeanRecall), ("padded_cells", PaddedCells),
                           ("precision_denominator", PrecisionDenominator)):
            object.__setattr__(self, name, kind(getattr(self, name)))

    def scoring(self) -> dict[str, Any]:
        """The keyword arguments of :func:`~stage2_relations.evaluation.metrics.evaluate` (but the constraint)."""
        return dict(semi_threshold=self.semi_threshold, padded_cells=self.padded_cells,
                    precision_denominator=self.precision_denominator, iou_threshold=self.iou_threshold)


@dataclass(frozen=True)
class EvalRequest:
    """What ``cli.py eval`` is asked (its options, one field each, but ``threads``, which the
    command applies): score ``predictions`` (a predictions file, with the GT of
    ``ground_truth`` when given) or a model, ``run_dir`` or ``checkpoint``: exactly one source.

    With a model: ``store_path`` (default the run's), ``split``, ``max_videos`` (0: all),
    ``device``, ``save_predictions`` (a predictions file to write), ``trust_checkpoint`` (full
    pickle) and the test view's ``sgdet_boxes`` and ``object_scores`` (default the recipe's).
    ``mode`` defaults to the predictions file's or the run's; ``out_dir`` receives the report.
    """

    predictions: Path | None = None
    ground_truth: Path | None = None
    run_dir: Path | None = None
    checkpoint: Path | None = None
    store_path: str | None = None
    split: str = "test"
    save_predictions: Path | None = None
    max_videos: int = 0
    device: str = "cpu"
    mode: Mode | None = None
    sgdet_boxes: SgdetBoxes | None = None
    object_scores: ObjectScores | None = None
    protocol: Protocol = Protocol()
    out_dir: Path | None = None
    trust_checkpoint: bool = False

    def __post_init__(self) -> None:
        for name, kind in (("mode", Mode), ("sgdet_boxes", SgdetBoxes), ("object_scores", ObjectScores)):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, kind(getattr(self, name)))

    @classmethod
    def from_options(cls, **options: Any) -> EvalRequest:
        """The request of the command line's options: :class:`Protocol`'s fields go to ``protocol``
        (``constraints`` empty: all three), the others are this class's fields by name."""
        names = {f.name for f in dataclasses.fields(Protocol)}
        protocol = {k: options.pop(k) for k in names if k in options}
        if not protocol.get("constraints", True):
            del protocol["constraints"]
        return cls(**options, protocol=Protocol(**protocol))

    @property
    def sources(self) -> int:
        """How many of the three sources are given (one is right)."""
        return sum(x is not None for x in (self.predictions, self.run_dir, self.checkpoint))


def score_predictions(request: EvalRequest, echo: Callable[[str], None] = print) -> dict:
    """Score ``request.predictions`` (with the GT of ``request.ground_truth`` when given), echo
    the table and, with ``out_dir``, write the report. Returns {'results': {Constraint:
    EvaluationResult}, 'paths': {name: path}}."""
    protocol = request.protocol
    results, pf = evaluate_predictions_file(request.predictions, ground_truth_path=request.ground_truth,
                                            mode=request.mode, constraints=protocol.constraints, **protocol.scoring())
    echo(format_table(results, mean_recall=protocol.mean_recall))
    paths = {}
    if request.out_dir is not None:
        extra = {"predictions": str(request.predictions),
                 "ground_truth": str(request.ground_truth or request.predictions), "predictions_metadata": pf.metadata}
        paths = write_report(results, request.out_dir, vocabulary=pf.vocabulary, mean_recall=protocol.mean_recall,
                             extra=extra)
        echo(f"wrote {', '.join(p.name for p in paths.values())} to {request.out_dir}")
    return {"results": results, "paths": paths}


__all__ = ["EvalRequest", "Protocol", "score_predictions"]
