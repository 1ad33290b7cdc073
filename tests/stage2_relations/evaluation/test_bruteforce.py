"""A plain-loop reference of STTran's protocol, written independently of the vectorised code,
agrees with it on a few hundred random frames, under every constraint and option."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from rules.modes import Mode
from stage2_relations.evaluation import (
    Constraint,
    GroundTruthSet,
    MeanRecall,
    PaddedCells,
    PrecisionDenominator,
    PredictionSet,
    evaluate,
)
from stage2_relations.evaluation.synthetic import random_frames
from store.vocabulary import ACTION_GENOME

VOC = ACTION_GENOME
KS = (10, 20, 50, 100)
ATT, SPA, CON = (0, 3), (3, 9), (9, 26)  # Action Genome's groups, written out on purpose


def iou_plus1(a, b) -> float:
    iw = min(a[2], b[2]) - max(a[0], b[0]) + 1
    ih = min(a[3], b[3]) - max(a[1], b[1]) + 1
    if iw <= 0 or ih <= 0:
        return 0.0
    ua = (a[2] - a[0] + 1) * (a[3] - a[1] + 1) + (b[2] - b[0] + 1) * (b[3] - b[1] + 1) - iw * ih
    return iw * ih / ua


def reference_frame(gt, pred, constraint, mode, padded, threshold=0.9):
    """Returns (gt triplets [(subj box, obj box, predicate)], ranked predictions
    [(subj box, obj box, predicate, score)]) of one frame, by the protocol's recipe."""
    gt_trip = []
    for person, obj, p in gt.gt_relations.tolist():
        if SPA[0] <= p < SPA[1]:
            gt_trip.append((obj, person, p))
        else:
            gt_trip.append((person, obj, p))
    # The three 26-wide rows of each pair: attention, spatial (reversed), contacting.
    rows = []  # (subj, obj, 26 scores, group)
    n = len(pred.pred_pairs)
    for block, name, g in ((ATT, "pred_attention", 0), (SPA, "pred_spatial", 1), (CON, "pred_contacting", 2)):
        for i in range(n):
            person, obj = pred.pred_pairs[i].tolist()
            w = 1.0 if pred.pred_pair_scores is None else float(pred.pred_pair_scores[i])
            vec = [0.0] * 26
            for j, v in enumerate(getattr(pred, name)[i].tolist()):
                vec[block[0] + j] = v
            rows.append((obj, person, vec, g, w) if g == 1 else (person, obj, vec, g, w))

    def obj_score(b):
        return 1.0 if mode == Mode.PREDCLS else float(pred.pred_scores[b])

    blocks = (ATT, SPA, CON)
    cands = []  # (subj, obj, predicate, predicate score, pair score)
    if constraint == Constraint.WITH:
        for s, o, vec, g, w in rows:
            lo, hi = blocks[g]
            if padded == PaddedCells.RANK:
                k = max(range(26), key=lambda c: (vec[c], -c))
            else:
                k = max(range(lo, hi), key=lambda c: (vec[c], -c))
            cands.append((s, o, k, vec[k], w))
    elif constraint == Constraint.SEMI:
        for s, o, vec, g, w in rows:
            if padded == PaddedCells.RANK:
                if vec[0] + vec[1] > 0:
                    k = max(range(26), key=lambda c: (vec[c], -c))
                    cands.append((s, o, k, vec[k], w))
                elif vec[3] + vec[4] > 0 or vec[9] + vec[10] > 0:
                    cands.extend((s, o, k, vec[k], w) for k in range(26) if vec[k] > threshold)
            else:
                lo, hi = blocks[g]
                if g == 0:
                    k = max(range(lo, hi), key=lambda c: (vec[c], -c))
                    cands.append((s, o, k, vec[k], w))
                else:
                    cands.extend((s, o, k, vec[k], w) for k in range(lo, hi) if vec[k] > threshold)
    else:
        cells = []
        for s, o, vec, g, w in rows:
            lo, hi = blocks[g]
            for k in range(26):
                if padded == PaddedCells.RANK or lo <= k < hi:
                    cells.append((s, o, k, vec[k], w))
        order = sorted(range(len(cells)), key=lambda i: -(obj_score(cells[i][0]) * obj_score(cells[i][1]) * cells[i][4] * cells[i][3]))
        cands = [cells[i] for i in order[:100]]
    scored = [(s, o, k, obj_score(s) * obj_score(o) * w * p) for s, o, k, p, w in cands]
    order = sorted(range(len(scored)), key=lambda i: -scored[i][3])  # stable: ties keep emission order
    return gt_trip, [scored[i] for i in order]


def reference(gts, preds, constraint, mode, padded, denominator):
    recall = {k: [] for k in KS}
    precision = {k: [] for k in KS}
    hit_tot = {k: [0] * 26 for k in KS}
    cnt_tot = [0] * 26
    per_frame = {k: [] for k in KS}  # per frame: [(hit, count)] * 26
    for gt, pred in zip(gts, preds):
        gt_trip, ranked = reference_frame(gt, pred, constraint, mode, padded)
        if not gt_trip:
            continue
        matched = []
        for s, o, k, _ in ranked:
            m = set()
            for gi, (gs, go, gk) in enumerate(gt_trip):
                if (k == gk and pred.pred_labels[s] == gt.gt_labels[gs] and pred.pred_labels[o] == gt.gt_labels[go]
                        and iou_plus1(pred.pred_boxes[s], gt.gt_boxes[gs]) >= 0.5
                        and iou_plus1(pred.pred_boxes[o], gt.gt_boxes[go]) >= 0.5):
                    m.add(gi)
            matched.append(m)
        for _, _, gk in gt_trip:
            cnt_tot[gk] += 1
        for K in KS:
            rec = set().union(*matched[:K]) if matched[:K] else set()
            recall[K].append(len(rec) / len(gt_trip))
            hits = sum(1 for m in matched[:K] if m)
            den = K if denominator == PrecisionDenominator.K else min(K, len(ranked))
            precision[K].append(hits / den if den else 0.0)
            h, c = [0] * 26, [0] * 26
            for gi, (_, _, gk) in enumerate(gt_trip):
                c[gk] += 1
                if gi in rec:
                    h[gk] += 1
                    hit_tot[K][gk] += 1
            per_frame[K].append((h, c))
    out = {"R": {}, "P": {}, "mR_dataset": {}, "mR_all": {}, "mR_with": {}}
    for K in KS:
        out["R"][K] = float(np.mean(recall[K]))
        out["P"][K] = float(np.mean(precision[K]))
        out["mR_dataset"][K] = sum(hit_tot[K][p] / cnt_tot[p] if cnt_tot[p] else 0.0 for p in range(26)) / 26
        all_f, with_f = 0.0, 0.0
        for p in range(26):
            vals = [h[p] / c[p] if c[p] else 0.0 for h, c in per_frame[K]]
            all_f += sum(vals) / len(vals)
            present = [h[p] / c[p] for h, c in per_frame[K] if c[p]]
            with_f += sum(present) / len(present) if present else 0.0
        out["mR_all"][K] = all_f / 26
        out["mR_with"][K] = with_f / 26
    return out


@pytest.fixture(scope="module")
def frames():
    rng = np.random.default_rng(1234)
    gts, preds = [], []
    # Mixed regimes: plain, exact zeros (padded-cell quirks), ties, empty frames, few pairs.
    for kwargs, n in (
        (dict(), 120),
        (dict(zero_probability=0.2, empty_probability=0.1), 80),
        (dict(tie_grid=0.1, mean_objects=2.0), 60),
        (dict(mean_objects=1.5, extra_detections=0.3, zero_probability=0.05), 60),
        (dict(mean_objects=2.0, person_objects=0.5, shuffle_boxes=True), 60),
    ):
        g, p = random_frames(rng, n, **kwargs)
        gts += g
        preds += p
    return gts, preds


@pytest.fixture(scope="module")
def frames_with_pair_scores(frames):
    rng = np.random.default_rng(99)
    gts, preds = frames
    return gts, [replace(p, pred_pair_scores=rng.uniform(0, 1, len(p.pred_pairs))) for p in preds]


@pytest.mark.parametrize("constraint", list(Constraint))
@pytest.mark.parametrize("padded", list(PaddedCells))
@pytest.mark.parametrize("mode", [Mode.PREDCLS, Mode.SGDET])
def test_vectorised_matches_reference(frames, constraint, padded, mode):
    gts, preds = frames
    denominator = PrecisionDenominator.K if padded == PaddedCells.RANK else PrecisionDenominator.RETURNED
    ref = reference(gts, preds, constraint, mode, padded, denominator)
    res = evaluate(
        GroundTruthSet.from_frames(gts), PredictionSet.from_frames(preds), constraint=constraint, mode=mode,
        padded_cells=padded, precision_denominator=denominator,
    )
    for K in KS:
        assert res.recall[K] == pytest.approx(ref["R"][K], abs=1e-12)
        assert res.precision[K] == pytest.approx(ref["P"][K], abs=1e-12)
        assert res.mean_recall[MeanRecall.DATASET][K] == pytest.approx(ref["mR_dataset"][K], abs=1e-12)
        assert res.mean_recall[MeanRecall.ALL_FRAMES][K] == pytest.approx(ref["mR_all"][K], abs=1e-12)
        assert res.mean_recall[MeanRecall.FRAMES_WITH_PREDICATE][K] == pytest.approx(ref["mR_with"][K], abs=1e-12)
    # The reference must not be trivially zero: the random frames do produce matches.
    assert ref["R"][100] > 0.05


@pytest.mark.parametrize("constraint", list(Constraint))
def test_pair_scores_match_reference(frames_with_pair_scores, constraint):
    gts, preds = frames_with_pair_scores
    ref = reference(gts, preds, constraint, Mode.SGCLS, PaddedCells.RANK, PrecisionDenominator.K)
    res = evaluate(GroundTruthSet.from_frames(gts), PredictionSet.from_frames(preds), constraint=constraint, mode=Mode.SGCLS)
    for K in KS:
        assert res.recall[K] == pytest.approx(ref["R"][K], abs=1e-12)
        assert res.precision[K] == pytest.approx(ref["P"][K], abs=1e-12)
        assert res.mean_recall[MeanRecall.DATASET][K] == pytest.approx(ref["mR_dataset"][K], abs=1e-12)


def test_chunked_ranking_gives_the_same_result(frames, monkeypatch):
    """Ranking works on dense (frames x cells) blocks of bounded size; tiny blocks agree."""
    from stage2_relations.evaluation import triplets

    gts, preds = frames
    gt, pred = GroundTruthSet.from_frames(gts), PredictionSet.from_frames(preds)
    before = {c: evaluate(gt, pred, constraint=c, mode=Mode.SGDET) for c in Constraint}
    monkeypatch.setattr(triplets, "_CHUNK_ELEMENTS", 300)
    for c in Constraint:
        after = evaluate(gt, pred, constraint=c, mode=Mode.SGDET)
        np.testing.assert_array_equal(after.frame_recall, before[c].frame_recall)
        np.testing.assert_array_equal(after.frame_precision, before[c].frame_precision)
