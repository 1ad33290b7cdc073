"""Round trips: what is written is read back equal, on both backends."""

from __future__ import annotations

import multiprocessing as mp
import pickle

import numpy as np
import pytest

from store import StoreError, StoreMeta, StoreWriter, UnionMode, check_store, merge, open_store
from store.testing import synthetic_meta, synthetic_video, synthetic_videos
from tests.helpers.store import BACKEND_SUFFIXES, assert_store_holds, small_meta, small_videos, write_store


@pytest.mark.parametrize("suffix", BACKEND_SUFFIXES)
@pytest.mark.parametrize("segment_bytes", [0, 1 << 30])
def test_round_trip_equal(tmp_path, suffix, segment_bytes):
    meta = small_meta()
    videos = small_videos(meta, 5)
    # The fixture really holds the edge cases this test is about.
    assert videos[1].num_rows("detections") == 0
    assert all(np.any(np.diff(v.rel_offsets) == 0) for v in videos)
    path = write_store(tmp_path / f"s{suffix}", meta, videos, segment_bytes=segment_bytes)
    assert_store_holds(path, videos)
    with open_store(path) as s:
        assert s.meta == meta
        assert len(s.segments) == (5 if segment_bytes == 0 else 1)
        assert s.videos("test") == [v.name for v in videos if v.split == "test"]
        assert s.backend == ("hdf5" if suffix == ".h5" else "zarr")
    assert check_store(path) == []


@pytest.mark.parametrize("suffix", BACKEND_SUFFIXES)
def test_union_map_mode_and_compression(tmp_path, suffix):
    meta = synthetic_meta(feature_dim=8, union_shape=(4, 7, 7))
    assert meta.union_mode is UnionMode.MAP
    videos = synthetic_videos(meta, 3, seed=3)
    path = write_store(tmp_path / f"s{suffix}", meta, videos, compression={"pairs": "zstd", "gt_objects": "zstd"})
    assert_store_holds(path, videos)
    with open_store(path) as s:
        assert s.read_video(videos[0].name).pair_union.shape[1:] == (4, 7, 7)
    assert check_store(path) == []


def test_meta_json_round_trip():
    meta = small_meta()
    assert StoreMeta.from_dict(meta.to_dict()) == meta
    with pytest.raises(ValueError, match="union_shape"):
        synthetic_meta(union_shape=(4, 7))


def test_partial_fields_and_preload(tmp_path):
    meta = small_meta()
    videos = small_videos(meta, 3)
    path = write_store(tmp_path / "s.h5", meta, videos)
    s = open_store(path)
    rec = s.read_video(videos[2].name, fields={"gt_labels", "gt_small"})
    assert rec.gt_features is None and rec.pair_union is None and rec.pair_subject is None
    np.testing.assert_array_equal(rec.gt_labels, videos[2].gt_labels)
    np.testing.assert_array_equal(rec.gt_small, videos[2].gt_small)
    np.testing.assert_array_equal(rec.pair_offsets, videos[2].pair_offsets)
    whole = s.read_video(videos[0].name)
    assert whole.gt_features.dtype == np.float16
    np.testing.assert_array_equal(whole.pair_union, videos[0].pair_union)
    loaded = s.preload("train")
    assert sorted(loaded) == sorted(v.name for v in videos if v.split == "train")
    assert s.read_video(videos[0].name) is loaded[videos[0].name]
    frame = videos[0].frame_rows("pairs", 2)
    np.testing.assert_array_equal(s.read_video(videos[0].name).pair_subject[frame], videos[0].pair_subject[frame])
    with pytest.raises(KeyError, match="nope"):
        s.read_video("nope")


def _read_in_worker(args):
    store, name = args
    return store.read_video(name).pair_union.sum(dtype=np.float64)


def test_store_survives_fork_and_pickle(tmp_path):
    meta = small_meta()
    videos = small_videos(meta, 3)
    s = open_store(write_store(tmp_path / "s.h5", meta, videos))
    s.read_video(videos[0].name)  # the parent holds open handles now
    clone = pickle.loads(pickle.dumps(s))
    assert clone.read_video(videos[1].name).equals(videos[1])
    with mp.get_context("fork").Pool(2) as pool:
        sums = pool.map(_read_in_worker, [(s, v.name) for v in videos])
    assert sums == [v.pair_union.sum(dtype=np.float64) for v in videos]


def test_zero_videos_edge_and_single_frame(tmp_path):
    meta = small_meta()
    one = synthetic_video(meta, "x.mp4", num_frames=1, no_detections=True, empty_relation_frames=(0,))
    assert one.num_rows("gt_relations") == 0 and one.num_rows("detections") == 0
    path = write_store(tmp_path / "s.zarr", meta, [one])
    assert_store_holds(path, [one])


@pytest.mark.parametrize("suffix", BACKEND_SUFFIXES)
def test_parallel_parts_read_as_one_and_merge(tmp_path, suffix):
    meta = small_meta()
    videos = small_videos(meta, 6)
    path = tmp_path / f"s{suffix}"
    # Two writers open at the same time, each committing its own segments.
    w0 = StoreWriter(path, meta, part="rank0", segment_bytes=0)
    w1 = StoreWriter(path, meta, part="rank1", segment_bytes=0)
    for i, v in enumerate(videos):
        (w0 if i % 2 == 0 else w1).write_video(v)
    w0.close()
    w1.close()
    assert_store_holds(path, videos)
    assert w0.committed_videos(refresh=True) == {v.name for v in videos}
    for dst_suffix in BACKEND_SUFFIXES:
        dst = merge(path, tmp_path / f"merged{dst_suffix}", progress=False)
        assert_store_holds(dst, videos)
        with open_store(dst) as m:
            assert len(m.segments) == 1
            assert m.videos() == sorted(v.name for v in videos)
        assert check_store(dst) == []
    with pytest.raises(StoreError, match="exists; merge writes a new store"):
        merge(path, tmp_path / "merged.h5", progress=False)


def test_merged_store_is_read_only_for_writers(tmp_path):
    meta = small_meta()
    path = write_store(tmp_path / "s.h5", meta, small_videos(meta, 2))
    merged = merge(path, tmp_path / "m.h5", progress=False)
    with pytest.raises(StoreError, match="not a store folder"):
        StoreWriter(merged, meta)


def test_writer_rejects_bad_records_and_duplicates(tmp_path):
    meta = small_meta()
    videos = small_videos(meta, 2)
    other = synthetic_meta(feature_dim=4, union_shape=(8,))
    w = StoreWriter(tmp_path / "s.h5", meta)
    with pytest.raises(ValueError, match="gt_features must be float16"):
        w.write_video(synthetic_video(other, "bad.mp4"))
    w.write_video(videos[0])
    with pytest.raises(StoreError, match="already in the store"):
        w.write_video(videos[0])
    w.close()
    with pytest.raises(StoreError, match="already in the store"):
        StoreWriter(tmp_path / "s.h5", meta).write_video(videos[0])
