"""Per-video read throughput of the feature store against a raw ``np.memmap``.

Writes one synthetic extraction (AG-like row counts, 2048-d f16 object and pooled union
features) into each layout, plus the same per-row arrays as raw ``.npy`` files, then reads
every video (all arrays, one slice per array per video) in store order and in a shuffled
order, warm (after one untimed pass), and reports GB/s of array bytes, ms per video and
bytes on disk per frame. Figures go to stdout and ``bench/results/store_read.json``.

    python bench/store_read.py                 # ~1 GB of arrays, a few minutes on 2 cores
    python bench/store_read.py --gb 4          # bigger
    python bench/store_read.py --layouts all   # adds zarr-zstd (slow: ~35 ms per video)
"""

from __future__ import annotations

import argparse
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from store import StoreWriter, open_store  # noqa: E402
from store.schema import ROW_ARRAYS, ROW_TABLES  # noqa: E402
from store.testing import synthetic_meta, synthetic_video  # noqa: E402
from results_file import save_results  # noqa: E402

LAYOUTS = {
    # name: (suffix, compression of every table)
    "hdf5": (".h5", {}),
    "hdf5-zstd": (".h5", {t: "zstd" for t in ROW_TABLES}),
    "zarr": (".zarr", {}),
    "zarr-zstd": (".zarr", {t: "zstd" for t in ROW_TABLES}),
}


def make_videos(meta, gb: float, seed: int):
    """Yield AG-like videos until ``gb`` GB of array bytes: ~23 frames, ~3 GT objects and
    up to 8 detections per frame, the pairs of ``rules.pairing.stored_pairs``."""
    total, i = 0, 0
    while total < gb * 1e9:
        rec = synthetic_video(meta, f"v{i:05d}.mp4", seed=seed + i, num_frames=int(16 + (i * 7) % 16),
                              split="test" if i % 5 == 0 else "train", max_objects=5, max_detections=8,
                              empty_relation_frames=(1,))
        total += rec.nbytes()
        i += 1
        yield rec


def write_raw(folder: Path, store) -> dict[str, np.ndarray]:
    """The store's per-row arrays, same bytes and order, as raw .npy files to memory-map."""
    folder.mkdir(parents=True)
    totals = {t: sum(store.num_rows(v, t) for v in store.videos()) for t in ROW_TABLES}
    dims = store.meta.dims()
    maps = {}
    for s in ROW_ARRAYS:
        from store.schema import resolve_trailing

        shape = (totals[s.table],) + resolve_trailing(s, dims)
        maps[s.key] = np.lib.format.open_memmap(folder / f"{s.key.replace('/', '.')}.npy", mode="w+",
                                                dtype=s.dtype, shape=shape)
    pos = {t: 0 for t in ROW_TABLES}
    for v in store.videos():
        rec = store.read_video(v)
        for s in ROW_ARRAYS:
            n = rec.num_rows(s.table)
            maps[s.key][pos[s.table]:pos[s.table] + n] = getattr(rec, s.field)
        for t in ROW_TABLES:
            pos[t] += rec.num_rows(t)
    for m in maps.values():
        m.flush()
    return maps


def time_reads(read, order: list[str]) -> float:
    t0 = time.perf_counter()
    for v in order:
        read(v)
    return time.perf_counter() - t0


def disk_bytes(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gb", type=float, default=1.0, help="GB of array bytes per layout (default 1)")
    ap.add_argument("--layouts", default="hdf5,hdf5-zstd,zarr",
                    help=f"comma list of {', '.join(LAYOUTS)}, or 'all' (default: hdf5,hdf5-zstd,zarr)")
    ap.add_argument("--dir", type=Path, default=None, help="working folder (default: a temporary one)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "store_read.json")
    ap.add_argument("--repeats", type=int, default=2, help="timed passes per order (the best is kept)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    layouts = list(LAYOUTS) if args.layouts == "all" else [x for x in args.layouts.split(",") if x]
    unknown = [x for x in layouts if x not in LAYOUTS]
    if unknown:
        ap.error(f"unknown layouts {unknown}; choose from {', '.join(LAYOUTS)}")
    work = Path(tempfile.mkdtemp(prefix="store_bench_", dir=args.dir))
    meta = synthetic_meta(feature_dim=2048, union_shape=(2048,))
    rng = np.random.default_rng(args.seed)
    results: dict = {"gb": args.gb, "machine": platform.platform(), "python": platform.python_version(),
                     "layouts": {}}
    try:
        first = None
        for name in layouts:
            suffix, comp = LAYOUTS[name]
            path = work / f"{name}{suffix}"
            t0 = time.perf_counter()
            with StoreWriter(path, meta, compression=comp) as w:
                for rec in make_videos(meta, args.gb, args.seed):
                    w.write_video(rec)
            write_s = time.perf_counter() - t0
            store = open_store(path)
            if first is None:
                first = store
            names = store.videos()
            shuffled = list(rng.permutation(names))
            nbytes = sum(store.read_video(v).nbytes() for v in names)  # also the warm-up pass
            frames = sum(store.num_rows(v, "frames") for v in names)
            row = {"videos": len(names), "frames": frames, "array_bytes": nbytes, "write_s": round(write_s, 2),
                   "disk_bytes": disk_bytes(path), "segments": len(store.segments)}
            row["disk_bytes_per_frame"] = round(row["disk_bytes"] / frames)
            for order_name, order in (("sequential", names), ("shuffled", shuffled)):
                best = min(time_reads(store.read_video, order) for _ in range(args.repeats))
                row[f"{order_name}_GBps"] = round(nbytes / best / 1e9, 3)
                row[f"{order_name}_ms_per_video"] = round(1e3 * best / len(names), 3)
            results["layouts"][name] = row
            print(f"{name:10s} {row['sequential_GBps']:6.2f} GB/s seq  {row['shuffled_GBps']:6.2f} GB/s shuffled  "
                  f"{row['sequential_ms_per_video']:7.2f} ms/video  {row['disk_bytes_per_frame'] / 1e3:7.1f} kB/frame "
                  f"on disk  (write {write_s:.1f} s)", flush=True)
        # The baseline: the same bytes as raw memory-mapped arrays, one slice per array per video.
        store = first
        maps = write_raw(work / "raw", store)
        ranges = {v: {t: tuple(store.segments[store._where[v][0]].ranges[t][store._where[v][1]]) for t in ROW_TABLES}
                  for v in store.videos()}

        def read_raw(v: str) -> list[np.ndarray]:
            r = ranges[v]
            return [np.array(maps[s.key][r[s.table][0]:r[s.table][1]]) for s in ROW_ARRAYS]

        names = store.videos()
        nbytes = sum(sum(a.nbytes for a in read_raw(v)) for v in names)
        row = {"videos": len(names), "array_bytes": nbytes, "disk_bytes": disk_bytes(work / "raw")}
        frames = sum(store.num_rows(v, "frames") for v in names)
        row["disk_bytes_per_frame"] = round(row["disk_bytes"] / frames)
        for order_name, order in (("sequential", names), ("shuffled", list(rng.permutation(names)))):
            best = min(time_reads(read_raw, order) for _ in range(args.repeats))
            row[f"{order_name}_GBps"] = round(nbytes / best / 1e9, 3)
            row[f"{order_name}_ms_per_video"] = round(1e3 * best / len(names), 3)
        results["layouts"]["memmap"] = row
        print(f"{'memmap':10s} {row['sequential_GBps']:6.2f} GB/s seq  {row['shuffled_GBps']:6.2f} GB/s shuffled  "
              f"{row['sequential_ms_per_video']:7.2f} ms/video  {row['disk_bytes_per_frame'] / 1e3:7.1f} kB/frame")
        for name in layouts:
            r = results["layouts"][name]
            r["vs_memmap_sequential"] = round(r["sequential_GBps"] / row["sequential_GBps"], 3)
            r["vs_memmap_shuffled"] = round(r["shuffled_GBps"] / row["shuffled_GBps"], 3)
            print(f"{name:10s} / memmap: {r['vs_memmap_sequential']:.2f} sequential, "
                  f"{r['vs_memmap_shuffled']:.2f} shuffled")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    save_results(args.out, results)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
