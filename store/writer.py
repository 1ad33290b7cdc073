"""Writing a store: whole videos, committed atomically, resumable, one writer per part.

:class:`StoreWriter` buffers whole videos in memory and writes them as one *segment* once
``segment_bytes`` are buffered (or on :meth:`StoreWriter.flush` / :meth:`StoreWriter.close`).
A segment is written under a temporary name, fsynced, then renamed: a video is *committed*
when the rename of its segment returns. A crash (even SIGKILL) loses only the videos not yet
committed; the next writer on the same folder lists the committed ones
(:meth:`StoreWriter.committed_videos`) and continues. No locks: each writer owns its ``part``
(e.g. the torchrun rank) and only ever creates files named ``PART-SEQ.h5`` / ``.zarr``.
"""

from __future__ import annotations

import logging
import os
import re
import time
from pathlib import Path
from types import TracebackType

from store.backends import BACKENDS, SUFFIX, WRITERS, backend_of_suffix
from store.reader import Layout, SegmentIndex, find_layout, index_segments, scan_segment, write_manifest
from store.records import StoreError, StoreMeta, UnionMode, VideoRecord
from store.schema import ROW_TABLES

log = logging.getLogger(__name__)

_PART = re.compile(r"^[A-Za-z0-9_.]+$")


def segment_totals(records: list[VideoRecord]) -> dict[str, int]:
    totals = {t: sum(r.num_rows(t) for r in records) for t in ROW_TABLES}
    totals["frames"] = sum(r.num_frames for r in records)
    totals["videos"] = len(records)
    return totals


class StoreWriter:
    """Append videos to the store folder ``path`` as segments of part ``part``.

    Args:
        path: the store folder (created if missing). Its suffix picks the backend
            (``.h5`` HDF5, ``.zarr`` zarr v3) unless ``backend`` is given.
        meta: the extraction's meta; it must agree with segments already in the folder.
        part: this writer's name, unique among concurrent writers (e.g. ``f"rank{rank}"``).
        segment_bytes: buffered array bytes that trigger writing a segment. 0 commits every
            video on its own.
        compression: per table, ``"none"`` (default) or ``"zstd"``, e.g. ``{"pairs": "zstd"}``.
    """

    def __init__(self, path: str | Path, meta: StoreMeta, *, part: str = "0", backend: str | None = None,
                 segment_bytes: int = 256 << 20, compression: dict[str, str] | None = None) -> None:
        self.path = Path(path)
        self.backend = backend or backend_of_suffix(self.path)
        if self.backend not in BACKENDS:
            raise ValueError(f"cannot tell the backend of {self.path}: name it *.h5 or *.zarr or pass backend=")
        if not _PART.match(part):
            raise ValueError(f"part {part!r} must be letters, digits, '_' or '.'")
        if self.path.exists() and not self.path.is_dir():
            raise StoreError(self.path, "exists and is not a store folder (a merged store is read-only)")
        if self.path.is_dir() and (self.path / "zarr.json").exists():
            raise StoreError(self.path, "is a single-segment (merged) store, which is read-only")
        self.path.mkdir(parents=True, exist_ok=True)
        self.meta = meta
        self.part = part
        self.segment_bytes = segment_bytes
        self.compression = dict(compression or {})
        if meta.union_mode is UnionMode.MAP:
            log.warning("union features are %s maps: %.0f KB per pair in f16 (a pooled vector is %.0f KB)",
                        "x".join(map(str, meta.union_shape)), meta.union_bytes_per_pair() / 1e3,
                        2 * meta.union_shape[0] / 1e3)
        self._remove_own_leftovers()
        self._segments, existing_meta = self._index()
        if existing_meta is not None:
            why = existing_meta.incompatibility(meta)
            if why:
                raise StoreError(self.path, f"cannot append: {why}")
        self._committed = {v for s in self._segments for v in s.videos}
        self._seq = 1 + max((self._seq_of(s.file) for s in self._segments), default=0)
        self._buffer: list[VideoRecord] = []
        self._buffer_bytes = 0
        self.closed = False

    def _seq_of(self, name: str) -> int:
        stem = name[: -len(SUFFIX[self.backend])]
        part, _, seq = stem.rpartition("-")
        return int(seq) if part == self.part and seq.isdigit() else 0

    def _layout(self) -> Layout:
        return find_layout(self.path, self.backend)

    def _index(self) -> tuple[list[SegmentIndex], StoreMeta | None]:
        segments, meta, _ = index_segments(self._layout())
        return segments, meta

    def _remove_own_leftovers(self) -> None:
        import shutil

        for p in self._layout().leftovers:
            if p.name.startswith((f"{self.part}-", f"manifest.json.{self.part}.")):
                log.info("removing unfinished segment %s", p)
                shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)

    def committed_videos(self, refresh: bool = False) -> set[str]:
        """Names of the videos committed in the store (every part's). ``refresh`` rescans the
        folder to see what other writers committed since."""
        if refresh:
            self._segments, _ = self._index()
            self._committed = {v for s in self._segments for v in s.videos}
        return set(self._committed)

    def write_video(self, record: VideoRecord) -> None:
        """Validate and buffer one whole video; write a segment when the buffer is full."""
        if self.closed:
            raise ValueError("writer is closed")
        if record.name in self._committed or any(r.name == record.name for r in self._buffer):
            raise StoreError(self.path, f"video {record.name!r} is already in the store")
        record.validate(self.meta)
        self._buffer.append(record)
        self._buffer_bytes += record.nbytes()
        if self._buffer_bytes >= self.segment_bytes:
            self.flush()

    def flush(self) -> None:
        """Commit every buffered video as one segment (no-op if none)."""
        if not self._buffer:
            return
        name = f"{self.part}-{self._seq:06d}{SUFFIX[self.backend]}"
        final = self.path / name
        t0 = time.perf_counter()
        w = WRITERS[self.backend](final, self.meta, segment_totals(self._buffer), compression=self.compression,
                                  attrs={"part": self.part, "seq": self._seq, "pid": os.getpid()})
        try:
            for r in self._buffer:
                w.append(r)
            w.commit()
        except BaseException:
            w.abort()
            raise
        index, _ = scan_segment(final, self.backend)
        self._segments.append(index)
        self._committed.update(index.videos)
        log.info("committed %s: %d videos, %.1f MB in %.2f s", name, len(self._buffer),
                 self._buffer_bytes / 1e6, time.perf_counter() - t0)
        self._seq += 1
        self._buffer, self._buffer_bytes = [], 0
        self._write_manifest()

    def _write_manifest(self) -> None:
        # Other parts may have committed meanwhile: list the folder, reuse what is indexed.
        try:
            segments, meta, _ = index_segments(self._layout())
            write_manifest(self.path, meta or self.meta, segments, tag=self.part)
        except StoreError as e:  # the manifest is only a cache; readers rescan
            log.warning("manifest not updated: %s", e)

    def close(self) -> None:
        """Commit what is buffered and write the manifest."""
        if not self.closed:
            self.flush()
            self.closed = True

    def __enter__(self) -> "StoreWriter":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        # Buffered records are whole videos: commit them even when the caller failed.
        if exc_type is None:
            self.close()
        elif issubclass(exc_type, Exception):
            try:
                self.close()
            except Exception:  # noqa: BLE001 - the caller's exception is the one to see
                log.exception("could not commit the buffered videos of %s", self.path)
