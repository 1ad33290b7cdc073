"""Writing a store: whole videos, committed atomically, resumable, one writer per part.

:class:`StoreWriter` buffers whole videos in memory and writes them as one *segment* once
``segment_bytes`` are buffered (or on :meth:`StoreWriter.flush` / :meth:`StoreWriter.close`).
A segment is written under a temporary name, fsynced, then renamed: a video is *committed*
when the rename of its segment returns. A crash (even SIGKILL) loses only the videos not yet
committed; the next writer on the same folder lists the committed ones
(:meth:`StoreWriter.committed_videos`) and continues.

One writer per part: each writer owns its ``part`` (e.g. the torchrun rank), only ever creates
files named ``PART-SEQ.h5`` / ``.zarr``, and holds the OS lock ``.PART.lock`` in the folder
(:func:`lock_part`) while it writes, so a second writer of the same part fails at once naming
the holder's pid. The lock file lists the temporary files its holder has in flight; the next
writer of the part removes exactly those (a crash's leftovers) and nothing else. A writer only
writes into a new (or empty) folder or into a store folder: any other file there is an error.
"""

from __future__ import annotations

import logging
import os
import re
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Iterable

from common.files import WriterLock, describe_os_error
from store.backends import BACKENDS, SUFFIX, WRITERS, backend_of_suffix, segment_temp_path
from store.manifest import MANIFEST, SegmentIndex, manifest_temp_name, write_manifest
from store.reader import Layout, find_layout, index_segments, scan_segment
from store.records import StoreError, StoreMeta, UnionMode, VideoRecord
from store.schema import ROW_TABLES

log = logging.getLogger(__name__)

_PART = re.compile(r"^[A-Za-z0-9_.]+$")
# What a store folder may hold: segments, their temporaries, the manifest (and its
# temporaries) and the parts' lock files.
_SEGMENT = re.compile(r"^[A-Za-z0-9_.]+-\d{6,}\.(h5|zarr)$")
_SEGMENT_TEMP = re.compile(r"^[A-Za-z0-9_.]+-\d{6,}\.(h5|zarr)\.tmp-\d+$")
_MANIFEST_TEMP = re.compile(r"^manifest\.json\.[A-Za-z0-9_.]+\.tmp-\d+$")
_LOCK = re.compile(r"^\.[A-Za-z0-9_.]+\.lock$")


def _is_manifest(path: Path) -> bool:
    import json

    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(d, dict) and "schema_version" in d and isinstance(d.get("segments"), list)


def check_store_folder(path: Path) -> None:
    """Raise StoreError unless ``path`` (an existing folder) is empty or a store folder: only
    segments, temporaries, lock files and a store's ``manifest.json``, and at least one
    segment or lock file."""
    entries = sorted(path.iterdir())
    if not entries:
        return
    foreign = [p.name for p in entries
               if not (_SEGMENT.match(p.name) or _SEGMENT_TEMP.match(p.name) or _MANIFEST_TEMP.match(p.name)
                       or _LOCK.match(p.name) or (p.name == MANIFEST and _is_manifest(p)))]
    if not foreign and not any(_SEGMENT.match(p.name) or _LOCK.match(p.name) for p in entries):
        foreign = [p.name for p in entries]
    if foreign:
        shown = ", ".join(repr(n) for n in foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise StoreError(path, f"is not a feature store: it holds {shown}; a store is written only into a new "
                               f"(or empty) folder or an existing store, so choose another path")


def check_same_dataset(path: Path, existing: StoreMeta, meta: StoreMeta) -> None:
    """Refuse to append to a store made from another dataset (``source['annotations_sha256']``,
    the fingerprint of its annotation files; the root's path may differ between machines)."""
    old, new = existing.source.get("annotations_sha256"), meta.source.get("annotations_sha256")
    if old == new:
        return
    was, now = existing.source.get("root", "?"), meta.source.get("root", "?")
    if old is None:
        raise StoreError(path, f"cannot continue it from {now}: it records no dataset fingerprint (made by an "
                               f"older version from {was}); extract into a new --store")
    raise StoreError(path, f"made from another dataset ({was}, annotations sha256 {old[:12]}), not {now} "
                           f"({(new or '?')[:12]}): extract into another --store, or give the dataset it was made from")


def lock_part(path: str | Path, part: str) -> WriterLock:
    """Take the lock of part ``part`` of the store folder ``path`` (created if missing), after
    checking that the folder is new, empty or a store. Raises StoreError (not a store folder)
    or :class:`~common.files.LockedError` (another process writes that part)."""
    path = Path(path)
    if not _PART.match(part):
        raise ValueError(f"part {part!r} must be letters, digits, '_' or '.'")
    if path.exists() and not path.is_dir():
        raise StoreError(path, "exists and is not a store folder (a merged store is read-only)")
    if path.is_dir() and (path / "zarr.json").exists():
        raise StoreError(path, "is a single-segment (merged) store, which is read-only")
    if path.is_dir():
        check_store_folder(path)
    path.mkdir(parents=True, exist_ok=True)
    return WriterLock(path / f".{part}.lock", folder=path, what=f"part {part!r} is being written").acquire()


def segment_totals(records: list[VideoRecord]) -> dict[str, int]:
    totals = {t: sum(r.num_rows(t) for r in records) for t in ROW_TABLES}
    totals["frames"] = sum(r.num_frames for r in records)
    totals["videos"] = len(records)
    return totals


def write_segment(final: Path, backend: str, meta: StoreMeta, totals: dict[str, int],
                  records: Iterable[VideoRecord], lock: WriterLock, *, compression: dict[str, str] | None = None,
                  attrs: dict[str, Any] | None = None, **options: Any) -> None:
    """Write ``records`` into the segment ``final``, whole or not at all: its temporary file is
    recorded in ``lock`` while it exists (a killed writer's successor removes it), and removed
    when anything fails, the exception then raised as it came."""
    tmp = segment_temp_path(final).name
    lock.record(tmp)
    w = None
    try:
        w = WRITERS[backend](final, meta, totals, compression=compression, attrs=attrs, **options)
        for r in records:
            w.append(r)
        w.commit()
    except BaseException:
        if w is not None:
            w.abort()
        else:
            (final.parent / tmp).unlink(missing_ok=True)
        raise
    finally:
        lock.forget(tmp)


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
        lock: the part's lock, taken earlier with :func:`lock_part` (default: taken here).
            The writer releases it when it closes.

    A write that fails with an OS error (a full disk) raises StoreError naming the segment and
    the reason; the videos committed before are intact, and the writer commits nothing more.
    """

    def __init__(self, path: str | Path, meta: StoreMeta, *, part: str = "0", backend: str | None = None,
                 segment_bytes: int = 256 << 20, compression: dict[str, str] | None = None,
                 lock: WriterLock | None = None) -> None:
        self.path = Path(path)
        self.backend = backend or backend_of_suffix(self.path)
        self.closed = True  # until the lock is held and the folder indexed
        if self.backend not in BACKENDS:  # before anything is written (a lock passed in is the writer's)
            if lock is not None:
                lock.release()
            raise StoreError(self.path, "cannot tell the backend: name the store folder *.h5 or *.zarr (or pass "
                                        "backend=)")
        self._lock = lock if lock is not None else lock_part(self.path, part)
        try:
            self._open(meta, part, segment_bytes, compression)
        except BaseException:
            self._lock.release()
            raise

    def _open(self, meta: StoreMeta, part: str, segment_bytes: int, compression: dict[str, str] | None) -> None:
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
            check_same_dataset(self.path, existing_meta, meta)
            why = existing_meta.incompatibility(meta)
            if why:
                raise StoreError(self.path, f"cannot append: {why}")
        self._committed = {v for s in self._segments for v in s.videos}
        self._seq = 1 + max((self._seq_of(s.file) for s in self._segments), default=0)
        self._buffer: list[VideoRecord] = []
        self._buffer_bytes = 0
        self._failed = False
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
        """Remove the temporaries that the previous writer of this part recorded in the lock
        file and did not finish (it was killed): exactly those, nothing that looks alike."""
        import shutil

        for name in self._lock.previous_temps():
            p = self.path / name
            if not (_SEGMENT_TEMP.match(name) or _MANIFEST_TEMP.match(name)) or not p.exists():
                continue
            if name.startswith((f"{self.part}-", f"{MANIFEST}.{self.part}.")):
                log.info("removing unfinished segment %s (left by a killed writer of part %s)", p, self.part)
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
        if self._failed:
            raise StoreError(self.path, "an earlier write failed; this writer commits nothing more")
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
        if self._failed:
            raise StoreError(self.path, "an earlier write failed; this writer commits nothing more")
        name = f"{self.part}-{self._seq:06d}{SUFFIX[self.backend]}"
        final = self.path / name
        t0 = time.perf_counter()
        try:
            write_segment(final, self.backend, self.meta, segment_totals(self._buffer), self._buffer, self._lock,
                          compression=self.compression,
                          attrs={"part": self.part, "seq": self._seq, "pid": os.getpid()})
        except BaseException as e:
            self._failed = True
            if isinstance(e, OSError):
                done, lost = len(self._committed), len(self._buffer)
                raise StoreError(self.path, f"cannot write segment {name}: {describe_os_error(e)}; committed "
                                            f"before: {done} video{'s' * (done != 1)}, intact; in this segment: "
                                            f"{lost} video{'s' * (lost != 1)}, not written: fix that and rerun to "
                                            f"continue") from e
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
        tmp = manifest_temp_name(self.part)
        self._lock.record(tmp)
        try:
            segments, meta, _ = index_segments(self._layout(), known={s.file: s for s in self._segments},
                                               meta=self.meta)
            write_manifest(self.path, meta or self.meta, segments, tag=self.part)
        except (StoreError, OSError) as e:  # the manifest is only a cache; readers rescan
            log.warning("manifest not updated: %s", e)
        finally:
            self._lock.forget(tmp)

    def close(self) -> None:
        """Commit what is buffered and write the manifest, then release the part's lock."""
        if self.closed:
            return
        try:
            self.flush()
        finally:
            self.closed = True
            self._lock.release()

    def abandon(self) -> None:
        """Release the part's lock without committing what is buffered (after a failure)."""
        self.closed = True
        self._lock.release()

    def __enter__(self) -> "StoreWriter":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        # Buffered records are whole videos: commit them even when the caller failed, unless
        # writing itself failed (a full disk would fail again).
        if exc_type is None:
            self.close()
        elif issubclass(exc_type, Exception) and not self._failed:
            try:
                self.close()
            except Exception as e:  # noqa: BLE001 - the caller's exception is the one to see
                log.warning("could not commit the buffered videos of %s: %s", self.path, e)
        self.abandon()
