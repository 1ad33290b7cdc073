"""Segment files on disk: the only module that imports h5py and zarr.

A *segment* holds one or more whole videos in the layout of :mod:`store.schema`: the video
and frame tables plus every per-row array, with the meta as JSON in the root attributes.

* HDF5 (``.h5``): one file. Per-row arrays are contiguous, uncompressed datasets by default,
  so a reader memory-maps them (``np.memmap`` at the dataset's file offset) and a video is a
  plain slice. A table may be compressed with zstd (hdf5plugin); it is then chunked.
* zarr v3 (``.zarr``): one group directory. Every array is sharded (one shard file of up to
  ``shard_bytes`` holding chunks of about 1 MiB), so a segment is tens of files.

A segment is written under a temporary name, flushed, fsynced, then renamed into place, so a
reader sees either the whole segment or nothing. Its ``videos/crc32c`` table holds the CRC-32C of
each video's rows of each array (:func:`checksum_of`), which readers verify.

Over 500 lines on purpose: the HDF5 and zarr readers and writers implement one interface side
by side, so that a change to one is made, and reviewed, beside the other.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from common.files import errno_in_message, fsync_dir
from store.records import StoreError, StoreMeta, VideoRecord
from store.schema import (
    COMPRESSIONS,
    FRAME_COLUMNS,
    ROW_ARRAYS,
    ROW_TABLES,
    SCHEMA_VERSION,
    VIDEO_COLUMNS,
    ArraySpec,
    resolve_trailing,
)

BACKENDS = ("hdf5", "zarr")
SUFFIX = {"hdf5": ".h5", "zarr": ".zarr"}
CHUNK_BYTES = 1 << 20  # zarr chunks inside a shard
H5_CHUNK_BYTES = 256 << 10  # HDF5 chunks of compressed tables
H5_CHUNK_CACHE = 4 << 20


def backend_of_suffix(path: Path) -> str | None:
    s = path.suffix.lower()
    return "hdf5" if s in (".h5", ".hdf5") else "zarr" if s == ".zarr" else None


def _fsync_tree(path: Path) -> None:
    for root, _dirs, files in os.walk(path):
        for f in files:
            fd = os.open(os.path.join(root, f), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(root))


def checksum_of(a: np.ndarray) -> int:
    """CRC-32C of an array's bytes in C order (0 for an empty array): what ``videos/crc32c``
    holds for one video's rows of one array. ``google-crc32c`` (a dependency of zarr) computes
    it with the CPU's CRC instruction, about 18 GB/s here (zlib's crc32: 4-6 GB/s)."""
    import google_crc32c

    return int(google_crc32c.value(np.ascontiguousarray(a).reshape(-1).view(np.uint8))) if a.size else 0


def _chunk_rows(row_bytes: int, target: int = CHUNK_BYTES) -> int:
    return max(1, target // max(1, row_bytes))


def segment_temp_path(path: Path) -> Path:
    """Where a segment writer of this process builds ``path`` before renaming it into place."""
    return path.with_name(f"{path.name}.tmp-{os.getpid()}")


class SegmentWriter:
    """Writes one segment: arrays are sized up front from row totals, filled video by video.

    ``totals`` maps each table of :data:`ROW_TABLES` (and ``"frames"``, ``"videos"``) to its
    row count in this segment. ``compression`` maps a table to one of :data:`COMPRESSIONS`.
    """

    def __init__(self, path: Path, meta: StoreMeta, totals: dict[str, int],
                 compression: dict[str, str] | None = None, attrs: dict[str, Any] | None = None) -> None:
        self.path = Path(path)
        self.meta = meta
        self.totals = dict(totals)
        self.compression = {t: "none" for t in ROW_TABLES}
        for t, c in (compression or {}).items():
            if t not in ROW_TABLES or c not in COMPRESSIONS:
                raise ValueError(f"compression {t}={c}: tables are {ROW_TABLES}, codecs {COMPRESSIONS}")
            self.compression[t] = c
        self.attrs = dict(attrs or {})
        self.tmp = segment_temp_path(self.path)
        self._dims = meta.dims()
        self._pos = {t: 0 for t in ROW_TABLES}
        self._videos: list[tuple[str, str, dict[str, tuple[int, int]], list[int]]] = []
        self._frame_names: list[str] = []
        self._frame_sizes: list[np.ndarray] = []
        self._frame_ranges: dict[str, list[np.ndarray]] = {t: [] for t in ROW_TABLES}

    def shape(self, spec: ArraySpec) -> tuple[int, ...]:
        return (self.totals[spec.table],) + resolve_trailing(spec, self._dims)

    def append(self, rec: VideoRecord) -> None:
        ranges = {"frames": (len(self._frame_names), len(self._frame_names) + rec.num_frames)}
        for t in ROW_TABLES:
            n = rec.num_rows(t)
            start = self._pos[t]
            if start + n > self.totals[t]:
                raise ValueError(f"{self.path}: more {t} rows than announced ({self.totals[t]})")
            ranges[t] = (start, start + n)
            o = rec.offsets(t)
            self._frame_ranges[t].append(np.stack([o[:-1], o[1:]], axis=1) + start)
        crcs = []
        for s in ROW_ARRAYS:
            a, b = ranges[s.table]
            data = np.ascontiguousarray(getattr(rec, s.field))
            crcs.append(checksum_of(data))
            if b > a:
                self._write_rows(s, a, data)
        for t in ROW_TABLES:
            self._pos[t] = ranges[t][1]
        self._frame_names.extend(rec.frame_names)
        self._frame_sizes.append(rec.frame_sizes)
        self._videos.append((rec.name, rec.split, ranges, crcs))

    def commit(self) -> None:
        """Write the video and frame tables, flush, fsync and rename into place."""
        for t in ROW_TABLES:
            if self._pos[t] != self.totals[t]:
                raise ValueError(f"{self.path}: {self._pos[t]} {t} rows written, {self.totals[t]} announced")
        tables: dict[str, np.ndarray] = {
            "videos/name": np.array([v[0] for v in self._videos], dtype=object),
            "videos/split": np.array([v[1] for v in self._videos], dtype=object),
            "frames/name": np.array(self._frame_names, dtype=object),
            "frames/size": (np.concatenate(self._frame_sizes) if self._frame_sizes
                            else np.zeros((0, 2), np.int32)).astype(np.int32),
        }
        for t in ("frames",) + ROW_TABLES:
            tables[f"videos/{t}"] = np.array([v[2][t] for v in self._videos], dtype=np.int64).reshape(-1, 2)
        tables["videos/crc32c"] = np.array([v[3] for v in self._videos], dtype=np.uint32).reshape(-1, len(ROW_ARRAYS))
        for t in ROW_TABLES:
            fr = self._frame_ranges[t]
            tables[f"frames/{t}"] = (np.concatenate(fr) if fr else np.zeros((0, 2))).astype(np.int64)
        root = {
            "schema_version": SCHEMA_VERSION,
            "meta": self.meta.to_json(),
            "compression": json.dumps(self.compression),
            "segment": json.dumps(self.attrs),
        }
        self._finish(tables, root)

    def abort(self) -> None:
        raise NotImplementedError

    def _write_rows(self, spec: ArraySpec, start: int, data: np.ndarray) -> None:
        raise NotImplementedError

    def _finish(self, tables: dict[str, np.ndarray], root: dict[str, Any]) -> None:
        raise NotImplementedError


class SegmentReader:
    """Read access to one segment. Handles open lazily and never survive a fork."""

    backend = ""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._pid = -1

    # --- to implement
    def _open(self) -> None: ...
    def close(self) -> None: ...
    def root_attrs(self) -> dict[str, Any]: ...
    def has(self, key: str) -> bool: ...
    def dtype_shape(self, key: str) -> tuple[np.dtype, tuple[int, ...]]: ...
    def read(self, key: str, start: int | None = None, stop: int | None = None) -> np.ndarray: ...
    def read_str(self, key: str, start: int | None = None, stop: int | None = None) -> list[str]: ...
    def bytes_on_disk(self, key: str) -> int: ...

    def absent_shards(self, key: str) -> list[tuple[int, int]]:
        """Row ranges ``[lo, hi)`` of array ``key`` whose file is not on disk (zarr's shards),
        from a listing, without reading data. An HDF5 segment is one file: none."""
        return []

    def read_many(self, requests: list[tuple[str, int, int]]) -> list[np.ndarray]:
        """Several ``(key, start, stop)`` slices; backends may issue them concurrently."""
        return [self.read(k, a, b) for k, a, b in requests]

    def _ensure(self) -> None:
        if self._pid != os.getpid():
            self._pid = os.getpid()
            self._drop()
            self._open()

    def _drop(self) -> None: ...

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"])  # type: ignore[misc]

    def __enter__(self) -> "SegmentReader":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def meta(self) -> StoreMeta:
        """The segment's meta; a clear StoreError for another schema version."""
        attrs = self.root_attrs()
        version = attrs.get("schema_version")
        if version is None or "meta" not in attrs:
            raise StoreError(self.path, "not a feature store segment (no schema_version / meta attributes)")
        if int(version) != SCHEMA_VERSION:
            hint = {1: " (one extraction per mode, before one store served every mode)",
                    2: " (without per-video checksums)"}.get(int(version), "")
            raise StoreError(self.path, f"schema_version {int(version)}{hint} is not supported by this code, which "
                                        f"reads schema_version {SCHEMA_VERSION}: re-extract it with `cli.py detect` "
                                        f"(or use a matching revision of this code)")
        try:
            return StoreMeta.from_dict(json.loads(attrs["meta"]))
        except Exception as e:  # noqa: BLE001 - any parse failure is the same user problem
            raise StoreError(self.path, f"unreadable meta attribute: {e}") from e

    def compression(self) -> dict[str, str]:
        return json.loads(self.root_attrs().get("compression", "{}"))


# --------------------------------------------------------------------------- HDF5


class H5SegmentWriter(SegmentWriter):
    """HDF5 segment. ``in_memory`` (the default, for segments of a store folder, which the store
    writer buffers anyway): the file is built in memory (HDF5's core driver) and written to disk
    in one plain write, so a full disk is one clean OSError and never a half-flushed HDF5 file
    (whose handles then fail on every release). Otherwise (``merge``: one segment of the whole
    store) HDF5 writes the temporary file directly."""

    def __init__(self, *args: Any, in_memory: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        import h5py
        import hdf5plugin

        self.in_memory = in_memory
        self._f = (h5py.File(f"{self.tmp}.mem", "w", driver="core", backing_store=False, libver="latest")
                   if in_memory else _h5_call(h5py.File, self.tmp, "w", libver="latest"))
        self._ds = {}
        for s in ROW_ARRAYS:
            shape = self.shape(s)
            kw: dict[str, Any] = {}
            if self.compression[s.table] == "zstd":
                row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * np.dtype(s.dtype).itemsize
                kw = dict(chunks=(max(1, min(shape[0], _chunk_rows(row_bytes, H5_CHUNK_BYTES))),) + shape[1:],
                          **hdf5plugin.Zstd(clevel=3))
            # Without chunks the dataset is contiguous: the reader can memory-map it.
            self._ds[s.key] = _h5_call(self._f.create_dataset, s.key, shape=shape, dtype=s.dtype, **kw)
        _h5_call(self._f.flush)

    def _write_rows(self, spec: ArraySpec, start: int, data: np.ndarray) -> None:
        _h5_call(self._ds[spec.key].__setitem__, slice(start, start + len(data)), data)

    def _finish(self, tables: dict[str, np.ndarray], root: dict[str, Any]) -> None:
        import h5py

        for key, arr in tables.items():
            if arr.dtype == object:
                _h5_call(self._f.create_dataset, key, data=arr.astype(str).astype(object) if len(arr) else arr,
                         shape=arr.shape, dtype=h5py.string_dtype())
            else:
                _h5_call(self._f.create_dataset, key, data=arr)
        for k, v in root.items():
            self._f.attrs[k] = v
        _h5_call(self._f.flush)
        if self.in_memory:
            image = self._f.id.get_file_image()
            self._close()
            self._write_image(image)
        else:
            self._close(strict=True)
            with open(self.tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        os.rename(self.tmp, self.path)
        fsync_dir(self.path.parent)

    def _write_image(self, image: bytes) -> None:
        with open(self.tmp, "wb") as fh:
            fh.write(image)
            fh.flush()
            os.fsync(fh.fileno())

    def _close(self, strict: bool = False) -> None:
        ds, self._ds = self._ds, {}
        del ds
        try:
            _h5_call(self._f.close)
        except (OSError, RuntimeError):  # HDF5's "Can't destroy cache" after a failed write
            if strict:
                raise

    def abort(self) -> None:
        if not self.in_memory:
            # A write that failed (a full disk, a file size limit) leaves HDF5 with dirty metadata
            # that every handle's release and the close flush, failing again (a flood of "Exception
            # ignored" tracebacks) and, at exit, crashing the interpreter. The file is discarded:
            # send those writes to /dev/null (HDF5's descriptor now points there), so they succeed.
            with contextlib.suppress(Exception):
                fd = self._f.id.get_vfd_handle()
                null = os.open(os.devnull, os.O_RDWR)
                try:
                    os.dup2(null, fd)
                finally:
                    os.close(null)
        try:
            self._close()
        finally:
            self.tmp.unlink(missing_ok=True)


def _h5_call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Call an h5py function; an HDF5 write failure (h5py raises it as RuntimeError, with the
    errno inside the message) becomes an OSError with that errno."""
    try:
        return fn(*args, **kwargs)
    except RuntimeError as e:
        code = errno_in_message(e)
        if code is None:
            raise
        raise OSError(code, os.strerror(code)) from e


class H5SegmentReader(SegmentReader):
    backend = "hdf5"

    def _open(self) -> None:
        import h5py

        try:
            # A chunk cache that holds several compressed chunks, so that consecutive videos
            # of a chunked (compressed) dataset do not decompress the same chunk again.
            self._f = h5py.File(self.path, "r", rdcc_nbytes=H5_CHUNK_CACHE, rdcc_nslots=1021)
        except FileNotFoundError:
            raise StoreError(self.path, "segment file is missing") from None
        except OSError as e:
            raise StoreError(self.path, f"cannot open: truncated or corrupted HDF5 file ({e})") from None
        self._maps: dict[str, np.ndarray | None] = {}
        self._ds: dict[str, Any] = {}

    def _drop(self) -> None:
        self._f = None
        self._maps = {}
        self._ds = {}

    def close(self) -> None:
        f = getattr(self, "_f", None)
        if f is not None and self._pid == os.getpid():
            f.close()
        self._f = None
        self._maps = {}
        self._ds = {}
        self._pid = -1

    def root_attrs(self) -> dict[str, Any]:
        self._ensure()
        return {k: (v.decode() if isinstance(v, bytes) else v) for k, v in self._f.attrs.items()}

    def has(self, key: str) -> bool:
        self._ensure()
        return key in self._f

    def dtype_shape(self, key: str) -> tuple[np.dtype, tuple[int, ...]]:
        self._ensure()
        ds = self._f[key]
        return ds.dtype, ds.shape

    def _dataset(self, key: str) -> Any:
        ds = self._ds.get(key)
        if ds is None:
            ds = self._ds[key] = self._f[key]
        return ds

    def _map(self, key: str) -> np.ndarray | None:
        if key not in self._maps:
            ds = self._f[key]
            offset = ds.id.get_offset() if ds.chunks is None and ds.size > 0 else None
            self._maps[key] = (np.memmap(self.path, dtype=ds.dtype, mode="r", offset=offset, shape=ds.shape)
                               if offset is not None and ds.dtype.kind in "fiub" else None)
        return self._maps[key]

    def read(self, key: str, start: int | None = None, stop: int | None = None) -> np.ndarray:
        self._ensure()
        try:
            m = self._map(key)
            if m is not None:
                return np.array(m[start:stop])
            return self._dataset(key)[start:stop]
        except KeyError:
            raise StoreError(self.path, f"array {key!r} is missing") from None
        except OSError as e:
            raise StoreError(self.path, f"cannot read {key!r}: corrupted data ({e})") from None

    def read_str(self, key: str, start: int | None = None, stop: int | None = None) -> list[str]:
        self._ensure()
        try:
            return list(self._f[key].asstr()[start:stop])
        except KeyError:
            raise StoreError(self.path, f"array {key!r} is missing") from None

    def bytes_on_disk(self, key: str) -> int:
        self._ensure()
        return int(self._f[key].id.get_storage_size())


# --------------------------------------------------------------------------- zarr


class ZarrSegmentWriter(SegmentWriter):
    """Sharded zarr v3 arrays. Rows are buffered until a whole shard can be written, so no
    shard is ever rewritten (partial-shard writes read, modify and rewrite the shard)."""

    def __init__(self, *args: Any, shard_bytes: int = 256 << 20, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        import zarr
        from zarr.codecs import ZstdCodec

        self._g = zarr.open_group(str(self.tmp), mode="w", zarr_format=3)
        self._arr: dict[str, Any] = {}
        self._shard_rows: dict[str, int] = {}
        self._buf: dict[str, list[np.ndarray]] = {}
        self._buf_start: dict[str, int] = {}
        self._buf_rows: dict[str, int] = {}
        for s in ROW_ARRAYS:
            shape = self.shape(s)
            row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * np.dtype(s.dtype).itemsize
            chunk = max(1, min(shape[0], _chunk_rows(row_bytes)))
            per_shard = max(1, min(-(-max(shape[0], 1) // chunk), shard_bytes // max(1, chunk * row_bytes)))
            comp = [ZstdCodec(level=3)] if self.compression[s.table] == "zstd" else None
            self._arr[s.key] = self._g.create_array(
                s.key, shape=shape, dtype=s.dtype, chunks=(chunk,) + shape[1:],
                shards=(chunk * per_shard,) + shape[1:], compressors=comp, fill_value=0)
            self._shard_rows[s.key] = chunk * per_shard
            self._buf[s.key], self._buf_start[s.key], self._buf_rows[s.key] = [], 0, 0

    def _write_rows(self, spec: ArraySpec, start: int, data: np.ndarray) -> None:
        k = spec.key
        self._buf[k].append(data)
        self._buf_rows[k] += len(data)
        if self._buf_rows[k] >= self._shard_rows[k]:
            self._drain(k, final=False)

    def _drain(self, k: str, final: bool) -> None:
        if not self._buf_rows[k]:
            return
        data = np.concatenate(self._buf[k])
        n = len(data) if final else (len(data) // self._shard_rows[k]) * self._shard_rows[k]
        a = self._buf_start[k]
        self._arr[k][a:a + n] = data[:n]
        rest = data[n:]
        self._buf[k] = [rest] if len(rest) else []
        self._buf_rows[k] = len(rest)
        self._buf_start[k] = a + n

    def _finish(self, tables: dict[str, np.ndarray], root: dict[str, Any]) -> None:
        for k in self._arr:
            self._drain(k, final=True)
        for key, arr in tables.items():
            if arr.dtype == object:
                z = self._g.create_array(key, shape=arr.shape, dtype=str, chunks=(max(1, len(arr)),))
                if len(arr):
                    z[:] = np.array([str(x) for x in arr], dtype=str)
            else:
                z = self._g.create_array(key, shape=arr.shape, dtype=arr.dtype,
                                         chunks=(max(1, len(arr)),) + arr.shape[1:], compressors=None)
                if len(arr):
                    z[:] = arr
        self._g.attrs.update(root)
        _fsync_tree(self.tmp)
        os.rename(self.tmp, self.path)
        fsync_dir(self.path.parent)

    def abort(self) -> None:
        import shutil

        shutil.rmtree(self.tmp, ignore_errors=True)


class RawShards:
    """Direct reads of one local, uncompressed, sharded zarr v3 array: the layout
    :class:`ZarrSegmentWriter` writes without compression. A shard file holds raw little-endian
    chunks and, at its end, the index (per chunk: uint64 offset and length, both 2**64 - 1 for a
    chunk never written, which holds the fill value) and its CRC-32C (the zarr v3
    ``sharding_indexed`` codec with ``bytes`` inner codecs and ``bytes`` + ``crc32c`` index codecs).

    zarr-python reads a per-video slice through its codec pipeline at ~0.5 ms an array; reading
    the same bytes from a memory map of the shard costs what a raw memmap does. The index is read
    once per shard and checked against its CRC-32C; the data itself is checked by the store's
    per-video checksums. :meth:`of` gives None for any other layout (compressed, another codec
    chain, a remote store), which then goes through zarr.
    """

    EMPTY = (1 << 64) - 1

    def __init__(self, folder: Path, shape: tuple[int, ...], dtype: np.dtype, shard_rows: int, chunk_rows: int,
                 fill_value: Any, key_of: Any) -> None:
        self.folder, self.shape, self.dtype = folder, shape, dtype
        self.shard_rows, self.chunk_rows = shard_rows, chunk_rows
        self.fill_value, self._key_of = fill_value, key_of
        self.chunks_per_shard = shard_rows // chunk_rows
        self.row_bytes = dtype.itemsize * int(np.prod(shape[1:], dtype=np.int64))
        self._maps: dict[int, tuple[np.ndarray | None, list[tuple[int, int]] | None]] = {}

    @classmethod
    def of(cls, array: Any) -> "RawShards | None":
        try:
            from zarr.codecs import BytesCodec, Crc32cCodec, ShardingCodec
            from zarr.storage import LocalStore

            md = array.metadata
            codecs = tuple(md.codecs)
            if not (isinstance(array.store, LocalStore) and len(codecs) == 1 and isinstance(codecs[0], ShardingCodec)):
                return None
            sh = codecs[0]
            inner, index = tuple(sh.codecs), tuple(sh.index_codecs)
            little = lambda c: isinstance(c, BytesCodec) and (c.endian is None or c.endian.value == "little")  # noqa: E731
            dtype = np.dtype(array.dtype)
            shard, chunk = tuple(md.chunk_grid.chunk_shape), tuple(sh.chunk_shape)
            trailing = tuple(array.shape[1:])
            if not (len(inner) == 1 and little(inner[0]) and len(index) == 2 and little(index[0])
                    and isinstance(index[1], Crc32cCodec) and str(sh.index_location.value) == "end"
                    and dtype.kind in "biuf" and shard[1:] == trailing and chunk[1:] == trailing
                    and shard[0] % chunk[0] == 0):
                return None
            folder = Path(array.store.root) / array.path
            return cls(folder, tuple(array.shape), dtype.newbyteorder("<"), shard[0], chunk[0],
                       md.fill_value, md.encode_chunk_key)
        except (ImportError, AttributeError, TypeError, ValueError):  # another zarr version: its own path
            return None

    def _shard(self, s: int) -> tuple[np.ndarray | None, np.ndarray | None]:
        """(memory map of shard ``s``, its index (chunks, 2) uint64), (None, None) when absent."""
        if s not in self._maps:
            path = self.folder / self._key_of((s,) + (0,) * (len(self.shape) - 1))
            if not path.is_file():
                self._maps[s] = (None, None)
            else:
                import google_crc32c

                data = np.memmap(path, dtype=np.uint8, mode="r").view(np.ndarray)  # slices without memmap's overhead
                n = 16 * self.chunks_per_shard
                if len(data) < n + 4:
                    raise ValueError(f"shard {path.name} is shorter than its index")
                raw = bytes(data[len(data) - n - 4:len(data) - 4])
                if google_crc32c.value(raw) != int.from_bytes(bytes(data[len(data) - 4:]), "little"):
                    raise ValueError(f"the index of shard {path.name} fails its checksum")
                index = np.frombuffer(raw, dtype="<u8").reshape(-1, 2)
                full = index[:, 0] != self.EMPTY
                if bool(np.any(index[full, 0] + index[full, 1] > len(data) - n - 4)):
                    raise ValueError(f"the index of shard {path.name} points past its data")
                self._maps[s] = (data, [(int(o), int(m)) for o, m in index])
        return self._maps[s]

    def read(self, lo: int, hi: int) -> np.ndarray:
        """Rows ``[lo, hi)`` as a new array."""
        out = np.empty((max(hi - lo, 0),) + self.shape[1:], dtype=self.dtype)
        flat = out.reshape(-1).view(np.uint8)
        rb, row = self.row_bytes, lo
        while row < hi:
            c = row // self.chunk_rows
            first = row - c * self.chunk_rows  # the row's place in its chunk
            take = min(hi - row, self.chunk_rows - first)
            data, index = self._shard(c // self.chunks_per_shard)
            offset, size = (self.EMPTY, 0) if index is None else index[c % self.chunks_per_shard]
            at = slice((row - lo) * rb, (row - lo + take) * rb)
            if offset == self.EMPTY:
                out[row - lo:row - lo + take] = self.fill_value
            elif (first + take) * rb > size:
                raise ValueError("a chunk is shorter than its rows")
            else:
                flat[at] = data[offset + first * rb:offset + (first + take) * rb]
            row += take
        return out


class ZarrSegmentReader(SegmentReader):
    backend = "zarr"

    def _open(self) -> None:
        import zarr

        if not (self.path / "zarr.json").is_file():
            raise StoreError(self.path, "segment is missing or is not a zarr v3 group (no zarr.json)")
        try:
            self._g = zarr.open_group(str(self.path), mode="r")
        except Exception as e:  # noqa: BLE001 - zarr raises many types for a damaged group
            raise StoreError(self.path, f"cannot open: corrupted zarr group ({e})") from None
        self._a: dict[str, Any] = {}
        self._raw = {}

    def _drop(self) -> None:
        self._g = None
        self._a = {}
        self._raw: dict[str, RawShards | None] = {}

    def close(self) -> None:
        self._drop()
        self._pid = -1

    def root_attrs(self) -> dict[str, Any]:
        self._ensure()
        return dict(self._g.attrs)

    def _array(self, key: str) -> Any:
        self._ensure()
        if key not in self._a:
            try:
                self._a[key] = self._g[key]
            except KeyError:
                raise StoreError(self.path, f"array {key!r} is missing") from None
            except Exception as e:  # noqa: BLE001
                raise StoreError(self.path, f"cannot open array {key!r}: corrupted metadata ({e})") from None
        return self._a[key]

    def has(self, key: str) -> bool:
        try:
            self._array(key)
            return True
        except StoreError:
            return False

    def dtype_shape(self, key: str) -> tuple[np.dtype, tuple[int, ...]]:
        a = self._array(key)
        return np.dtype(a.dtype) if a.dtype.kind != "T" else np.dtype(object), tuple(a.shape)

    def read(self, key: str, start: int | None = None, stop: int | None = None) -> np.ndarray:
        a = self._array(key)
        try:
            return np.asarray(a[start:stop])
        except Exception as e:  # noqa: BLE001
            raise StoreError(self.path, f"cannot read {key!r}: corrupted or truncated shard ({e})") from None

    def read_str(self, key: str, start: int | None = None, stop: int | None = None) -> list[str]:
        return [str(x) for x in self.read(key, start, stop)]

    def read_many(self, requests: list[tuple[str, int, int]]) -> list[np.ndarray]:
        """Uncompressed local arrays straight from their shards (:class:`RawShards`); the rest in
        one event-loop round trip through zarr: its per-call latency (~0.5 ms) dominates small
        per-video reads otherwise."""
        self._ensure()
        out: list[Any] = [None] * len(requests)
        rest = []
        for n, (k, lo, hi) in enumerate(requests):
            raw = self._raw[k] if k in self._raw else self.raw(k)
            if raw is None:
                rest.append(n)
                continue
            try:
                out[n] = raw.read(lo, hi)
            except (OSError, ValueError) as e:
                raise StoreError(self.path, f"cannot read {k!r}: corrupted or truncated shard ({e})") from None
        if rest:
            for n, arr in zip(rest, self._read_many_zarr([requests[n] for n in rest])):
                out[n] = arr
        return out

    def raw(self, key: str) -> RawShards | None:
        """The direct reader of array ``key``, or None when zarr must read it."""
        a = self._array(key)
        if key not in self._raw:
            self._raw[key] = RawShards.of(a)
        return self._raw[key]

    def _read_many_zarr(self, requests: list[tuple[str, int, int]]) -> list[np.ndarray]:
        import asyncio

        from zarr.core.sync import sync

        arrays = [self._array(k).async_array for k, _, _ in requests]

        async def gather() -> list[Any]:
            return await asyncio.gather(*(a.getitem(slice(lo, hi)) for a, (_, lo, hi) in zip(arrays, requests)))

        try:
            return [np.asarray(x) for x in sync(gather())]
        except Exception as e:  # noqa: BLE001
            raise StoreError(self.path, f"cannot read {[k for k, _, _ in requests]}: corrupted or truncated "
                                        f"shard ({e})") from None

    def bytes_on_disk(self, key: str) -> int:
        self._ensure()
        d = self.path / key
        return sum(p.stat().st_size for p in d.rglob("*") if p.is_file() and p.name != "zarr.json")

    def absent_shards(self, key: str) -> list[tuple[int, int]]:
        """Row ranges ``[lo, hi)`` of array ``key`` whose shard file is not in the array's folder.
        zarr writes no file for a shard that holds only the fill value (0), so an absent file is
        that or a lost one: the per-video checksums tell them apart (``store.check``)."""
        a = self._array(key)
        rows = int(a.shape[0]) if a.shape else 0
        try:
            step = int(tuple(a.metadata.chunk_grid.chunk_shape)[0])
            encode = a.metadata.encode_chunk_key
        except (AttributeError, TypeError, IndexError):  # another zarr version: cannot tell
            return []
        folder = self.path / key
        present = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
        tail = (0,) * (len(a.shape) - 1)
        return [(s * step, min(rows, (s + 1) * step)) for s in range(-(-rows // max(step, 1)))
                if encode((s,) + tail) not in present]


WRITERS = {"hdf5": H5SegmentWriter, "zarr": ZarrSegmentWriter}
READERS = {"hdf5": H5SegmentReader, "zarr": ZarrSegmentReader}


def check_schema_arrays(seg: SegmentReader, meta: StoreMeta) -> None:
    """Every schema array is present with its dtype and trailing shape; tables agree in rows."""
    dims = meta.dims()
    rows: dict[str, int] = {}
    for s in ROW_ARRAYS:
        if not seg.has(s.key):
            raise StoreError(seg.path, f"array {s.key!r} is missing")
        dtype, shape = seg.dtype_shape(s.key)
        want = resolve_trailing(s, dims)
        if dtype != np.dtype(s.dtype) or tuple(shape[1:]) != want:
            what = "feature size" if s.column in ("features", "union", "dists") else "shape"
            raise StoreError(seg.path, f"array {s.key!r} is {dtype} {tuple(shape)}: wrong {what}, "
                                       f"the store's meta says {s.dtype} (rows, {', '.join(map(str, want))})")
        if rows.setdefault(s.table, shape[0]) != shape[0]:
            raise StoreError(seg.path, f"arrays of {s.table} disagree in row count ({rows[s.table]} vs {shape[0]})")
    for key in [f"videos/{c}" for c in VIDEO_COLUMNS] + [f"frames/{c}" for c in FRAME_COLUMNS]:
        if not seg.has(key):
            raise StoreError(seg.path, f"table array {key!r} is missing")
