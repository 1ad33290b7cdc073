"""Frame sources: the annotated frames of a video as RGB arrays.

Action Genome ships the frames as PNGs dumped by ffmpeg (``frames/VIDEO.mp4/NNNNNN.png``,
about 300 GB) and the source videos (``videos/VIDEO.mp4``). The frame number in a key is
the index of the decoded frame, so either source gives the same pictures (up to codec
loss); users without the PNG dump read the videos directly.

A source is cheap to construct and opens files only in :meth:`FrameSource.read`, so it
can be handed to DataLoader workers.
"""

from __future__ import annotations

import abc
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from store.errors import FileError


class FrameError(FileError, RuntimeError):
    """A frame or video that cannot be read; names the file and the frame."""

    def __init__(self, path: Path | str, problem: str | None = None):
        super().__init__(path, problem)
        self.path = Path(self.file)


class FrameSource(abc.ABC):
    """Reads frames of one video by frame number."""

    name: str

    def __init__(self, root: Path | str):
        self.root = Path(root)

    @abc.abstractmethod
    def read(self, video: str, frame_numbers: Sequence[int]) -> list[np.ndarray]:
        """uint8 (H, W, 3) RGB arrays, one per frame number, in the order asked.

        Raises :class:`FrameError` naming the file when a frame cannot be read.
        """

    @abc.abstractmethod
    def available(self, video: str) -> bool:
        """Whether this source has anything for ``video``."""

    @abc.abstractmethod
    def frame_numbers(self, video: str) -> list[int]:
        """Every frame number :meth:`read` can give for ``video``, ascending (for a video
        without annotations, whose frames no key lists: ``cli.py predict``)."""


class PngFrames(FrameSource):
    """``ROOT/frames/VIDEO.mp4/NNNNNN.png``."""

    name = "png"

    def path(self, video: str, number: int) -> Path:
        return self.root / "frames" / video / f"{number:06d}.png"

    def available(self, video: str) -> bool:
        return (self.root / "frames" / video).is_dir()

    def frame_numbers(self, video: str) -> list[int]:
        folder = self.path(video, 0).parent
        if not folder.is_dir():
            raise FrameError(folder, "missing frame folder")
        suffix = self.path(video, 0).suffix
        return sorted(int(p.stem) for p in folder.iterdir()
                      if p.suffix == suffix and len(p.stem) == 6 and p.stem.isdigit())

    def read(self, video: str, frame_numbers: Sequence[int]) -> list[np.ndarray]:
        frames = []
        for number in frame_numbers:
            path = self.path(video, number)
            try:
                with Image.open(path) as im:
                    # np.array, not asarray: PIL's buffer is read-only, and torch.from_numpy of
                    # a read-only array warns (and writing through it is undefined).
                    frames.append(np.array(im.convert("RGB")))
            except FileNotFoundError:
                raise FrameError(path, "missing frame") from None
            except Exception as e:  # PIL raises several types for a damaged file
                raise FrameError(path, f"unreadable frame: {e}") from e
        return frames


class Mp4Frames(FrameSource):
    """``ROOT/videos/VIDEO.mp4``, decoded with PyAV; frame number = decoded frame index."""

    name = "mp4"

    def path(self, video: str) -> Path:
        return self.root / "videos" / video

    def available(self, video: str) -> bool:
        return self.path(video).is_file()

    def frame_numbers(self, video: str) -> list[int]:
        import av

        path = self.path(video)
        try:
            with av.open(str(path)) as container:
                count = sum(1 for _ in container.decode(video=0))  # the number :meth:`read` gives each
        except FileNotFoundError:
            raise FrameError(path, "missing video") from None
        except av.error.FFmpegError as e:
            raise FrameError(path, f"undecodable video: {e}") from e
        return list(range(count))

    def read(self, video: str, frame_numbers: Sequence[int]) -> list[np.ndarray]:
        import av

        path = self.path(video)
        wanted = set(int(n) for n in frame_numbers)
        last = max(wanted, default=-1)
        found: dict[int, np.ndarray] = {}
        try:
            with av.open(str(path)) as container:
                # One sequential decode: AG annotates a sparse subset of frames, and seeking
                # in H.264 lands on keyframes anyway.
                for index, frame in enumerate(container.decode(video=0)):
                    if index in wanted:
                        found[index] = frame.to_ndarray(format="rgb24")
                    if index >= last:
                        break
        except FileNotFoundError:
            raise FrameError(path, "missing video") from None
        except av.error.FFmpegError as e:
            if len(found) < len(wanted):
                raise FrameError(path, f"undecodable video: {e}") from e
        missing = sorted(wanted - found.keys())
        if missing:
            raise FrameError(path, f"video ends before frame {missing[0]} ({len(missing)} frames missing)")
        return [found[int(n)] for n in frame_numbers]


SOURCES = {"png": PngFrames, "mp4": Mp4Frames}


def open_frame_source(root: Path | str, kind: str = "auto") -> FrameSource:
    """A frame source for an AG root: ``'png'``, ``'mp4'``, or ``'auto'`` (PNGs when the
    dump exists, otherwise the videos)."""
    root = Path(root)
    if kind == "auto":
        kind = "png" if (root / "frames").is_dir() else "mp4"
        if kind == "mp4" and not (root / "videos").is_dir():
            raise FrameError(root, "has neither frames/ nor videos/")
    if kind not in SOURCES:
        raise ValueError(f"unknown frame source {kind!r}; choose from {sorted(SOURCES)} or 'auto'")
    return SOURCES[kind](root)
