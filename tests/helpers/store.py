"""Helpers for the store tests: build stores from synthetic records, compare them."""

from __future__ import annotations

from pathlib import Path

from store import StoreMeta, StoreWriter, VideoRecord, open_store
from store.testing import synthetic_meta, synthetic_videos

BACKEND_SUFFIXES = (".h5", ".zarr")


def small_meta(**kwargs: object) -> StoreMeta:
    return synthetic_meta(feature_dim=16, union_shape=(8,), **kwargs)


def small_videos(meta: StoreMeta, n: int = 5, seed: int = 0) -> list[VideoRecord]:
    return synthetic_videos(meta, n, seed=seed)


def write_store(path: Path, meta: StoreMeta, videos: list[VideoRecord], **kwargs: object) -> Path:
    with StoreWriter(path, meta, **kwargs) as w:  # type: ignore[arg-type]
        for v in videos:
            w.write_video(v)
    return path


def assert_store_holds(path: Path, videos: list[VideoRecord]) -> None:
    """The store at ``path`` holds exactly ``videos``, every field equal."""
    with open_store(path) as s:
        assert sorted(s.videos()) == sorted(v.name for v in videos)
        for v in videos:
            got = s.read_video(v.name)
            assert got.differences(v) == [], v.name
