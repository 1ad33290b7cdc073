"""Finding a store's segments, checking their tables, and reading videos.

A store path is one of:

* a single segment: an ``.h5`` file, or a ``.zarr`` directory with a ``zarr.json`` (what
  ``merge`` writes);
* a folder (named ``*.h5`` / ``*.zarr`` by convention) of segments ``PART-SEQ.h5`` or
  ``PART-SEQ.zarr`` plus a derived ``manifest.json``. Files named ``*.tmp-PID`` are
  segments still being written (or left by a crash) and are never read.

The manifest (:mod:`store.manifest`) caches each segment's video table, keyed by the
segment's size and mtime; a segment that is not in it, or differs, is scanned again. It is
never the source of truth.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from common.files import lock_holder
from store.backends import BACKENDS, READERS, SUFFIX, SegmentReader, backend_of_suffix, check_schema_arrays, checksum_of
from store.manifest import MANIFEST, SegmentIndex, compat_hash, read_manifest
from store.records import StoreError, StoreMeta, VideoRecord
from store.schema import ROW_ARRAYS, ROW_TABLES, TABLE_PREFIX, arrays_of

log = logging.getLogger(__name__)

_TMP = re.compile(r"\.tmp-\d+$")
_ARRAY_INDEX = {s.key: k for k, s in enumerate(ROW_ARRAYS)}


@dataclass(frozen=True)
class Layout:
    """Where a store's segments are: ``folder`` is None for a single-segment store."""

    path: Path
    backend: str
    folder: Path | None
    segments: tuple[Path, ...]
    leftovers: tuple[Path, ...] = ()


def _stat(p: Path) -> tuple[int, int]:
    """Size and mtime of a segment (for zarr: total size and newest mtime of its files)."""
    if p.is_file():
        st = p.stat()
        return st.st_size, st.st_mtime_ns
    size, mtime = 0, p.stat().st_mtime_ns
    for f in p.rglob("*"):
        if f.is_file():
            st = f.stat()
            size += st.st_size
            mtime = max(mtime, st.st_mtime_ns)
    return size, mtime


def find_layout(path: str | Path, backend: str | None = None) -> Layout:
    path = Path(path)
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if not path.exists():
        raise StoreError(path, "no store at this path")
    if path.is_file():
        b = backend or backend_of_suffix(path) or "hdf5"
        if b != "hdf5":
            raise StoreError(path, f"a single file can only be an HDF5 store, not {b}")
        return Layout(path, "hdf5", None, (path,))
    if (path / "zarr.json").is_file():
        return Layout(path, "zarr", None, (path,))
    entries = sorted(path.iterdir())
    leftovers = tuple(p for p in entries if _TMP.search(p.name))
    found = {b: tuple(p for p in entries if p.suffix == SUFFIX[b] and not _TMP.search(p.name)) for b in BACKENDS}
    b = backend or backend_of_suffix(path)
    if b is None:
        kinds = [k for k, v in found.items() if v]
        if len(kinds) != 1:
            raise StoreError(path, "cannot tell the backend: name the folder *.h5 or *.zarr or pass backend=")
        b = kinds[0]
    other = [p for k, v in found.items() if k != b for p in v]
    if other:
        raise StoreError(other[0], f"segment of another backend inside a {b} store")
    return Layout(path, b, path, found[b], leftovers)


def check_tables(seg: SegmentReader, index: SegmentIndex) -> None:
    """The half-open ranges of the video and frame tables add up; raise StoreError if not."""
    n_frames = seg.dtype_shape("frames/name")[1][0]
    rows = {"frames": n_frames, **{t: seg.dtype_shape(arrays_of(t)[0].key)[1][0] for t in ROW_TABLES}}
    n_videos = len(index.videos)
    if len(index.splits) != n_videos:
        raise StoreError(seg.path, "video table columns disagree in length")
    vf = index.ranges["frames"]
    for t, total in rows.items():
        r = index.ranges[t]
        if r.shape != (n_videos, 2):
            raise StoreError(seg.path, f"videos/{t} has shape {r.shape}, expected ({n_videos}, 2)")
        _check_ranges(seg.path, f"videos/{t}", r, total)
        if t == "frames":
            continue
        fr = seg.read(f"frames/{t}")
        if fr.shape != (n_frames, 2):
            raise StoreError(seg.path, f"frames/{t} has shape {fr.shape}, expected ({n_frames}, 2)")
        _check_ranges(seg.path, f"frames/{t}", fr, total)
        has = vf[:, 1] > vf[:, 0]
        first, last = vf[has, 0], vf[has, 1] - 1
        if np.any(fr[first, 0] != r[has, 0]) or np.any(fr[last, 1] != r[has, 1]) or np.any(r[~has, 1] != r[~has, 0]):
            v = int(np.flatnonzero(has)[0]) if has.any() else 0
            raise StoreError(seg.path, f"offsets do not add up: frames/{t} ranges do not match videos/{t} "
                                       f"(e.g. video {index.videos[v]!r})")
    sizes = seg.dtype_shape("frames/size")[1]
    if tuple(sizes) != (n_frames, 2):
        raise StoreError(seg.path, f"frames/size has shape {sizes}, expected ({n_frames}, 2)")
    crc = seg.dtype_shape("videos/crc32c")[1]
    if tuple(crc) != (n_videos, len(ROW_ARRAYS)):
        raise StoreError(seg.path, f"videos/crc32c has shape {crc}, expected ({n_videos}, {len(ROW_ARRAYS)})")


def _check_ranges(path: Path, key: str, r: np.ndarray, total: int) -> None:
    if len(r) == 0:
        if total != 0:
            raise StoreError(path, f"offsets do not add up: {key} is empty but the table has {total} rows")
        return
    bad = None
    if r[0, 0] != 0:
        bad = f"starts at {r[0, 0]}, not 0"
    elif np.any(r[:, 1] < r[:, 0]):
        bad = f"has a range that ends before it starts (row {int(np.flatnonzero(r[:, 1] < r[:, 0])[0])})"
    elif np.any(r[1:, 0] != r[:-1, 1]):
        bad = f"has a gap or overlap after row {int(np.flatnonzero(r[1:, 0] != r[:-1, 1])[0])}"
    elif r[-1, 1] != total:
        bad = f"ends at {r[-1, 1]} but the table has {total} rows"
    if bad:
        raise StoreError(path, f"offsets do not add up: {key} {bad}")


def scan_segment(path: Path, backend: str, name: str | None = None) -> tuple[SegmentIndex, StoreMeta]:
    """Open one segment, check its meta, arrays and tables, and return its index."""
    with READERS[backend](path) as seg:
        meta = seg.meta()
        check_schema_arrays(seg, meta)
        size, mtime = _stat(path)
        ranges = {t: seg.read(f"videos/{t}").astype(np.int64).reshape(-1, 2) for t in ("frames",) + ROW_TABLES}
        index = SegmentIndex(name or path.name, size, mtime, seg.read_str("videos/name"),
                             seg.read_str("videos/split"), ranges, compat_hash(meta))
        check_tables(seg, index)
        dup = {v for v in index.videos if index.videos.count(v) > 1}
        if dup:
            raise StoreError(path, f"video {sorted(dup)[0]!r} appears twice")
    return index, meta


def index_segments(layout: Layout, trust_manifest: bool = True, *, known: dict[str, SegmentIndex] | None = None,
                   meta: StoreMeta | None = None) -> tuple[list[SegmentIndex], StoreMeta | None, bool]:
    """Indices of every segment (from the manifest where it is current) and the store's meta.

    ``known``: indices the caller already holds (a writer's own segments), trusted like current
    manifest entries; ``meta``: the meta the caller knows, so that those need no scan to learn it.
    Returns ``(indices, meta, manifest_was_current)``. Raises StoreError for the first problem.
    """
    manifest = read_manifest(layout.folder) if (layout.folder and trust_manifest) else {}
    cached = {**manifest, **(known or {})}
    out: list[SegmentIndex] = []
    meta_file: Path | None = None
    meta_hash = compat_hash(meta) if meta is not None else ""
    current = layout.folder is not None and len(manifest) == len(layout.segments)
    for p in layout.segments:
        stat = _stat(p)
        m_entry = manifest.get(p.name)
        current = current and m_entry is not None and (m_entry.size, m_entry.mtime_ns) == stat
        c = cached.get(p.name)
        if c is not None and (c.size, c.mtime_ns) == stat and meta is not None and c.compat == meta_hash:
            out.append(c)
            continue
        index, m = scan_segment(p, layout.backend)
        if meta is None:
            meta, meta_file, meta_hash = m, p, compat_hash(m)
        else:
            why = meta.incompatibility(m)
            if why:
                raise StoreError(p, f"{why} (compared with {meta_file.name if meta_file else 'the writer'})")
        out.append(index)
    check_no_duplicates(layout, out)
    return out, meta, current


def active_writers(folder: Path) -> list[str]:
    """``"part 'rank0' by pid 123"`` for each part of the store folder whose writer's lock is held
    by another process now (a lock held by this process, or left by a dead one, is not)."""
    out = []
    for p in sorted(folder.glob(".*.lock")):
        holder = lock_holder(p)
        if holder is not None:
            out.append(f"part {p.name[1:-len('.lock')]!r} by pid {holder.get('pid', '?')}")
    return out


def check_no_duplicates(layout: Layout, indices: list[SegmentIndex]) -> None:
    """Raise :class:`StoreError` for the first video that two segments list."""
    seen: dict[str, str] = {}
    for s in indices:
        for v in s.videos:
            if v in seen:
                raise StoreError(layout.path / s.file if layout.folder else layout.path,
                                 f"video {v!r} is also in segment {seen[v]}")
            seen[v] = s.file


class Store:
    """A read-only store: one logical set of videos over one or more segments.

    Open with :func:`open_store`. Segment handles open lazily on first read and reopen after a
    fork, so a Store can be built in the main process and used in DataLoader workers. For
    zarr, use a ``spawn`` or ``forkserver`` worker context (:attr:`mp_context`): zarr-python
    3 may deadlock in forked workers.

    ``verify`` (default): :meth:`read_video` checks each array it reads against the video's
    CRC-32C in ``videos/crc32c`` the first time this process reads that video's array, and raises
    :class:`StoreError` on a mismatch (flipped bytes on disk never reach a model).
    """

    def __init__(self, layout: Layout, meta: StoreMeta, segments: list[SegmentIndex], *, verify: bool = True) -> None:
        self.path = layout.path
        self.layout = layout
        self.backend = layout.backend
        self.meta = meta
        self.segments = segments
        self._where: dict[str, tuple[int, int]] = {}
        for i, s in enumerate(segments):
            for j, v in enumerate(s.videos):
                self._where[v] = (i, j)
        self._readers: list[SegmentReader | None] = [None] * len(segments)
        self._cache: dict[str, VideoRecord] = {}
        self._frame_tables: dict[int, dict[str, Any]] = {}
        self.verify = verify
        self._verified: set[tuple[str, int]] = set()  # (video, index in ROW_ARRAYS) checked in this process

    @property
    def mp_context(self) -> str | None:
        """The multiprocessing context DataLoader workers should use (None: the default)."""
        return "forkserver" if self.backend == "zarr" else None

    def segment_path(self, i: int) -> Path:
        return self.layout.folder / self.segments[i].file if self.layout.folder else self.layout.path

    def _reader(self, i: int) -> SegmentReader:
        r = self._readers[i]
        if r is None:
            r = self._readers[i] = READERS[self.backend](self.segment_path(i))
        return r

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def videos(self, split: str | None = None) -> list[str]:
        """Video names in store order (segment, then row), optionally of one split."""
        return [v for s in self.segments for v, sp in zip(s.videos, s.splits) if split is None or sp == split]

    def split_of(self, name: str) -> str:
        i, j = self._locate(name)
        return self.segments[i].splits[j]

    def num_rows(self, name: str, table: str) -> int:
        """Rows of ``name`` in ``table`` ("frames", "gt_objects", ...), without reading."""
        i, j = self._locate(name)
        a, b = self.segments[i].ranges[table][j]
        return int(b - a)

    def _locate(self, name: str) -> tuple[int, int]:
        try:
            return self._where[name]
        except KeyError:
            raise KeyError(f"video {name!r} is not in store {self.path}") from None

    def read_video(self, name: str, fields: Collection[str] | None = None) -> VideoRecord:
        """One video, one contiguous read per array. Fields not in ``fields`` are None.
        With :attr:`verify`, the arrays read are checked against the video's checksums."""
        if name in self._cache and fields is None:
            return self._cache[name]
        return self._read(name, fields, verify=self.verify)

    def _read(self, name: str, fields: Collection[str] | None, *, verify: bool) -> VideoRecord:
        i, j = self._locate(name)
        seg, idx = self._reader(i), self.segments[i]
        frames = self._frames(i)
        fs, fe = (int(x) for x in idx.ranges["frames"][j])
        values: dict[str, Any] = {
            "name": name,
            "split": idx.splits[j],
            "frame_names": tuple(frames["name"][fs:fe]),
            "frame_sizes": frames["size"][fs:fe].copy(),
        }
        requests = []
        for t in ROW_TABLES:
            a, b = (int(x) for x in idx.ranges[t][j])
            fr = frames[t][fs:fe]
            values[f"{TABLE_PREFIX[t]}_offsets"] = np.concatenate([fr[:, 0], [b]]).astype(np.int64) - a
            for s in arrays_of(t):
                if fields is None or s.field in fields:
                    requests.append((s, a, b))
                else:
                    values[s.field] = None
        for (s, _, _), arr in zip(requests, seg.read_many([(s.key, a, b) for s, a, b in requests])):
            values[s.field] = arr
        if verify:
            self._verify(i, j, name, [(s, values[s.field]) for s, _, _ in requests])
        return VideoRecord(**values)

    def _check_index(self, i: int, seg: SegmentReader) -> None:
        """The video table this store was opened with (perhaps from the manifest) is segment
        ``i``'s own: same names, splits and ranges."""
        idx = self.segments[i]
        same = seg.read_str("videos/name") == idx.videos and seg.read_str("videos/split") == idx.splits
        for t in ("frames",) + ROW_TABLES:
            same = same and np.array_equal(seg.read(f"videos/{t}").reshape(-1, 2), idx.ranges[t])
        if not same:
            where = self.layout.folder / MANIFEST if self.layout.folder else self.segment_path(i)
            raise StoreError(where, f"its video table disagrees with segment {idx.file} (edited or out of date): "
                                    f"delete {MANIFEST}, readers rebuild it")

    def _verify(self, i: int, j: int, name: str, arrays: list[tuple[Any, np.ndarray]]) -> None:
        """Check ``arrays`` (spec, rows of video ``name``) against the segment's ``videos/crc32c``."""
        recorded = self._frames(i)["crc32c"][j]
        for s, arr in arrays:
            k = _ARRAY_INDEX[s.key]
            if (name, k) in self._verified:
                continue
            if checksum_of(arr) != int(recorded[k]):
                raise StoreError(self.segment_path(i), f"checksum mismatch in {s.key!r} of video {name!r}: the data "
                                                       f"is corrupted (`cli.py store check` lists every damaged "
                                                       f"video; re-extract them)")
            self._verified.add((name, k))

    def _frames(self, i: int) -> dict[str, Any]:
        """Segment ``i``'s frame table, read whole once (small: names, sizes and ranges)."""
        f = self._frame_tables.get(i)
        if f is None:
            seg = self._reader(i)
            f = {"name": seg.read_str("frames/name"), "size": seg.read("frames/size").astype(np.int32, copy=False),
                 "crc32c": seg.read("videos/crc32c")}
            f.update({t: seg.read(f"frames/{t}").astype(np.int64, copy=False) for t in ROW_TABLES})
            if self.verify:
                self._check_index(i, seg)
            self._frame_tables[i] = f
        return f

    def read_checked(self, name: str) -> tuple[VideoRecord, list[str]]:
        """Video ``name`` read whole without raising on damage, and the arrays (keys) whose rows
        do not match their recorded CRC-32C (the deep check reports them all)."""
        i, j = self._locate(name)
        rec = self._read(name, None, verify=False)
        recorded = self._frames(i)["crc32c"][j]
        return rec, [s.key for k, s in enumerate(ROW_ARRAYS) if checksum_of(getattr(rec, s.field)) != int(recorded[k])]

    def iter_videos(self, split: str | None = None, fields: Collection[str] | None = None) -> Iterable[VideoRecord]:
        for v in self.videos(split):
            yield self.read_video(v, fields)

    def preload(self, split: str | None = None) -> dict[str, VideoRecord]:
        """Read every video of ``split`` (all if None) into memory; later reads come from there."""
        for v in self.videos(split):
            if v not in self._cache:
                self._cache[v] = self.read_video(v)
        return {v: self._cache[v] for v in self.videos(split)}

    def close(self) -> None:
        for r in self._readers:
            if r is not None:
                r.close()
        self._readers = [None] * len(self.segments)

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["_readers"] = [None] * len(self.segments)
        d["_frame_tables"] = {}
        return d

    def identity(self) -> dict[str, Any]:
        """What a run records of the store it was trained on (plain data, for checkpoints):
        ``{'path': absolute path, 'compat': hash of the meta that must agree (detector,
        vocabulary, sizes, dataset), 'videos': {name: 'SPLIT/' and 12 hex digits of its split and
        per-array CRC-32C}}``. Reads only each segment's small ``videos/crc32c`` table.
        :func:`identity_difference` compares two."""
        import hashlib

        digests: dict[str, str] = {}
        for i, seg in enumerate(self.segments):
            crc = np.asarray(self._reader(i).read("videos/crc32c"), dtype="<u4")
            for j, (v, split) in enumerate(zip(seg.videos, seg.splits)):
                digests[v] = f"{split}/" + hashlib.sha256(split.encode() + b"\0" + crc[j].tobytes()).hexdigest()[:12]
        return {"path": store_location(self.path), "compat": compat_hash(self.meta), "videos": digests}

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r}, backend={self.backend}, videos={len(self)}, segments={len(self.segments)})"


def store_location(path: str | Path) -> str:
    """The absolute form of a store path (``stores/ag.h5`` and ``/work/stores/ag.h5`` name one store)."""
    import os

    return os.path.abspath(os.path.expanduser(str(path)))


def identity_difference(recorded: dict[str, Any], current: dict[str, Any],
                        splits: Collection[str] | None = None) -> str | None:
    """How the store ``current`` (:meth:`Store.identity`) differs from the one a run ``recorded``,
    in words, or None when it holds every recorded video of ``splits`` (all if None) unchanged.
    A store that gained videos since (a later test split), or lacks splits the caller does not
    read (an evaluation copy of the test split alone), is the same store."""
    if recorded.get("compat") != current.get("compat"):
        return "it was extracted with another detector, vocabulary or dataset"
    have = current.get("videos", {})
    want = {v: d for v, d in recorded.get("videos", {}).items()
            if splits is None or str(d).split("/")[0] in splits}
    missing = sorted(v for v in want if v not in have)
    if missing:
        of = f"{'/'.join(sorted(splits))} " if splits else ""
        return (f"it lacks {len(missing)} of the run's {len(want)} {of}videos (e.g. {missing[0]!r}): an incomplete "
                f"copy?")
    changed = sorted(v for v in want if have[v] != want[v])
    if changed:
        return f"{len(changed)} of its videos differ from the run's (e.g. {changed[0]!r}): re-extracted?"
    return None


def missing_segments(layout: Layout) -> list[str]:
    """Segments the store's manifest lists that the folder lacks: the writer lists only segments
    it committed, and segments are never removed, so these are lost (an incomplete copy)."""
    if layout.folder is None:
        return []
    present = {p.name for p in layout.segments}
    return sorted(name for name in read_manifest(layout.folder) if name not in present)


def open_store(path: str | Path, backend: str | None = None, *, verify: bool = True,
               while_written: bool = False) -> Store:
    """Open a store read-only; raise :class:`StoreError` naming the file and the problem.

    Checks on open: schema version, meta agreement between segments (vocabulary, feature and
    union sizes, detector), presence, dtype and shape of every array, and that the video and
    frame ranges add up. ``verify``: check every array read against the video's checksums
    (:class:`Store`). Every video's checksums and row-level checks are in
    :func:`store.check.check_store`. No file handle stays open after this returns.

    A folder whose manifest lists a segment it lacks (an incomplete copy) is a
    :class:`StoreError`; so is a store another process is writing (a part's lock is held: the
    videos it has not committed are missing), unless ``while_written``, which logs it instead.
    """
    layout = find_layout(path, backend)
    lost = missing_segments(layout)
    if lost:
        raise StoreError(layout.path, f"its {MANIFEST} lists {len(lost)} segment(s) the folder lacks ({lost[0]}"
                                      f"{', ...' if len(lost) > 1 else ''}): an incomplete copy? Copy the whole "
                                      f"folder again")
    writing = active_writers(layout.folder) if layout.folder is not None else []
    if writing:
        text = (f"is being written ({', '.join(writing)}): its videos are not all committed yet; wait for the "
                f"writer (`detect`) to finish")
        if not while_written:
            raise StoreError(layout.path, text)
        log.warning("%s: %s", layout.path, text)
    segments, meta, _ = index_segments(layout)
    if meta is None:  # index_segments scans the first segment whenever there is one
        raise StoreError(layout.path, "store has no committed segments yet")
    if layout.leftovers:
        log.info("%s: ignoring %d unfinished segment(s) (%s)", layout.path, len(layout.leftovers),
                 ", ".join(p.name for p in layout.leftovers[:3]))
    return Store(layout, meta, segments, verify=verify)

