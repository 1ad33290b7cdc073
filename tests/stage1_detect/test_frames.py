"""Frame sources (``stage1_detect.frames``) on the synthetic Action Genome."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from stage1_detect.frames import FrameError, Mp4Frames, PngFrames, open_frame_source
from synth import SynthConfig, generate_synthetic_ag


@pytest.fixture(scope="module")
def ag(tmp_path_factory):
    root = tmp_path_factory.mktemp("frames") / "ag"
    summary = generate_synthetic_ag(root, SynthConfig(videos=2, frames_per_video=4, width=160, height=120, seed=3),
                                    progress=False)
    import json

    videos = json.loads((root / "synth_meta.json").read_text())["videos"]
    return root, summary.codec, {name: v["frame_numbers"] for name, v in videos.items()}


def test_png_and_mp4_give_the_same_pixels(ag):
    root, codec, numbers = ag
    png, mp4 = PngFrames(root), Mp4Frames(root)
    for video, frames in numbers.items():
        asked = list(reversed(frames))  # out of order, as a caller may ask
        a, b = png.read(video, asked), mp4.read(video, asked)
        assert len(a) == len(b) == len(asked)
        for x, y in zip(a, b):
            assert x.dtype == y.dtype == np.uint8 and x.shape == y.shape == (120, 160, 3)
            diff = np.abs(x.astype(int) - y.astype(int)).max()
            # libx264rgb at qp 0 is lossless; libx264 in yuv444p rounds through YUV.
            assert diff == 0 if codec == "libx264rgb" else diff <= 3, (video, codec, diff)
        # Each frame number gives its own picture (a read that ignored the number would repeat one).
        assert not np.array_equal(a[0], a[-1])


def test_frames_are_writable_arrays(ag):
    root, _, numbers = ag
    video, frames = next(iter(numbers.items()))
    for source in (PngFrames(root), Mp4Frames(root)):
        (frame,) = source.read(video, frames[:1])
        assert frame.flags.writeable and frame.flags.c_contiguous, source.name


def test_missing_png_names_the_file(ag, tmp_path):
    root, _, numbers = ag
    video, frames = next(iter(numbers.items()))
    with pytest.raises(FrameError, match="missing frame") as e:
        PngFrames(root).read(video, [frames[0], 99999])
    assert e.value.path == root / "frames" / video / "099999.png"
    assert str(root / "frames" / video / "099999.png") in str(e.value)


def test_truncated_png_names_the_file(ag, tmp_path):
    root, _, numbers = ag
    video, frames = next(iter(numbers.items()))
    copy = tmp_path / "ag"
    shutil.copytree(root / "frames", copy / "frames")
    bad = copy / "frames" / video / f"{frames[1]:06d}.png"
    bad.write_bytes(bad.read_bytes()[:200])
    with pytest.raises(FrameError, match="unreadable frame") as e:
        PngFrames(copy).read(video, frames)
    assert e.value.path == bad


def test_missing_video_and_short_video(ag, tmp_path):
    root, _, numbers = ag
    video, frames = next(iter(numbers.items()))
    source = Mp4Frames(tmp_path)
    assert not source.available(video)
    with pytest.raises(FrameError, match="missing video") as e:
        source.read(video, frames)
    assert e.value.path == tmp_path / "videos" / video
    with pytest.raises(FrameError, match="video ends before frame 5000") as e:
        Mp4Frames(root).read(video, [frames[0], 5000])
    assert e.value.path == root / "videos" / video


def test_truncated_video_names_the_file(ag, tmp_path):
    root, _, numbers = ag
    video, frames = next(iter(numbers.items()))
    (tmp_path / "videos").mkdir()
    data = (root / "videos" / video).read_bytes()
    (tmp_path / "videos" / video).write_bytes(data[: len(data) // 3])
    with pytest.raises(FrameError) as e:
        Mp4Frames(tmp_path).read(video, [max(frames)])
    assert e.value.path == tmp_path / "videos" / video


def test_open_frame_source(ag, tmp_path):
    root, _, _ = ag
    assert isinstance(open_frame_source(root), PngFrames)
    assert isinstance(open_frame_source(root, "mp4"), Mp4Frames)
    (tmp_path / "videos").mkdir()
    assert isinstance(open_frame_source(tmp_path), Mp4Frames)  # no frames/: the videos
    with pytest.raises(FrameError, match="neither frames/ nor videos/"):
        open_frame_source(tmp_path / "empty")
    with pytest.raises(ValueError, match="unknown frame source 'jpg'"):
        open_frame_source(root, "jpg")
