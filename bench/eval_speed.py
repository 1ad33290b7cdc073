"""Benchmark: time to score 50,000 random Action Genome-like frames under each constraint.

Frames: 1 person + about 5 objects (Poisson), about 1 extra detection, so about 6 predicted
pairs per frame; each object has one attention label and on average ``--spatial-rate``
spatial and ``--contacting-rate`` contacting labels (0.1 each by default: about 6 GT
relations per frame). Prints a table and writes ``bench/results/eval_speed.json``.

    .venv/bin/python bench/eval_speed.py [--frames 50000] [--seed 0] [--repeat 3] [--spatial-rate 0.1]

Each evaluation is timed ``--repeat`` times and the fastest run is reported (``timeit``'s
convention: the others measure the machine's other load).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stage2_relations.evaluation import Constraint, GroundTruthSet, PaddedCells, PredictionSet, evaluate  # noqa: E402
from stage2_relations.evaluation.synthetic import random_frames  # noqa: E402
from results_file import save_results  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=50_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--mode", default="sgdet")
    ap.add_argument("--repeat", type=int, default=3, help="time each run this many times, report the fastest")
    ap.add_argument("--spatial-rate", type=float, default=0.1)
    ap.add_argument("--contacting-rate", type=float, default=0.1)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "eval_speed.json")
    args = ap.parse_args()

    t0 = time.perf_counter()
    gts, preds = random_frames(
        np.random.default_rng(args.seed), args.frames, spatial_rate=args.spatial_rate, contacting_rate=args.contacting_rate
    )
    t_generate = time.perf_counter() - t0
    t0 = time.perf_counter()
    gt, pred = GroundTruthSet.from_frames(gts), PredictionSet.from_frames(preds)
    t_flatten = time.perf_counter() - t0
    del gts, preds

    rows = []
    for padded in PaddedCells:
        for c in Constraint:
            if padded == PaddedCells.IGNORE and c != Constraint.NO:
                continue  # the option only changes the cost of NO
            times = []
            for _ in range(args.repeat):  # the fastest of a few runs: other processes add noise
                t0 = time.perf_counter()
                r = evaluate(gt, pred, constraint=c, mode=args.mode, padded_cells=padded)
                times.append(time.perf_counter() - t0)
            dt = min(times)
            rows.append({"constraint": c.value, "padded_cells": padded.value, "seconds": round(dt, 3),
                         "seconds_all_repeats": [round(t, 3) for t in times], "frames_per_second": round(args.frames / dt), "R@20": round(r.recall[20], 4)})
    total_default = sum(r["seconds"] for r in rows if r["padded_cells"] == PaddedCells.RANK.value)
    result = {
        "frames": args.frames,
        "mode": args.mode,
        "seed": args.seed,
        "repeat": args.repeat,
        "spatial_rate": args.spatial_rate,
        "contacting_rate": args.contacting_rate,
        "pairs_per_frame": round(len(pred.pred_pairs) / args.frames, 2),
        "boxes_per_frame": round(len(pred.pred_boxes) / args.frames, 2),
        "gt_relations_per_frame": round(len(gt.gt_relations) / args.frames, 2),
        "seconds_generate": round(t_generate, 2),
        "seconds_flatten_from_frames": round(t_flatten, 2),
        "seconds_all_three_constraints": round(total_default, 2),
        "runs": rows,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "numpy": np.__version__,
                    "processor": platform.processor() or platform.machine()},
    }
    print(f"{args.frames} frames, {result['pairs_per_frame']} pairs / frame, {result['gt_relations_per_frame']} GT relations / frame")
    print(f"generate {t_generate:.1f} s, flatten {t_flatten:.2f} s")
    print(f"{'constraint':<11}{'padded':<9}{'seconds':>9}{'frames/s':>11}{'R@20':>8}")
    for r in rows:
        print(f"{r['constraint']:<11}{r['padded_cells']:<9}{r['seconds']:>9.2f}{r['frames_per_second']:>11}{r['R@20']:>8.4f}")
    print(f"all three constraints (default options): {total_default:.2f} s")
    save_results(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
