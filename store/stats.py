"""A store as pandas DataFrames (``cli.py stats``): what is in it and what it costs on disk.

:func:`stats` reads only the small arrays (labels, scores, ranges), never the features.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from common.files import atomic_write
from rules.boxes import box_iou_plus_one
from store.reader import open_store
from store.records import StoreError
from store.schema import ROW_ARRAYS, ROW_TABLES

QUANTILES = (0.1, 0.5, 0.9)


def stats(path: str | Path, backend: str | None = None) -> dict[str, pd.DataFrame]:
    """DataFrames describing the store at ``path``.

    * ``videos``: one row per video: name, split, segment, frames and, per table, rows
      (gt_objects, gt_relations, detections, pairs), small_objects.
    * ``frames``: one row per frame: video, frame, width, height, gt_objects, gt_relations,
      detections, pairs, pairs_gt (both boxes GT objects), pairs_det (both detections),
      small_objects (GT objects absent from the _filtersmall annotations).
    * ``classes``: one row per object class: gt, gt_small, detected, det score quantiles
      (score_q10/q50/q90), matched (detections whose best "+1 pixel" IoU with a GT box of
      the frame is > 0.5: those STTran's SGDET training labels with a GT class).
    * ``predicates``: one row per predicate: group, relations (GT relations carrying it).
    * ``arrays``: one row per array: dtype, row shape, rows, bytes (in memory), bytes_on_disk,
      compression.
    """
    store = open_store(path, backend, while_written=True)  # a summary of what is committed so far, said so
    meta, vocab = store.meta, store.meta.vocabulary
    video_rows, frame_parts, arrays = [], [], {}
    gt_lab, gt_small, det_lab, det_score, det_match = [], [], [], [], []
    rel_count = np.zeros(vocab.num_predicates, np.int64)
    try:
        for i, idx in enumerate(store.segments):
            seg = store._reader(i)
            fr = {t: seg.read(f"frames/{t}") for t in ROW_TABLES}
            n = {t: fr[t][:, 1] - fr[t][:, 0] for t in ROW_TABLES}
            g_start = fr["gt_objects"][:, 0]
            pair_frame = np.repeat(np.arange(len(g_start)), n["pairs"])
            n_gt_of_pair = n["gt_objects"][pair_frame]
            subj, obj = seg.read("pairs/subject"), seg.read("pairs/object")
            small = seg.read("gt_objects/small").astype(np.int64)
            per_frame = {}
            for key, mask in (("pairs_gt", (subj < n_gt_of_pair) & (obj < n_gt_of_pair)),
                              ("pairs_det", (subj >= n_gt_of_pair) & (obj >= n_gt_of_pair))):
                cum = np.concatenate([[0], np.cumsum(mask.astype(np.int64))])
                per_frame[key] = cum[fr["pairs"][:, 1]] - cum[fr["pairs"][:, 0]]
            cum = np.concatenate([[0], np.cumsum(small)])
            per_frame["small_objects"] = cum[fr["gt_objects"][:, 1]] - cum[fr["gt_objects"][:, 0]]
            sizes = seg.read("frames/size")
            video_of = np.repeat(np.arange(len(idx.videos)), np.diff(idx.ranges["frames"], axis=1)[:, 0])
            frame_parts.append(pd.DataFrame({
                "video": np.array(idx.videos, dtype=object)[video_of] if len(video_of) else [],
                "frame": seg.read_str("frames/name"),
                "width": sizes[:, 0], "height": sizes[:, 1],
                **{t: n[t] for t in ROW_TABLES}, **per_frame,
            }))
            for j, v in enumerate(idx.videos):
                fs, fe = idx.ranges["frames"][j]
                row = {"video": v, "split": idx.splits[j], "segment": idx.file, "frames": int(fe - fs)}
                row.update({t: int(idx.ranges[t][j, 1] - idx.ranges[t][j, 0]) for t in ROW_TABLES})
                row["small_objects"] = int(per_frame["small_objects"][fs:fe].sum())
                video_rows.append(row)
            gt_lab.append(seg.read("gt_objects/labels"))
            gt_small.append(small.astype(bool))
            det_lab.append(seg.read("detections/labels"))
            det_score.append(seg.read("detections/scores"))
            det_match.append(_matched(seg.read("gt_objects/boxes"), fr["gt_objects"], seg.read("detections/boxes"),
                                      fr["detections"]))
            rel_count += seg.read("gt_relations/labels").astype(np.int64).sum(0)
            comp = seg.compression()
            for s in ROW_ARRAYS:
                dtype, shape = seg.dtype_shape(s.key)
                a = arrays.setdefault(s.key, {"array": s.key, "dtype": str(dtype), "row_shape": str(tuple(shape[1:])),
                                              "rows": 0, "bytes": 0, "bytes_on_disk": 0,
                                              "compression": comp.get(s.table, "none")})
                a["rows"] += shape[0]
                a["bytes"] += int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
                a["bytes_on_disk"] += seg.bytes_on_disk(s.key)
    finally:
        store.close()
    videos = pd.DataFrame(video_rows, columns=["video", "split", "segment", "frames", *ROW_TABLES, "small_objects"])
    frames = (pd.concat(frame_parts, ignore_index=True) if frame_parts else pd.DataFrame())
    gl = np.concatenate(gt_lab) if gt_lab else np.zeros(0, np.int32)
    dl = np.concatenate(det_lab) if det_lab else np.zeros(0, np.int32)
    ds = np.concatenate(det_score) if det_score else np.zeros(0, np.float32)
    gs = np.concatenate(gt_small) if gt_small else np.zeros(0, bool)
    dm = np.concatenate(det_match) if det_match else np.zeros(0, bool)
    class_rows = []
    for c, cname in enumerate(vocab.objects):
        sc = ds[dl == c]
        row = {"class": cname, "gt": int((gl == c).sum()), "gt_small": int(((gl == c) & gs).sum()),
               "detected": int(sc.size), "matched": int(((dl == c) & dm).sum())}
        for q in QUANTILES:
            row[f"score_q{int(q * 100):02d}"] = float(np.quantile(sc, q)) if sc.size else float("nan")
        class_rows.append(row)
    classes = pd.DataFrame(class_rows).set_index("class")
    predicates = pd.DataFrame({
        "predicate": list(vocab.predicates),
        "group": [vocab.group_of(i).value for i in range(vocab.num_predicates)],
        "relations": rel_count,
    }).set_index("predicate")
    return {"videos": videos, "frames": frames, "classes": classes, "predicates": predicates,
            "arrays": pd.DataFrame(list(arrays.values())).set_index("array"),
            "meta": pd.Series(meta.to_dict(), dtype=object).to_frame("value")}


def _matched(gt_boxes: np.ndarray, gt_ranges: np.ndarray, det_boxes: np.ndarray, det_ranges: np.ndarray) -> np.ndarray:
    """(N,) bool per detection of a segment: its best "+1 pixel" IoU with a GT box of its frame is > 0.5."""
    out = np.zeros(len(det_boxes), dtype=bool)
    for (g0, g1), (d0, d1) in zip(gt_ranges, det_ranges):
        if g1 > g0 and d1 > d0:
            out[d0:d1] = box_iou_plus_one(det_boxes[d0:d1], gt_boxes[g0:g1]).max(1) > 0.5
    return out


def summary(tables: dict[str, pd.DataFrame]) -> str:
    """A readable multi-line summary of :func:`stats` output."""
    v, f, a = tables["videos"], tables["frames"], tables["arrays"]
    lines = [
        f"{len(v)} videos ({', '.join(f'{k} {n}' for k, n in v['split'].value_counts().sort_index().items())}), "
        f"{len(f)} frames, {v['segment'].nunique()} segment(s)",
        "per frame (mean / max): " + ", ".join(
            f"{t} {f[t].mean():.1f} / {f[t].max()}" for t in ROW_TABLES) if len(f) else "no frames",
        f"frames without relations: {int((f['gt_relations'] == 0).sum()) if len(f) else 0}, "
        f"videos without detections: {int((v['detections'] == 0).sum())}, "
        f"GT objects absent from _filtersmall: {int(v['small_objects'].sum())} of {int(v['gt_objects'].sum())}",
        f"on disk: {a['bytes_on_disk'].sum() / 1e6:.1f} MB ({a['bytes'].sum() / 1e6:.1f} MB of arrays), "
        f"{a['bytes_on_disk'].sum() / max(1, len(f)) / 1e3:.1f} kB per frame",
        "",
        "largest arrays:",
        a.sort_values("bytes_on_disk", ascending=False).head(5)[["dtype", "row_shape", "rows", "bytes_on_disk",
                                                                 "compression"]].to_string(),
        "",
        "top classes:",
        tables["classes"].sort_values("gt", ascending=False).head(8).to_string(float_format=lambda x: f"{x:.2f}"),
        "",
        "top predicates:",
        tables["predicates"].sort_values("relations", ascending=False).head(8).to_string(),
    ]
    return "\n".join(lines)


def check_tables_folder(out: str | Path, store: str | Path) -> None:
    """:class:`StoreError` when ``out`` is the store ``store`` or lies inside it."""
    inside, root = Path(out).resolve(), Path(store).resolve()
    if inside == root or root in inside.parents:
        raise StoreError(out, f"is inside the store {store}: write the tables outside it (`detect` refuses a store "
                              f"folder that holds other files)")


def write_tables(tables: dict[str, pd.DataFrame], out: str | Path, fmt: str = "csv",
                 store: str | Path | None = None) -> list[Path]:
    """Write every table to ``out/NAME.csv`` (or ``.parquet``, which needs pyarrow). ``out``
    may not be, or lie inside, ``store`` (the store the tables describe): a store's folder holds
    only what its writers put there, and ``detect`` refuses one with other files."""
    out = Path(out)
    if store is not None:
        check_tables_folder(out, store)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, df in tables.items():
        p = out / f"{name}.{fmt}"
        if fmt == "csv":
            with atomic_write(p, "w") as fh:
                df.to_csv(fh)
        elif fmt == "parquet":
            try:
                df.astype({c: str for c in df.columns if df[c].dtype == object}).to_parquet(p)
            except ImportError as e:
                raise RuntimeError(f"parquet output needs pyarrow (pip install pyarrow): {e}") from None
        else:
            raise ValueError(f"format must be csv or parquet, got {fmt!r}")
        paths.append(p)
    return paths
