"""Run a trained stage-2 model over a split of the store and score it with this package's
protocol: per-frame :class:`FramePredictions` from the model, :class:`FrameGroundTruth`
from the store, :func:`evaluate_frames` under each constraint, inference speed, and a figure
of a few frames with their top triplets.

The predictions of a frame: its boxes (GT boxes in PREDCLS / SGCLS, detections in SGDET),
labels and scores (GT labels and 1 in PREDCLS, the head's object classifier otherwise),
every scored (person, object) pair with its attention softmax, spatial and contacting
sigmoids, and RS-Net's p_{t,0} as ``pred_pair_scores`` when the model has RS-Net.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from rules.modes import Mode
from stage2_relations.data import Collator
from stage2_relations.evaluation.metrics import EvaluationResult, evaluate_frames
from stage2_relations.evaluation.structures import Constraint, FrameGroundTruth, FramePredictions, GroundTruthSet, PredictionSet
from store.vocabulary import GROUP_ORDER, PredicateGroup, Vocabulary


def batch_predictions(output, batch) -> list[FramePredictions]:
    """One :class:`FramePredictions` per frame of a :class:`RelationBatch` and its output (of
    ``output.batch`` when the head changed the batch, e.g. kept only its subject's pairs)."""
    batch = output.batch if output.batch is not None else batch
    att = output.attention_probs().detach().cpu().double().numpy()
    spa = output.spatial_probs().detach().cpu().double().numpy()
    con = output.contacting_probs().detach().cpu().double().numpy()
    ps = None if output.pair_scores is None else output.pair_scores.detach().cpu().double().numpy()
    boxes = batch.boxes.cpu().numpy()
    labels = output.object_labels.cpu().numpy()
    scores = output.object_scores.detach().cpu().numpy()
    pairs = batch.pairs.cpu().numpy()
    bo, po = batch.box_offsets.tolist(), batch.pair_offsets.tolist()
    out = []
    for f in range(batch.num_frames):
        b, p = slice(bo[f], bo[f + 1]), slice(po[f], po[f + 1])
        out.append(FramePredictions(
            pred_boxes=boxes[b], pred_labels=labels[b], pred_scores=scores[b], pred_pairs=pairs[p] - bo[f],
            pred_attention=att[p], pred_spatial=spa[p], pred_contacting=con[p],
            pred_pair_scores=None if ps is None else ps[p]))
    return out


@torch.no_grad()
def predict(model: torch.nn.Module, dataset, *, device: str | torch.device = "cpu", videos_per_batch: int = 1,
            num_workers: int = 0, progress: bool = False):
    """Predictions and GT of every frame of ``dataset`` (a test-view VideoDataset).

    Returns (frame names, [FrameGroundTruth], [FramePredictions], speed) where speed holds
    ``frames``, ``seconds`` (store read + model, from the first batch request to the last
    output), ``fps``, ``pairs`` (scored) and ``pairs_substituted`` (of those, how many took
    another pair's union feature: :mod:`stage2_relations.views`).
    """
    was_training = model.training
    model.eval()
    loader = DataLoader(dataset, batch_size=videos_per_batch, shuffle=False, num_workers=num_workers,
                        collate_fn=Collator.of(dataset))
    names: list[str] = []
    preds: list[FramePredictions] = []
    t0 = time.perf_counter()
    compute = 0.0
    pairs = substituted = 0
    for batch in tqdm(loader, desc="predict", disable=not progress, leave=False):
        t1 = time.perf_counter()
        batch = batch.to(device)
        out = model(batch)
        preds.extend(batch_predictions(out, batch))
        used = (out.batch if out.batch is not None else batch).union_substituted
        pairs += int(used.numel())
        substituted += int(used.sum())
        compute += time.perf_counter() - t1
        names.extend(batch.frame_names)
    seconds = time.perf_counter() - t0
    gts = [gt for v in dataset.videos for gt in dataset.video_ground_truth(v)]
    model.train(was_training)
    n = len(names)
    return names, gts, preds, {"frames": n, "seconds": seconds, "fps": n / max(seconds, 1e-9),
                               "model_seconds": compute, "pairs": pairs, "pairs_substituted": substituted}


def score_model(model: torch.nn.Module, dataset, *, device: str | torch.device = "cpu",
                constraints: Sequence[Constraint | str] = tuple(Constraint), videos_per_batch: int = 1,
                progress: bool = False, **kwargs):
    """Score ``model`` on ``dataset`` under each constraint.

    Returns ({constraint value: EvaluationResult}, frame names, (gts, preds), speed).
    Other keyword arguments go to :func:`evaluate_frames` (semi_threshold, padded_cells, ...).
    """
    names, gts, preds, speed = predict(model, dataset, device=device, videos_per_batch=videos_per_batch,
                                       progress=progress)
    results: dict[str, EvaluationResult] = {}
    for c in constraints:
        c = Constraint(c)
        results[c.value] = evaluate_frames(gts, preds, constraint=c, mode=dataset.mode,
                                           vocabulary=dataset.vocabulary, **kwargs)
    return results, names, (gts, preds), speed


def as_sets(names: Sequence[str], gts: Sequence[FrameGroundTruth], preds: Sequence[FramePredictions],
            vocabulary: Vocabulary) -> tuple[GroundTruthSet, PredictionSet]:
    """The flat sets (for :func:`write_predictions`) of per-frame lists."""
    return (GroundTruthSet.from_frames(list(gts), frame_names=list(names)),
            PredictionSet.from_frames(list(preds), widths=vocabulary.group_widths, frame_names=list(names)))


def top_triplets(pred: FramePredictions, vocabulary: Vocabulary, mode: Mode, k: int = 5) -> list[tuple[int, int, int, float]]:
    """The top-``k`` triplets of a frame under the *with* constraint: (subject box, object box,
    predicate id, score), spatial ones reversed (object, person), as the protocol forms them."""
    rows = []
    s = np.ones(len(pred.pred_labels)) if mode is Mode.PREDCLS else pred.pred_scores
    for g, (start, _), probs in zip(GROUP_ORDER, vocabulary.group_ranges,
                                    (pred.pred_attention, pred.pred_spatial, pred.pred_contacting)):
        for i, (a, b) in enumerate(pred.pred_pairs):
            j = int(np.argmax(probs[i]))
            sc = s[a] * s[b] * probs[i, j] * (1.0 if pred.pred_pair_scores is None else pred.pred_pair_scores[i])
            subj, obj = (b, a) if g is PredicateGroup.SPATIAL else (a, b)
            rows.append((int(subj), int(obj), start + j, float(sc)))
    rows.sort(key=lambda r: -r[3])
    return rows[:k]


def plot_frames(names: Sequence[str], preds: Sequence[FramePredictions], frame_sizes: Sequence[tuple[int, int]],
                vocabulary: Vocabulary, mode: Mode, path: str | Path, *, image_root: str | Path | None = None,
                k: int = 5) -> Path:
    """A PNG of a few frames, each with the boxes of its top-``k`` triplets and their text.

    The frame image is drawn underneath when ``image_root / frame_name`` exists (the AG
    ``frames/`` dump); otherwise the boxes are drawn on a blank canvas of the frame's size.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(names)
    fig, axes = plt.subplots(1, max(n, 1), figsize=(5 * max(n, 1), 4.8), squeeze=False)
    for ax, name, pred, (w, h) in zip(axes[0], names, preds, frame_sizes):
        img_path = Path(image_root) / name if image_root else None
        if img_path is not None and img_path.exists():
            ax.imshow(plt.imread(str(img_path)), extent=(0, w, h, 0))
        ax.set_xlim(0, w)
        ax.set_ylim(h, 0)
        ax.set_title(name, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
        lines = []
        drawn = set()
        for subj, obj, p, sc in top_triplets(pred, vocabulary, mode, k):
            for bi in (subj, obj):
                if bi in drawn:
                    continue
                drawn.add(bi)
                x1, y1, x2, y2 = pred.pred_boxes[bi]
                ax.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, lw=1.5,
                                           color=plt.cm.tab10(bi % 10)))
                ax.text(x1, y1, vocabulary.objects[pred.pred_labels[bi]], fontsize=7, color="white",
                        bbox=dict(facecolor=plt.cm.tab10(bi % 10), alpha=0.7, pad=1, lw=0))
            lines.append(f"{vocabulary.objects[pred.pred_labels[subj]]} {vocabulary.predicates[p]} "
                         f"{vocabulary.objects[pred.pred_labels[obj]]}  {sc:.2f}")
        ax.set_xlabel("\n".join(lines) or "(no pairs)", fontsize=7)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
