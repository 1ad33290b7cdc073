"""Reader for the Action Genome (AG) annotation release (:func:`load_action_genome`).

It reads the real layout (``annotations/*.pkl``, the two class files) and applies the filters
every AG baseline applies (STTran's ``AG`` dataset), each a named field of
:class:`ReaderOptions`; ``mark_small`` marks the objects ``_filtersmall`` lacks so that one
reading serves every mode, and ``val`` is a seeded fraction of ``train``. It returns frozen
dataclasses (:mod:`stage1_detect.ag_annotations`, imported from here): xyxy boxes in pixels of
the original frame, global predicate ids. See docs/stage1.md, "The annotation reader".
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from stage1_detect.ag_annotations import (
    ActionGenome,
    AnnotationError,
    FilterReport,
    FrameAnnotation,
    ObjectAnnotation,
    ReaderOptions,
    Split,
    VideoAnnotation,
    load_annotation_pickle,
)
from store.vocabulary import ACTION_GENOME, PredicateGroup, Vocabulary

log = logging.getLogger(__name__)

PERSON_FILE = "annotations/person_bbox.pkl"
OBJECT_FILE = "annotations/object_bbox_and_relationship.pkl"
OBJECT_FILE_SMALL = "annotations/object_bbox_and_relationship_filtersmall.pkl"
OBJECT_CLASSES_FILE = "annotations/object_classes.txt"
PREDICATE_CLASSES_FILE = "annotations/relationship_classes.txt"
FRAME_LIST_FILE = "annotations/frame_list.txt"

FRAME_KEY = re.compile(r"^(?P<video>[^/]+\.mp4)/(?P<number>\d+)\.png$")

# The five compound object names of object_classes.txt and the short names that the
# baselines (and the pickles) use in their place.
OBJECT_ALIASES: dict[str, str] = {
    "closet/cabinet": "closet",
    "cup/glass/bottle": "cup",
    "paper/notebook": "paper",
    "phone/camera": "phone",
    "sofa/couch": "sofa",
}

_GROUP_KEYS = {
    PredicateGroup.ATTENTION: "attention_relationship",
    PredicateGroup.SPATIAL: "spatial_relationship",
    PredicateGroup.CONTACTING: "contacting_relationship",
}


# --- vocabulary --------------------------------------------------------------------------


def _squash(name: str) -> str:
    return name.strip().lower().replace("_", "").replace(" ", "")


def object_name_table(vocabulary: Vocabulary = ACTION_GENOME) -> dict[str, int]:
    """Every accepted spelling of an object class (short, compound, any underscores) -> id."""
    table = {_squash(name): i for i, name in enumerate(vocabulary.objects) if i > 0}
    for compound, short in OBJECT_ALIASES.items():
        if short in vocabulary.objects:
            table[_squash(compound)] = vocabulary.object_index(short)
    return table


def predicate_name_table(vocabulary: Vocabulary = ACTION_GENOME) -> dict[str, int]:
    """Every accepted spelling of a predicate ('in_front_of', 'infrontof') -> id."""
    return {_squash(name): i for i, name in enumerate(vocabulary.predicates)}


def read_vocabulary(root: Path | str) -> Vocabulary:
    """Check the two class files against Action Genome's vocabulary and return it.

    The raw files spell five objects as compounds ('cup/glass/bottle') and the predicates
    without underscores ('infrontof'); both normalise to :data:`ACTION_GENOME`'s names.
    A file that does not list exactly AG's classes in AG's order is an error, because
    every id downstream depends on that order.
    """
    root = Path(root)
    objects = _read_lines(root / OBJECT_CLASSES_FILE)
    object_table = object_name_table()
    predicates = _read_lines(root / PREDICATE_CLASSES_FILE)
    predicate_table = predicate_name_table()
    expected = (
        (OBJECT_CLASSES_FILE, objects, object_table, list(range(1, ACTION_GENOME.num_objects))),
        (PREDICATE_CLASSES_FILE, predicates, predicate_table, list(range(ACTION_GENOME.num_predicates))),
    )
    for rel, names, table, ids in expected:
        for line_no, name in enumerate(names, start=1):
            if _squash(name) not in table:
                raise AnnotationError(root / rel, f"line {line_no}: unknown class name {name!r}")
        got = [table[_squash(n)] for n in names]
        if got != ids:
            raise AnnotationError(
                root / rel,
                f"lists {len(names)} classes that are not Action Genome's in its order "
                f"(expected {len(ids)} entries)",
            )
    return ACTION_GENOME


def _read_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise AnnotationError(path, "missing (is the root an Action Genome download?)")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise AnnotationError(path, f"not UTF-8 text (byte {e.start}: {e.object[e.start:e.start + 1]!r}): a class "
                                    f"file is one class name a line, in UTF-8") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


# --- pickles -----------------------------------------------------------------------------


def _load_pickle(path: Path) -> dict:
    if not path.is_file():
        raise AnnotationError(path, "missing (is the root an Action Genome download?)")
    try:
        data = load_annotation_pickle(path)  # only numpy's array globals: a crafted pickle cannot run code
    except AnnotationError:
        raise
    except Exception as e:  # a truncated or foreign file: name it, keep the cause
        raise AnnotationError(path, f"cannot be unpickled: {e}") from e
    if not isinstance(data, dict):
        raise AnnotationError(path, f"expected a dict keyed by frame name, got {type(data).__name__}")
    return data


def parse_frame_key(key: object, path: Path | str) -> tuple[str, int]:
    """``'001YG.mp4/000089.png'`` -> ``('001YG.mp4', 89)``; anything else is an error."""
    m = FRAME_KEY.match(key) if isinstance(key, str) else None
    if m is None:
        raise AnnotationError(path, "malformed frame key, expected 'VIDEO.mp4/NNNNNN.png'", frame=repr(key))
    return m["video"], int(m["number"])


def _person_box(entry: object, path: Path, frame: str) -> tuple[tuple[float, ...] | None, int, int]:
    if not isinstance(entry, dict) or "bbox" not in entry or "bbox_size" not in entry:
        raise AnnotationError(path, "entry must be a dict with 'bbox' and 'bbox_size'", frame)
    try:
        width, height = (int(v) for v in entry["bbox_size"])
        boxes = np.asarray(entry["bbox"], dtype=np.float64).reshape(-1, 4)
    except (TypeError, ValueError) as e:
        raise AnnotationError(path, f"unreadable 'bbox' or 'bbox_size': {e}", frame) from e
    if len(boxes) == 0:
        return None, width, height
    if len(boxes) > 1:
        raise AnnotationError(path, f"{len(boxes)} person boxes, AG has at most one", frame)
    box = boxes[0]
    if not np.isfinite(box).all() or box[2] <= box[0] or box[3] <= box[1]:
        raise AnnotationError(path, f"degenerate person box {box.tolist()}", frame)
    return tuple(float(v) for v in box), width, height


def _frame_split(objects: Sequence[dict], path: Path, frame: str) -> str | None:
    sets = set()
    for obj in objects:
        try:
            sets.add(obj["metadata"]["set"])
        except (KeyError, TypeError):
            raise AnnotationError(path, "object without metadata['set']", frame) from None
    if len(sets) > 1:
        raise AnnotationError(path, f"objects of one frame disagree on the set: {sorted(sets)}", frame)
    split = sets.pop() if sets else None
    if split is not None and split not in ("train", "test"):
        raise AnnotationError(path, f"unknown set {split!r} (expected 'train' or 'test')", frame)
    return split


def _labels(names: object, group: PredicateGroup, table: dict[str, int], path: Path, frame: str) -> tuple[int, ...]:
    if names is None:
        return ()
    if isinstance(names, str) or not isinstance(names, Iterable):
        raise AnnotationError(path, f"{_GROUP_KEYS[group]} must be a list of names, got {names!r}", frame)
    lo, hi = ACTION_GENOME.group_range(group)
    ids = []
    for name in names:
        idx = table.get(_squash(name)) if isinstance(name, str) else None
        if idx is None:
            raise AnnotationError(path, f"unknown predicate {name!r} in {_GROUP_KEYS[group]}", frame)
        if not lo <= idx < hi:
            raise AnnotationError(path, f"predicate {name!r} is not a {group.value} predicate", frame)
        ids.append(idx)
    return tuple(ids)


# --- the reader --------------------------------------------------------------------------


def load_action_genome(root: Path | str, options: ReaderOptions = ReaderOptions()) -> ActionGenome:
    """Read an Action Genome root and apply the filters of ``options``.

    ``root`` is the folder that holds ``annotations/`` (and ``frames/``, ``videos/``,
    which this function does not open). Returns every split, with ``val`` drawn from
    ``train`` by :func:`validation_videos`.
    """
    root = Path(root)
    vocabulary = read_vocabulary(root)
    object_path = root / (OBJECT_FILE_SMALL if options.filter_small else OBJECT_FILE)
    person_path = root / PERSON_FILE
    person_data = _load_pickle(person_path)
    object_data = _load_pickle(object_path)
    object_table = object_name_table(vocabulary)
    predicate_table = predicate_name_table(vocabulary)
    report = FilterReport()
    small_keys: dict[str, list[tuple]] | None = None
    if options.mark_small and not options.filter_small:
        small_path = root / OBJECT_FILE_SMALL
        small_keys = filtersmall_keys(_load_pickle(small_path), object_data, vocabulary, options,
                                      small_path, object_path)

    by_video: dict[tuple[str, str], list[FrameAnnotation]] = {}
    for key, objects in object_data.items():
        video, number = parse_frame_key(key, object_path)
        if not isinstance(objects, list):
            raise AnnotationError(object_path, f"expected a list of objects, got {type(objects).__name__}", key)
        split = _frame_split(objects, object_path, key)
        if split is None:
            # No object means no set to read; such a frame has nothing to learn from.
            report.frames_no_objects["unknown"] += 1
            continue
        report.frames_seen[split] += 1
        if options.require_visible_object and not any(_visible(o, object_path, key) for o in objects):
            report.frames_no_visible_object[split] += 1
            continue
        if key not in person_data:
            raise AnnotationError(person_path, "frame missing (it is in the object annotations)", key)
        person_box, width, height = _person_box(person_data[key], person_path, key)
        if person_box is None and options.require_person_box:
            report.frames_no_person_box[split] += 1
            continue

        kept, kept_keys = [], []
        for index, obj in enumerate(objects):
            kept_object = _read_object(obj, index, options, object_table, predicate_table,
                                       object_path, key, split, report)
            if kept_object is not None:
                kept.append(kept_object)
                kept_keys.append(_object_key(obj, object_table, options, object_path, key))
        if small_keys is not None:
            present = kept_in_filtersmall(kept_keys, small_keys.get(key, ()))
            kept = [o if p else replace(o, small=True) for o, p in zip(kept, present)]
            report.objects_small[split] += present.count(False)
        if options.require_visible_object and not kept:
            # Every visible object was skipped as unusable: the frame has nothing left.
            report.frames_no_visible_object[split] += 1
            continue
        frame = FrameAnnotation(
            name=key, video=video, frame_number=number, width=width, height=height,
            person_box=person_box if person_box is not None else (math.nan,) * 4,
            objects=tuple(kept),
        )
        by_video.setdefault((video, split), []).append(frame)

    seen_split: dict[str, str] = {}
    videos: dict[str, list[VideoAnnotation]] = {"train": [], "test": []}
    for (video, split), frames in by_video.items():
        if seen_split.setdefault(video, split) != split:
            raise AnnotationError(object_path, f"video {video!r} has frames in both train and test")
        if len(frames) < options.min_frames:
            report.videos_too_short[split] += 1
            report.frames_in_short_videos[split] += len(frames)
            continue
        frames.sort(key=lambda f: f.frame_number)
        videos[split].append(VideoAnnotation(name=video, split=Split(split), frames=tuple(frames)))

    val_names = validation_videos([v.name for v in videos["train"]], options.val_fraction, options.val_seed)
    splits = {
        Split.TRAIN: tuple(v for v in videos["train"] if v.name not in val_names),
        Split.VAL: tuple(
            VideoAnnotation(name=v.name, split=Split.VAL, frames=v.frames)
            for v in videos["train"] if v.name in val_names
        ),
        Split.TEST: tuple(videos["test"]),
    }
    if report.skipped:
        log.warning("%s: skipped %d objects without a usable box (see the filter report)",
                    object_path, len(report.skipped))
    return ActionGenome(root=root, options=options, vocabulary=vocabulary, splits=splits, report=report)


def _object_key(obj: dict, object_table: dict[str, int], options: ReaderOptions, path: Path,
                frame: str) -> tuple | None:
    """``(label, (x, y, w, h))`` of an object the options would keep, as the pickle gives it;
    None for one without a box or one that ``visible_only`` drops."""
    if not isinstance(obj, dict) or obj.get("bbox") is None:
        return None
    if options.visible_only and not _visible(obj, path, frame):
        return None
    name = obj.get("class")
    label = object_table.get(_squash(name)) if isinstance(name, str) else None
    if label is None:
        raise AnnotationError(path, f"unknown class {name!r}", frame)
    try:
        return label, tuple(float(v) for v in obj["bbox"])
    except (TypeError, ValueError):
        raise AnnotationError(path, f"bbox {obj['bbox']!r} is not (x, y, w, h)", frame) from None


def filtersmall_keys(small_data: dict, object_data: dict, vocabulary: Vocabulary, options: ReaderOptions,
                     small_path: Path, object_path: Path) -> dict[str, list[tuple]]:
    """Per frame of the ``_filtersmall`` pickle, the keys (:func:`_object_key`) of its objects
    that the options keep, after checking that each has a counterpart (same class, same box)
    in that frame of the full pickle, one for one: the ``_filtersmall`` file only removes
    objects. Raises :class:`AnnotationError` naming the ``_filtersmall`` file and the frame."""
    object_table = object_name_table(vocabulary)
    out: dict[str, list[tuple]] = {}
    for key, objects in small_data.items():
        if not isinstance(objects, list):
            raise AnnotationError(small_path, f"expected a list of objects, got {type(objects).__name__}", key)
        keys = [k for k in (_object_key(o, object_table, options, small_path, key) for o in objects) if k]
        full = object_data.get(key)
        full = full if isinstance(full, list) else []
        missing = Counter(keys) - Counter(
            k for k in (_object_key(o, object_table, options, object_path, key) for o in full) if k)
        if missing:
            label, bbox = next(iter(missing))
            raise AnnotationError(small_path, f"object {vocabulary.objects[label]!r} with bbox {list(bbox)} has "
                                              f"no counterpart in {object_path.name}", key)
        out[key] = keys
    return out


def kept_in_filtersmall(full: Sequence[tuple | None], small: Iterable[tuple]) -> list[bool]:
    """For each object key of a frame of the full pickle (None: an object without one), whether
    the frame's ``_filtersmall`` keys hold it. Multisets: two identical objects need two
    occurrences; the first ones in file order take them."""
    left = Counter(small)
    out = []
    for k in full:
        out.append(k is not None and left[k] > 0)
        if out[-1]:
            left[k] -= 1
    return out


def _visible(obj: object, path: Path, frame: str) -> bool:
    if not isinstance(obj, dict) or "visible" not in obj:
        raise AnnotationError(path, "object without a 'visible' field", frame)
    return bool(obj["visible"])


def _read_object(obj: dict, index: int, options: ReaderOptions, object_table: dict[str, int],
                 predicate_table: dict[str, int], path: Path, frame: str, split: str,
                 report: FilterReport) -> ObjectAnnotation | None:
    """One object of the pickle, or None when a filter drops it (counted in ``report``)."""
    visible = _visible(obj, path, frame)
    name = obj.get("class")
    label = object_table.get(_squash(name)) if isinstance(name, str) else None
    if label is None:
        raise AnnotationError(path, f"object {index}: unknown class {name!r}", frame)
    if not visible:
        report.objects_invisible[split] += 1
        if options.visible_only:
            return None

    bbox = obj.get("bbox")
    problem = None
    if bbox is None:
        problem, counter = "no box (bbox is None)", report.objects_without_box
    else:
        try:
            x, y, w, h = (float(v) for v in bbox)
        except (TypeError, ValueError):
            raise AnnotationError(path, f"object {index}: bbox {bbox!r} is not (x, y, w, h)", frame) from None
        if not all(map(math.isfinite, (x, y, w, h))) or w <= 0 or h <= 0:
            problem, counter = f"degenerate box xywh={[x, y, w, h]}", report.objects_degenerate_box
    if problem is not None:
        if options.on_bad_object == "error":
            raise AnnotationError(path, f"object {index} ({name}): {problem}", frame)
        counter[split] += 1
        report.skipped.append(f"{path.name}: {frame}: object {index} ({name}): {problem}")
        return None

    return ObjectAnnotation(
        label=label,
        box=(x, y, x + w, y + h),
        attention=_labels(obj.get("attention_relationship"), PredicateGroup.ATTENTION, predicate_table, path, frame),
        spatial=_labels(obj.get("spatial_relationship"), PredicateGroup.SPATIAL, predicate_table, path, frame),
        contacting=_labels(obj.get("contacting_relationship"), PredicateGroup.CONTACTING, predicate_table, path, frame),
    )


def validation_videos(train_videos: Sequence[str], fraction: float, seed: int) -> frozenset[str]:
    """The train videos held out for validation: a seeded, stable choice.

    Each video gets a key ``sha256(f"{seed}:{name}")``; the ``ceil(fraction * n)`` videos
    with the smallest keys are validation. A video's key depends only on its name and the
    seed, so the choice does not depend on the order of the annotation file, and adding
    videos moves few others.
    """
    if fraction <= 0 or not train_videos:
        return frozenset()
    count = math.ceil(fraction * len(train_videos))
    keyed = sorted(train_videos, key=lambda name: hashlib.sha256(f"{seed}:{name}".encode()).hexdigest())
    return frozenset(keyed[:count])


def describe(ag: ActionGenome) -> str:
    """A readable summary: counts per split, then what each filter removed."""
    which = ("_filtersmall" if ag.options.filter_small else
             "full, objects absent from _filtersmall marked small" if ag.options.mark_small else "full")
    lines = [f"Action Genome at {ag.root} ({which} annotations)"]
    lines.append(f"  {'split':<6} {'videos':>7} {'frames':>8} {'objects':>8} {'relations':>10}")
    for row in ag.summary():
        lines.append(f"  {row['split']:<6} {row['videos']:>7,} {row['frames']:>8,} {row['objects']:>8,} {row['relations']:>10,}")
    report = ag.report
    seen = ", ".join(f"{split} {n:,}" for split, n in sorted(report.frames_seen.items()))
    lines.append(f"  annotated frames by pickle set: {seen or 'none'}")
    removed = [row for row in report.as_rows() if row[0] not in ("frames_seen", "objects_small")]
    if removed:
        lines.append("  removed by the filters:")
        lines.extend(f"    {name:<28} {split:<7} {count:>8,}" for name, split, count in removed)
    if sum(report.objects_small.values()):
        marked = ", ".join(f"{split} {n:,}" for split, n in sorted(report.objects_small.items()))
        lines.append(f"  objects marked small (absent from _filtersmall): {marked}")
    if report.skipped:
        lines.append(f"  skipped objects ({len(report.skipped)}), first {min(3, len(report.skipped))}:")
        lines.extend(f"    {line}" for line in report.skipped[:3])
    return "\n".join(lines)


# The reader's public interface: load_action_genome, what it returns and its options.
__all__ = [
    "ActionGenome", "AnnotationError", "FilterReport", "FrameAnnotation", "ObjectAnnotation", "ReaderOptions",
    "Split", "VideoAnnotation", "describe", "filtersmall_keys", "kept_in_filtersmall", "load_action_genome",
    "object_name_table", "parse_frame_key", "predicate_name_table", "read_vocabulary", "validation_videos",
    "OBJECT_ALIASES", "FRAME_KEY",
]
