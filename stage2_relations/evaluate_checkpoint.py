"""``cli.py eval --run RUN_DIR | --checkpoint FILE``: a trained model scored on a store split
(:func:`evaluate_checkpoint` of the command's :class:`~stage2_relations.eval_request.EvalRequest`).

The split and test view a checkpoint is scored on are built by :func:`evaluation_view` alone;
``compare`` asks the same function whether an earlier evaluation is current.

Writes into the output folder (default ``RUN_DIR/eval_<split>_<mode>``) the files of
:func:`~stage2_relations.evaluation.report.write_report` (metrics.json with the parameter
count and inference speed added, metrics.csv, predicate_recall.csv/.png, table.txt) and
``frames.png``: a few frames with their top triplets (over the AG frame images when the
store's source dataset folder still has its ``frames/`` dump).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from common.errors import ConfigError, InputError, UserError
from common.run_folder import check_output_file
from rules.modes import Mode
from stage2_relations.checkpoints import load_checkpoint, run_checkpoint
from stage2_relations.data import VideoDataset
from stage2_relations.evaluation import format_table, write_predictions, write_report
from stage2_relations.evaluation.predictions_io import read_predictions
from stage2_relations.eval_request import EvalRequest
from stage2_relations.evaluation.structures import Constraint
from stage2_relations.heads import count_parameters, head_class
from stage2_relations.scoring import as_sets, plot_frames, score_model
from stage2_relations.view_options import ObjectScores, SgdetBoxes, ViewOptions


@dataclass(frozen=True)
class EvaluationView:
    """What a checkpoint is scored on: a split of a store, in a mode, with a test view. Made by
    :func:`evaluation_view` only; written into metrics.json (:meth:`describe`), where
    ``compare`` reads it back to know whether an evaluation is current."""

    store: str
    split: str
    mode: Mode
    options: ViewOptions

    def describe(self) -> dict[str, Any]:
        """As metrics.json holds it (JSON writes each rule by its name, to which the enum compares equal)."""
        return {"store": self.store, "split": self.split, "mode": self.mode.value,
                "view": dataclasses.asdict(self.options)}

    def dataset(self, max_videos: int = 0) -> VideoDataset:
        return VideoDataset(self.store, self.split, self.mode, train=False, options=self.options,
                            max_videos=max_videos)


def evaluation_view(cfg, split: str, mode: Mode | str | None = None, *, sgdet_boxes: SgdetBoxes | str | None = None,
                    object_scores: ObjectScores | str | None = None) -> EvaluationView:
    """The :class:`EvaluationView` of a checkpoint of recipe ``cfg`` on ``split`` in ``mode``
    (default the recipe's), its options from :func:`eval_view_options`."""
    mode = Mode(mode or cfg.mode)
    return EvaluationView(cfg.store, split, mode, eval_view_options(cfg, mode, sgdet_boxes=sgdet_boxes,
                                                                    object_scores=object_scores))


def eval_view_options(cfg, mode: Mode, *, sgdet_boxes: SgdetBoxes | str | None = None,
                      object_scores: ObjectScores | str | None = None) -> ViewOptions:
    """The view a checkpoint of recipe ``cfg`` (a :class:`~stage2_relations.recipe.TrainConfig`)
    is evaluated on in ``mode``: the recipe's, no negatives, with ``sgdet_boxes`` and
    ``object_scores`` when given. The ``detector`` rule (SGDET only) takes STTran's test boxes,
    always (another ``sgdet_boxes`` is refused). Raises ConfigError for a view the head cannot use."""
    rule = ObjectScores(object_scores or cfg.object_scores)
    if rule is ObjectScores.DETECTOR and mode is not Mode.SGDET:
        raise ConfigError(f"object-scores rule 'detector' is an SGDET rule, not {mode.value}")
    if rule is ObjectScores.DETECTOR and sgdet_boxes is None:
        sgdet_boxes = SgdetBoxes.STTRAN
    changes = {k: v for k, v in (("sgdet_boxes", sgdet_boxes), ("object_scores", object_scores)) if v is not None}
    options = dataclasses.replace(cfg.view_options(), negatives=False, **changes)
    required = head_class(cfg.head).required_view_options(rule)  # DSG-DETR: the pair pool, raw SGDET boxes
    if mode is Mode.SGDET and required.get("sgdet_boxes", options.sgdet_boxes) != options.sgdet_boxes:
        why = ("the detector rule scores STTran's test boxes" if rule is ObjectScores.DETECTOR
               else f"head {cfg.head!r} rebuilds the SGDET test boxes from the stored detections")
        raise ConfigError(f"{why}: it needs sgdet_boxes {SgdetBoxes(required['sgdet_boxes']).value!r}, "
                          f"not {options.sgdet_boxes.value!r}")
    return options


def evaluate_checkpoint(request: EvalRequest, *, echo: Callable[[str], None] = print,
                        num_frames_png: int = 3) -> dict:
    """Evaluate the model of ``request`` (its ``run_dir`` or ``checkpoint``, with its options and
    :class:`~stage2_relations.eval_request.Protocol`); returns {'results', 'parameters', 'speed', 'paths'}.

    ``mode`` defaults to the training mode; another mode works when the model can serve it
    (a head without object classifier keeps the given / detector labels and scores).
    ``sgdet_boxes`` and ``object_scores`` default to the recipe's (:class:`~stage2_relations.view_options.ViewOptions`).
    ``save_predictions`` replaces only an earlier predictions file, never the checkpoint or another
    file (:mod:`common.run_folder`). The checkpoint is read weights-only unless ``trust_checkpoint``.
    ``out_dir`` defaults to ``eval_<split>_<mode>`` beside the checkpoint; ``num_frames_png``
    frames are drawn into its frames.png.
    """
    protocol, split, device = request.protocol, request.split, request.device
    ckpt_path = Path(request.checkpoint) if request.checkpoint is not None else run_checkpoint(request.run_dir)
    if request.save_predictions is not None:
        check_output_file(request.save_predictions, is_own=_is_predictions_file, what="predictions file (.npz)",
                          option="--save-predictions", inputs=[ckpt_path])
    model, cfg, ckpt = load_checkpoint(ckpt_path, device=device, store_path=request.store_path,
                                       trust=request.trust_checkpoint, splits=(split,))
    view = evaluation_view(cfg, split, request.mode, sgdet_boxes=request.sgdet_boxes,
                           object_scores=request.object_scores)
    mode = view.mode
    ds = view.dataset(request.max_videos)
    if not len(ds):
        raise InputError(f"{cfg.store}: no videos in split {split!r}")
    results, names, (gts, preds), speed = score_model(model, ds, device=device, constraints=protocol.constraints,
                                                       videos_per_batch=1, progress=True, **protocol.scoring())
    results = {Constraint(c): r for c, r in results.items()}
    n_params = count_parameters(model)
    echo(format_table(results, mean_recall=protocol.mean_recall))
    speed["threads"] = torch.get_num_threads()
    echo(f"{cfg.head}{' + RS-Net' if cfg.rsnet is not None else ''}: {n_params / 1e6:.2f} M parameters, "
         f"{speed['fps']:.1f} frames/s from the store ({speed['frames']} frames, {device}, {speed['threads']} threads)")
    if speed["pairs_substituted"]:
        echo(f"note: {speed['pairs_substituted']} of {speed['pairs']} scored pairs took another pair's union "
             f"feature (the store holds no feature for their own: docs/stage2.md)")
    out = Path(request.out_dir) if request.out_dir is not None else ckpt_path.parent / f"eval_{split}_{mode.value}"
    extra = {"checkpoint": str(ckpt_path), **view.describe(), "parameters": n_params,
             "inference": speed, "config": cfg.to_dict(), "provenance": ckpt.get("provenance", {})}
    paths = write_report(results, out, vocabulary=ds.vocabulary, mean_recall=protocol.mean_recall, extra=extra)
    # a few frames with predictions and GT relations, spread over the split
    with_rel = [i for i, g in enumerate(gts) if len(g.gt_relations) and len(preds[i].pred_pairs)]
    pick = [with_rel[int(j * len(with_rel) / num_frames_png)] for j in range(min(num_frames_png, len(with_rel)))]
    sizes = _frame_sizes(ds, names)
    root = ds.meta.source.get("root")
    paths["frames.png"] = plot_frames([names[i] for i in pick], [preds[i] for i in pick], [sizes[i] for i in pick],
                                      ds.vocabulary, mode, out / "frames.png",
                                      image_root=Path(root) / "frames" if root else None)
    if request.save_predictions is not None:
        gt_set, pred_set = as_sets(names, gts, preds, ds.vocabulary)
        paths["predictions"] = write_predictions(
            request.save_predictions, pred_set, mode=mode, ground_truth=gt_set, vocabulary=ds.vocabulary,
            metadata={"checkpoint": str(ckpt_path), "config": cfg.to_dict(), "split": split})
    echo(f"wrote {', '.join(p.name for p in paths.values())} to {out}")
    return {"results": results, "parameters": n_params, "speed": speed, "paths": paths}


def _is_predictions_file(path: Path) -> bool:
    """Whether ``path`` is a predictions file (what ``--save-predictions`` wrote before)."""
    try:
        read_predictions(path)
    except (UserError, ValueError, OSError):
        return False
    return True


def _frame_sizes(ds: VideoDataset, names: Sequence[str]) -> list[tuple[int, int]]:
    sizes = []
    for v in ds.videos:
        rec = ds.store.read_video(v, fields=("gt_small",))
        sizes.extend((int(w), int(h)) for w, h in rec.frame_sizes[ds.frames_of(rec)])
    return sizes


__all__ = ["EvaluationView", "eval_view_options", "evaluate_checkpoint", "evaluation_view"]
