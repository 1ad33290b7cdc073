"""One markdown table from the benchmarks' JSON files, and a projection of a full Action
Genome SGDET training epoch from the measured per-frame costs.

Reads ``bench/results/*.json`` (what ``make bench`` writes), prints the table and the
projection and writes them to ``bench/results/README_table.md``, from which the README's
benchmark section is copied. A benchmark whose JSON is missing is left out of the table.

The projection (every input is a figure measured here; the assumptions are printed with it):

* F, the frames of one SGDET training epoch on AG: 177,330 train frames less the 5 % of
  videos held out for validation, about 168,000 (the SGDET view drops a few more frames);
* the loader costs ``1 / frames_per_cpu_s`` CPU seconds a frame (``loader_speed.json``: read
  from the page cache, negatives, masks, collation); W DataLoader workers, one core each, serve
  ``W * frames_per_cpu_s`` frames/s (the loader scales by processes: nothing is shared);
* a device's training step costs what ``train_speed.json`` (realistic setting, ``memory``
  variant: batches already in memory) measured per frame on that device, for full-size STTran
  and STTran + RS-Net; a GPU figure appears once ``bench/gpu_check.sh`` has run there;
* with prefetch, loading overlaps the steps, so an epoch takes ``F * max(loader / W, step)``.
  Reading the store from disk instead of the page cache adds ``F * bytes_per_frame / disk
  bandwidth`` when the disk is the slower (51 kB a frame: 8.6 GB an epoch, 17 s at 500 MB/s).

    python bench/report.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
AG_SGDET_TRAIN_FRAMES = 168_000
WORKERS = (1, 2, 4, 8, 16, 32)


def _load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _hms(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def table_rows() -> list[tuple[str, str, str]]:
    rows = []
    r = _load("store_read")
    if r:
        lay = r["layouts"]
        text = ", ".join(f"{k} {v['vs_memmap_sequential']:.2f}x / {v['vs_memmap_shuffled']:.2f}x "
                         f"({v['sequential_ms_per_video']:.2f} ms a video)" for k, v in lay.items() if k != "memmap")
        rows.append(("store read", f"`{r.get('command', 'python bench/store_read.py')}`",
                     f"per-video reads against a raw memmap of the same bytes (sequential / shuffled): {text}; "
                     f"memmap {lay['memmap']['sequential_ms_per_video']:.2f} ms a video; goals >= 0.5x HDF5, "
                     f">= 0.3x zarr"))
    r = _load("loader_speed")
    if r:
        lo, ov = r["loader"], r["overhead"]
        rec = r["records"]
        rows.append(("loader, one core", f"`{r['command']}`",
                     f"AG-sized records ({rec['detections_per_frame']:.1f} detections, {rec['pairs_per_frame']:.1f} "
                     f"stored pairs a frame, 2048-d), SGDET training view with negatives: "
                     f"{lo['frames_per_cpu_s']:,.0f} frames per CPU second ({lo['frames_per_wall_s']:,.0f} per wall "
                     f"second); goal >= 3,000"))
        o = ov[0]
        ratios = ", ".join(f"{x['ratio']:.2f} with {x['workers']} worker{'s' if x['workers'] != 1 else ''}"
                           for x in ov)
        rows.append(("loader overhead", f"`{r['command']}`",
                     f"epoch from the store / in memory: {ratios} ({o['head']}{' + RS-Net' if o['rsnet'] else ''} "
                     f"of `{o['config']}`, {o['frames']} frames, prefetch 2 with workers, {r['torch_threads']} "
                     f"thread); goal <= 1.05"))
    r = _load("train_speed")
    if r:
        for row in r["rows"]:
            name = f"{row['head']}{' + RS-Net' if row['rsnet'] else ''}"
            rows.append((f"training epoch, {row['setting']}", f"`{r['command']}`",
                         f"{name} ({row['parameters'] / 1e6:.1f} M), {row['mode']}, {row['frames']} frames, "
                         f"{row['detector']}, {r['device']}: store {row['store_s']:.2f} s, memory "
                         f"{row['memory_s']:.2f} s ({row['store_vs_memory']:.2f}x), recomputing the detector "
                         f"{row['recompute_s']:.1f} s = **{row['recompute_vs_store']:.1f}x** the store's epoch"
                         + (" (goal >= 50x)" if row["setting"] == "realistic" else "")))
    r = _load("detect_speed")
    if r:
        q = r["ratio_of_best"]
        rows.append(("detect vs bare model", f"`{r.get('command', 'python bench/detect_speed.py')}`",
                     f"{r['arch']}, {r['size'][0]}x{r['size'][1]}, {r['device']}: model {r['best']['model_fps']:.1f} "
                     f"frames/s, `detect` pooled {q['extract_pooled/model']:.2f}x, map {q['extract_map/model']:.2f}x "
                     f"of it (best of rounds); goal 0.9x"))
    r = _load("eval_speed")
    if r:
        rows.append(("evaluation", f"`{r.get('command', 'python bench/eval_speed.py')}`",
                     f"{r['frames']:,} SGDET frames under all three constraints in {r['seconds_all_three_constraints']:.1f} s"))
    r = _load("checksum_cost")
    if r:
        o = r["overhead_first_pass"]
        rows.append(("checksums on read", f"`{r.get('command', 'python bench/checksum_cost.py')}`",
                     f"CRC-32C {r['raw_GBps']['crc32c']:.1f} GB/s; loader's first pass {100 * o['crc32c']:+.1f} % "
                     f"(zlib crc32 {100 * o['zlib_crc32']:+.1f} %), later passes 0"))
    return rows


def projection() -> list[str]:
    """Markdown lines: the expected full-AG SGDET epoch per device and worker count."""
    loader = _load("loader_speed")
    train = _load("train_speed")
    if not loader:
        return ["(no projection: run bench/loader_speed.py first)"]
    c_load = 1.0 / loader["loader"]["frames_per_cpu_s"]
    devices: list[tuple[str, float]] = []
    for source in (train, _load("gpu_check")):
        for row in (source or {}).get("rows", []):
            if row.get("setting") == "realistic":
                name = f"{row['head']}{' + RS-Net' if row['rsnet'] else ''}, {source.get('device', 'cpu')}"
                devices.append((name, row["memory_s"] / row["frames"]))
    f = AG_SGDET_TRAIN_FRAMES
    lines = [f"Projected full-AG SGDET training epoch ({f:,} frames), from the measured per-frame costs: "
             f"loader {1e3 * c_load:.2f} ms of one core a frame; " +
             "; ".join(f"{n} step {1e3 * c:.1f} ms a frame" for n, c in devices) + ".", "",
             "| DataLoader workers | loader alone | " + " | ".join(n for n, _ in devices) + " |",
             "|---|---|" + "---|" * len(devices)]
    for w in WORKERS:
        cells = [_hms(f * c_load / w)] + [_hms(f * max(c_load / w, c)) for _, c in devices]
        lines.append(f"| {w} | " + " | ".join(cells) + " |")
    lines += ["", "Assumptions: an epoch takes F x max(loader / W, step) (prefetch overlaps the two); W workers "
              "on W free cores; the store in the page cache (from disk add F x 51 kB / bandwidth when slower: "
              "about 17 s at 500 MB/s); the step as measured with batches in memory on that device (a GPU column "
              "appears once bench/gpu_check.sh has run on one)."]
    return lines


def main() -> None:
    rows = table_rows()
    lines = ["| benchmark | command | figure |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    info = next((d for d in map(_load, ("train_speed", "loader_speed")) if d), {})
    load = info.get("load_average")
    lines += ["", f"Machine: {info.get('machine', 'unknown')}, {info.get('cores', '?')} cores"
              + (f", shared (load average {load[0]:.1f} during the run)" if load else "")
              + f", torch threads {info.get('torch_threads', '?')} (training) and 1 (loader); every figure from "
              "one `make bench` run.", ""]
    lines += projection()
    text = "\n".join(lines) + "\n"
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "README_table.md").write_text(text)
    print(f"wrote {RESULTS / 'README_table.md'}", file=sys.stderr)


if __name__ == "__main__":
    main()
