"""What the Action Genome reader (:mod:`stage1_detect.action_genome`) returns, the options it
takes and what it reports: frozen dataclasses with boxes ``(x1, y1, x2, y2)`` in pixels of the
original frame and relation labels as *global* predicate ids of the vocabulary.

Import them from :mod:`stage1_detect.action_genome`, the reader's public interface.
"""

from __future__ import annotations

import enum
import math
import pickle
from collections import Counter
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Iterator, Mapping

import numpy as np

from common.errors import FileError
from store.vocabulary import ACTION_GENOME, Vocabulary


class AnnotationError(FileError, ValueError):
    """Malformed Action Genome input; the message names the file and the frame."""

    def __init__(self, path: Path | str, problem: str | None = None, frame: str | None = None):
        super().__init__(f"{path}" if frame is None else f"{path}, frame {frame!r}", problem)
        self.path = Path(path) if problem is not None else Path(self.file.split(", frame ")[0])
        self.frame = frame


# Action Genome's pickles hold dicts, lists, tuples, str, numbers, None and numpy arrays (the
# person boxes, ``(n, 4)`` float32). Nothing else may be named by a pickle the reader loads: a
# crafted file whose reduce calls ``os.system`` is refused before it runs.
PICKLE_GLOBALS = frozenset({
    (module, name)
    for module in ("numpy.core.multiarray", "numpy._core.multiarray")
    for name in ("_reconstruct", "scalar")
} | {("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
     ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"), ("builtins", "bytes"),
     ("__builtin__", "bytes")})
"""The only globals an annotation pickle may name: numpy's array, dtype and scalar reconstruction
(``_frombuffer`` for pickle protocol 5, Python 3.14's default), and ``_codecs.encode`` and
``bytes``, which pickle protocol 2 uses to rebuild bytes (an array's data)."""


class AnnotationUnpickler(pickle.Unpickler):
    """A ``pickle.Unpickler`` that resolves only :data:`PICKLE_GLOBALS`; anything else is an
    :class:`AnnotationError` naming the file and the refused global."""

    def __init__(self, fh, path: Path | str) -> None:
        super().__init__(fh)
        self.path = path

    def find_class(self, module: str, name: str):
        if (module, name) in PICKLE_GLOBALS:
            return super().find_class(module, name)
        raise AnnotationError(self.path, f"refused to unpickle {module}.{name}: an Action Genome annotation "
                                         f"pickle holds only dicts, lists, numbers, strings and numpy arrays "
                                         f"(a crafted file could run code)")


def load_annotation_pickle(path: Path | str):
    """The object in an annotation pickle, read by :class:`AnnotationUnpickler`."""
    with open(path, "rb") as fh:
        return AnnotationUnpickler(fh, path).load()


class Split(str, enum.Enum):
    TRAIN = "train"
    VAL = "val"
    TEST = "test"


@dataclass(frozen=True)
class ObjectAnnotation:
    """One annotated object of a frame; the subject of every relation is the person.

    ``box`` is xyxy in pixels; ``label`` an object id of the vocabulary; ``attention``,
    ``spatial`` and ``contacting`` are global predicate ids (AG gives exactly one
    attention label and zero or more of the others).
    """

    label: int
    box: tuple[float, float, float, float]
    attention: tuple[int, ...]
    spatial: tuple[int, ...]
    contacting: tuple[int, ...]
    small: bool = False
    """Absent from the ``_filtersmall`` annotations (set only with ``ReaderOptions.mark_small``)."""

    @property
    def predicates(self) -> tuple[int, ...]:
        """Every predicate id of this object, attention first."""
        return self.attention + self.spatial + self.contacting


@dataclass(frozen=True)
class FrameAnnotation:
    """An annotated frame: its person box and its (kept) objects.

    ``name`` is the AG frame key ``'VIDEO.mp4/000089.png'``; ``frame_number`` is the
    number in that key: the picture's number (from 1) in AG's ffmpeg dump of ``videos/VIDEO.mp4``
    (:mod:`stage1_detect.frames`), not the decoded frame index.
    """

    name: str
    video: str
    frame_number: int
    width: int
    height: int
    person_box: tuple[float, float, float, float]
    """NaN when the detector found no person (kept only with require_person_box=False)."""
    objects: tuple[ObjectAnnotation, ...]

    @property
    def has_person(self) -> bool:
        return not math.isnan(self.person_box[0])

    def boxes(self) -> np.ndarray:
        """float32 (1 + n_objects, 4) xyxy: the person box first, then the objects."""
        return np.array([self.person_box, *[o.box for o in self.objects]], dtype=np.float32).reshape(-1, 4)

    def labels(self, person_index: int = ACTION_GENOME.person_index) -> np.ndarray:
        """int64 (1 + n_objects,): the person label first, then the objects' labels."""
        return np.array([person_index, *[o.label for o in self.objects]], dtype=np.int64)

    @property
    def num_relations(self) -> int:
        """Number of (subject, predicate, object) triplets this frame annotates."""
        return sum(len(o.predicates) for o in self.objects)


@dataclass(frozen=True)
class VideoAnnotation:
    """A video's kept frames, in frame-number order."""

    name: str
    split: Split
    frames: tuple[FrameAnnotation, ...]


@dataclass(frozen=True)
class ReaderOptions:
    """The baselines' filters, each named; the defaults reproduce STTran's PredCLS data."""

    filter_small: bool = False
    """Read the ``_filtersmall`` pickle (the baselines do for SGCLS and SGDET)."""
    mark_small: bool = False
    """Read the full pickle and mark its objects that the ``_filtersmall`` pickle lacks
    (``ObjectAnnotation.small``); nothing to mark when ``filter_small`` is set."""
    require_visible_object: bool = True
    """Drop frames in which no object is visible."""
    require_person_box: bool = True
    """Drop frames in which the person detector found no box."""
    visible_only: bool = True
    """Keep only visible objects (invisible ones have no box)."""
    min_frames: int = 3
    """Drop videos with fewer kept frames than this (baselines: more than 2)."""
    val_fraction: float = 0.05
    """Fraction of the train videos held out as the validation split."""
    val_seed: int = 0
    """Seed of the validation draw; the same seed always picks the same videos."""
    on_bad_object: str = "skip"
    """'skip' (count in the report) or 'error' for a kept object without a usable box."""

    def __post_init__(self) -> None:
        if self.on_bad_object not in ("skip", "error"):
            raise ValueError(f"on_bad_object must be 'skip' or 'error', got {self.on_bad_object!r}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.min_frames < 1:
            raise ValueError(f"min_frames must be at least 1, got {self.min_frames}")

    @classmethod
    def for_mode(cls, mode, **overrides) -> "ReaderOptions":
        """The options the baselines use for a task mode (a :class:`rules.modes.Mode`)."""
        from rules.modes import Mode

        return cls(**{"filter_small": Mode(mode) is not Mode.PREDCLS, **overrides})

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class FilterReport:
    """What the filters removed, counted per split of the pickle ('train' / 'test').

    Frame counters count annotated frames, each under the first filter that dropped it (in
    the order of docs/stage1.md, "The annotation reader"); object counters count the objects
    of frames that passed the frame filters; ``videos_too_short`` counts videos dropped by
    ``min_frames`` and ``frames_in_short_videos`` the frames they took with them. Frames
    with an empty object list have no set and are counted under ``'unknown'``.
    """

    frames_seen: Counter = field(default_factory=Counter)
    frames_no_objects: Counter = field(default_factory=Counter)
    frames_no_visible_object: Counter = field(default_factory=Counter)
    frames_no_person_box: Counter = field(default_factory=Counter)
    objects_invisible: Counter = field(default_factory=Counter)
    objects_without_box: Counter = field(default_factory=Counter)
    objects_degenerate_box: Counter = field(default_factory=Counter)
    videos_too_short: Counter = field(default_factory=Counter)
    frames_in_short_videos: Counter = field(default_factory=Counter)
    objects_small: Counter = field(default_factory=Counter)
    """Kept objects marked small (``mark_small``): kept, not removed."""
    skipped: list[str] = field(default_factory=list)
    """One line per skipped object: file, frame, object index and reason."""

    def as_rows(self) -> list[tuple[str, str, int]]:
        """``(counter, split, count)`` for every non-empty counter."""
        rows = []
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Counter):
                rows.extend((f.name, split, n) for split, n in sorted(value.items()) if n)
        return rows


@dataclass(frozen=True)
class ActionGenome:
    """The result of reading an AG root: videos per split, vocabulary and filter report."""

    root: Path
    options: ReaderOptions
    vocabulary: Vocabulary
    splits: Mapping[Split, tuple[VideoAnnotation, ...]]
    report: FilterReport

    def videos(self, split: Split | str) -> tuple[VideoAnnotation, ...]:
        return self.splits[Split(split)]

    def frames(self, split: Split | str) -> Iterator[FrameAnnotation]:
        for video in self.videos(split):
            yield from video.frames

    def summary(self) -> list[dict]:
        """One row per split: videos, frames, objects, relations (triplets)."""
        rows = []
        for split, videos in self.splits.items():
            frames = [f for v in videos for f in v.frames]
            rows.append({
                "split": split.value,
                "videos": len(videos),
                "frames": len(frames),
                "objects": sum(len(f.objects) for f in frames),
                "relations": sum(f.num_relations for f in frames),
            })
        return rows
