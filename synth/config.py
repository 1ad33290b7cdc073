"""What to generate (:class:`SynthConfig`) and what was written (:class:`SynthSummary`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from common.errors import ConfigError


@dataclass(frozen=True)
class SynthConfig:
    """What to generate. Sizes are pixels; the defaults are the project's demo dataset."""

    videos: int = 40
    frames_per_video: int = 16
    """Annotated frames per video (short edge-case videos have 2)."""
    width: int = 320
    height: int = 240
    seed: int = 0
    test_fraction: float = 0.25
    """Video i is a test video when floor((i+1)f) > floor(i f): exactly floor(N f) of N."""
    write_png: bool = True
    write_mp4: bool = True
    frame_stride: int = 3
    """Decoded frames per annotated frame; annotated frame k is one of [k s, (k+1) s)."""
    png_all_frames: bool = False
    """Write a PNG for every decoded frame (the real dump does) instead of the annotated ones."""
    fps: int = 24
    bystanders: tuple[int, int] = (2, 3)
    """Inclusive range of unannotated objects per video (all of one other activity's classes)."""
    edge_cases: bool = True
    """Include the edge cases the reader's filters exist for (see :func:`edge_case_plan`)."""

    def __post_init__(self) -> None:
        if self.videos < 1:
            raise ConfigError(f"videos must be >= 1, got {self.videos}")
        if self.frames_per_video < 3:
            raise ConfigError(f"frames_per_video must be >= 3, got {self.frames_per_video}")
        if self.width < 160 or self.height < 120 or self.width % 2 or self.height % 2:
            raise ConfigError(f"frame size must be even and at least 160x120, got {self.width}x{self.height}")
        if not 0.0 <= self.test_fraction <= 1.0:
            raise ConfigError(f"test_fraction must be in [0, 1], got {self.test_fraction}")
        if self.frame_stride < 1:
            raise ConfigError(f"frame_stride must be >= 1, got {self.frame_stride}")
        if not 0 <= self.bystanders[0] <= self.bystanders[1]:
            raise ConfigError(f"bystanders must be a (low, high) range, got {self.bystanders}")


@dataclass(frozen=True)
class SynthSummary:
    """What :func:`generate_synthetic_ag` wrote."""

    root: Path
    videos: int
    frames: int
    """Annotated frames (keys of the pickles)."""
    objects: int
    """Object entries of the full object pickle, invisible ones included."""
    relations: int
    """Relation labels over all object entries (attention + spatial + contacting)."""
    seconds: float
    train_videos: int = 0
    test_videos: int = 0
    decoded_frames: int = 0
    """Frames in all the mp4 files together."""
    codec: str = ""

    def line(self) -> str:
        return (f"synthetic AG at {self.root}: {self.videos} videos ({self.train_videos} train, "
                f"{self.test_videos} test), {self.frames} annotated frames, {self.objects} objects, "
                f"{self.relations} relation labels, {self.decoded_frames} video frames in {self.seconds:.1f} s")
