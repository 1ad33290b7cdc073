"""The feature store: what stage 1 writes once and stage 2 reads many times.

One logical store per extraction. It is a folder of immutable *segments* (each one or more
whole videos) plus a derived ``manifest.json``, or, after ``merge``, a single segment. Each
segment holds the root metadata (:class:`StoreMeta`) and flat arrays with half-open ranges
per video and per frame, laid out so that a video is one contiguous read per array. The
schema (every array's name, dtype and row meaning) is in :mod:`store.schema`.

Backends, picked by the path's suffix or ``backend=``: HDF5 (``.h5``, h5py + hdf5plugin;
contiguous uncompressed datasets by default, memory-mapped on read) and zarr v3 (``.zarr``,
sharded arrays). Only this package imports h5py and zarr.

Writing (:class:`StoreWriter`)::

    with StoreWriter("stores/ag.h5", meta, part=f"rank{rank}") as w:
        done = w.committed_videos()
        for video in my_videos:
            if video not in done:
                w.write_video(make_record(video))      # a VideoRecord

Reading (:func:`open_store`)::

    store = open_store("stores/ag.h5")
    store.meta.vocabulary, store.videos("train")
    rec = store.read_video("001YG.mp4")                 # VideoRecord of numpy arrays
    rec.pair_union[rec.frame_rows("pairs", 0)]          # frame 0's union features

Checking and inspecting: :func:`check_store` (every check, as ``cli.py store check``),
:func:`stats` (pandas DataFrames, as ``cli.py stats``), :func:`merge` (``cli.py store merge``).
Every problem with a store is a :class:`StoreError` that names the file and the problem; it
derives from :class:`common.errors.UserError`, the base of every error a user can fix.

Safety: one writer per part (an OS lock on ``.PART.lock``, :mod:`common.files`), writes only
into a new folder or a store, per-video checksums verified on read (``open_store(path,
verify=False)`` skips them).
"""

from store.check import check_store, merge
from store.reader import Store, open_store
from store.records import DetectorInfo, StoreError, StoreMeta, UnionMode, VideoRecord
from store.schema import SCHEMA_VERSION
from store.stats import stats
from store.writer import StoreWriter

__all__ = [
    "SCHEMA_VERSION", "DetectorInfo", "Store", "StoreError", "StoreMeta",
    "StoreWriter", "UnionMode", "VideoRecord", "check_store", "merge", "open_store", "stats",
]
