"""Stage-2 training speed: one epoch of the same head on the same frames, three ways.

* ``store``     : VideoDataset reads each video from the feature store (negatives, spatial
                  masks and collation at load time), then the training step;
* ``memory``    : the same batches collated once beforehand and kept in memory, then the
                  training step (so ``store`` - ``memory`` is the loader's overhead);
* ``recompute`` : the baselines' way (STTran's code runs the detector inside every step):
                  each step decodes the frames (PNG dump), runs the detector's backbone and
                  pools the object and union features, then the same training step.

PREDCLS, one epoch of the train split (or ``--max-videos``), same seed and head recipe for
each variant. The detector is the ``small`` one of :mod:`stage1_detect.detectors`, with the
weights given (``--weights``) or random ones (speed does not depend on them). Figures go to
stdout and ``bench/results/train_speed.json``.

    python cli.py synth --out data/demo/ag && python cli.py train-detector ... && python cli.py detect ...
    python bench/train_speed.py --store data/demo/store.h5 --root data/demo/ag --weights data/demo/det/detector.pth
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stage2_relations.data import Collator, VideoDataset, epoch_order, union_boxes  # noqa: E402
from stage2_relations.recipe import load_config  # noqa: E402
from stage2_relations.train import build_from_config  # noqa: E402
from store import open_store  # noqa: E402


def _step(model, optimizer, batch, clip: float) -> float:
    out = model(batch)
    loss = sum(model.loss(out, batch).values())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    optimizer.step()
    return float(loss)


def _fresh(cfg, meta):
    torch.manual_seed(cfg.seed)
    model = build_from_config(cfg, meta)
    model.train()
    return model, torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def _batches(ds, order, vpb, collate):
    return [collate([ds[i] for i in order[j:j + vpb]]) for j in range(0, len(order), vpb)]


def recompute_features(batch, detector, frames_source, union_is_map: bool):
    """The batch with object and union features recomputed from the frames by ``detector``."""
    import numpy as np

    feats, unions = [], []
    bo, po = batch.box_offsets.tolist(), batch.pair_offsets.tolist()
    for f, name in enumerate(batch.frame_names):
        video, png = name.rsplit("/", 1)
        image = frames_source.read(video, [int(Path(png).stem)])[0]
        maps = detector.encode([torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)])
        boxes = batch.boxes[bo[f]:bo[f + 1]]
        pairs = batch.pairs[po[f]:po[f + 1]] - bo[f]
        u = torch.from_numpy(union_boxes(boxes[pairs[:, 0]].numpy(), boxes[pairs[:, 1]].numpy())).float()
        feats.append(detector.pool(maps, [boxes])[0][0])
        unions.append(detector.pool_map(maps, [u])[0] if union_is_map else detector.pool(maps, [u])[0][0])
    return dataclasses.replace(batch, features=torch.cat(feats), union=torch.cat(unions))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", default="data/demo/store.h5")
    ap.add_argument("--root", default="data/demo/ag", help="AG folder with the frames/ PNG dump (for 'recompute').")
    ap.add_argument("--weights", default=None, help="small detector weights (default: random)")
    ap.add_argument("--config", default="configs/demo_sttran.yaml")
    ap.add_argument("--max-videos", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=2, help="runs of the store and memory variants (fastest kept)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--out", default="bench/results/train_speed.json")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    cfg = load_config(args.config, {"store": args.store, "mode": "predcls"})
    store = open_store(cfg.store)
    meta = store.meta
    ds = VideoDataset(cfg.store, cfg.train_split, "predcls", train=True, seed=cfg.seed, max_videos=args.max_videos)
    order = epoch_order(len(ds), cfg.seed, 0)
    collate = Collator("predcls", True)
    vpb = cfg.videos_per_batch
    frames = sum(store.num_rows(ds.videos[i], "frames") for i in order)
    results = {}

    # warm-up (first-call allocations, thread pools), untimed
    batches = _batches(ds, order, vpb, collate)
    model, opt = _fresh(cfg, meta)
    for batch in batches[:3]:
        _step(model, opt, batch, cfg.grad_clip)

    def run_store() -> dict:
        """One epoch from a fresh store handle (nothing preloaded)."""
        fresh = VideoDataset(cfg.store, cfg.train_split, "predcls", train=True, seed=cfg.seed,
                             max_videos=args.max_videos)
        model, opt = _fresh(cfg, meta)
        loader = torch.utils.data.DataLoader(fresh, batch_size=vpb, sampler=order, collate_fn=collate, num_workers=0)
        t0 = t_load = time.perf_counter()
        load_s = step_s = 0.0
        for batch in loader:
            t1 = time.perf_counter()
            load_s += t1 - t_load
            _step(model, opt, batch, cfg.grad_clip)
            t_load = time.perf_counter()
            step_s += t_load - t1
        return {"seconds": time.perf_counter() - t0, "loading_seconds": load_s, "step_seconds": step_s}

    def run_memory() -> dict:
        model, opt = _fresh(cfg, meta)
        t0 = time.perf_counter()
        for batch in batches:
            _step(model, opt, batch, cfg.grad_clip)
        t = time.perf_counter() - t0
        return {"seconds": t, "loading_seconds": 0.0, "step_seconds": t}

    # 1 and 2, alternated; the fastest of ``--repeats`` runs each (the machine may be shared)
    runs: dict[str, list[dict]] = {"store": [], "memory": []}
    for _ in range(args.repeats):
        runs["store"].append(run_store())
        runs["memory"].append(run_memory())
    for k, rs in runs.items():
        results[k] = {**min(rs, key=lambda r: r["seconds"]), "all_seconds": [r["seconds"] for r in rs]}

    # 3. recompute detector features every step
    from stage1_detect.detectors import build_detector, load_weights
    from stage1_detect.frames import PngFrames

    detector = build_detector("small", {"num_classes": meta.vocabulary.num_objects})
    if args.weights:
        # weights of an older small detector may not fit the current one: then random weights,
        # which cost the same time
        try:
            load_weights(detector, args.weights)
        except (RuntimeError, ValueError) as e:
            print(f"note: {args.weights} does not fit the current small detector ({str(e)[:80]}...); random weights")
    detector.eval()
    if detector.feature_dim != meta.feature_dim:
        raise SystemExit(f"the small detector gives {detector.feature_dim}-d features, the store {meta.feature_dim}")
    source = PngFrames(args.root)
    model, opt = _fresh(cfg, meta)
    t0 = time.perf_counter()
    det_s = 0.0
    for batch in batches:
        t1 = time.perf_counter()
        batch = recompute_features(batch, detector, source, len(meta.union_shape) == 3)
        det_s += time.perf_counter() - t1
        _step(model, opt, batch, cfg.grad_clip)
    t = time.perf_counter() - t0
    results["recompute"] = {"seconds": t, "loading_seconds": det_s, "step_seconds": t - det_s}

    for r in results.values():
        r["frames_per_s"] = frames / r["seconds"]
    payload = {
        "store": str(cfg.store), "config": args.config, "videos": len(order), "frames": frames,
        "videos_per_batch": vpb, "head": cfg.head, "rsnet": cfg.rsnet is not None,
        "torch_threads": torch.get_num_threads(), "machine": platform.platform(), "results": results,
    }
    print(f"one PREDCLS epoch, {len(order)} videos, {frames} frames, {cfg.head}, {torch.get_num_threads()} threads")
    print("loading s: reading + sampling + collating (store), or frames + detector (recompute); "
          "step s: the training steps")
    print(f"{'variant':<12}{'seconds':>10}{'frames/s':>10}{'loading s':>11}{'step s':>9}{'vs memory':>11}")
    base = results["memory"]["seconds"]
    for k, r in results.items():
        print(f"{k:<12}{r['seconds']:>10.2f}{r['frames_per_s']:>10.1f}{r['loading_seconds']:>11.2f}"
              f"{r['step_seconds']:>9.2f}{r['seconds'] / base:>10.2f}x")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
