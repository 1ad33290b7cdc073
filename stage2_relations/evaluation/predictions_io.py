"""The predictions file: one ``.npz`` of flat arrays, readable without pickle.

Written by :func:`write_predictions`, read by :func:`read_predictions` (a
:class:`PredictionsFile`); ``cli.py eval --predictions FILE`` scores it without a model, and
any project can write one with numpy alone. A JSON ``header``, ``frame_names`` (F,), the
predictions (``pred_*``: boxes (N, 4) xyxy, labels, scores, pairs (P, 2), the attention,
spatial and contacting probabilities (P, A / S / C), optional p_{t,0}) and optional ground
truth (``gt_*``), with half-open per-frame offsets and frame-local indices. Every key's dtype
and shape: docs/evaluation.md, "Predictions file format".
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from common.errors import InputError
from common.files import atomic_write
from rules.modes import Mode
from store.vocabulary import ACTION_GENOME, Vocabulary

from .structures import GroundTruthSet, PredictionSet

PREDICTIONS_FORMAT = "dsgg-predictions"
PREDICTIONS_FORMAT_VERSION = 1

_PRED_KEYS = ("pred_box_offsets", "pred_boxes", "pred_labels", "pred_scores", "pred_pair_offsets", "pred_pairs",
              "pred_attention", "pred_spatial", "pred_contacting")
_GT_KEYS = ("gt_box_offsets", "gt_boxes", "gt_labels", "gt_relation_offsets", "gt_relations")


@dataclass(frozen=True)
class PredictionsFile:
    """Contents of a predictions file.

    predictions:  the predictions, with frame names.
    ground_truth: the ground truth of the same frames, or None when the file has none.
    mode:         the task the predictions were made for.
    vocabulary:   object and predicate vocabulary the ids refer to.
    metadata:     free JSON metadata (model, checkpoint, config, git revision...).
    """

    predictions: PredictionSet
    ground_truth: GroundTruthSet | None
    mode: Mode
    vocabulary: Vocabulary
    metadata: dict = field(default_factory=dict)


def write_predictions(
    path: str | Path,
    predictions: PredictionSet,
    *,
    mode: Mode | str,
    ground_truth: GroundTruthSet | None = None,
    vocabulary: Vocabulary = ACTION_GENOME,
    metadata: dict | None = None,
    float_dtype: str = "float32",
    compress: bool = True,
) -> Path:
    """Write ``predictions`` (and optionally the matching ground truth) to ``path`` (.npz).

    Frame names are required (they align predictions with ground truth when the two come
    from different files). Returns the path written.
    """
    path = Path(path)
    if predictions.frame_names is None:
        raise ValueError("predictions need frame names to be written")
    if ground_truth is not None and ground_truth.num_frames != predictions.num_frames:
        raise ValueError("ground truth and predictions describe different numbers of frames")
    if ground_truth is not None and ground_truth.frame_names not in (None, predictions.frame_names):
        raise ValueError("ground truth and predictions name their frames differently")
    header = {
        "format": PREDICTIONS_FORMAT,
        "format_version": PREDICTIONS_FORMAT_VERSION,
        "mode": Mode(mode).value,
        "vocabulary": vocabulary.to_dict(),
        "metadata": metadata or {},
    }
    fl = np.dtype(float_dtype)
    arrays = {
        "header": np.array(json.dumps(header)),
        "frame_names": np.array(predictions.frame_names, dtype=str),
        "pred_box_offsets": predictions.box_offsets,
        "pred_boxes": predictions.pred_boxes.astype(fl),
        "pred_labels": predictions.pred_labels,
        "pred_scores": predictions.pred_scores.astype(fl),
        "pred_pair_offsets": predictions.pair_offsets,
        "pred_pairs": predictions.pred_pairs,
        "pred_attention": predictions.pred_attention.astype(fl),
        "pred_spatial": predictions.pred_spatial.astype(fl),
        "pred_contacting": predictions.pred_contacting.astype(fl),
    }
    if predictions.pred_pair_scores is not None:
        arrays["pred_pair_scores"] = predictions.pred_pair_scores.astype(fl)
    if ground_truth is not None:
        arrays.update(
            gt_box_offsets=ground_truth.box_offsets,
            gt_boxes=ground_truth.gt_boxes.astype(fl),
            gt_labels=ground_truth.gt_labels,
            gt_relation_offsets=ground_truth.relation_offsets,
            gt_relations=ground_truth.gt_relations,
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as f:  # a file object keeps numpy from appending ".npz"
        (np.savez_compressed if compress else np.savez)(f, **arrays)
    return path


def read_predictions(path: str | Path) -> PredictionsFile:
    """Read a file written by :func:`write_predictions` (or by hand in the same layout).

    Raises ValueError with the reason when the file is not a predictions file, has a format
    version this code does not know, or misses arrays.
    """
    path = Path(path)
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        with path.open("rb") as fh:
            head = fh.read(4)
        kind = ("it is empty" if not head else "a truncated or damaged .npz" if head == b"PK\x03\x04"
                else "not a numpy file")
        raise InputError(f"{path}: not a {PREDICTIONS_FORMAT} file (an .npz of arrays): {kind}") from None
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise InputError(f"{path}: not a {PREDICTIONS_FORMAT} file: one .npy array, not an .npz of arrays")
    try:
        return _read_npz(path, loaded)
    except (OSError, EOFError, zipfile.BadZipFile) as e:
        raise InputError(f"{path}: a truncated or damaged .npz ({type(e).__name__}: {e})") from None
    except ValueError as e:  # the arrays' own checks (shapes, boxes, frame names): say which file
        if isinstance(e, InputError):
            raise
        raise InputError(f"{path}: {e}") from None


def _read_npz(path: Path, loaded: Any) -> PredictionsFile:
    with loaded as z:
        keys = set(z.files)
        if "header" not in keys:
            raise InputError(f"{path}: not a {PREDICTIONS_FORMAT} file (no 'header' array)")
        try:
            header = json.loads(str(z["header"][()]))
        except ValueError as e:  # a header written by hand or by another tool
            raise InputError(f"{path}: its 'header' array is not the JSON this format writes ({e.msg} at character "
                             f"{e.pos})" if isinstance(e, json.JSONDecodeError) else
                             f"{path}: its 'header' array is not one JSON text ({e})") from None
        if not isinstance(header, dict):
            raise InputError(f"{path}: its 'header' is JSON {type(header).__name__}, not the object this format writes")
        if header.get("format") != PREDICTIONS_FORMAT:
            raise InputError(f"{path}: format {header.get('format')!r}, expected {PREDICTIONS_FORMAT!r}")
        if header.get("format_version") != PREDICTIONS_FORMAT_VERSION:
            raise InputError(
                f"{path}: format version {header.get('format_version')} is not known to this code "
                f"(it reads version {PREDICTIONS_FORMAT_VERSION})"
            )
        missing = [k for k in ("frame_names",) + _PRED_KEYS if k not in keys]
        if missing:
            raise InputError(f"{path}: missing arrays {missing}")
        gt_present = [k in keys for k in _GT_KEYS]
        if any(gt_present) and not all(gt_present):
            raise InputError(f"{path}: ground truth incomplete, missing {[k for k in _GT_KEYS if k not in keys]}")
        names = tuple(str(n) for n in z["frame_names"])
        predictions = PredictionSet(
            box_offsets=z["pred_box_offsets"], pred_boxes=z["pred_boxes"], pred_labels=z["pred_labels"],
            pred_scores=z["pred_scores"], pair_offsets=z["pred_pair_offsets"], pred_pairs=z["pred_pairs"],
            pred_attention=z["pred_attention"], pred_spatial=z["pred_spatial"], pred_contacting=z["pred_contacting"],
            pred_pair_scores=z["pred_pair_scores"] if "pred_pair_scores" in keys else None,
            frame_names=names,
        )
        ground_truth = None
        if all(gt_present):
            ground_truth = GroundTruthSet(
                box_offsets=z["gt_box_offsets"], gt_boxes=z["gt_boxes"], gt_labels=z["gt_labels"],
                relation_offsets=z["gt_relation_offsets"], gt_relations=z["gt_relations"], frame_names=names,
            )
    try:
        mode, vocabulary = Mode(header["mode"]), Vocabulary.from_dict(header["vocabulary"])
    except (KeyError, TypeError, ValueError) as e:
        raise InputError(f"{path}: its header lacks a valid mode and vocabulary ({type(e).__name__}: {e})") from None
    return PredictionsFile(
        predictions=predictions,
        ground_truth=ground_truth,
        mode=mode,
        vocabulary=vocabulary,
        metadata=header.get("metadata", {}),
    )
