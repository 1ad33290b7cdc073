"""Every check a store can be put through (``cli.py store check``), and ``merge``."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
from tqdm import tqdm

from common.files import WriterLock, describe_os_error
from store.backends import READERS, backend_of_suffix, checksum_of
from store.manifest import MANIFEST, SegmentIndex, manifest_checksum
from store.reader import Layout, Store, check_no_duplicates, find_layout, open_store, scan_segment
from store.records import StoreError, StoreMeta
from store.schema import ROW_ARRAYS, ROW_TABLES, SCHEMA_VERSION, resolve_trailing
from store.writer import write_segment

log = logging.getLogger(__name__)


def non_finite_arrays(record) -> list[str]:
    """``"det_features (12 of 96 values)"`` for each float array of a :class:`~store.VideoRecord`
    that holds a NaN or an infinity (empty: all finite). A detector with broken weights writes
    such values with valid checksums; the extraction refuses them (stage1_detect.extract) and the
    deep check reports them."""
    out = []
    for spec in ROW_ARRAYS:
        if np.dtype(spec.dtype).kind != "f":
            continue
        values = np.asarray(getattr(record, spec.field))
        bad = int(values.size - np.count_nonzero(np.isfinite(values)))
        if bad:
            out.append(f"{spec.field} ({bad} of {values.size} values)")
    return out


def check_store(path: str | Path, *, deep: bool = True, backend: str | None = None,
                progress: bool = False) -> list[StoreError]:
    """Run every check on the store at ``path``; return the problems found (empty: all good).

    Per segment: it opens (not truncated or corrupted), its ``schema_version`` is this code's,
    its meta agrees with the other segments' (vocabulary, feature sizes, union mode, detector),
    every array has its dtype and shape, and the video and frame ranges add up. Across
    segments: no video twice. With ``deep``: every video's rows of every array match the
    CRC-32C recorded at write time, every stored index points inside its frame (relation
    subject/object among the GT objects, pair subject/object among the joint GT + detection
    boxes), the small flags are 0/1, 0 for the person (:meth:`VideoRecord.validate`'s index
    checks), every float value is finite (:func:`non_finite_arrays`), and ``manifest.json``, rebuilt from the segments, equals the one on disk (for
    every segment it lists as current).
    """
    try:
        layout = find_layout(path, backend)
    except StoreError as e:
        return [e]
    problems: list[StoreError] = []
    metas: list[tuple[Path, StoreMeta]] = []
    fresh: list[SegmentIndex] = []
    for p in tqdm(layout.segments, desc="check segments", disable=not progress):
        try:
            index, meta = scan_segment(p, layout.backend)
        except StoreError as e:
            problems.append(e)
            continue
        if metas:
            why = metas[0][1].incompatibility(meta)
            if why:
                problems.append(StoreError(p, f"{why} (compared with {metas[0][0].name})"))
                continue
        metas.append((p, meta))
        fresh.append(index)
        if deep:
            problems.extend(_deep_segment(Layout(p, layout.backend, None, (p,)), meta, index))
        else:
            problems.extend(_lost_shards(p, layout.backend, meta, index))
    if not layout.segments:
        problems.append(StoreError(layout.path, "store has no committed segments"))
    if not problems:
        try:
            check_no_duplicates(layout, fresh)
        except StoreError as e:
            problems.append(e)
        if not problems and deep and layout.folder is not None:
            problems.extend(_manifest_problems(layout.folder, fresh, metas[0][1] if metas else None))
    for p in layout.leftovers:
        log.info("%s: unfinished segment (ignored by readers, removed by its part's next writer)", p)
    return problems


def _deep_segment(segment: Layout, meta: StoreMeta, index: SegmentIndex) -> list[StoreError]:
    """Every video of one segment (already scanned: ``meta``, ``index``) against its checksums,
    and its indices inside their frames."""
    problems: list[StoreError] = []
    path = segment.path
    store = Store(segment, meta, [index], verify=False)
    try:
        for v in store.videos():
            try:
                rec, bad = store.read_checked(v)
            except StoreError as e:
                problems.append(e)
                continue
            problems.extend(StoreError(path, f"checksum mismatch in {k!r} of video {v!r}: the data is corrupted")
                            for k in bad)
            if bad:
                continue
            try:
                rec._validate_indices(f"video {v!r}")
            except ValueError as e:
                problems.append(StoreError(path, f"bad index: {e}"))
            bad_values = non_finite_arrays(rec)
            if bad_values:
                problems.append(StoreError(path, f"video {v!r} holds values that are not finite (NaN or inf) in "
                                                 f"{', '.join(bad_values)}: the detector's outputs were broken; "
                                                 f"re-extract it"))
    finally:
        store.close()
    return problems


def _lost_shards(path: Path, backend: str, meta: StoreMeta, index: SegmentIndex) -> list[StoreError]:
    """The quick check's look for deleted zarr shards: list each array's shard files (no data
    read); a video whose rows lie wholly in absent shards must have the checksum of zeros (zarr
    writes no file for a shard of fill values only, e.g. ``rel_subject``, always 0); a video that
    also has rows in a present shard is read and checked (only those)."""
    if backend != "zarr":
        return []
    problems: list[StoreError] = []
    dims = meta.dims()
    with READERS[backend](path) as seg:
        crc = None
        for j, spec in enumerate(ROW_ARRAYS):
            absent = seg.absent_shards(spec.key)
            if not absent:
                continue
            if crc is None:
                crc = seg.read("videos/crc32c")
            row_bytes = int(np.prod(resolve_trailing(spec, dims), dtype=np.int64)) * np.dtype(spec.dtype).itemsize
            for vi, (v, (lo, hi)) in enumerate(zip(index.videos, index.ranges[spec.table])):
                lo, hi = int(lo), int(hi)
                gone = sum(max(0, min(hi, b) - max(lo, a)) for a, b in absent)
                if not gone:
                    continue
                if gone == hi - lo:
                    ok = checksum_of(np.zeros((hi - lo) * row_bytes, np.uint8)) == int(crc[vi, j])
                else:
                    ok = checksum_of(seg.read(spec.key, lo, hi)) == int(crc[vi, j])
                if not ok:
                    problems.append(StoreError(path, f"video {v!r}: its rows of {spec.key!r} lie in a shard file "
                                                     f"that is missing (deleted or lost): re-extract the video or "
                                                     f"restore the file"))
    return problems


def _manifest_problems(folder: Path, fresh: list[SegmentIndex], meta: StoreMeta | None) -> list[StoreError]:
    """Differences between ``manifest.json`` and the index rebuilt from the segments: an entry
    whose size and mtime are current must hold the segment's own video table."""
    path = folder / MANIFEST
    if not path.exists():
        return []
    fix = f"delete {MANIFEST}, readers rebuild it"
    try:
        doc = json.loads(path.read_text())
        entries = {e["file"]: SegmentIndex.from_json(e) for e in doc["segments"]}
        version = doc.get("schema_version")
    except (OSError, ValueError, KeyError, TypeError) as e:
        return [StoreError(path, f"unreadable ({type(e).__name__}: {e}): {fix}")]
    if version != SCHEMA_VERSION:
        return [StoreError(path, f"schema_version {version!r}, not {SCHEMA_VERSION}: {fix}")]
    problems = []
    by_file = {s.file: s for s in fresh}
    lost = [name for name in entries if name not in by_file]
    if lost:  # then the manifest is the only record of those segments' videos: never advise deleting it
        fix = f"keep {MANIFEST} (it is the only record of the videos of {', '.join(lost)})"
    if doc.get("checksum") != manifest_checksum(doc["segments"]):
        problems.append(StoreError(path, f"its checksum does not match its content: edited by hand or damaged "
                                         f"(readers ignore it); {fix}"))
    try:
        listed = StoreMeta.from_dict(doc["meta"])
    except (KeyError, TypeError, ValueError) as e:
        return [StoreError(path, f"unreadable meta ({type(e).__name__}: {e}): {fix}")]
    if meta is not None and listed.incompatibility(meta):
        problems.append(StoreError(path, f"its meta is not the segments' ({listed.incompatibility(meta)}): {fix}"))
    for name, entry in entries.items():
        seg = by_file.get(name)
        if seg is None:
            shown = ", ".join(entry.videos[:3]) + (f" and {len(entry.videos) - 3} more" if len(entry.videos) > 3 else "")
            count = f"{len(entry.videos)} video{'' if len(entry.videos) == 1 else 's'}"
            problems.append(StoreError(path, f"lists segment {name} ({count}: {shown}), which is "
                                             f"not in the folder: restore the file, or rerun `detect` to extract "
                                             f"those videos again; keep {MANIFEST} until then, it is the only record "
                                             f"of what the segment held"))
            continue
        if (entry.size, entry.mtime_ns) != (seg.size, seg.mtime_ns):
            continue  # out of date: readers rescan that segment
        diffs = [what for what, same in (
            ("videos", entry.videos == seg.videos), ("splits", entry.splits == seg.splits),
            ("ranges", set(entry.ranges) == set(seg.ranges)
             and all(np.array_equal(entry.ranges[t], seg.ranges[t]) for t in seg.ranges)),
            ("meta", entry.compat == seg.compat)) if not same]
        if diffs:
            problems.append(StoreError(path, f"disagrees with segment {name} ({', '.join(diffs)} differ): "
                                             f"edited by hand or damaged; {fix}"))
    return problems


def _check_free_space(dst: Path, store) -> None:
    """Fail before writing when the destination's file system lacks room for the merged arrays."""
    need = _array_bytes(store)
    limit = _file_size_limit()
    if limit is not None and need > limit:  # HDF5 writing past it fails in every handle's release
        raise StoreError(dst, f"needs about {_size(need)} in one file; this process may write files of at most "
                              f"{_size(limit)} (ulimit -f): {describe_os_error(OSError(27, ''))}")
    free = shutil.disk_usage(dst.parent).free
    if free < need * 1.02 + (16 << 20):
        raise StoreError(dst, f"needs about {_size(need * 1.02 + (16 << 20))}, {_size(free)} free on its file "
                              f"system: {describe_os_error(OSError(28, ''))}")


def _file_size_limit() -> int | None:
    """This process's largest file in bytes (RLIMIT_FSIZE, ``ulimit -f``), or None without one."""
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    except (ImportError, OSError, ValueError):
        return None
    return None if soft == resource.RLIM_INFINITY else int(soft)


def _size(n: float) -> str:
    """``"12.3 MB"``, ``"1.50 GB"``: a size as a person reads it."""
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.0f} KB"


def _array_bytes(store) -> int:
    """Bytes of every per-row array of ``store`` (uncompressed)."""
    dims = store.meta.dims()
    rows = {t: sum(store.num_rows(v, t) for v in store.videos()) for t in ROW_TABLES}
    return sum(rows[s.table] * int(np.prod(resolve_trailing(s, dims), dtype=np.int64)) * np.dtype(s.dtype).itemsize
               for s in ROW_ARRAYS)


def merge(src: str | Path, dst: str | Path, *, backend: str | None = None,
          compression: dict[str, str] | None = None, progress: bool = True) -> Path:
    """Consolidate every segment of ``src`` into the single-segment store ``dst``.

    ``dst`` (``X.h5`` file or ``X.zarr`` group) must not exist and must not lie inside ``src``;
    its backend comes from its suffix or ``backend``. Videos are written in name order, so
    merging the parts of a parallel extraction gives the same file whatever the split into
    parts. The result is written under a temporary name and renamed when complete; a failed
    merge removes it, and a killed one leaves it to the next merge into ``dst``, which removes it
    (the lock file ``.X.h5.merge.lock`` beside ``dst`` records it; one merge into ``dst`` at a
    time).
    """
    src, dst = Path(src), Path(dst)
    backend = backend or backend_of_suffix(dst)
    if backend is None:
        raise StoreError(dst, "cannot tell the backend: name the merged store *.h5 or *.zarr")
    layout = find_layout(src)
    if layout.folder is not None:
        inside, root = dst.resolve(), layout.folder.resolve()
        if inside == root or root in inside.parents:
            raise StoreError(dst, f"is inside the source store {src}: merge writes a new store outside it")
    if dst.exists():
        raise StoreError(dst, "exists; merge writes a new store (remove it or choose another name)")
    store = open_store(src)
    names = sorted(store.videos())
    totals = {t: sum(store.num_rows(v, t) for v in names) for t in ("frames",) + ROW_TABLES}
    totals["videos"] = len(names)
    dst.parent.mkdir(parents=True, exist_ok=True)
    lock = WriterLock(dst.parent / f".{dst.name}.merge.lock", folder=dst, what="a merge into it is being written",
                      remove_on_release=True).acquire()
    try:
        for name in lock.previous_temps():
            if name.startswith(f"{dst.name}.tmp-") and (dst.parent / name).exists():
                log.info("removing %s, left by a killed merge", dst.parent / name)
                p = dst.parent / name
                shutil.rmtree(p) if p.is_dir() else p.unlink()
        if dst.exists():
            raise StoreError(dst, "exists; merge writes a new store (remove it or choose another name)")
        try:
            _check_free_space(dst, store)
            extra = {"in_memory": False} if backend == "hdf5" else {}  # one segment of the whole store
            videos = (store.read_video(v) for v in tqdm(names, desc=f"merge -> {dst.name}", disable=not progress))
            write_segment(dst, backend, store.meta, totals, videos, lock, compression=compression,
                          attrs={"merged_from": str(src)}, **extra)
        except OSError as e:
            raise StoreError(dst, f"cannot write the merged store: {describe_os_error(e)} (nothing was "
                                  f"written; the source is untouched)") from e
    finally:
        store.close()
        lock.release()
    log.info("merged %d videos of %s into %s", len(names), src, dst)
    return dst
