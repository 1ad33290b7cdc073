"""store.stats on a hand-built store, and the store commands of the CLI."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

import cli
from store import VideoRecord, stats
from store.stats import summary
from store.vocabulary import ACTION_GENOME
from tests.helpers.store import small_meta, small_videos, write_store


def _hand_video(meta) -> VideoRecord:
    """Two frames.

    Frame 0: GT person [0,0,99,199], cup [200,200,249,249], a small dish; one relation
    (looking_at, holding) with the cup. Detections (joint 3, 4, 5): the person's box (person,
    0.9, "+1" IoU 1), a cup at [202,202,251,251] ("+1" IoU 48*48 / (5000 - 2304) = 0.855 with the
    cup: matched), a cup at [400,0,449,49] (0.25, overlaps nothing). Pairs: GT (0,1), (0,2);
    detections (3,4), (3,5), (4,4); mixed (3,1), (3,2).
    Frame 1: GT person only, no relation; one detection, its box (person, 0.8); one mixed pair (0,1).
    """
    d, u, c, p = meta.feature_dim, meta.union_shape, meta.num_classes, meta.vocabulary.num_predicates
    person, cup, dish = (ACTION_GENOME.object_index(n) for n in ("person", "cup", "dish"))
    labels = np.zeros((1, p), np.uint8)
    labels[0, [ACTION_GENOME.predicate_index("looking_at"), ACTION_GENOME.predicate_index("holding")]] = 1
    return VideoRecord(
        name="hand.mp4", split="val", frame_names=("hand.mp4/000001.png", "hand.mp4/000002.png"),
        frame_sizes=np.array([[640, 480], [640, 480]], np.int32),
        gt_offsets=np.array([0, 3, 4], np.int64),
        gt_boxes=np.array([[0, 0, 99, 199], [200, 200, 249, 249], [300, 300, 309, 309], [10, 10, 59, 109]],
                          np.float32),
        gt_labels=np.array([person, cup, dish, person], np.int32),
        gt_features=np.full((4, d), 0.5, np.float16), gt_dists=np.zeros((4, c), np.float16),
        gt_small=np.array([0, 0, 1, 0], np.uint8),
        rel_offsets=np.array([0, 1, 1], np.int64), rel_subject=np.array([0], np.int32),
        rel_object=np.array([1], np.int32), rel_labels=labels,
        det_offsets=np.array([0, 3, 4], np.int64),
        det_boxes=np.array([[0, 0, 99, 199], [202, 202, 251, 251], [400, 0, 449, 49], [10, 10, 59, 109]],
                           np.float32),
        det_scores=np.array([0.9, 0.5, 0.25, 0.8], np.float32), det_labels=np.array([person, cup, cup, person], np.int32),
        det_dists=np.zeros((4, c), np.float16), det_features=np.zeros((4, d), np.float16),
        pair_offsets=np.array([0, 7, 8], np.int64),
        pair_subject=np.array([0, 0, 3, 3, 4, 3, 3, 0], np.int32),
        pair_object=np.array([1, 2, 4, 5, 4, 1, 2, 1], np.int32),
        pair_union=np.zeros((8,) + u, np.float16),
    )


@pytest.mark.parametrize("suffix", [".h5", ".zarr"])
def test_stats_counts_by_hand(tmp_path, suffix):
    meta = small_meta()
    video = _hand_video(meta)
    video.validate(meta)
    path = write_store(tmp_path / f"s{suffix}", meta, [video])
    t = stats(path)
    v = t["videos"].set_index("video").loc["hand.mp4"]
    assert (v.split, v.frames, v.gt_objects, v.gt_relations, v.detections, v.pairs, v.small_objects) == (
        "val", 2, 4, 1, 4, 8, 1)
    f = t["frames"]
    assert f["gt_objects"].tolist() == [3, 1] and f["detections"].tolist() == [3, 1]
    assert f["pairs"].tolist() == [7, 1]
    assert f["pairs_gt"].tolist() == [2, 0] and f["pairs_det"].tolist() == [3, 0]
    assert f["small_objects"].tolist() == [1, 0]
    assert f["width"].tolist() == [640, 640]
    cls = t["classes"]
    assert cls.loc["person", ["gt", "gt_small", "detected", "matched"]].tolist() == [2, 0, 2, 2]
    assert cls.loc["cup", ["gt", "gt_small", "detected", "matched"]].tolist() == [1, 0, 2, 1]
    assert cls.loc["dish", ["gt", "gt_small", "detected", "matched"]].tolist() == [1, 1, 0, 0]
    assert cls.loc["cup", "score_q50"] == pytest.approx(0.375)
    assert np.isnan(cls.loc["bed", "score_q50"])
    pred = t["predicates"]["relations"]
    assert pred["looking_at"] == 1 and pred["holding"] == 1 and pred.sum() == 2
    arrays = t["arrays"]
    assert arrays.loc["pairs/union", "rows"] == 8
    assert arrays.loc["pairs/union", "bytes"] == 8 * 8 * 2
    assert arrays.loc["gt_objects/small", ["dtype", "rows", "bytes"]].tolist() == ["uint8", 4, 4]
    assert arrays.loc["gt_objects/features", "bytes_on_disk"] >= 4 * 16 * 2
    assert "GT objects absent from _filtersmall: 1 of 4" in summary(t)


def test_cli_check_ls_stats_merge(tmp_path):
    meta = small_meta()
    videos = small_videos(meta, 3)
    path = write_store(tmp_path / "s.h5", meta, videos, segment_bytes=0)
    runner = CliRunner()
    r = runner.invoke(cli.main, ["store", "check", str(path)])
    assert r.exit_code == 0, r.output
    assert "3 videos in 3 segment(s)" in r.output
    r = runner.invoke(cli.main, ["store", "ls", str(path), "--split", "test"])
    assert r.exit_code == 0 and r.output.split("\t")[0] == "vid0002.mp4"
    r = runner.invoke(cli.main, ["stats", str(path), "--out", str(tmp_path / "tables")])
    assert r.exit_code == 0, r.output
    assert "3 videos (test 1, train 2)" in r.output
    assert sorted(p.name for p in (tmp_path / "tables").iterdir()) == [
        "arrays.csv", "classes.csv", "frames.csv", "meta.csv", "predicates.csv", "videos.csv"]
    r = runner.invoke(cli.main, ["stats", str(path), "--out", str(tmp_path / "pq"), "--format", "parquet"])
    assert r.exit_code == 0, r.output
    frames = pd.read_parquet(tmp_path / "pq" / "frames.parquet")
    expected = stats(path)["frames"]
    pd.testing.assert_frame_equal(frames.reset_index(drop=True), expected.reset_index(drop=True), check_dtype=False)
    r = runner.invoke(cli.main, ["store", "merge", str(path), str(tmp_path / "m.zarr"), "--compress", "pairs"])
    assert r.exit_code == 0, r.output
    # A broken store: exit 1 and the problem printed.
    seg = sorted(path.glob("*.h5"))[0]
    seg.write_bytes(seg.read_bytes()[:100])
    r = runner.invoke(cli.main, ["store", "check", str(path)])
    assert r.exit_code == 1
    assert f"PROBLEM {seg}: cannot open: truncated or corrupted" in r.output
