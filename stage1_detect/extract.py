"""Stage 1: run a detector once over every annotated frame and write the feature store.

For every video of the chosen splits (:func:`extract`):

* frames come from a :mod:`~stage1_detect.frames` source (PNG dump or the mp4), decoded in
  DataLoader workers, one video per item;
* the detector encodes each batch of frames once; from those maps come the detections
  (boxes, scores, labels, class distributions, features), the features and distributions
  of the GT boxes, and the union features of every candidate pair;
* the finished :class:`~store.VideoRecord` goes to a writer thread, so writing overlaps the
  next video's compute; the store commits whole videos, atomically.

What is stored per frame (see :mod:`store.schema` for the arrays):

* GT objects: the person box first (row 0), then the reader's kept objects in file order.
* GT relations: one row per object with any label, subject 0 (the person), multi-hot labels.
* Detections: after the detector's post-processing (one person box kept for ``r101-c4``).
  ``matched_gt`` is STTran's SGDET training assignment: GT boxes in order (person first)
  each take the unused detection of highest IoU when that IoU is > 0.5.
* Pairs, source GT: (person, every other GT object), labelled with its relation row.
* Pairs, source detections: (subject, every other detection), where the subject is the
  person detection, or, if none, the detection with the highest person probability (as
  STTran's SGDET test). A pair is labelled when its subject matched GT row 0 and its
  object matched a GT object with a relation. A frame with no detection has no such pairs.
  GT objects that no detection matched keep their GT-box features and their GT pair, which
  is what STTran's SGDET training adds for them (it pairs them with the detected person's
  box; the cached union uses the GT person box, which overlaps it by IoU > 0.5).

Resumable (committed videos are skipped), shardable by ``rank``/``world_size`` (each rank
writes its own part of the store), and tolerant of bad input: a video whose frames cannot be
read is skipped, reported at the end and logged in ``extraction_log.jsonl`` beside the store.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from stage1_detect.action_genome import ReaderOptions, VideoAnnotation, load_action_genome
from stage1_detect.detectors import Detector
from stage1_detect.frames import FrameError, FrameSource, open_frame_source
from store import PAIR_SOURCE_DET, PAIR_SOURCE_GT, DetectorInfo, StoreMeta, StoreWriter, UnionMode, VideoRecord
from store.boxes import box_iou, union_boxes
from store.vocabulary import Vocabulary

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExtractConfig:
    splits: tuple[str, ...] = ("train", "val", "test")
    batch_size: int = 8
    """Frames per detector forward."""
    num_workers: int = 2
    """DataLoader workers decoding frames."""
    frame_source: str = "auto"
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


def code_revision() -> str:
    """``git describe`` of this source tree, or '' outside a checkout."""
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


class VideoFrames(Dataset):
    """Item i: (video index, list of uint8 (H, W, 3) frames) or (video index, error text)."""

    def __init__(self, videos: Sequence[VideoAnnotation], source: FrameSource):
        self.videos = list(videos)
        self.source = source

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, i: int):
        video = self.videos[i]
        try:
            return i, self.source.read(video.name, [f.frame_number for f in video.frames])
        except FrameError as e:  # reported by the main process; the run goes on
            return i, str(e)


def _first(batch):
    return batch[0]


def greedy_assignment(gt_boxes: np.ndarray, det_boxes: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """STTran's SGDET training assignment: (n_det,) int32, GT index of each detection or -1.

    GT boxes in order each take the unused detection of highest IoU, if that IoU > threshold.
    """
    matched = np.full(len(det_boxes), -1, dtype=np.int32)
    if len(gt_boxes) == 0 or len(det_boxes) == 0:
        return matched
    ious = box_iou(gt_boxes, det_boxes)
    for g in range(len(gt_boxes)):
        candidates = np.where(matched == -1, ious[g], -1.0)
        d = int(candidates.argmax())
        if candidates[d] > threshold:
            matched[d] = g
    return matched


def _subject_of_detections(labels: np.ndarray, dists: np.ndarray, person: int) -> int:
    is_person = np.nonzero(labels == person)[0]
    if len(is_person):
        return int(is_person[0])
    return int(dists[:, person].argmax())


def video_record(video: VideoAnnotation, images: Sequence[np.ndarray], detector: Detector, meta: StoreMeta,
                 *, batch_size: int = 8, device: str = "cpu") -> VideoRecord:
    """Run the detector over one video's frames and assemble its :class:`VideoRecord`."""
    vocab = meta.vocabulary
    person = vocab.person_index
    union_map = meta.union_mode is UnionMode.MAP
    rows: dict[str, list] = {k: [] for k in (
        "gt_boxes", "gt_labels", "gt_features", "gt_dists", "rel_subject", "rel_object", "rel_labels",
        "det_boxes", "det_scores", "det_labels", "det_dists", "det_features", "det_matched_gt",
        "pair_source", "pair_subject", "pair_object", "pair_relation", "pair_union")}
    counts: dict[str, list[int]] = {t: [] for t in ("gt", "rel", "det", "pair")}

    for start in range(0, len(video.frames), batch_size):
        frames = video.frames[start:start + batch_size]
        batch = [torch.from_numpy(np.ascontiguousarray(im)).permute(2, 0, 1).to(device)
                 for im in images[start:start + batch_size]]
        maps = detector.encode(batch)
        detections = detector.detect(maps)
        gt_boxes = [np.asarray(f.boxes(), np.float32) for f in frames]
        gt_pooled = detector.pool(maps, [torch.from_numpy(b).to(device) for b in gt_boxes])

        # Union boxes of both pair sources, pooled in one call per batch.
        pair_specs, unions = [], []
        for fi, (frame, det) in enumerate(zip(frames, detections)):
            n_gt = len(gt_boxes[fi])
            gt_sub = np.zeros(n_gt - 1, dtype=np.int32)
            gt_obj = np.arange(1, n_gt, dtype=np.int32)
            d_boxes = det.boxes.cpu().numpy()
            if len(d_boxes):
                subj = _subject_of_detections(det.labels.cpu().numpy(), det.class_dists.cpu().numpy(), person)
                det_obj = np.array([j for j in range(len(d_boxes)) if j != subj], dtype=np.int32)
                det_sub = np.full(len(det_obj), subj, dtype=np.int32)
            else:
                det_sub = det_obj = np.zeros(0, dtype=np.int32)
            pair_specs.append((gt_sub, gt_obj, det_sub, det_obj))
            unions.append(np.concatenate([union_boxes(gt_boxes[fi][gt_sub], gt_boxes[fi][gt_obj]),
                                          union_boxes(d_boxes[det_sub], d_boxes[det_obj])]).astype(np.float32))
        union_tensors = [torch.from_numpy(u).to(device) for u in unions]
        if union_map:
            union_features = [u.cpu().numpy() for u in detector.pool_map(maps, union_tensors)]
        else:
            union_features = [f.cpu().numpy() for f, _ in detector.pool(maps, union_tensors)]

        for fi, (frame, det) in enumerate(zip(frames, detections)):
            feats, dists = gt_pooled[fi]
            rows["gt_boxes"].append(gt_boxes[fi])
            rows["gt_labels"].append(frame.labels(person).astype(np.int32))
            rows["gt_features"].append(feats.cpu().numpy())
            rows["gt_dists"].append(dists.cpu().numpy())
            counts["gt"].append(len(gt_boxes[fi]))

            relation_of_object = np.full(len(gt_boxes[fi]), -1, dtype=np.int32)
            n_rel = 0
            for j, obj in enumerate(frame.objects, start=1):
                if not obj.predicates:
                    continue
                labels = np.zeros(vocab.num_predicates, dtype=np.uint8)
                labels[list(obj.predicates)] = 1
                rows["rel_subject"].append([0])
                rows["rel_object"].append([j])
                rows["rel_labels"].append(labels[None])
                relation_of_object[j] = n_rel
                n_rel += 1
            counts["rel"].append(n_rel)

            d_boxes = det.boxes.cpu().numpy()
            matched = greedy_assignment(gt_boxes[fi], d_boxes)
            rows["det_boxes"].append(d_boxes.astype(np.float32))
            rows["det_scores"].append(det.scores.cpu().numpy().astype(np.float32))
            rows["det_labels"].append(det.labels.cpu().numpy().astype(np.int32))
            rows["det_dists"].append(det.class_dists.cpu().numpy())
            rows["det_features"].append(det.features.cpu().numpy())
            rows["det_matched_gt"].append(matched)
            counts["det"].append(len(d_boxes))

            gt_sub, gt_obj, det_sub, det_obj = pair_specs[fi]
            det_rel = np.full(len(det_obj), -1, dtype=np.int32)
            if len(det_obj) and matched[det_sub[0]] == 0:
                obj_gt = matched[det_obj]
                has_gt = obj_gt > 0
                det_rel[has_gt] = relation_of_object[obj_gt[has_gt]]
            n_pairs = len(gt_obj) + len(det_obj)
            rows["pair_source"].append(np.array([PAIR_SOURCE_GT] * len(gt_obj) + [PAIR_SOURCE_DET] * len(det_obj),
                                                dtype=np.uint8))
            rows["pair_subject"].append(np.concatenate([gt_sub, det_sub]))
            rows["pair_object"].append(np.concatenate([gt_obj, det_obj]))
            rows["pair_relation"].append(np.concatenate([relation_of_object[gt_obj], det_rel]))
            rows["pair_union"].append(union_features[fi])
            counts["pair"].append(n_pairs)

    dims = meta.dims()
    trailing = {"gt_boxes": (4,), "gt_features": dims["D"], "gt_dists": dims["C"], "rel_labels": dims["P"],
                "det_boxes": (4,), "det_dists": dims["C"], "det_features": dims["D"], "pair_union": dims["U"]}
    dtypes = {"gt_boxes": np.float32, "gt_labels": np.int32, "gt_features": np.float16, "gt_dists": np.float16,
              "rel_subject": np.int32, "rel_object": np.int32, "rel_labels": np.uint8, "det_boxes": np.float32,
              "det_scores": np.float32, "det_labels": np.int32, "det_dists": np.float16,
              "det_features": np.float16, "det_matched_gt": np.int32, "pair_source": np.uint8,
              "pair_subject": np.int32, "pair_object": np.int32, "pair_relation": np.int32,
              "pair_union": np.float16}
    arrays = {}
    for key, parts in rows.items():
        shape = (0, *trailing.get(key, ()))
        parts = [np.asarray(p).reshape(-1, *trailing.get(key, ())) for p in parts]
        arrays[key] = (np.concatenate(parts) if parts else np.zeros(shape)).astype(dtypes[key], copy=False)
    offsets = {t: np.concatenate([[0], np.cumsum(c)]).astype(np.int64) for t, c in counts.items()}
    return VideoRecord(
        name=video.name, split=video.split.value,
        frame_names=tuple(f.name for f in video.frames),
        frame_sizes=np.array([[f.width, f.height] for f in video.frames], dtype=np.int32).reshape(-1, 2),
        gt_offsets=offsets["gt"], rel_offsets=offsets["rel"], det_offsets=offsets["det"],
        pair_offsets=offsets["pair"], **arrays,
    )


def store_meta(detector: Detector, vocabulary: Vocabulary, weights_sha256: str, union_mode: str,
               source: dict[str, Any]) -> StoreMeta:
    mode = UnionMode(union_mode)
    s = detector.settings.map_size
    union_shape = (detector.feature_dim,) if mode is UnionMode.POOLED else (detector.map_channels, s, s)
    return StoreMeta(vocabulary=vocabulary, feature_dim=detector.feature_dim,
                     detector=DetectorInfo(arch=detector.arch, settings=detector.settings.to_dict(),
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
        if self.error is not None:
            raise self.error
        self.writer.close()


def distributed_rank() -> tuple[int, int]:
    """(rank, world size) from torchrun's environment, (0, 1) outside it."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def extract(root: Path | str, store_path: Path | str, detector: Detector, *, weights_sha256: str,
            reader_options: ReaderOptions, config: ExtractConfig = ExtractConfig(), device: str = "cpu",
            rank: int = 0, world_size: int = 1, progress: bool = True) -> ExtractSummary:
    """Extract every video of ``config.splits`` (this rank's share) into ``store_path``."""
    start = time.time()
    root, store_path = Path(root), Path(store_path)
    if not reader_options.require_person_box:
        raise ValueError("extraction needs the person box of every frame (require_person_box=True)")
    ag = load_action_genome(root, reader_options)
    source = open_frame_source(root, config.frame_source)
    detector = detector.eval().to(device)
    # No "splits" here: every part of a store must have the same meta, and extracting the
    # splits in separate runs into one store is fine (each video records its split).
    meta = store_meta(detector, ag.vocabulary, weights_sha256, config.union_mode,
                      {"root": str(root.resolve()), "reader": reader_options.to_dict(),
                       "frame_source": source.name})
    if meta.union_mode is UnionMode.MAP:
        log.warning("union features as %s maps: about %.0f KB a pair", meta.union_shape,
                    meta.union_bytes_per_pair() / 1024)
    videos = []
    for split in config.splits:
        chosen = sorted(ag.videos(split), key=lambda v: v.name)
        videos.extend(chosen[: config.max_videos] if config.max_videos else chosen)
    videos = [v for i, v in enumerate(videos) if i % world_size == rank]

    writer = StoreWriter(store_path, meta, part=f"rank{rank}", backend=config.backend,
                         segment_bytes=config.segment_mb << 20, compression=config.compression)
    committed = writer.committed_videos()
    todo = [v for v in videos if v.name not in committed]
    summary = ExtractSummary(store=store_path, videos_skipped_committed=len(videos) - len(todo))
    log_path = store_path.parent / f"{store_path.name}.extraction_log.jsonl"
    background = _BackgroundWriter(writer)
    loader = DataLoader(VideoFrames(todo, source), batch_size=1, num_workers=config.num_workers,
                        collate_fn=_first, prefetch_factor=2 if config.num_workers else None)
    bar = tqdm(total=sum(len(v.frames) for v in todo), unit="frame", desc=f"detect rank {rank}",
               disable=not progress)
    try:
        for index, images in loader:
            video = todo[index]
            if isinstance(images, str):
                summary.failed.append(images)
                _log_event(log_path, {"video": video.name, "error": images, "rank": rank})
                bar.update(len(video.frames))
                continue
            background.put(video_record(video, images, detector, meta, batch_size=config.batch_size, device=device))
            summary.videos_written += 1
            summary.frames += len(video.frames)
            bar.update(len(video.frames))
            bar.set_postfix(videos_per_s=f"{summary.videos_written / (time.time() - start):.2f}")
    finally:
        bar.close()
        background.close()
    summary.seconds = time.time() - start
    _log_event(log_path, {"rank": rank, "summary": summary.line()})
    return summary


def _log_event(path: Path, event: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S"), **event}) + "\n")
