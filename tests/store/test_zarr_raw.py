"""zarr segments read straight from their shards (``store.backends.RawShards``): the same arrays
as zarr's own reading, bit for bit, across chunk and shard edges, absent (all-zero) chunks and
empty slices; compressed arrays keep zarr's path; a damaged shard index is a StoreError."""

from __future__ import annotations

import numpy as np
import pytest

from store import StoreError, StoreWriter, open_store
from store import backends
from store.backends import ZarrSegmentReader, ZarrSegmentWriter
from store.schema import ROW_ARRAYS
from store.testing import synthetic_meta, synthetic_videos


@pytest.fixture
def small_shards(monkeypatch):
    """Chunks of 3 rows and shards of ~1 kB: a video spans chunk and shard edges."""
    monkeypatch.setattr(backends, "_chunk_rows", lambda row_bytes, target=0: 3)
    monkeypatch.setitem(ZarrSegmentWriter.__init__.__kwdefaults__, "shard_bytes", 1000)


def _write(path, compress=()):
    meta = synthetic_meta(feature_dim=16, union_shape=(8,))
    videos = synthetic_videos(meta, 12, seed=3)
    with StoreWriter(path, meta, compression={t: "zstd" for t in compress}) as w:
        for v in videos:
            w.write_video(v)
    return videos


def test_raw_reads_equal_zarrs_own(small_shards, tmp_path):
    videos = _write(tmp_path / "s.zarr")
    seg = ZarrSegmentReader(next((tmp_path / "s.zarr").glob("*.zarr")))
    shards = {k: len(list((seg.path / k / "c").rglob("*"))) for k in ("detections/features", "pairs/union")}
    assert all(n > 2 for n in shards.values()), shards  # several shards: the edges are crossed
    rng = np.random.default_rng(0)
    for s in ROW_ARRAYS:
        raw = seg.raw(s.key)
        assert raw is not None, s.key
        rows = seg.dtype_shape(s.key)[1][0]
        cuts = [(0, rows), (0, 0), (rows, rows)] + [tuple(sorted(rng.integers(0, rows + 1, 2))) for _ in range(20)]
        for lo, hi in cuts:
            want = seg._read_many_zarr([(s.key, lo, hi)])[0]
            got = raw.read(lo, hi)
            assert got.dtype == want.dtype and got.shape == want.shape and np.array_equal(got, want), (s.key, lo, hi)
    st = open_store(tmp_path / "s.zarr")
    for v in videos:
        r = st.read_video(v.name)  # verifies every array against its checksum too
        assert np.array_equal(r.pair_union, v.pair_union) and np.array_equal(r.rel_subject, v.rel_subject)


def test_absent_chunks_read_as_zeros(small_shards, tmp_path):
    """zarr writes no chunk that holds only the fill value (rel_subject: the person, 0)."""
    _write(tmp_path / "s.zarr")
    seg = ZarrSegmentReader(next((tmp_path / "s.zarr").glob("*.zarr")))
    raw = seg.raw("gt_relations/subject")
    index = raw._shard(0)[1]
    assert index is None or any(offset == raw.EMPTY for offset, _ in index)
    rows = seg.dtype_shape("gt_relations/subject")[1][0]
    assert np.array_equal(raw.read(0, rows), np.zeros(rows, np.int32))


def test_compressed_arrays_keep_zarrs_path(tmp_path):
    videos = _write(tmp_path / "z.zarr", compress=("pairs",))
    seg = ZarrSegmentReader(next((tmp_path / "z.zarr").glob("*.zarr")))
    assert seg.raw("pairs/union") is None and seg.raw("detections/features") is not None
    st = open_store(tmp_path / "z.zarr")
    assert all(np.array_equal(st.read_video(v.name).pair_union, v.pair_union) for v in videos)


def test_a_damaged_shard_index_is_a_store_error(small_shards, tmp_path):
    videos = _write(tmp_path / "s.zarr")
    shard = next((tmp_path / "s.zarr").glob("*.zarr")) / "detections" / "features" / "c" / "0" / "0"
    data = bytearray(shard.read_bytes())
    data[-10] ^= 0xFF  # inside the index
    shard.write_bytes(bytes(data))
    st = open_store(tmp_path / "s.zarr")
    with pytest.raises(StoreError, match="detections/features.*corrupted or truncated shard.*checksum"):
        st.read_video(videos[0].name)
