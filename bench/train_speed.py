"""Stage-2 training speed: one epoch of a head on a fixed set of frames, from the store against
recomputing the detector's features every step as the baselines do (same head, same frames).

Variants of each setting:

* ``store``     : VideoDataset reads each video from the feature store (assignment, negatives,
                  spatial masks, collation at load time), then the training step;
* ``memory``    : the same batches collated beforehand and kept in memory, then the step (so
                  ``store`` / ``memory`` is the loader's overhead);
* ``recompute`` : STTran's code runs the detector inside every step: each step decodes the
                  batch's frames (PNG files of the same size as the store's frames), runs the
                  detector, pools the boxes' features and the union features, then takes the
                  same training step.

Settings (``--setting``):

* ``realistic`` (what users run): the AG detector's architecture, ``r101-c4`` at 600 px short
  side (random weights: speed does not depend on them), on 480x270 frames (AG's size); the
  full-size STTran and STTran + RS-Net (``configs/sttran_sgdet.yaml``,
  ``configs/sttran_rsnet_sgdet.yaml``), SGDET, union maps (1024x7x7). The store holds AG-sized
  random records (``bench/loader_speed.py``). With random weights the detector's outputs mean
  nothing, so ``recompute`` computes them (encode, detect, RoI and union-map pooling of the
  batch's boxes: the cost) and the step then takes the stored features, so that the head's
  work is exactly that of ``store``.
* ``small`` (the demo): the ``small`` detector (random weights) extracted into a store from a
  synthetic AG, the demo STTran (``configs/demo_sttran.yaml``), PREDCLS, pooled unions; here
  ``recompute`` feeds the recomputed features to the step.

Figures go to stdout and ``bench/results/train_speed.json``.

    python bench/train_speed.py                        # both settings, ~5 minutes on 2 CPU cores
    python bench/train_speed.py --setting realistic --videos 4 --frames 8 --device cuda
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from epoch import epoch_batches, fresh_model, step  # noqa: E402
from results_file import save_results  # noqa: E402
from stage2_relations.data import VideoDataset  # noqa: E402
from stage2_relations.heads import count_parameters  # noqa: E402
from stage2_relations.recipe import load_config  # noqa: E402
from store import open_store  # noqa: E402
from rules.boxes import union_boxes  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _read_png(path: Path) -> torch.Tensor:
    from PIL import Image

    with Image.open(path) as im:
        return torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1)


def recompute(batch, detector, pngs: list[Path], union_is_map: bool, device: torch.device, detect: bool):
    """What the baselines compute each step for ``batch``: decode its frames (``pngs``, frame i
    of the batch from ``pngs[i % len]``), encode, detect (``detect``), pool the boxes' features
    and the union features. Returns (features (N, D), union (M, ...)) on ``device``."""
    feats, unions = [], []
    bo, po = batch.box_offsets.tolist(), batch.pair_offsets.tolist()
    with torch.no_grad():
        for f in range(batch.num_frames):
            image = _read_png(pngs[f % len(pngs)]).to(device)
            maps = detector.encode([image])
            if detect:
                detector.detect(maps)
            boxes = batch.boxes[bo[f]:bo[f + 1]].to(device)
            pairs = batch.pairs[po[f]:po[f + 1]] - bo[f]
            u = torch.from_numpy(union_boxes(boxes[pairs[:, 0]].cpu().numpy(),
                                             boxes[pairs[:, 1]].cpu().numpy())).float().to(device)
            feats.append(detector.pool(maps, [boxes])[0][0])
            unions.append(detector.pool_map(maps, [u])[0] if union_is_map else detector.pool(maps, [u])[0][0])
    return torch.cat(feats), torch.cat(unions)


def measure(cfg, store_path: str, mode: str, detector, pngs: list[Path], *, use_recomputed: bool, detect: bool,
            device: torch.device, repeats: int, max_videos: int = 0) -> dict:
    """The three variants of one head on one store; every figure in seconds, fastest of ``repeats``
    for ``store`` and ``memory`` (alternated), one run of ``recompute``."""
    meta = open_store(store_path).meta
    union_is_map = len(meta.union_shape) == 3
    options = cfg.view_options()

    def dataset():
        return VideoDataset(store_path, cfg.train_split, mode, train=True, seed=cfg.seed, options=options,
                            max_videos=max_videos)

    ds = dataset()
    order, collate, batches, frames = epoch_batches(ds, cfg)
    vpb = cfg.videos_per_batch

    def fresh():
        return fresh_model(cfg, meta, device)

    model, opt = fresh()
    step(model, opt, batches[0].to(device), cfg.grad_clip)  # warm-up
    params = count_parameters(model, trainable_only=False)
    del model, opt

    def run_store() -> float:
        model, opt = fresh()
        loader = torch.utils.data.DataLoader(dataset(), batch_size=vpb, sampler=order, collate_fn=collate)
        _sync(device)
        t0 = time.perf_counter()
        for b in loader:
            step(model, opt, b.to(device), cfg.grad_clip)
        _sync(device)
        return time.perf_counter() - t0

    def run_memory() -> float:
        model, opt = fresh()
        on_device = [b.to(device) for b in batches]
        _sync(device)
        t0 = time.perf_counter()
        for b in on_device:
            step(model, opt, b, cfg.grad_clip)
        _sync(device)
        return time.perf_counter() - t0

    store_s, memory_s = [], []
    for _ in range(repeats):
        store_s.append(run_store())
        memory_s.append(run_memory())

    model, opt = fresh()
    with torch.no_grad():  # warm-up: one frame
        detector.detect(detector.encode([_read_png(pngs[0]).to(device)]))
    _sync(device)
    t0 = time.perf_counter()
    detector_s = 0.0
    for b in batches:
        t1 = time.perf_counter()
        feats, union = recompute(b, detector, pngs, union_is_map, device, detect)
        _sync(device)
        detector_s += time.perf_counter() - t1
        b = b.to(device)
        if use_recomputed:
            b = dataclasses.replace(b, features=feats.to(b.features), union=union.to(b.union))
        step(model, opt, b, cfg.grad_clip)
    _sync(device)
    recompute_s = time.perf_counter() - t0
    out = {"head": cfg.head, "rsnet": cfg.rsnet is not None, "parameters": params, "mode": mode, "frames": frames,
           "videos": len(order), "videos_per_batch": vpb,
           "store_s": min(store_s), "memory_s": min(memory_s), "recompute_s": recompute_s,
           "recompute_detector_s": detector_s, "all_store_s": store_s, "all_memory_s": memory_s}
    out["store_vs_memory"] = out["store_s"] / out["memory_s"]
    out["recompute_vs_store"] = out["recompute_s"] / out["store_s"]
    for k in ("store", "memory", "recompute"):
        out[f"{k}_frames_per_s"] = frames / out[f"{k}_s"]
    return out


def _random_detector(arch: str, device: torch.device):
    from stage1_detect.detectors import build_detector

    torch.manual_seed(0)
    # every class scored, a raised person logit: a frame keeps about as many boxes as a trained one
    detector = build_detector(arch, {"score_thresh": 0.0, "max_detections": 16}).eval()
    with torch.no_grad():
        detector.model.roi_heads.box_predictor.cls_score.bias[detector.settings.person_label] += 3.0
    return detector.to(device)


def _synthetic_frames(root: Path, videos: int, frames: int, width: int, height: int) -> list[Path]:
    from synth import SynthConfig, generate_synthetic_ag

    generate_synthetic_ag(root, SynthConfig(videos=videos, frames_per_video=frames, width=width, height=height,
                                            seed=0, write_mp4=False), progress=False)
    return sorted(root.glob("frames/*/*.png"))


def realistic(args, work: Path, device: torch.device) -> list[dict]:
    from bench.loader_speed import write_ag_sized_store

    store = write_ag_sized_store(work / "ag_sized_map.h5", args.videos, frames=args.frames, union_shape=(1024, 7, 7))
    pngs = _synthetic_frames(work / "ag_480x270", 1, 4, 480, 270)
    detector = _random_detector("r101-c4", device)
    rows = []
    for recipe in ("configs/sttran_sgdet.yaml", "configs/sttran_rsnet_sgdet.yaml"):
        cfg = load_config(recipe, {"store": str(store), "train_split": "train"})
        row = measure(cfg, str(store), "sgdet", detector, pngs, use_recomputed=False, detect=True, device=device,
                      repeats=args.repeats)
        rows.append({"setting": "realistic", "recipe": recipe, "detector": "r101-c4, 600 px short side, random "
                     "weights, 480x270 frames", **row})
        _print_row(rows[-1])
    return rows


def small(args, work: Path, device: torch.device) -> list[dict]:
    from stage1_detect.action_genome import ReaderOptions
    from stage1_detect.extract import ExtractConfig, extract

    pngs = _synthetic_frames(work / "ag_small", args.small_videos, 16, 320, 240)
    detector = _random_detector("small", device)
    store = work / "small.h5"
    extract(work / "ag_small", store, detector, weights_sha256="", reader_options=ReaderOptions(),
            config=ExtractConfig(num_workers=0, splits=("train",)), device=str(device), progress=False)
    cfg = load_config("configs/demo_sttran.yaml", {"store": str(store), "mode": "predcls", "train_split": "train"})
    row = measure(cfg, str(store), "predcls", detector, pngs, use_recomputed=True, detect=False, device=device,
                  repeats=args.repeats)
    rows = [{"setting": "small", "recipe": "configs/demo_sttran.yaml",
             "detector": "small (the demo's), random weights, 320x240 frames", **row}]
    _print_row(rows[-1])
    return rows


def _print_row(r: dict) -> None:
    name = f"{r['head']}{' + RS-Net' if r['rsnet'] else ''}"
    print(f"[{r['setting']}] {name} ({r['parameters'] / 1e6:.1f} M), {r['mode']}, {r['frames']} frames, "
          f"{r['detector']}: store {r['store_s']:.2f} s, memory {r['memory_s']:.2f} s "
          f"({r['store_vs_memory']:.2f}x), recompute {r['recompute_s']:.1f} s (detector {r['recompute_detector_s']:.1f} s)"
          f" = {r['recompute_vs_store']:.1f}x the store's epoch", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--setting", choices=["realistic", "small", "both"], default="both")
    ap.add_argument("--videos", type=int, default=2, help="realistic: AG-sized videos in the epoch")
    ap.add_argument("--frames", type=int, default=28,
                    help="realistic: frames a video (28: about 23 in the SGDET view, AG's 23.4 a training video)")
    ap.add_argument("--small-videos", type=int, default=8, help="small: synthetic videos (16 frames each)")
    ap.add_argument("--repeats", type=int, default=2, help="runs of the store and memory variants (fastest kept)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: common.threads' default)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dir", default=None, help="working folder (default: a temporary one)")
    ap.add_argument("--out", default="bench/results/train_speed.json")
    args = ap.parse_args()
    from common.threads import resolve_threads

    torch.set_num_threads(resolve_threads(args.threads))
    device = torch.device(args.device)
    rows = []
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        if args.setting in ("realistic", "both"):
            rows += realistic(args, Path(tmp), device)
        if args.setting in ("small", "both"):
            rows += small(args, Path(tmp), device)
    payload = {"rows": rows, "torch_threads": torch.get_num_threads(), "device": str(device)}
    print(f"wrote {save_results(args.out, payload)}")


if __name__ == "__main__":
    main()
