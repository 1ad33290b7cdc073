"""Stage-2 loader speed at Action Genome size: what one core turns into batches, and what the
loader costs a training epoch.

Records are AG-sized (``write_ag_sized_store``): 16 frames a video, about 3 GT objects, 15
detections and 24 stored pairs a frame, 2048-d float16 RoI and pooled union features, as the
r101-c4 detector writes them. The view is SGDET training with RS-Net's negatives (the heaviest:
the assignment, the negatives and their sampling, the spatial masks, collation).

1. ``loader``: one process, one torch thread, ``VideoDataset`` + ``Collator`` over every video,
   reading from the store (nothing preloaded): frames per second of CPU time (what one core
   does) and of wall time (what this, possibly shared, machine gave), best of ``--repeats``.
2. ``overhead``: one training epoch of ``--config``'s head from the store through a DataLoader
   with each of ``--workers`` (0: loading in the training process; else workers with prefetch
   2), against the same batches collated beforehand and kept in memory; the ratio store /
   memory is the loader's cost to training.

Figures go to stdout and ``bench/results/loader_speed.json``.

    python bench/loader_speed.py                  # about 2 minutes on 2 cores
    python bench/loader_speed.py --videos 200 --workers 0,1,2
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from epoch import epoch_batches, fresh_model, step  # noqa: E402
from results_file import save_results  # noqa: E402
from stage2_relations.data import Collator, VideoDataset  # noqa: E402
from stage2_relations.recipe import load_config  # noqa: E402
from stage2_relations.view_options import ViewOptions  # noqa: E402
from store import StoreWriter, open_store  # noqa: E402
from store.testing import synthetic_meta, synthetic_video  # noqa: E402

AG_FEATURE_DIM = 2048


def write_ag_sized_store(path: Path, videos: int, frames: int = 16, seed: int = 0,
                         union_shape: tuple[int, ...] = (AG_FEATURE_DIM,)) -> Path:
    """A store of ``videos`` random AG-sized videos (all in the train split); returns ``path``.
    ``union_shape``: pooled (2048,) or STTran's maps (1024, 7, 7)."""
    meta = synthetic_meta(feature_dim=AG_FEATURE_DIM, union_shape=union_shape,
                          source={"dataset": "synthetic-ag-sized", "reader": {"min_frames": 1}})
    with StoreWriter(path, meta) as w:
        for i in range(videos):
            w.write_video(synthetic_video(meta, f"v{i:04d}.mp4", seed=seed * 100003 + i, num_frames=frames,
                                          max_objects=6, max_detections=32, empty_relation_frames=(),
                                          small_fraction=0.1))
    return path


def record_sizes(path: Path) -> dict[str, float]:
    st = open_store(path)
    rows = {t: 0 for t in ("frames", "gt_objects", "detections", "pairs")}
    for v in st.videos():
        for t in rows:
            rows[t] += st.num_rows(v, t)
    f = rows.pop("frames")
    return {"frames": f, **{f"{t}_per_frame": n / f for t, n in rows.items()}}


def loader_throughput(path: Path, repeats: int) -> dict[str, float]:
    """Frames/s of VideoDataset + Collator in this process (one torch thread), best of ``repeats``."""
    ds = VideoDataset(str(path), "train", "sgdet", train=True, options=ViewOptions(negatives=True))
    collate = Collator.of(ds)
    collate([ds[0]])  # warm-up: first-call costs, the store's tables
    best: dict[str, float] = {}
    pairs = 0
    for r in range(repeats):
        ds.set_epoch(r)
        c0, w0, frames, pairs = time.process_time(), time.perf_counter(), 0, 0
        for i in range(len(ds)):
            b = collate([ds[i]])
            frames += b.num_frames
            pairs += b.num_pairs
        cpu, wall = time.process_time() - c0, time.perf_counter() - w0
        if not best or cpu < best["cpu_seconds"]:
            best = {"frames": frames, "cpu_seconds": cpu, "wall_seconds": wall, "frames_per_cpu_s": frames / cpu,
                    "frames_per_wall_s": frames / wall, "view_pairs_per_frame": pairs / frames}
    return best


def training_overhead(path: Path, config: str, workers: int, repeats: int) -> dict[str, float]:
    """One epoch from the store (DataLoader, ``workers`` workers, prefetch 2) against the same
    batches kept in memory, fastest of ``repeats`` runs each, alternated."""
    cfg = load_config(config, {"store": str(path), "mode": "sgdet", "train_split": "train"})
    meta = open_store(path).meta
    ds = VideoDataset(str(path), "train", "sgdet", train=True, seed=cfg.seed, options=cfg.view_options())
    order, collate, batches, frames = epoch_batches(ds, cfg)
    vpb = cfg.videos_per_batch

    def fresh():
        return fresh_model(cfg, meta)

    model, opt = fresh()
    for b in batches[:3]:  # warm-up
        step(model, opt, b, cfg.grad_clip)

    def from_store() -> tuple[float, float]:
        """(epoch seconds, seconds until the first batch: the workers' start)."""
        model, opt = fresh()
        fresh_ds = VideoDataset(str(path), "train", "sgdet", train=True, seed=cfg.seed, options=cfg.view_options())
        loader = torch.utils.data.DataLoader(fresh_ds, batch_size=vpb, sampler=order, collate_fn=collate,
                                             num_workers=workers, prefetch_factor=2 if workers else None,
                                             multiprocessing_context=open_store(path).mp_context if workers else None)
        t0 = time.perf_counter()
        first = None
        for b in loader:
            if first is None:
                first = time.perf_counter() - t0
            step(model, opt, b, cfg.grad_clip)
        return time.perf_counter() - t0, first or 0.0

    def from_memory() -> float:
        model, opt = fresh()
        t0 = time.perf_counter()
        for b in batches:
            step(model, opt, b, cfg.grad_clip)
        return time.perf_counter() - t0

    runs, memory_s = [], []
    for _ in range(repeats):
        runs.append(from_store())
        memory_s.append(from_memory())
    store_s, startup_s = min(runs)
    return {"config": config, "head": cfg.head, "rsnet": cfg.rsnet is not None, "videos_per_batch": vpb,
            "workers": workers, "prefetch_factor": 2 if workers else None, "frames": frames,
            "store_seconds": store_s, "startup_seconds": startup_s, "memory_seconds": min(memory_s),
            "all_store_seconds": [r[0] for r in runs], "all_memory_seconds": memory_s,
            "ratio": store_s / min(memory_s), "ratio_after_startup": (store_s - startup_s) / min(memory_s),
            "head_frames_per_s": frames / min(memory_s)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=int, default=100, help="AG-sized videos of 16 frames")
    ap.add_argument("--repeats", type=int, default=3, help="passes of each measurement (the fastest is kept)")
    ap.add_argument("--config", default="configs/demo_sttran_rsnet.yaml", help="the head of the overhead epoch")
    ap.add_argument("--workers", default="0,1", help="DataLoader workers of the overhead epoch, comma-separated")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the training step")
    ap.add_argument("--dir", default=None, help="where the temporary store goes (default: the system's)")
    ap.add_argument("--out", default="bench/results/loader_speed.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = write_ag_sized_store(Path(tmp) / "ag_sized.h5", args.videos)
        sizes = record_sizes(path)
        torch.set_num_threads(1)
        loader = loader_throughput(path, args.repeats)
        torch.set_num_threads(args.threads)
        overhead = [training_overhead(path, args.config, int(w), max(2, args.repeats - 1))
                    for w in args.workers.split(",")]
    payload = {"records": sizes, "loader": loader, "overhead": overhead, "torch_threads": args.threads}
    print(f"AG-sized records: {sizes['frames']} frames, {sizes['gt_objects_per_frame']:.1f} GT objects, "
          f"{sizes['detections_per_frame']:.1f} detections, {sizes['pairs_per_frame']:.1f} stored pairs a frame, "
          f"2048-d f16 features; SGDET training view with negatives: {loader['view_pairs_per_frame']:.1f} pairs a frame")
    print(f"loader, one process, 1 thread: {loader['frames_per_cpu_s']:,.0f} frames per CPU second "
          f"({loader['frames_per_wall_s']:,.0f} per wall second on this machine); goal >= 3,000")
    for o in overhead:
        print(f"training epoch, {o['head']}{' + RS-Net' if o['rsnet'] else ''} ({args.config}), {o['frames']} frames, "
              f"{o['workers']} worker(s), prefetch {o['prefetch_factor']}, {args.threads} thread(s): from the store "
              f"{o['store_seconds']:.2f} s, in memory {o['memory_seconds']:.2f} s, ratio {o['ratio']:.3f} (goal <= "
              f"1.05); {o['startup_seconds']:.2f} s of it before the first batch, {o['ratio_after_startup']:.3f} after")
    print(f"wrote {save_results(args.out, payload)}")


if __name__ == "__main__":
    main()
