"""Cost of verifying the store's per-video checksums in the stage-2 loader.

A synthetic store (:mod:`store.testing`) with AG-sized rows (2048-d f16 features and pooled
unions by default) is read through :class:`~stage2_relations.data.VideoDataset`, the training
view with RS-Net's negatives (what ``train`` iterates: read, views, masks, collation), with
checksum verification off, on (CRC-32C, what the store records), and on with zlib's crc32
computed instead (the alternative, patched in for the measurement only), in alternating passes.
Verification is once per video and array per process, so it costs in the first pass of a
process (every epoch with DataLoader workers, which start afresh each epoch; the first epoch
without workers) and nothing later; that first pass is what is measured here, with a fresh
dataset each pass. The raw throughput of both checksums over every array is given beside it.

    python bench/checksum_cost.py                  # 120 videos, 2048-d
    python bench/checksum_cost.py --videos 60 --dim 1024

Figures go to stdout and ``bench/results/checksum_cost.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import statistics
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stage2_relations.data import Collator, VideoDataset  # noqa: E402
from stage2_relations.view_options import ViewOptions  # noqa: E402
from store import Store, StoreWriter, open_store  # noqa: E402
from store.backends import checksum_of  # noqa: E402
from store.schema import ROW_ARRAYS  # noqa: E402
from store.testing import synthetic_meta, synthetic_video  # noqa: E402
from results_file import save_results  # noqa: E402


@contextlib.contextmanager
def _patched(obj, name, value):
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


def write_store(path: Path, videos: int, dim: int) -> Path:
    meta = synthetic_meta(feature_dim=dim, union_shape=(dim,))
    with StoreWriter(path, meta, segment_bytes=64 << 20) as w:
        for i in range(videos):
            # AG-like: ~20 annotated frames a video, a few objects and ~10 detections a frame
            w.write_video(synthetic_video(meta, f"v{i:04d}.mp4", seed=i, num_frames=20, split="train",
                                          max_objects=5, max_detections=12, empty_relation_frames=()))
    return path


def _zlib_verify(self, i, j, name, arrays):  # noqa: ANN001 - the alternative's cost, nothing compared
    for _, arr in arrays:
        zlib.crc32(np.ascontiguousarray(arr).reshape(-1).view(np.uint8))


def one_pass(path: Path, verify: bool, mode: str) -> float:
    """Seconds to load, build and collate every video once, from a fresh dataset (so a first
    pass: nothing verified yet in this process)."""
    ds = VideoDataset(str(path), "train", mode, train=True, options=ViewOptions(negatives=True), verify=verify)
    collate = Collator.of(ds)
    t0 = time.perf_counter()
    for i in range(0, len(ds), 2):
        collate([ds[j] for j in range(i, min(len(ds), i + 2))])
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=120)
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--mode", default="sgdet", choices=["predcls", "sgcls", "sgdet"])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "checksum_cost.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        path = write_store(Path(tmp) / "s.h5", args.videos, args.dim)
        st = open_store(path, verify=False)
        nbytes = sum(st.read_video(v).nbytes() for v in st.videos())
        # raw throughput over every array read, in the loader's order
        recs = [st.read_video(v) for v in st.videos()]
        raw = {}
        for name, fn in (("crc32c", checksum_of),
                         ("zlib_crc32", lambda a: zlib.crc32(np.ascontiguousarray(a).reshape(-1).view(np.uint8)))):
            best = float("inf")
            for _ in range(3):
                t0 = time.perf_counter()
                for r in recs:
                    for s in ROW_ARRAYS:
                        fn(getattr(r, s.field))
                best = min(best, time.perf_counter() - t0)
            raw[name] = best
        one_pass(path, True, args.mode)  # warm the page cache and imports
        times: dict[str, list[float]] = {"off": [], "crc32c": [], "zlib_crc32": []}
        for _ in range(args.rounds):
            times["off"].append(one_pass(path, False, args.mode))
            times["crc32c"].append(one_pass(path, True, args.mode))
            with _patched(Store, "_verify", _zlib_verify):
                times["zlib_crc32"].append(one_pass(path, True, args.mode))
    over = {k: statistics.median([a / b for a, b in zip(times[k], times["off"])]) - 1.0 for k in ("crc32c", "zlib_crc32")}
    result = {
        "videos": args.videos, "feature_dim": args.dim, "mode": args.mode, "bytes": nbytes,
        "raw_seconds": raw, "raw_GBps": {k: nbytes / v / 1e9 for k, v in raw.items()},
        "pass_seconds": times, "median_seconds": {k: statistics.median(v) for k, v in times.items()},
        "overhead_first_pass": over, "overhead_later_passes": 0.0,
        "machine": platform.platform(), "torch_threads": 1,
    }
    print(f"store: {args.videos} videos, {nbytes / 1e6:.0f} MB of arrays, {args.dim}-d features; checksum alone: "
          + ", ".join(f"{k} {v:.3f} s ({result['raw_GBps'][k]:.1f} GB/s)" for k, v in raw.items()))
    print(f"loader pass ({args.mode} training view, negatives, collation), median of {args.rounds}: "
          f"{result['median_seconds']['off']:.3f} s without verification; CRC-32C (the store's) "
          f"{result['median_seconds']['crc32c']:.3f} s ({100 * over['crc32c']:+.1f} %), zlib crc32 "
          f"{result['median_seconds']['zlib_crc32']:.3f} s ({100 * over['zlib_crc32']:+.1f} %) in a process's first "
          f"pass; later passes verify nothing")
    save_results(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
