"""Stage 1: run a detector once over every annotated frame and write the feature store.

:func:`extract` decodes each video's frames in DataLoader workers, encodes each batch once
with a :class:`~stage1_detect.frame_detector.FrameDetector`, builds a :class:`~store.VideoRecord`
(GT objects with their ``small`` marks, GT relations, detections after the detector's step,
the pairs of :func:`rules.pairing.stored_pairs` with their union features) and hands it to a
writer thread; resumable, shardable by rank, bad videos skipped and logged. One extraction
serves every task mode. See docs/stage1.md, "Extraction".
"""

from __future__ import annotations

import functools
import json
import logging
import os
import queue
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from common.errors import NonFiniteError
from common.files import WriterLock, die_with_parent, sha256_of
from common.runtime import code_revision
from rules.boxes import union_boxes
from rules.pairing import stored_pairs
from stage1_detect.action_genome import (
    FRAME_LIST_FILE,
    OBJECT_FILE,
    OBJECT_FILE_SMALL,
    PERSON_FILE,
    ReaderOptions,
    VideoAnnotation,
    load_action_genome,
)
from stage1_detect.detection_step import sttran_positions
from stage1_detect.frame_detector import FrameDetector
from stage1_detect.frames import FrameError, FrameSource, open_frame_source
from store import DetectorInfo, StoreMeta, StoreWriter, UnionMode, VideoRecord
from store.check import non_finite_arrays
from store.schema import FRAME_SIZE_DTYPE, RANGE_DTYPE, ROW_ARRAYS, TABLE_PREFIX, arrays_of, resolve_trailing
from store.vocabulary import Vocabulary
from store.writer import lock_part

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExtractConfig:
    splits: tuple[str, ...] = ("train", "val", "test")
    batch_size: int = 8
    """Frames per detector forward."""
    num_workers: int = 2
    """DataLoader workers decoding frames."""
    frame_source: str = "auto"
    rescale_frames: bool = False
    """Resize a frame whose size is not its annotation's ``bbox_size`` to that size (off: the
    video fails with a FrameError naming the frame, as an unreadable frame does)."""
    union_mode: str = "pooled"
    """'pooled': the box head's vector of the union box (D values a pair); 'map': STTran's
    RoIAlign 7x7 map of the backbone (1024x7x7 for r101-c4, ~100 KB a pair in f16)."""
    segment_mb: int = 256
    """Buffered megabytes per store segment; a crash loses at most the unwritten segment."""
    backend: str | None = None
    compression: dict[str, str] = field(default_factory=dict)
    max_videos: int = 0
    """Extract at most this many videos per split (0: all), for trials."""


@dataclass
class ExtractSummary:
    store: Path
    videos_written: int = 0
    videos_skipped_committed: int = 0
    frames: int = 0
    failed: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def line(self) -> str:
        fps = self.frames / self.seconds if self.seconds else 0.0
        text = (f"detect: {self.videos_written} videos ({self.frames} frames, {fps:.1f} frames/s) written to "
                f"{self.store}; {self.videos_skipped_committed} already committed")
        if self.failed:
            text += f"; {len(self.failed)} failed: " + "; ".join(self.failed[:5])
        return text


class VideoFrames(Dataset):
    """Item i: (video index, list of uint8 (H, W, 3) frames) or (video index, error text)."""

    def __init__(self, videos: Sequence[VideoAnnotation], source: FrameSource, rescale: bool = False):
        self.videos = list(videos)
        self.source = source
        self.rescale = rescale

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, i: int):
        video = self.videos[i]
        try:
            return i, self.source.read_sized(video.name, [f.frame_number for f in video.frames],
                                             [(f.width, f.height) for f in video.frames], rescale=self.rescale)
        except FrameError as e:  # reported by the main process; the run goes on
            return i, str(e)


def _first(batch):
    return batch[0]


def video_record(video: VideoAnnotation, images: Sequence[np.ndarray], detector: FrameDetector, meta: StoreMeta,
                 *, batch_size: int = 8, device: str = "cpu",
                 min_frames: int = ReaderOptions.min_frames) -> VideoRecord:
    """Run the detector over one video's frames and assemble its :class:`VideoRecord`.

    ``min_frames``: the reader's, which decides whether the video is in STTran's SGDET dataset
    and so where its frames fall in STTran's chunks of 10 (:func:`sttran_positions`)."""
    vocab = meta.vocabulary
    person = vocab.person_index
    classes = vocab.sttran_classes
    dims = meta.dims()
    specs = {spec.field: spec for spec in ROW_ARRAYS}
    rows: dict[str, list[np.ndarray]] = {name: [] for name in specs}
    counts: dict[str, list[int]] = {prefix: [] for prefix in TABLE_PREFIX.values()}
    if any(f.has_person for f in video.frames):
        positions = sttran_positions([any(not o.small for o in f.objects) for f in video.frames], min_frames)
    else:  # a video without annotations (cli.py predict): the frames given are the list STTran would batch
        positions = list(range(len(video.frames)))

    for start in range(0, len(video.frames), batch_size):
        frames = video.frames[start:start + batch_size]
        batch = [torch.from_numpy(np.ascontiguousarray(im)).permute(2, 0, 1).to(device)
                 for im in images[start:start + batch_size]]
        maps = detector.encode(batch)
        detections = detector.detect(maps, positions[start:start + batch_size])
        # A frame without a person box (a video without annotations: cli.py predict) stores no GT.
        gt_boxes = [np.asarray(f.boxes() if f.has_person else np.zeros((0, 4)), specs["gt_boxes"].dtype)
                    for f in frames]
        gt_pooled = detector.pool(maps, [torch.from_numpy(b).to(device) for b in gt_boxes])

        # Every array as the store will hold it, then the pairs from those values.
        stored = []
        for fi, (frame, det) in enumerate(zip(frames, detections)):
            feats, dists = gt_pooled[fi]
            values = {
                "gt_boxes": gt_boxes[fi],
                "gt_labels": frame.labels(person)[:len(gt_boxes[fi])],
                "gt_features": feats.cpu().numpy(),
                "gt_dists": dists.cpu().numpy(),
                "gt_small": np.array([False, *[o.small for o in frame.objects]])[:len(gt_boxes[fi])],
                "det_boxes": det.boxes.cpu().numpy(),
                "det_scores": det.scores.cpu().numpy(),
                "det_labels": det.labels.cpu().numpy(),
                "det_dists": det.class_dists.cpu().numpy(),
                "det_features": det.features.cpu().numpy(),
            }
            values = {k: v.astype(specs[k].dtype, copy=False) for k, v in values.items()}
            pairs = stored_pairs(values["gt_boxes"], values["gt_small"], values["gt_dists"], values["det_boxes"],
                                 values["det_labels"], values["det_dists"], person=person,
                                 copy_classes=classes.copy_classes)
            values["pair_subject"], values["pair_object"] = pairs[:, 0], pairs[:, 1]
            stored.append(values)

        # Union boxes of every frame's pairs, pooled in one call per batch.
        unions = []
        for values in stored:
            boxes = np.concatenate([values["gt_boxes"], values["det_boxes"]])
            unions.append(torch.from_numpy(
                union_boxes(boxes[values["pair_subject"]], boxes[values["pair_object"]]).astype(np.float32)).to(device))
        if meta.union_mode is UnionMode.MAP:
            union_features = [u.cpu().numpy() for u in detector.pool_map(maps, unions)]
        else:
            union_features = [f.cpu().numpy() for f, _ in detector.pool(maps, unions)]

        for frame, values, union in zip(frames, stored, union_features):
            values["pair_union"] = union
            related = [j for j, obj in enumerate(frame.objects, start=1) if obj.predicates]
            labels = np.zeros((len(related), vocab.num_predicates), dtype=specs["rel_labels"].dtype)
            for i, j in enumerate(related):
                labels[i, list(frame.objects[j - 1].predicates)] = 1
            values.update(rel_subject=np.zeros(len(related)), rel_object=np.array(related), rel_labels=labels)
            for name, value in values.items():
                rows[name].append(value)
            for table, prefix in TABLE_PREFIX.items():
                counts[prefix].append(len(values[arrays_of(table)[0].field]))

    arrays = {}
    for name, spec in specs.items():
        trailing = resolve_trailing(spec, dims)
        parts = [np.asarray(p).reshape(-1, *trailing) for p in rows[name]]
        arrays[name] = (np.concatenate(parts) if parts else np.zeros((0, *trailing))).astype(spec.dtype, copy=False)
    offsets = {f"{prefix}_offsets": np.concatenate([[0], np.cumsum(c)]).astype(RANGE_DTYPE)
               for prefix, c in counts.items()}
    return VideoRecord(
        name=video.name, split=video.split.value,
        frame_names=tuple(f.name for f in video.frames),
        frame_sizes=np.array([[f.width, f.height] for f in video.frames], dtype=FRAME_SIZE_DTYPE).reshape(-1, 2),
        **offsets, **arrays,
    )


def annotations_sha256(root: Path) -> str:
    """Which dataset a store is made from, wherever it is mounted: sha256 over the sha256 of its
    frame list, its person and object pickles and the ``_filtersmall`` one (the stored ``small``
    flags and STTran's chunk positions come from it). A store records it; ``detect`` refuses to
    continue a store made from another dataset (:class:`~store.writer.StoreWriter`)."""
    import hashlib

    parts = [sha256_of(root / name) if (root / name).is_file() else "-"
             for name in (FRAME_LIST_FILE, PERSON_FILE, OBJECT_FILE, OBJECT_FILE_SMALL)]
    return hashlib.sha256(" ".join(parts).encode()).hexdigest()


def store_meta(detector: FrameDetector, vocabulary: Vocabulary, weights_sha256: str, union_mode: str,
               source: dict[str, Any]) -> StoreMeta:
    mode = UnionMode(union_mode)
    d = detector.describe()
    if d.num_classes != vocabulary.num_objects:
        raise ValueError(f"the {d.arch} detector gives distributions over {d.num_classes} classes; the dataset's "
                         f"vocabulary has {vocabulary.num_objects} (background included)")
    union_shape = (d.feature_dim,) if mode is UnionMode.POOLED else d.map_shape
    return StoreMeta(vocabulary=vocabulary, feature_dim=d.feature_dim,
                     detector=DetectorInfo(arch=d.arch, settings=d.settings,
                                           weights_sha256=weights_sha256),
                     union_mode=mode, union_shape=union_shape, source=source, code_revision=code_revision())


class _BackgroundWriter:
    """Hands records to the store writer on a thread, so writing overlaps compute."""

    def __init__(self, writer: StoreWriter, depth: int = 2):
        self.writer = writer
        self.queue: queue.Queue = queue.Queue(maxsize=depth)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="store-writer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (record := self.queue.get()) is not None:
            try:
                if self.error is None:
                    self.writer.write_video(record)
            except BaseException as e:  # surfaced in put()/close() on the main thread
                self.error = e

    def put(self, record: VideoRecord) -> None:
        if self.error is not None:
            raise self.error
        self.queue.put(record)

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join()
        if self.error is not None:  # e.g. a full disk: what was committed stays, nothing more is
            self.writer.abandon()
            raise self.error
        self.writer.close()


def extract(root: Path | str, store_path: Path | str, detector: FrameDetector, *, weights_sha256: str,
            reader_options: ReaderOptions, config: ExtractConfig = ExtractConfig(), device: str = "cpu",
            rank: int = 0, world_size: int = 1, progress: bool = True) -> ExtractSummary:
    """Extract every video of ``config.splits`` (this rank's share) into ``store_path``.

    One extraction serves every task mode: the annotations are read in full with the objects
    absent from ``_filtersmall`` marked (``mark_small`` is set here), whatever mode comes next.
    """
    start = time.time()
    root, store_path = Path(root), Path(store_path)
    if reader_options.filter_small:
        raise ValueError("extraction reads the full annotations and marks the objects absent from _filtersmall: one "
                         "extraction serves every mode (PREDCLS, SGCLS, SGDET), so filter_small must be off")
    if not reader_options.require_person_box:
        raise ValueError("extraction needs the person box of every frame (require_person_box=True)")
    if not reader_options.require_visible_object:
        raise ValueError("extraction needs require_visible_object=True: the SGCLS / SGDET frames are derived from "
                         "the stored objects, which assumes every stored frame has one")
    reader_options = replace(reader_options, mark_small=True)
    # One writer per part of the store: fail at once, before reading the annotations.
    lock = lock_part(store_path, f"rank{rank}")
    try:  # until the writer holds it: released if anything before fails
        ag = load_action_genome(root, reader_options)
        source = open_frame_source(root, config.frame_source)
        detector = detector.eval().to(device)
        # No "splits" here: every part of a store must have the same meta, and extracting the
        # splits in separate runs into one store is fine (each video records its split).
        meta = store_meta(detector, ag.vocabulary, weights_sha256, config.union_mode,
                          {"root": str(root.resolve()), "reader": reader_options.to_dict(),
                           "frame_source": source.name, "rescale_frames": config.rescale_frames,
                           "annotations_sha256": annotations_sha256(root)})
        if meta.union_mode is UnionMode.MAP:
            log.warning("union features as %s maps: about %.0f KB a pair", meta.union_shape,
                        meta.union_bytes_per_pair() / 1024)
        videos = []
        for split in config.splits:
            chosen = sorted(ag.videos(split), key=lambda v: v.name)
            videos.extend(chosen[: config.max_videos] if config.max_videos else chosen)
        videos = [v for i, v in enumerate(videos) if i % world_size == rank]
    except BaseException:
        lock.release()
        raise
    return write_videos(videos, source, detector, meta, store_path, lock=lock, config=config, device=device,
                        rank=rank, progress=progress, start=start, min_frames=reader_options.min_frames)


def write_videos(videos: Sequence[VideoAnnotation], source: FrameSource, detector: FrameDetector, meta: StoreMeta,
                 store_path: Path, *, lock: WriterLock, config: ExtractConfig = ExtractConfig(), device: str = "cpu",
                 rank: int = 0, progress: bool = True, start: float | None = None,
                 min_frames: int = ReaderOptions.min_frames) -> ExtractSummary:
    """Detect and write ``videos`` (their ``frames`` read from ``source``) into the store part
    ``rank{rank}`` whose ``lock`` the caller holds (released here); committed videos are
    skipped. :func:`extract` for AG, ``cli.py predict`` for videos without annotations;
    ``min_frames`` as in :func:`video_record`."""
    start = time.time() if start is None else start
    try:
        writer = StoreWriter(store_path, meta, part=f"rank{rank}", backend=config.backend,
                             segment_bytes=config.segment_mb << 20, compression=config.compression, lock=lock)
    except BaseException:
        lock.release()
        raise
    committed = writer.committed_videos()
    todo = [v for v in videos if v.name not in committed]
    summary = ExtractSummary(store=store_path, videos_skipped_committed=len(videos) - len(todo))
    log_path = store_path.parent / f"{store_path.name}.extraction_log.jsonl"
    background = _BackgroundWriter(writer)
    # The workers die with this process (a SIGKILL of it alone, as the OOM killer sends, included)
    # and do not hold the part's lock (common.files): a rerun proceeds at once.
    loader = DataLoader(VideoFrames(todo, source, config.rescale_frames), batch_size=1, num_workers=config.num_workers,
                        collate_fn=_first, prefetch_factor=2 if config.num_workers else None,
                        worker_init_fn=functools.partial(die_with_parent, parent=os.getpid()))
    bar = tqdm(total=sum(len(v.frames) for v in todo), unit="frame", desc=f"detect rank {rank}",
               disable=not progress)
    batches = iter(loader)
    try:
        for index, images in batches:
            video = todo[index]
            if isinstance(images, str):
                summary.failed.append(images)
                _log_event(log_path, {"video": video.name, "error": images, "rank": rank})
                bar.update(len(video.frames))
                continue
            record = video_record(video, images, detector, meta, batch_size=config.batch_size, device=device,
                                  min_frames=min_frames)
            broken = non_finite_arrays(record)
            if broken:  # NaN weights give NaN features with valid checksums: stop before storing any
                raise NonFiniteError(f"{video.name}: the detector's outputs are not finite (NaN or inf) in "
                                     f"{', '.join(broken)}: its weights or this video's frames are broken; the video "
                                     f"was not written (videos before it are committed)")
            background.put(record)
            summary.videos_written += 1
            summary.frames += len(video.frames)
            bar.update(len(video.frames))
            bar.set_postfix(videos_per_s=f"{summary.videos_written / (time.time() - start):.2f}")
    finally:
        bar.close()
        shutdown = getattr(batches, "_shutdown_workers", None)  # stop the decoding workers now
        if shutdown is not None:
            shutdown()
        background.close()
    summary.seconds = time.time() - start
    _log_event(log_path, {"rank": rank, "summary": summary.line()})
    return summary


def _log_event(path: Path, event: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S"), **event}) + "\n")
