"""Throughput of ``detect`` (:func:`stage1_detect.extract.extract`) against the bare model.

On one synthetic AG (``synth``), with one detector, it times:

* ``model``: ``encode`` + ``detect`` alone, frames preloaded in memory, in the batches
  ``extract`` uses (one video at a time, ``--batch-size`` frames a forward);
* ``record``: everything :func:`~stage1_detect.extract.video_record` computes (detections,
  GT-box features, union features of every pair), frames preloaded, nothing written;
* ``extract``: the detect command itself, from the frames on disk (DataLoader workers
  decoding PNGs or mp4) to a committed store (writer thread), once with pooled union
  features and once with union maps;

and reports frames/s, the ratio extract/model (goal: >= 0.9, i.e. decoding and writing
hidden behind the forward; extract/record isolates decoding and writing from the extra
pooling) and the store's bytes per frame for each union mode. Each figure is the best of
``--rounds`` rounds (a shared machine's load changes from one minute to the next); every
round is in the JSON.

The detector is the ``small`` architecture, untrained, with every class scored and the
person logit raised so that a frame has 7-9 detections and one person box, about what a
trained AG detector keeps; ``--arch`` takes another (untrained) one.

    python bench/detect_speed.py                          # 1-3 min on 2 CPU cores (shared: slower)
    python bench/detect_speed.py --videos 40 --frames 16  # bigger
    python bench/detect_speed.py --device cuda --arch r101-c4 --size 480x360

Figures go to stdout and ``bench/results/detect_speed.json``.
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
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stage1_detect.action_genome import ReaderOptions, load_action_genome  # noqa: E402
from stage1_detect.detectors import build_detector  # noqa: E402
from stage1_detect.extract import ExtractConfig, extract, store_meta, video_record  # noqa: E402
from stage1_detect.frames import open_frame_source  # noqa: E402
from synth import SynthConfig, generate_synthetic_ag  # noqa: E402
from results_file import save_results  # noqa: E402


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def build(arch: str) -> torch.nn.Module:
    torch.manual_seed(0)
    settings = {"score_thresh": 0.0, "max_detections": 16, "rpn_post_nms_top_n_test": 10}
    detector = build_detector(arch, settings).eval()
    with torch.no_grad():
        detector.model.roi_heads.box_predictor.cls_score.bias[detector.settings.person_label] += 3.0
    return detector


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_model(detector, videos, frames, batch_size: int, device: str, full: bool, meta) -> float:
    """Seconds for encode+detect (or the whole video_record when ``full``) over every video."""
    sync(device)
    start = time.perf_counter()
    for video in videos:
        images = frames[video.name]
        if full:
            video_record(video, images, detector, meta, batch_size=batch_size, device=device)
            continue
        for s in range(0, len(images), batch_size):
            batch = [torch.from_numpy(im).permute(2, 0, 1).to(device) for im in images[s:s + batch_size]]
            detector.detect(detector.encode(batch))
    sync(device)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=int, default=6, help="Synthetic videos (about 3 in 4 are kept).")
    ap.add_argument("--frames", type=int, default=16, help="Annotated frames per video.")
    ap.add_argument("--size", default="320x240", help="Frame size WIDTHxHEIGHT.")
    ap.add_argument("--arch", default="small")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers of extract.")
    ap.add_argument("--frame-source", choices=["png", "mp4"], default="png")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--rounds", type=int, default=3,
                    help="Measurement rounds; the best of each figure is printed (the machine may be shared).")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default).")
    ap.add_argument("--data", type=Path, default=None, help="Keep the synthetic data and stores here.")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "detect_speed.json")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    width, height = (int(v) for v in args.size.lower().split("x"))

    work = args.data or Path(tempfile.mkdtemp(prefix="detect_speed_"))
    try:
        root = work / "ag"
        t0 = time.perf_counter()
        generate_synthetic_ag(root, SynthConfig(videos=args.videos, frames_per_video=args.frames, width=width,
                                                height=height, seed=0), progress=False)
        print(f"synthetic AG: {time.perf_counter() - t0:.1f} s -> {root}")
        reader = ReaderOptions()
        ag = load_action_genome(root, reader)
        videos = sorted((v for split in ("train", "val", "test") for v in ag.videos(split)), key=lambda v: v.name)
        n_frames = sum(len(v.frames) for v in videos)
        source = open_frame_source(root, args.frame_source)
        t0 = time.perf_counter()
        frames = {v.name: source.read(v.name, [f.frame_number for f in v.frames]) for v in videos}
        decode_s = time.perf_counter() - t0
        detector = build(args.arch).to(args.device)
        meta = store_meta(detector, ag.vocabulary, "", "pooled", {})

        # Warm up (allocator, oneDNN/cuDNN kernels) on the first video.
        time_model(detector, videos[:1], frames, args.batch_size, args.device, True, meta)
        # Rounds of (model, record, extract pooled, extract map), each ratio taken within its
        # round: on a shared machine the load changes from one minute to the next.
        rounds = []
        for r in range(args.rounds):
            row = {"model_s": time_model(detector, videos, frames, args.batch_size, args.device, False, meta),
                   "record_s": time_model(detector, videos, frames, args.batch_size, args.device, True, meta)}
            for union in ("pooled", "map"):
                store = work / f"store_{union}.h5"
                shutil.rmtree(store, ignore_errors=True)
                store.with_name(store.name + ".extraction_log.jsonl").unlink(missing_ok=True)
                config = ExtractConfig(batch_size=args.batch_size, num_workers=args.workers,
                                       frame_source=args.frame_source, union_mode=union)
                summary = extract(root, store, detector, weights_sha256="", reader_options=reader, config=config,
                                  device=args.device, progress=False)
                assert summary.frames == n_frames and not summary.failed, summary.line()
                row[f"extract_{union}_s"] = summary.seconds
                row[f"{union}_bytes_per_frame"] = folder_bytes(store) / n_frames
            for key in ("model", "record", "extract_pooled", "extract_map"):
                row[f"{key}_fps"] = n_frames / row[f"{key}_s"]
            row["ratio_pooled"] = row["extract_pooled_fps"] / row["model_fps"]
            row["ratio_map"] = row["extract_map_fps"] / row["model_fps"]
            row["ratio_record"] = row["record_fps"] / row["model_fps"]
            rounds.append(row)
            print(f"round {r + 1}: model {row['model_fps']:.1f}, record {row['record_fps']:.1f}, extract pooled "
                  f"{row['extract_pooled_fps']:.1f}, map {row['extract_map_fps']:.1f} frames/s")

        pairs = dets = 0
        from store import open_store

        with open_store(work / "store_pooled.h5") as s:
            for v in s.videos():
                pairs += s.num_rows(v, "pairs")
                dets += s.num_rows(v, "detections")
    finally:
        if args.data is None:
            shutil.rmtree(work, ignore_errors=True)

    def med(key: str) -> float:
        return float(np.median([r[key] for r in rounds]))

    def best(key: str) -> float:
        return float(max(r[key] for r in rounds))

    fps_keys = ("model_fps", "record_fps", "extract_pooled_fps", "extract_map_fps")

    results = {
        "machine": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(), "device": args.device, "arch": args.arch,
        "videos": len(videos), "frames": n_frames, "size": [width, height], "batch_size": args.batch_size,
        "workers": args.workers, "frame_source": args.frame_source,
        "detections_per_frame": dets / n_frames, "pairs_per_frame": pairs / n_frames,
        "decode_frames_per_s": n_frames / decode_s, "rounds": rounds,
        "median": {k: med(k) for k in fps_keys + ("ratio_pooled", "ratio_map", "ratio_record")},
        "best": {k: best(k) for k in fps_keys},
        "ratio_of_best": {"extract_pooled/model": best("extract_pooled_fps") / best("model_fps"),
                          "extract_map/model": best("extract_map_fps") / best("model_fps"),
                          "record/model": best("record_fps") / best("model_fps"),
                          "extract_pooled/record": best("extract_pooled_fps") / best("record_fps"),
                          "extract_map/record": best("extract_map_fps") / best("record_fps")},
        "bytes_per_frame": {"pooled": rounds[-1]["pooled_bytes_per_frame"], "map": rounds[-1]["map_bytes_per_frame"]},
    }
    print(f"{len(videos)} videos, {n_frames} frames of {width}x{height}, {args.arch} on {args.device} "
          f"({torch.get_num_threads()} threads, {args.workers} workers), {dets / n_frames:.1f} detections and "
          f"{pairs / n_frames:.1f} pairs a frame; best of {len(rounds)} rounds:")
    print(f"  decode ({args.frame_source}, 1 process)   {n_frames / decode_s:8.1f} frames/s")
    ratios = results["ratio_of_best"]
    print(f"  model: encode+detect          {best('model_fps'):8.1f} frames/s")
    print(f"  video_record, no I/O          {best('record_fps'):8.1f} frames/s  ({ratios['record/model']:.2f} x model)")
    for union in ("pooled", "map"):
        print(f"  extract, {union:6s} unions        {best(f'extract_{union}_fps'):8.1f} frames/s  "
              f"({ratios[f'extract_{union}/model']:.2f} x model, {ratios[f'extract_{union}/record']:.2f} x record), "
              f"{results['bytes_per_frame'][union] / 1e3:.1f} KB/frame on disk")
    print(f"  medians of the per-round ratios: extract pooled/model {med('ratio_pooled'):.2f}, "
          f"map/model {med('ratio_map'):.2f}, record/model {med('ratio_record'):.2f}")
    save_results(args.out, results)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
