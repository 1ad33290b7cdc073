"""The store's schema: the one place that says which arrays a store holds.

A store is a set of *row tables*. Each table is a group of flat arrays that share their first
axis (one row per item); the tables nest, frame by frame, through half-open ranges::

    videos        one row per video       ranges into frames and every per-row table below
    frames        one row per frame       ranges into gt_objects, gt_relations, detections, pairs
    gt_objects    one row per ground-truth object
    gt_relations  one row per ground-truth (person, object) relation
    detections    one row per detected box (SGDET)
    pairs         one row per candidate (person, object) pair, labelled or not

Within one segment file the rows of a video are contiguous in every table, so reading a video
is one contiguous slice per array.  Ranges are ``int64`` pairs ``[start, end)`` in rows of
the file that holds them; in a :class:`~store.records.VideoRecord` they become per-frame
offsets local to the video (``offsets[i]:offsets[i+1]`` are frame ``i``'s rows).

Sizes: ``D`` = ``meta.feature_dim`` (2048 for AG's Faster R-CNN), ``C`` =
``meta.vocabulary.num_objects`` (37), ``P`` = ``meta.vocabulary.num_predicates`` (26) and
``U`` = ``meta.union_shape`` (``(2048,)`` pooled, the default, or ``(1024, 7, 7)``, STTran's
map, about 100 KB per pair in f16).

One extraction serves every task mode. ``gt_objects`` holds the objects of the full
annotations (``object_bbox_and_relationship.pkl``) with ``small`` marking those that the
``_filtersmall`` annotations lack, so PREDCLS reads every GT object and SGCLS / SGDET the
others; which frames and videos a mode keeps follows from the same flags (stage 2's loader).
The SGDET training assignment of detections to GT boxes is computed when the data is loaded
(:mod:`rules.pairing`), so its rule is an option, not part of the store.

``pairs`` index a frame's boxes jointly: GT objects ``0 .. G-1`` (the person first), then
detections ``G .. G+N-1``. A pair row holds the union feature of its two boxes; the pairs
stored are every pair a stage-2 view of any mode can ask for (:func:`rules.pairing.stored_pairs`:
the GT person with every GT object, the detections that can be the SGDET subject with every
other box, ...). Relation labels are not stored per pair: a view labels its pairs from
``gt_relations`` and its own assignment, and negative sampling is a choice among its pairs.

Checksums: ``videos/crc32c`` holds, per video, the CRC-32C (Castagnoli, hardware-accelerated by
``google-crc32c``, about 4x zlib's crc32 here) of each per-row array's rows of that video (the
bytes of the rows in order, columns in :data:`ROW_ARRAYS` order). Readers verify the arrays
they read against it (once per video and array per process); ``store check`` verifies every
video.

Version history: 1 (GT boxes of one annotation file, ``pairs/source`` and ``pairs/relation``,
``detections/matched_gt``: one extraction per mode); 2 (one extraction for every mode,
``gt_objects/small``, pairs over the joint box index, assignment at load time); 3 (this one:
per-video checksums ``videos/crc32c``, verified on read, instead of one crc32 per array).
"""

from __future__ import annotations

from dataclasses import dataclass

SCHEMA_VERSION = 3

# Per-row tables, in the order in which they are written and checked.
ROW_TABLES: tuple[str, ...] = ("gt_objects", "gt_relations", "detections", "pairs")
TABLES: tuple[str, ...] = ("videos", "frames") + ROW_TABLES

# VideoRecord field prefix and offsets field of each per-row table.
TABLE_PREFIX: dict[str, str] = {"gt_objects": "gt", "gt_relations": "rel", "detections": "det", "pairs": "pair"}


@dataclass(frozen=True)
class ArraySpec:
    """One array of a per-row table.

    ``trailing`` is the shape after the row axis; a string entry is a size taken from the
    meta: ``"D"`` feature_dim, ``"C"`` classes, ``"P"`` predicates, ``"U"`` the union shape
    (which may expand to several axes).
    """

    table: str
    column: str
    dtype: str
    trailing: tuple[int | str, ...]
    doc: str

    @property
    def key(self) -> str:
        """Path of the array inside a segment, e.g. ``"pairs/union"``."""
        return f"{self.table}/{self.column}"

    @property
    def field(self) -> str:
        """Name of the matching :class:`~store.records.VideoRecord` field, e.g. ``pair_union``."""
        return f"{TABLE_PREFIX[self.table]}_{self.column}"


ROW_ARRAYS: tuple[ArraySpec, ...] = (
    ArraySpec("gt_objects", "boxes", "float32", (4,), "xyxy, pixels of the original frame"),
    ArraySpec("gt_objects", "labels", "int32", (), "object class id (vocabulary.objects), person included"),
    ArraySpec("gt_objects", "features", "float16", ("D",), "RoI feature pooled from the GT box"),
    ArraySpec("gt_objects", "dists", "float16", ("C",), "detector class distribution of the GT box (softmax)"),
    ArraySpec("gt_objects", "small", "uint8", (), "1: absent from the _filtersmall annotations (PREDCLS only)"),
    ArraySpec("gt_relations", "subject", "int32", (), "index of the subject among the frame's gt_objects"),
    ArraySpec("gt_relations", "object", "int32", (), "index of the object among the frame's gt_objects"),
    ArraySpec("gt_relations", "labels", "uint8", ("P",), "multi-hot over global predicate ids (0/1)"),
    ArraySpec("detections", "boxes", "float32", (4,), "xyxy, pixels of the original frame"),
    ArraySpec("detections", "scores", "float32", (), "detector score of the kept class"),
    ArraySpec("detections", "labels", "int32", (), "detected class id"),
    ArraySpec("detections", "dists", "float16", ("C",), "detector class distribution (softmax)"),
    ArraySpec("detections", "features", "float16", ("D",), "RoI feature of the detected box"),
    ArraySpec("pairs", "subject", "int32", (), "subject box: GT objects 0..G-1, then detections G..G+N-1"),
    ArraySpec("pairs", "object", "int32", (), "object box, same joint index"),
    ArraySpec("pairs", "union", "float16", ("U",), "union-box feature: pooled vector or 1024x7x7 map"),
)

RANGE_DTYPE = "int64"
"""Ranges in a segment, and a VideoRecord's per-frame offsets local to the video."""
FRAME_SIZE_DTYPE = "int32"
"""Frame width and height in pixels (``frames/size``, ``VideoRecord.frame_sizes``)."""

# The video and frame tables: column -> (dtype, row shape, meaning). Ranges are half-open
# [start, end) rows of the segment that holds them.
VIDEO_COLUMNS: dict[str, tuple[str, str, str]] = {
    "name": ("str", "()", "video name, e.g. '001YG.mp4'"),
    "split": ("str", "()", "'train', 'val' or 'test'"),
    "frames": (RANGE_DTYPE, "(2,)", "range of the video's rows in frames"),
    **{t: (RANGE_DTYPE, "(2,)", f"range of the video's rows in {t}") for t in ROW_TABLES},
    "crc32c": ("uint32", "(A,)", "CRC-32C of the video's rows of each per-row array (A of them, in ROW_ARRAYS order)"),
}
FRAME_COLUMNS: dict[str, tuple[str, str, str]] = {
    "name": ("str", "()", "frame name, e.g. '001YG.mp4/000089.png'"),
    "size": (FRAME_SIZE_DTYPE, "(2,)", "width, height in pixels"),
    **{t: (RANGE_DTYPE, "(2,)", f"range of the frame's rows in {t}") for t in ROW_TABLES},
}

# Compression is chosen per table ("array group").
COMPRESSIONS: tuple[str, ...] = ("none", "zstd")


def arrays_of(table: str) -> tuple[ArraySpec, ...]:
    return tuple(s for s in ROW_ARRAYS if s.table == table)


def resolve_trailing(spec: ArraySpec, dims: dict[str, tuple[int, ...]]) -> tuple[int, ...]:
    """Concrete trailing shape of ``spec`` given ``dims`` (from :meth:`StoreMeta.dims`)."""
    out: list[int] = []
    for d in spec.trailing:
        out.extend(dims[d] if isinstance(d, str) else (d,))
    return tuple(out)


def describe() -> str:
    """The schema as Markdown text (``docs/store.md`` shows it)."""
    lines = [f"schema_version {SCHEMA_VERSION}", "", "| array | dtype | row shape | meaning |", "|---|---|---|---|"]
    for table, columns in (("videos", VIDEO_COLUMNS), ("frames", FRAME_COLUMNS)):
        for col, (dtype, shape, doc) in columns.items():
            lines.append(f"| {table}/{col} | {dtype} | {shape} | {doc} |")
    for s in ROW_ARRAYS:
        shape = "(" + ", ".join(str(d) for d in s.trailing) + ("," if len(s.trailing) == 1 else "") + ")"
        lines.append(f"| {s.key} | {s.dtype} | {shape} | {s.doc} |")
    return "\n".join(lines)
