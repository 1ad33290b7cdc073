"""Tables, CSV, JSON and a bar chart from :class:`~.metrics.EvaluationResult` objects.

The text table follows the RS-Net paper's Tables 2 and 3: one row per constraint, columns
R@10/20/50, P@10/20 and mR@10/20 in percent. Files written by :func:`write_report`:

=========================== ==================================================================
metrics.json                every result in full (all K, all three mR definitions, options)
metrics.csv                 one row per constraint: R@K, P@K and mR@K of each definition
predicate_recall.csv        one row per (constraint, definition, K, predicate): recall, GT count
predicate_recall.png        per-predicate recall at one K, one bar per constraint
table.txt                   the printed table
=========================== ==================================================================
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from common.errors import InputError
from common.files import atomic_write, write_text
from rules.modes import Mode
from store.vocabulary import ACTION_GENOME, Vocabulary

from .metrics import EvaluationResult, evaluate_all
from .predictions_io import PredictionsFile, read_predictions
from .structures import Constraint, MeanRecall

_MR_SHORT = {MeanRecall.DATASET: "dataset", MeanRecall.ALL_FRAMES: "all_frames",
             MeanRecall.FRAMES_WITH_PREDICATE: "frames_with_predicate"}

log = logging.getLogger(__name__)


def _available(ks: Sequence[int], result_ks: Sequence[int]) -> list[int]:
    return [k for k in ks if k in result_ks]


def format_table(
    results: Mapping[Constraint, EvaluationResult],
    *,
    mean_recall: MeanRecall = MeanRecall.DATASET,
    recall_ks: Sequence[int] = (10, 20, 50),
    precision_ks: Sequence[int] = (10, 20),
    mean_recall_ks: Sequence[int] = (10, 20),
) -> str:
    """The RS-Net-style table (percent, one decimal), one row per constraint."""
    if not results:
        return "(no results)"
    first = next(iter(results.values()))
    rk, pk, mk = (_available(k, first.ks) for k in (recall_ks, precision_ks, mean_recall_ks))
    head = [f"R@{k}" for k in rk] + [f"P@{k}" for k in pk] + [f"mR@{k}" for k in mk]
    lines = [
        f"{first.mode.value.upper()}  (mR: {MeanRecall(mean_recall).value} definition, "
        f"{first.num_frames_evaluated} frames, {first.num_gt_triplets} GT triplets)",
        f"{'constraint':<12}" + "".join(f"{h:>8}" for h in head),
    ]
    for c, r in results.items():
        vals = [r.recall[k] for k in rk] + [r.precision[k] for k in pk] + [r.mean_recall[MeanRecall(mean_recall)][k] for k in mk]
        lines.append(f"{Constraint(c).value:<12}" + "".join(f"{100 * v:>8.1f}" for v in vals))
    return "\n".join(lines)


def summary_rows(results: Mapping[Constraint, EvaluationResult]) -> list[dict]:
    """One flat dict per constraint (the rows of metrics.csv)."""
    rows = []
    for c, r in results.items():
        row = {"constraint": Constraint(c).value, "mode": r.mode.value, "frames": r.num_frames_evaluated,
               "gt_triplets": r.num_gt_triplets}
        row.update({f"R@{k}": r.recall[k] for k in r.ks})
        row.update({f"P@{k}": r.precision[k] for k in r.ks})
        for d in MeanRecall:
            row.update({f"mR@{k}[{_MR_SHORT[d]}]": r.mean_recall[d][k] for k in r.ks})
        row.update(r.options)
        rows.append(row)
    return rows


def predicate_rows(results: Mapping[Constraint, EvaluationResult], vocabulary: Vocabulary = ACTION_GENOME) -> list[dict]:
    """One dict per (constraint, definition, K, predicate) (the rows of predicate_recall.csv);
    recall is empty when the predicate has no GT triplet."""
    rows = []
    for c, r in results.items():
        for d in MeanRecall:
            for j, k in enumerate(r.ks):
                for p, name in enumerate(vocabulary.predicates):
                    v = r.predicate_recall[d][j, p]
                    rows.append({"constraint": Constraint(c).value, "definition": d.value, "K": k, "predicate_id": p,
                                 "predicate": name, "group": vocabulary.group_of(p).value,
                                 "gt_count": int(r.predicate_gt_count[p]), "recall": "" if np.isnan(v) else float(v)})
    return rows


def _write_csv(path: Path, rows: list[dict]) -> None:
    with atomic_write(path, "w") as f:
        if not rows:
            return
        w = csv.DictWriter(f, fieldnames=list(rows[0].keys()))
        w.writeheader()
        w.writerows(rows)


def plot_predicate_recall(
    results: Mapping[Constraint, EvaluationResult],
    path: str | Path,
    *,
    vocabulary: Vocabulary = ACTION_GENOME,
    mean_recall: MeanRecall = MeanRecall.DATASET,
    k: int = 20,
) -> Path:
    """Bar chart of per-predicate R@k (one bar per constraint) under ``mean_recall``'s
    per-predicate definition; written with matplotlib's Agg canvas (no display needed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    fig = Figure(figsize=(14, 5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    n = vocabulary.num_predicates
    x = np.arange(n)
    width = 0.8 / max(1, len(results))
    for i, (c, r) in enumerate(results.items()):
        if k not in r.ks:
            continue
        vals = np.nan_to_num(r.predicate_recall[MeanRecall(mean_recall)][r.ks.index(k)], nan=0.0)
        ax.bar(x + (i - (len(results) - 1) / 2) * width, 100 * vals, width, label=f"{Constraint(c).value} constraint")
    ax.set_xticks(x)
    ax.set_xticklabels(vocabulary.predicates, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel(f"R@{k} per predicate (%)")
    ax.set_ylim(0, 100)
    first = next(iter(results.values()), None)
    mode = first.mode.value.upper() if first is not None else ""
    ax.set_title(f"{mode} per-predicate recall ({MeanRecall(mean_recall).value} definition)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as fh:
        fig.savefig(fh, format="png")
    return path


def write_report(
    results: Mapping[Constraint, EvaluationResult],
    out_dir: str | Path,
    *,
    vocabulary: Vocabulary = ACTION_GENOME,
    mean_recall: MeanRecall = MeanRecall.DATASET,
    plot_k: int = 20,
    extra: dict | None = None,
) -> dict[str, Path]:
    """Write metrics.json, metrics.csv, predicate_recall.csv, predicate_recall.png and
    table.txt into ``out_dir``; returns {name: path}. ``extra`` is stored in metrics.json."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {name: out / name for name in
             ("metrics.json", "metrics.csv", "predicate_recall.csv", "predicate_recall.png", "table.txt")}
    payload = {
        "main_mean_recall": MeanRecall(mean_recall).value,
        "results": {Constraint(c).value: r.to_dict(vocabulary) for c, r in results.items()},
        **(extra or {}),
    }
    write_text(paths["metrics.json"], json.dumps(payload, indent=2))
    _write_csv(paths["metrics.csv"], summary_rows(results))
    _write_csv(paths["predicate_recall.csv"], predicate_rows(results, vocabulary))
    plot_predicate_recall(results, paths["predicate_recall.png"], vocabulary=vocabulary, mean_recall=mean_recall, k=plot_k)
    write_text(paths["table.txt"], format_table(results, mean_recall=mean_recall) + "\n")
    return paths


def evaluate_predictions_file(
    predictions_path: str | Path,
    *,
    ground_truth_path: str | Path | None = None,
    mode=None,
    constraints: Sequence[Constraint | str] = tuple(Constraint),
    **kwargs,
) -> tuple[dict[Constraint, EvaluationResult], PredictionsFile]:
    """Score a predictions file (see :mod:`.predictions_io`) under each constraint.

    The ground truth comes from ``ground_truth_path`` when given (the gt_ arrays of another
    predictions-format file), else from the predictions file itself. When the two files
    differ, predictions are aligned to the ground truth's frames by name; a GT frame without
    predictions counts 0. ``mode`` overrides the file's mode; other keyword arguments go to
    :func:`~.metrics.evaluate`. Returns ({constraint: result}, the predictions file).
    """
    pf = read_predictions(predictions_path)
    if mode is not None and Mode(mode) is not pf.mode:  # the table would carry the other mode's name
        raise InputError(f"{predictions_path}: holds {pf.mode.value} predictions (its header's mode); scoring them as "
                         f"{Mode(mode).value} would print a {Mode(mode).value.upper()} table of another task: evaluate "
                         f"them as {pf.mode.value} (leave out --mode)")
    predictions, ground_truth = pf.predictions, pf.ground_truth
    if ground_truth_path is not None:
        gf = read_predictions(ground_truth_path)
        if gf.ground_truth is None:
            raise InputError(f"{ground_truth_path}: holds no ground truth (gt_ arrays)")
        if gf.vocabulary != pf.vocabulary:
            raise InputError("the predictions and the ground truth use different vocabularies")
        ground_truth = gf.ground_truth
    if ground_truth is None:
        raise InputError(f"{predictions_path}: holds no ground truth; pass a ground-truth file")
    if predictions.frame_names != ground_truth.frame_names:
        if predictions.frame_names is not None and ground_truth.frame_names is not None:
            known = set(ground_truth.frame_names)
            matched = sum(n in known for n in predictions.frame_names)
            if matched == 0:
                raise InputError(f"{predictions_path}: none of its {len(predictions.frame_names)} frame names is a "
                                 f"frame of the ground truth (e.g. {predictions.frame_names[0]!r} vs "
                                 f"{ground_truth.frame_names[0]!r})")
            unknown = len(predictions.frame_names) - matched
            missing = len(ground_truth.frame_names) - matched
            if unknown or missing:
                log.warning("%s: %d predicted frames are not in the ground truth (ignored); %d ground-truth frames "
                            "have no predictions (they count 0)", predictions_path, unknown, missing)
        predictions = predictions.aligned_to(ground_truth.frame_names)
    try:
        results = evaluate_all(
            ground_truth, predictions, constraints=constraints, mode=mode if mode is not None else pf.mode,
            vocabulary=pf.vocabulary, **kwargs,
        )
    except ValueError as e:  # the protocol's checks of the file's content (scores, ids, frame counts)
        raise InputError(f"{predictions_path}: {e}") from e
    return results, pf
