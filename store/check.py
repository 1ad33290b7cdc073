"""Every check a store can be put through (``cli.py store check``), and ``merge``."""

from __future__ import annotations

import logging
from pathlib import Path

from tqdm import tqdm

from store.backends import READERS, WRITERS, backend_of_suffix
from store.reader import Layout, find_layout, index_segments, open_store, scan_segment
from store.records import StoreError, StoreMeta
from store.schema import ROW_ARRAYS, ROW_TABLES

log = logging.getLogger(__name__)

# Small arrays needed for the row-level index checks (features are covered by checksums).
_INDEX_FIELDS = tuple(s.field for s in ROW_ARRAYS if s.column not in ("features", "union", "dists", "boxes"))


def check_store(path: str | Path, *, deep: bool = True, backend: str | None = None,
                progress: bool = False) -> list[StoreError]:
    """Run every check on the store at ``path``; return the problems found (empty: all good).

    Per segment: it opens (not truncated or corrupted), its ``schema_version`` is this code's,
    its meta agrees with the other segments' (vocabulary, feature sizes, union mode, detector),
    every array has its dtype and shape, and the video and frame ranges add up. Across
    segments: no video twice. With ``deep``: each array's crc32 matches the one recorded at
    write time, and every stored index points inside its frame (relation subject/object among
    the GT objects, pair subject/object among the joint GT + detection boxes) and the small
    flags are 0/1, 0 for the person (:meth:`VideoRecord.validate`'s index checks).
    """
    try:
        layout = find_layout(path, backend)
    except StoreError as e:
        return [e]
    problems: list[StoreError] = []
    metas: list[tuple[Path, StoreMeta]] = []
    good: list[Path] = []
    for p in tqdm(layout.segments, desc="check segments", disable=not progress):
        try:
            _, meta = scan_segment(p, layout.backend)
        except StoreError as e:
            problems.append(e)
            continue
        if metas:
            why = metas[0][1].incompatibility(meta)
            if why:
                problems.append(StoreError(p, f"{why} (compared with {metas[0][0].name})"))
                continue
        metas.append((p, meta))
        good.append(p)
        if deep:
            problems.extend(_deep_segment(p, layout.backend, meta))
    if not layout.segments:
        problems.append(StoreError(layout.path, "store has no committed segments"))
    if not problems:
        try:
            index_segments(Layout(layout.path, layout.backend, layout.folder, tuple(good)), trust_manifest=False)
        except StoreError as e:  # duplicates across segments
            problems.append(e)
    for p in layout.leftovers:
        log.info("%s: unfinished segment (ignored by readers, removed by its part's next writer)", p)
    return problems


def _deep_segment(path: Path, backend: str, meta: StoreMeta) -> list[StoreError]:
    problems = []
    with READERS[backend](path) as seg:
        recorded = seg.checksums()
        for s in ROW_ARRAYS:
            try:
                crc = seg.crc32(s.key)
            except StoreError as e:
                problems.append(e)
                continue
            if s.key not in recorded:
                problems.append(StoreError(path, f"no checksum recorded for {s.key!r}"))
            elif crc != recorded[s.key]:
                problems.append(StoreError(path, f"checksum mismatch in {s.key!r}: the data is corrupted"))
    if problems:
        return problems
    layout = Layout(path, backend, None, (path,))
    store = open_store(layout.path, backend)
    try:
        for v in store.videos():
            rec = store.read_video(v, fields=_INDEX_FIELDS)
            try:
                rec._validate_indices(f"video {v!r}")
            except ValueError as e:
                problems.append(StoreError(path, f"bad index: {e}"))
    finally:
        store.close()
    return problems


def merge(src: str | Path, dst: str | Path, *, backend: str | None = None,
          compression: dict[str, str] | None = None, progress: bool = True) -> Path:
    """Consolidate every segment of ``src`` into the single-segment store ``dst``.

    ``dst`` (``X.h5`` file or ``X.zarr`` group) must not exist; its backend comes from its
    suffix or ``backend``. Videos are written in name order, so merging the parts of a
    parallel extraction gives the same file whatever the split into parts. The result is
    written under a temporary name and renamed when complete.
    """
    dst = Path(dst)
    backend = backend or backend_of_suffix(dst)
    if backend is None:
        raise ValueError(f"cannot tell the backend of {dst}: name it *.h5 or *.zarr or pass backend=")
    if dst.exists():
        raise FileExistsError(f"{dst} exists; merge writes a new store")
    store = open_store(src)
    names = sorted(store.videos())
    totals = {t: sum(store.num_rows(v, t) for v in names) for t in ("frames",) + ROW_TABLES}
    totals["videos"] = len(names)
    dst.parent.mkdir(parents=True, exist_ok=True)
    w = WRITERS[backend](dst, store.meta, totals, compression=compression, attrs={"merged_from": str(src)})
    try:
        for v in tqdm(names, desc=f"merge -> {dst.name}", disable=not progress):
            w.append(store.read_video(v))
        w.commit()
    except BaseException:
        w.abort()
        raise
    finally:
        store.close()
    log.info("merged %d videos of %s into %s", len(names), src, dst)
    return dst

