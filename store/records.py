"""Typed containers for what a store holds: :class:`StoreMeta` and :class:`VideoRecord`."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import enum
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from common.errors import FileError
from store.schema import (
    ROW_ARRAYS,
    ROW_TABLES,
    SCHEMA_VERSION,
    TABLE_PREFIX,
    resolve_trailing,
)
from store.vocabulary import Vocabulary


class StoreError(FileError):
    """A store that cannot be used as it is: names the file and the problem."""


class UnionMode(str, enum.Enum):
    """How a pair's union-box feature is cached.

    POOLED: one vector per pair (``union_shape = (U,)``, 4 KB for U=2048 in f16), the default.
    MAP:    STTran's RoIAlign map, ``(1024, 7, 7)``, about 100 KB per pair in f16.
    """

    POOLED = "pooled"
    MAP = "map"


@dataclass(frozen=True)
class DetectorInfo:
    """The stage-1 detector: architecture name, its settings (plain JSON) and weights' sha256."""

    arch: str
    settings: dict[str, Any] = field(default_factory=dict)
    weights_sha256: str = ""


@dataclass(frozen=True)
class StoreMeta:
    """Root attributes of a store (one per extraction), written into every segment.

    ``feature_dim`` is D of object features; ``union_shape`` the per-pair shape of
    ``pairs/union``; ``source`` holds the dataset path and its filters (plain JSON).
    """

    vocabulary: Vocabulary
    feature_dim: int
    detector: DetectorInfo
    union_mode: UnionMode = UnionMode.POOLED
    union_shape: tuple[int, ...] = (2048,)
    source: dict[str, Any] = field(default_factory=dict)
    code_revision: str = ""
    created: str = ""
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        object.__setattr__(self, "union_mode", UnionMode(self.union_mode))
        object.__setattr__(self, "union_shape", tuple(int(x) for x in self.union_shape))
        # Plain JSON (tuples as lists), as a store gives it back, so that a writer's meta
        # and the stored one compare equal when they describe the same extraction.
        object.__setattr__(self, "detector", DetectorInfo(
            arch=self.detector.arch, settings=json.loads(json.dumps(self.detector.settings)),
            weights_sha256=self.detector.weights_sha256))
        object.__setattr__(self, "source", json.loads(json.dumps(self.source)))
        if not self.created:
            now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
            object.__setattr__(self, "created", now)
        if self.union_mode is UnionMode.POOLED and len(self.union_shape) != 1:
            raise ValueError(f"pooled union features need a 1-d union_shape, got {self.union_shape}")
        if self.union_mode is UnionMode.MAP and len(self.union_shape) != 3:
            raise ValueError(f"map union features need a (C, H, W) union_shape, got {self.union_shape}")

    @property
    def num_classes(self) -> int:
        return self.vocabulary.num_objects

    def dims(self) -> dict[str, tuple[int, ...]]:
        """Sizes that :data:`store.schema.ROW_ARRAYS` refer to by letter."""
        return {
            "D": (self.feature_dim,),
            "C": (self.vocabulary.num_objects,),
            "P": (self.vocabulary.num_predicates,),
            "U": self.union_shape,
        }

    def union_bytes_per_pair(self) -> int:
        return 2 * int(np.prod(self.union_shape))

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "created": self.created,
            "code_revision": self.code_revision,
            "detector": dataclasses.asdict(self.detector),
            "vocabulary": self.vocabulary.to_dict(),
            "feature_dim": self.feature_dim,
            "union_mode": self.union_mode.value,
            "union_shape": list(self.union_shape),
            "source": self.source,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "StoreMeta":
        return cls(
            vocabulary=Vocabulary.from_dict(d["vocabulary"]),
            feature_dim=int(d["feature_dim"]),
            detector=DetectorInfo(**d["detector"]),
            union_mode=UnionMode(d["union_mode"]),
            union_shape=tuple(d["union_shape"]),
            source=d.get("source", {}),
            code_revision=d.get("code_revision", ""),
            created=d["created"],
            schema_version=int(d["schema_version"]),
        )

    def compatibility(self) -> dict[str, Any]:
        """What must agree between parts of one store.

        Creation time and code revision may differ, and so may where each writer found the
        data (``source['root']``: nodes mount the dataset at different paths) and how it
        read the frames (``source['frame_source']``: PNG and mp4 give the same pixels).
        """
        d = self.to_dict()
        d.pop("created")
        d.pop("code_revision")
        d["source"] = {k: v for k, v in d["source"].items() if k not in ("root", "frame_source")}
        return d

    def incompatibility(self, other: "StoreMeta") -> str | None:
        """A sentence naming the first field that differs from ``other``, or None."""
        a, b = self.compatibility(), other.compatibility()
        names = {"vocabulary": "vocabulary", "feature_dim": "feature size", "union_shape": "union feature size"}
        for k in a:
            if a[k] != b.get(k):
                if isinstance(a[k], dict) and isinstance(b.get(k), dict):  # only the keys that differ, not two dumps
                    diffs = "; ".join(f"{key}: {_short(here)} here, {_short(want)} expected"
                                      for key, here, want in _dict_differences(b[k], a[k]))
                    return f"{names.get(k, k)} differs from the rest of the store in {diffs}"
                return f"{names.get(k, k)} differs from the rest of the store: {b.get(k)!r} here, {a[k]!r} expected"
        return None


def _dict_differences(here: dict, want: dict, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted key, value here, value expected) for each key whose values differ; nested dicts
    are walked, a key absent on one side is ``<absent>``."""
    out = []
    for key in sorted(set(here) | set(want), key=str):
        a, b = here.get(key, _ABSENT), want.get(key, _ABSENT)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _dict_differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append((f"{prefix}{key}", a, b))
    return out


class _Absent:
    def __repr__(self) -> str:
        return "<absent>"


_ABSENT = _Absent()


def _short(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


_OFFSET_FIELDS = {t: f"{TABLE_PREFIX[t]}_offsets" for t in ROW_TABLES}


@dataclass(frozen=True, eq=False)
class VideoRecord:
    """Everything the store holds for one video. F frames; per-row arrays are flat.

    Rows of frame ``i`` in table T are ``T_offsets[i]:T_offsets[i+1]``; every offsets array
    is int64 (F+1,), starts at 0 and ends at the table's row count. Indices stored in rows
    (``rel_subject``, ``pair_subject`` ...) are local to their frame.

    Frames:       frame_names (F,) str, frame_sizes (F, 2) int32 (width, height).
    GT objects:   G rows, the person first in each frame. gt_boxes (G, 4) f32 xyxy,
                  gt_labels (G,) i32, gt_features (G, D) f16, gt_dists (G, C) f16,
                  gt_small (G,) u8 (1: absent from the _filtersmall annotations).
    GT relations: R rows. rel_subject, rel_object (R,) i32 into the frame's GT objects,
                  rel_labels (R, P) u8 multi-hot over global predicate ids.
    Detections:   N rows. det_boxes (N, 4) f32, det_scores (N,) f32, det_labels (N,) i32,
                  det_dists (N, C) f16, det_features (N, D) f16.
    Pairs:        M rows. pair_subject, pair_object (M,) i32 into the frame's joint box index
                  (GT objects 0..G-1, then detections G..G+N-1), pair_union (M, *U) f16.

    Arrays are numpy (torch.from_numpy shares their memory where a tensor is wanted).
    """

    name: str
    split: str
    frame_names: tuple[str, ...]
    frame_sizes: np.ndarray
    gt_offsets: np.ndarray
    gt_boxes: np.ndarray
    gt_labels: np.ndarray
    gt_features: np.ndarray
    gt_dists: np.ndarray
    gt_small: np.ndarray
    rel_offsets: np.ndarray
    rel_subject: np.ndarray
    rel_object: np.ndarray
    rel_labels: np.ndarray
    det_offsets: np.ndarray
    det_boxes: np.ndarray
    det_scores: np.ndarray
    det_labels: np.ndarray
    det_dists: np.ndarray
    det_features: np.ndarray
    pair_offsets: np.ndarray
    pair_subject: np.ndarray
    pair_object: np.ndarray
    pair_union: np.ndarray

    @property
    def num_frames(self) -> int:
        return len(self.frame_names)

    def offsets(self, table: str) -> np.ndarray:
        """Per-frame offsets (F+1,) of a per-row table ("gt_objects", "pairs", ...)."""
        return getattr(self, _OFFSET_FIELDS[table])

    def num_rows(self, table: str) -> int:
        return int(self.offsets(table)[-1])

    def frame_rows(self, table: str, i: int) -> slice:
        """Rows of frame ``i`` in ``table``."""
        o = self.offsets(table)
        return slice(int(o[i]), int(o[i + 1]))

    def nbytes(self) -> int:
        return sum(getattr(self, s.field).nbytes for s in ROW_ARRAYS)

    def equals(self, other: "VideoRecord") -> bool:
        """Exact equality of every field (arrays compared by dtype, shape and value)."""
        return not self.differences(other)

    def differences(self, other: "VideoRecord") -> list[str]:
        out = []
        for f in dataclasses.fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
                a, b = np.asarray(a), np.asarray(b)
                if a.dtype != b.dtype or a.shape != b.shape or not np.array_equal(a, b):
                    out.append(f.name)
            elif a != b:
                out.append(f.name)
        return out

    def validate(self, meta: StoreMeta) -> None:
        """Raise ValueError naming the first field whose shape, dtype or indices are wrong."""
        where = f"video {self.name!r}"
        f_count = self.num_frames
        if self.frame_sizes.shape != (f_count, 2) or self.frame_sizes.dtype != np.int32:
            raise ValueError(f"{where}: frame_sizes must be int32 ({f_count}, 2)")
        for t in ROW_TABLES:
            o = self.offsets(t)
            if o.dtype != np.int64 or o.shape != (f_count + 1,) or o[0] != 0 or np.any(np.diff(o) < 0):
                raise ValueError(f"{where}: {_OFFSET_FIELDS[t]} must be non-decreasing int64 ({f_count + 1},) from 0")
        dims = meta.dims()
        for s in ROW_ARRAYS:
            a = getattr(self, s.field)
            want = (self.num_rows(s.table),) + resolve_trailing(s, dims)
            if not isinstance(a, np.ndarray) or a.dtype != np.dtype(s.dtype) or a.shape != want:
                got = (getattr(a, "dtype", type(a)), getattr(a, "shape", None))
                raise ValueError(f"{where}: {s.field} must be {s.dtype} {want}, got {got}")
        self._validate_indices(where)

    def _validate_indices(self, where: str) -> None:
        for i in range(self.num_frames):
            gr = self.frame_rows("gt_objects", i)
            g = gr.stop - gr.start
            n_det = self.frame_rows("detections", i).stop - self.frame_rows("detections", i).start
            r = self.frame_rows("gt_relations", i)
            for name, arr in (("rel_subject", self.rel_subject[r]), ("rel_object", self.rel_object[r])):
                if arr.size and (arr.min() < 0 or arr.max() >= g):
                    raise ValueError(f"{where}: {name} of frame {i} outside 0..{g - 1}")
            small = self.gt_small[gr]
            if small.size and (small.max() > 1 or small[0] != 0):
                raise ValueError(f"{where}: gt_small of frame {i} must be 0/1 and 0 for the person (row 0)")
            p = self.frame_rows("pairs", i)
            for name, arr in (("pair_subject", self.pair_subject[p]), ("pair_object", self.pair_object[p])):
                if arr.size and (arr.min() < 0 or arr.max() >= g + n_det):
                    raise ValueError(f"{where}: {name} of frame {i} outside the frame's {g + n_det} boxes")
