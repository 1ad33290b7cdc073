"""Predictions file round trip, alignment by frame name, report files and the ``eval`` command."""

from __future__ import annotations

import csv
import json
from dataclasses import replace

import numpy as np
import pytest
from click.testing import CliRunner

from cli import main
from rules.modes import Mode
from stage2_relations.evaluation import (
    FrameGroundTruth,
    FramePredictions,
    GroundTruthSet,
    MeanRecall,
    PredictionSet,
    evaluate,
    evaluate_all,
    read_predictions,
    write_predictions,
)
from stage2_relations.evaluation.report import format_table, write_report
from stage2_relations.evaluation.synthetic import random_frames
from store.vocabulary import ACTION_GENOME as VOC

PERSON, CUP, TABLE = VOC.person_index, VOC.object_index("cup"), VOC.object_index("table")
BOXES = np.array([[0, 0, 99, 199], [10, 10, 29, 29], [50, 100, 149, 159]], float)


@pytest.fixture(scope="module")
def sets():
    gts, preds = random_frames(np.random.default_rng(7), 40, zero_probability=0.05, empty_probability=0.05)
    names = [f"VID{i // 10:02d}.mp4/{i:06d}.png" for i in range(40)]
    return GroundTruthSet.from_frames(gts, names), PredictionSet.from_frames(preds, names)


def hand_frame():
    """The 3-GT frame of evaluation/test_metrics.py: WITH recalls 2 of 3, SEMI 3 of 3."""
    gt = FrameGroundTruth(BOXES, [PERSON, CUP, TABLE], [[0, 1, 0], [0, 1, 14], [0, 2, 5]])
    con = np.full((2, 17), 0.01)
    con[0, 5], con[1, 8] = 0.92, 0.85
    p = FramePredictions(BOXES, [PERSON, CUP, TABLE], np.ones(3), [[0, 1], [0, 2]], [[0.7, 0.2, 0.1], [0.1, 0.8, 0.1]],
                         [[0.05, 0.1, 0.3, 0.2, 0.1, 0.6], [0.1, 0.2, 0.95, 0.97, 0.3, 0.1]], con)
    return GroundTruthSet.from_frames([gt], ["A.mp4/000001.png"]), PredictionSet.from_frames([p], ["A.mp4/000001.png"])


def test_round_trip_float64_is_exact(tmp_path, sets):
    gt, pred = sets
    path = write_predictions(tmp_path / "p.npz", pred, mode=Mode.SGDET, ground_truth=gt, metadata={"model": "x"},
                             float_dtype="float64")
    f = read_predictions(path)
    assert f.mode == Mode.SGDET and f.vocabulary == VOC and f.metadata == {"model": "x"}
    for name in ("box_offsets", "pred_boxes", "pred_labels", "pred_scores", "pair_offsets", "pred_pairs",
                 "pred_attention", "pred_spatial", "pred_contacting"):
        np.testing.assert_array_equal(getattr(f.predictions, name), getattr(pred, name))
    for name in ("box_offsets", "gt_boxes", "gt_labels", "relation_offsets", "gt_relations"):
        np.testing.assert_array_equal(getattr(f.ground_truth, name), getattr(gt, name))
    assert f.predictions.frame_names == pred.frame_names and f.predictions.pred_pair_scores is None
    a = evaluate(gt, pred, constraint="no", mode="sgdet")
    b = evaluate(f.ground_truth, f.predictions, constraint="no", mode="sgdet")
    assert a.recall == b.recall and a.precision == b.precision


def test_default_float32_and_pair_scores(tmp_path):
    gt, pred = hand_frame()
    pred = replace(pred, pred_pair_scores=np.array([0.3, 0.6]))
    f = read_predictions(write_predictions(tmp_path / "p.npz", pred, mode="predcls"))
    assert f.ground_truth is None
    np.testing.assert_array_equal(f.predictions.pred_attention, pred.pred_attention.astype(np.float32))
    np.testing.assert_array_equal(f.predictions.pred_pair_scores, np.float32([0.3, 0.6]))


def test_reader_rejects_unknown_version_and_foreign_files(tmp_path):
    np.savez(tmp_path / "foreign.npz", x=np.zeros(3))
    with pytest.raises(ValueError, match="not a dsgg-predictions file"):
        read_predictions(tmp_path / "foreign.npz")
    header = json.dumps({"format": "dsgg-predictions", "format_version": 99, "mode": "sgdet", "vocabulary": VOC.to_dict()})
    np.savez(tmp_path / "future.npz", header=np.array(header))
    with pytest.raises(ValueError, match="format version 99 is not known"):
        read_predictions(tmp_path / "future.npz")


def test_alignment_by_name_missing_frame_counts_zero(sets):
    gt, pred = sets
    full = evaluate(gt, pred, constraint="with", mode="sgdet")
    drop = int(np.flatnonzero(full.frame_recall[:, -1] > 0)[0])  # a frame with some recall
    keep = [i for i in range(40) if i != drop][::-1]  # drop it, reverse the rest
    partial = PredictionSet.from_frames([pred.frame(i) for i in keep], [pred.frame_names[i] for i in keep])
    aligned = partial.aligned_to(gt.frame_names)
    assert aligned.frame_names == gt.frame_names and aligned.pair_offsets[drop + 1] == aligned.pair_offsets[drop]
    got = evaluate(gt, aligned, constraint="with", mode="sgdet")
    others = np.arange(40) != drop
    np.testing.assert_array_equal(got.frame_recall[others], full.frame_recall[others])
    np.testing.assert_array_equal(got.frame_recall[drop], 0.0)


def test_table_and_report_files(tmp_path):
    gt, pred = hand_frame()
    results = evaluate_all(gt, pred, mode="predcls")
    table = format_table(results)
    lines = table.splitlines()
    assert lines[1].split() == ["constraint", "R@10", "R@20", "R@50", "P@10", "P@20", "mR@10", "mR@20"]
    # with: R 2/3, P@10 2/10, P@20 2/20, mR 2/26; semi: R 1, P 3/10 3/20, mR 3/26.
    assert lines[2].split() == ["with", "66.7", "66.7", "66.7", "20.0", "10.0", "7.7", "7.7"]
    assert lines[3].split() == ["semi", "100.0", "100.0", "100.0", "30.0", "15.0", "11.5", "11.5"]
    paths = write_report(results, tmp_path / "out")
    for p in paths.values():
        assert p.exists() and p.stat().st_size > 0
    assert paths["predicate_recall.png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = list(csv.DictReader(open(paths["metrics.csv"])))
    assert [r["constraint"] for r in rows] == ["with", "semi", "no"]
    assert float(rows[0]["R@20"]) == pytest.approx(2 / 3)
    pred_rows = list(csv.DictReader(open(paths["predicate_recall.csv"])))
    holding = [r for r in pred_rows if r["constraint"] == "with" and r["definition"] == "dataset" and r["K"] == "10"
               and r["predicate"] == "holding"]
    assert holding[0]["recall"] == "1.0" and holding[0]["gt_count"] == "1" and holding[0]["group"] == "contacting"
    data = json.loads(paths["metrics.json"].read_text())
    assert data["main_mean_recall"] == "dataset"
    assert data["results"]["semi"]["mean_recall"]["frames_with_predicate"]["10"] == pytest.approx(3 / 26)


def test_eval_command_end_to_end(tmp_path, sets):
    gt, pred = sets
    both = write_predictions(tmp_path / "both.npz", pred, mode="sgdet", ground_truth=gt, float_dtype="float64")
    runner = CliRunner()
    res = runner.invoke(main, ["eval", "--predictions", str(both), "--out", str(tmp_path / "ev")])
    assert res.exit_code == 0, res.output
    assert "with" in res.output and "mR@20" in res.output
    data = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    ref = evaluate(gt, pred, constraint="semi", mode="sgdet")
    assert data["results"]["semi"]["recall"]["20"] == pytest.approx(ref.recall[20])
    # Ground truth from a second file, predictions without it, options passed through.
    only_pred = write_predictions(tmp_path / "pred.npz", pred, mode="sgdet", float_dtype="float64")
    res = runner.invoke(main, ["eval", "--predictions", str(only_pred), "--ground-truth", str(both), "--constraint", "no",
                               "--padded-cells", "ignore", "--mean-recall", "frames_with_predicate", "--out",
                               str(tmp_path / "ev2")])
    assert res.exit_code == 0, res.output
    data = json.loads((tmp_path / "ev2" / "metrics.json").read_text())
    ref = evaluate(gt, pred, constraint="no", mode="sgdet", padded_cells="ignore")
    assert list(data["results"]) == ["no"]
    assert data["results"]["no"]["mean_recall"]["frames_with_predicate"]["10"] == pytest.approx(
        ref.mean_recall[MeanRecall.FRAMES_WITH_PREDICATE][10])
    # Without ground truth anywhere: a clear error.
    res = runner.invoke(main, ["eval", "--predictions", str(only_pred)])
    assert res.exit_code != 0 and "holds no ground truth" in res.output


def test_eval_refuses_predictions_for_other_frames(tmp_path, sets):
    gt, pred = sets
    both = write_predictions(tmp_path / "both.npz", pred, mode="sgdet", ground_truth=gt)
    renamed = PredictionSet.from_frames([pred.frame(i) for i in range(len(pred.frame_names))],
                                        [n.replace("VID", "OTHER") for n in pred.frame_names])
    other = write_predictions(tmp_path / "other.npz", renamed, mode="sgdet")
    res = CliRunner().invoke(main, ["eval", "--predictions", str(other), "--ground-truth", str(both)])
    assert res.exit_code != 0
    assert "none of its 40 frame names is a frame of the ground truth" in res.output
