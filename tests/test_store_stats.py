"""store.stats on a hand-built store, and the store commands of the CLI."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

import cli
from store import PAIR_SOURCE_DET, PAIR_SOURCE_GT, VideoRecord, stats
from store.vocabulary import ACTION_GENOME
from store_fixtures import small_meta, small_videos, write_store


def _hand_video(meta) -> VideoRecord:
    """Two frames. Frame 0: person + cup, one relation (looking_at, holding), two detections
    (person 0.9 matched to GT 0, cup 0.5 unmatched), pairs: GT (0,1) labelled and det (0,1).
    Frame 1: person only, no relation, no detection, no pair."""
    d, u, c, p = meta.feature_dim, meta.union_shape, meta.num_classes, meta.vocabulary.num_predicates
    person, cup = ACTION_GENOME.person_index, ACTION_GENOME.object_index("cup")
    labels = np.zeros((1, p), np.uint8)
    labels[0, [ACTION_GENOME.predicate_index("looking_at"), ACTION_GENOME.predicate_index("holding")]] = 1
    return VideoRecord(
        name="hand.mp4", split="val", frame_names=("hand.mp4/000001.png", "hand.mp4/000002.png"),
        frame_sizes=np.array([[640, 480], [640, 480]], np.int32),
        gt_offsets=np.array([0, 2, 3], np.int64),
        gt_boxes=np.zeros((3, 4), np.float32), gt_labels=np.array([person, cup, person], np.int32),
        gt_features=np.full((3, d), 0.5, np.float16), gt_dists=np.zeros((3, c), np.float16),
        rel_offsets=np.array([0, 1, 1], np.int64), rel_subject=np.array([0], np.int32),
        rel_object=np.array([1], np.int32), rel_labels=labels,
        det_offsets=np.array([0, 2, 2], np.int64), det_boxes=np.zeros((2, 4), np.float32),
        det_scores=np.array([0.9, 0.5], np.float32), det_labels=np.array([person, cup], np.int32),
        det_dists=np.zeros((2, c), np.float16), det_features=np.zeros((2, d), np.float16),
        det_matched_gt=np.array([0, -1], np.int32),
        pair_offsets=np.array([0, 2, 2], np.int64),
        pair_source=np.array([PAIR_SOURCE_GT, PAIR_SOURCE_DET], np.uint8),
        pair_subject=np.array([0, 0], np.int32), pair_object=np.array([1, 1], np.int32),
        pair_relation=np.array([0, -1], np.int32), pair_union=np.zeros((2,) + u, np.float16),
    )


@pytest.mark.parametrize("suffix", [".h5", ".zarr"])
def test_stats_counts_by_hand(tmp_path, suffix):
    meta = small_meta()
    path = write_store(tmp_path / f"s{suffix}", meta, [_hand_video(meta)])
    t = stats(path)
    v = t["videos"].set_index("video").loc["hand.mp4"]
    assert (v.split, v.frames, v.gt_objects, v.gt_relations, v.detections, v.pairs, v.labelled_pairs) == (
        "val", 2, 3, 1, 2, 2, 1)
    f = t["frames"]
    assert f["gt_objects"].tolist() == [2, 1]
    assert f["pairs_gt"].tolist() == [1, 0] and f["pairs_det"].tolist() == [1, 0]
    assert f["labelled_pairs"].tolist() == [1, 0]
    assert f["width"].tolist() == [640, 640]
    cls = t["classes"]
    assert cls.loc["person", ["gt", "detected", "matched"]].tolist() == [2, 1, 1]
    assert cls.loc["cup", ["gt", "detected", "matched"]].tolist() == [1, 1, 0]
    assert cls.loc["cup", "score_q50"] == pytest.approx(0.5)
    assert np.isnan(cls.loc["bed", "score_q50"])
    pred = t["predicates"]["relations"]
    assert pred["looking_at"] == 1 and pred["holding"] == 1 and pred.sum() == 2
    arrays = t["arrays"]
    assert arrays.loc["pairs/union", "rows"] == 2
    assert arrays.loc["pairs/union", "bytes"] == 2 * 8 * 2
    assert arrays.loc["gt_objects/features", "bytes_on_disk"] >= 3 * 16 * 2


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
