"""`store check --quick` notices a deleted zarr shard from a listing of the array folders (issue
19), without reading data: zarr writes no file for a shard of fill values only (``rel_subject``
is always 0), so an absent file is checked against the videos' checksums (the CRC-32C of
zeros). Before, the quick check said ok and only the deep check (or training) found it.
"""

from __future__ import annotations

import pytest

from store import StoreWriter, check_store
from store.testing import synthetic_videos
from tests.helpers.stage2 import tiny_meta

pytest.importorskip("zarr")


def _zarr_store(path):
    meta = tiny_meta()
    with StoreWriter(path, meta) as w:
        for v in synthetic_videos(meta, 6):
            w.write_video(v)
    return next(p for p in path.iterdir() if p.suffix == ".zarr")


def test_a_clean_zarr_store_with_fill_only_shards_passes_the_quick_check(tmp_path):
    segment = _zarr_store(tmp_path / "s.zarr")
    subject = segment / "gt_relations" / "subject"
    assert not [p for p in subject.rglob("*") if p.is_file() and p.name != "zarr.json"], \
        "the test needs an array whose shards zarr did not write (all zeros)"
    assert check_store(tmp_path / "s.zarr", deep=False) == []


def test_quick_check_reports_a_deleted_shard(tmp_path):
    segment = _zarr_store(tmp_path / "s.zarr")
    shard = next(p for p in (segment / "gt_objects" / "features").rglob("*") if p.is_file() and p.name != "zarr.json")
    shard.unlink()
    problems = [str(p) for p in check_store(tmp_path / "s.zarr", deep=False)]
    assert problems and all("its rows of 'gt_objects/features' lie in a shard file that is missing (deleted or lost)"
                            in p for p in problems), problems
    assert problems[0].startswith(f"{segment}: video 'vid0000.mp4': ")
