"""Videos without annotations (``cli.py predict``): mp4 files or folders of frames anywhere on
disk, detected into a feature store that stage 2's SGDET test view reads unchanged.

A video is an ``.mp4`` file (its name: the file name, e.g. ``clip.mp4``) or a folder of frames
named ``NNNNNN.png`` or ``NNNNNN.jpg`` (ffmpeg's ``%06d`` dump; its name: the folder's). A folder
holding neither frames nor ``.mp4`` files of its own is an error; a folder of ``.mp4`` files
gives each of them. Frames are read by the rules of :mod:`stage1_detect.frames` (the mp4's
frame numbering is defined there, once), so frame ``N`` of ``clip.mp4`` has the key
``clip.mp4/NNNNNN.png`` that Action Genome gives the same frame: an AG video copied elsewhere
and predicted on its annotated frames gives the frames ``eval`` scores.

Each frame of the store has no GT objects and no GT relations (the schema allows empty tables
per frame); detections, and union features for every pair the SGDET views can ask for, are
extracted by :func:`stage1_detect.extract.write_videos`, the loop of ``detect``.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from common.errors import InputError
from stage1_detect.ag_annotations import FrameAnnotation, Split, VideoAnnotation
from stage1_detect.extract import ExtractConfig, ExtractSummary, store_meta, write_videos
from stage1_detect.frame_detector import FrameDetector
from stage1_detect.frames import FrameError, FrameSource, Mp4Frames, PngFrames
from store.records import StoreError
from store.vocabulary import Vocabulary
from store.writer import lock_part

FRAME_SUFFIXES = (".png", ".jpg")
NO_BOX = (math.nan,) * 4
"""The person box of a frame without annotations: :func:`~stage1_detect.extract.video_record` stores no GT."""


class _FileMp4(Mp4Frames):
    """Mp4 files anywhere: ``files[video]`` instead of ``ROOT/videos/VIDEO``."""

    def __init__(self, files: dict[str, Path]):
        super().__init__(".")
        self.files = files

    def path(self, video: str) -> Path:
        return self.files[video]


class _FrameFolder(PngFrames):
    """Folders of ``NNNNNN.png`` / ``.jpg`` frames anywhere: ``folders[video]`` with its suffix."""

    def __init__(self, folders: dict[str, tuple[Path, str]]):
        super().__init__(".")
        self.folders = folders

    def path(self, video: str, number: int) -> Path:
        folder, suffix = self.folders[video]
        return folder / f"{number:06d}{suffix}"

    def available(self, video: str) -> bool:
        return video in self.folders and self.folders[video][0].is_dir()


class LooseVideos(FrameSource):
    """The frame source of videos found by :func:`find_videos`: mp4 files and frame folders,
    each read by the rule of its kind (:class:`~stage1_detect.frames.Mp4Frames`,
    :class:`~stage1_detect.frames.PngFrames`). Picklable, for DataLoader workers."""

    name = "loose"

    def __init__(self, paths: dict[str, Path]):
        super().__init__(".")
        self.paths = dict(paths)
        self._mp4 = _FileMp4({v: p for v, p in self.paths.items() if p.is_file()})
        self._folders = _FrameFolder({v: (p, _frame_suffix(p)) for v, p in self.paths.items() if p.is_dir()})

    def _source(self, video: str) -> FrameSource:
        if video not in self.paths:
            raise KeyError(f"unknown video {video!r}")
        return self._mp4 if video in self._mp4.files else self._folders

    def available(self, video: str) -> bool:
        return video in self.paths and self._source(video).available(video)

    def frame_numbers(self, video: str) -> list[int]:
        return self._source(video).frame_numbers(video)

    def read(self, video: str, frame_numbers: Sequence[int]):
        return self._source(video).read(video, frame_numbers)

    def frame_path(self, video: str, number: int) -> str:
        return self._source(video).frame_path(video, number)

    def key(self, video: str, number: int) -> str:
        """The frame key: AG's ``VIDEO/NNNNNN.png`` for an mp4, the file's name for a folder."""
        suffix = ".png" if video in self._mp4.files else self._folders.folders[video][1]
        return f"{video}/{number:06d}{suffix}"


def _frame_suffix(folder: Path) -> str:
    found = {p.suffix for p in folder.iterdir() if p.suffix in FRAME_SUFFIXES and len(p.stem) == 6
             and p.stem.isdigit()}
    if len(found) != 1:
        what = "no NNNNNN.png or NNNNNN.jpg frames" if not found else "both .png and .jpg frames"
        raise InputError(f"{folder}: {what}; a folder of frames holds ffmpeg's %06d.png (or .jpg) dump")
    return found.pop()


def find_videos(paths: Sequence[Path | str]) -> dict[str, Path]:
    """``{video name: path}`` of the mp4 files and frame folders named by ``paths`` (a folder of
    mp4 files gives each), sorted by name. Raises InputError naming a path that is neither,
    or two videos of the same name."""
    found: dict[str, Path] = {}

    def add(name: str, path: Path) -> None:
        if name in found:
            raise InputError(f"{path}: a second video named {name!r} (the first: {found[name]}); video names are "
                             f"their file or folder names and must differ")
        found[name] = path

    for path in map(Path, paths):
        if path.is_file() and path.suffix.lower() == ".mp4":
            add(path.name, path)
        elif path.is_dir() and any(p.suffix in FRAME_SUFFIXES for p in path.iterdir()):
            _frame_suffix(path)
            add(path.name, path)
        elif path.is_dir() and any(p.suffix.lower() == ".mp4" for p in path.iterdir()):
            for p in sorted(path.iterdir()):
                if p.is_file() and p.suffix.lower() == ".mp4":
                    add(p.name, p)
        elif not path.exists():
            raise InputError(f"{path}: no such file or folder")
        else:
            raise InputError(f"{path}: not an .mp4 file, a folder of NNNNNN.png / .jpg frames or a folder of .mp4 "
                             f"files")
    return dict(sorted(found.items()))


@dataclass(frozen=True)
class FrameSelection:
    """Which frames of each video ``predict`` reads: every ``every``-th frame number (from the
    first), or, when ``keys`` is given, exactly the frames whose key (``VIDEO/NNNNNN.png``)
    it lists (e.g. a video's annotated frames, to compare with ``eval``)."""

    every: int = 1
    keys: frozenset[str] | None = None

    def __post_init__(self) -> None:
        if self.every < 1:
            raise ValueError(f"every must be at least 1, got {self.every}")

    def describe(self) -> str:
        if self.keys is not None:  # the digest tells two lists of one length apart
            digest = hashlib.sha1("\n".join(sorted(self.keys)).encode()).hexdigest()[:10]
            return f"{len(self.keys)} listed frame keys ({digest})"
        return "every frame" if self.every == 1 else f"one frame in {self.every}"

    def numbers(self, source: LooseVideos, video: str) -> list[int]:
        numbers = source.frame_numbers(video)
        if self.keys is None:
            return numbers[:: self.every]
        return [n for n in numbers if source.key(video, n) in self.keys]


def unannotated_video(source: LooseVideos, video: str, numbers: Sequence[int]) -> VideoAnnotation:
    """The video as :func:`~stage1_detect.extract.write_videos` takes it: one frame per number,
    with its key and size (read from the first frame) and no person box or objects."""
    if not numbers:
        raise InputError(f"{source.paths[video]}: no frame selected")
    (first,) = source.read(video, [numbers[0]])
    height, width = first.shape[:2]
    frames = tuple(FrameAnnotation(name=source.key(video, n), video=video, frame_number=int(n), width=int(width),
                                   height=int(height), person_box=NO_BOX, objects=()) for n in numbers)
    return VideoAnnotation(name=video, split=Split.TEST, frames=frames)


def detect_videos(paths: dict[str, Path], store_path: Path | str, detector: FrameDetector, *,
                  weights_sha256: str, vocabulary: Vocabulary, union_mode: str,
                  selection: FrameSelection = FrameSelection(), config: ExtractConfig = ExtractConfig(),
                  device: str = "cpu", progress: bool = True) -> ExtractSummary:
    """Detect the selected frames of ``paths`` (from :func:`find_videos`) into ``store_path``, all
    in split ``test``; resumable (committed videos are skipped). A video that cannot be listed
    or read is named in the summary's ``failed`` (the rest go on).

    The store's meta records the frame selection: a rerun with another selection is refused
    (:class:`~store.records.StoreError`) rather than mixing two.
    """
    start = time.time()
    store_path = Path(store_path)
    source = LooseVideos(paths)
    earlier = _selection_of(store_path)
    if earlier is not None and earlier != selection.describe():
        raise StoreError(store_path, f"holds the frames of another selection ({earlier}, not "
                                     f"{selection.describe()}): write into another output folder")
    lock = lock_part(store_path, "rank0")
    failed: dict[str, str] = {}
    try:
        detector = detector.eval().to(device)
        meta = store_meta(detector, vocabulary, weights_sha256, union_mode,
                          {"videos": "without annotations (cli.py predict)", "frame_source": source.name,
                           "frames": selection.describe()})
        videos = []
        for name in paths:
            try:
                numbers = selection.numbers(source, name)
                if not numbers:
                    raise InputError(f"{paths[name]}: none of its frames is selected ({selection.describe()})")
                videos.append(unannotated_video(source, name, numbers))
            except (FrameError, InputError) as e:
                failed[name] = str(e)
    except BaseException:
        lock.release()
        raise
    summary = write_videos(videos, source, detector, meta, store_path, lock=lock, config=config, device=device,
                           progress=progress, start=start)
    summary.failed.extend(failed.values())
    return summary


def _selection_of(store_path: Path) -> str | None:
    """The frame selection an earlier ``predict`` wrote into ``store_path`` (None: no store yet)."""
    from store import open_store

    if not store_path.is_dir():
        return None
    try:
        with open_store(store_path) as store:
            return store.meta.source.get("frames")
    except StoreError:  # nothing committed yet: any selection may start it
        return None


def read_keyed_frames(video: str, path: Path | str, numbers: Sequence[int]) -> dict[str, np.ndarray]:
    """``{frame key: uint8 (H, W, 3) RGB}`` of the frames ``numbers`` of the video ``video`` at
    ``path`` (an mp4 file or a folder of frames), by the rules above (``cli.py view``'s pictures)."""
    source = LooseVideos({video: Path(path)})
    numbers = sorted(set(int(n) for n in numbers))
    return dict(zip((source.key(video, n) for n in numbers), source.read(video, numbers)))


def read_document_frames(doc: dict) -> dict[str, np.ndarray]:
    """The pictures of a scene-graph document (``stage2_relations.scene_graphs``): its frames'
    ``number`` read from its ``source`` (an mp4 or a frame folder); none without a source."""
    numbers = [f["number"] for f in doc["frames"] if f["number"] is not None]
    if doc.get("source") is None or not numbers:
        return {}
    return read_keyed_frames(doc["video"], doc["source"], numbers)
