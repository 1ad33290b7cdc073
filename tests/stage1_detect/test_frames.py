"""Frame sources (``stage1_detect.frames``): the dump rule by hand, against the ffmpeg
command-line tool itself, and on the synthetic Action Genome."""

from __future__ import annotations

import json
import shutil
import subprocess
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stage1_detect.frames import (DumpClock, FrameError, Mp4Frames, PngFrames, fallback_duration, fit_frame,
                                  frame_times, open_frame_source, packet_durations)
from synth import SynthConfig, generate_synthetic_ag

FFMPEG = shutil.which("ffmpeg")
needs_ffmpeg = pytest.mark.skipif(FFMPEG is None, reason="needs the ffmpeg command-line tool (apt-get install ffmpeg)")
EPS = 2.0 ** -17  # ffmpeg 5.1 adds FFSIGN(pts) * 2**-17 to every timestamp


# --- the rule, worked by hand from ffmpeg 5.1's do_video_out ----------------------------------


def _run(clock: DumpClock, frames: list[tuple[float, float]]) -> list[list[int]]:
    return [clock.push(t, d) for t, d in frames]


def test_constant_rate_writes_each_frame_once():
    clock = DumpClock(single_stream=True)
    # frame k at k (+eps), duration 1: delta0 = eps, delta = 1 + eps, neither past 1.1 -> 1 picture.
    assert _run(clock, [(-EPS, 1), (1 + EPS, 1), (2 + EPS, 1)]) == [[0], [0], [0]]
    assert clock.flush() == 0


def test_a_long_packet_duplicates_its_frame_forward():
    clock = DumpClock(single_stream=True)
    # frame 1 at 1 lasting 3 (its packet's duration): delta = eps + 3 -> lrintf(3) = 3 copies of it,
    # then the frame at 4 finds sync_opts = 4: once. The dump's pictures 2, 3, 4 are all frame 1.
    assert _run(clock, [(-EPS, 1), (1 + EPS, 3), (4 + EPS, 1)]) == [[0], [0, 0, 0], [0]]


def test_a_gap_without_duration_fills_with_the_previous_frame_then_this_one():
    clock = DumpClock(single_stream=True)
    # The frame at 4 with sync_opts = 2: delta0 = 2, delta = 3 -> lrintf(3) = 3 pictures, of which
    # lrintf(2 - 0.6) = 1 is the previous frame: picture 3 (time 2) shows frame 1 and picture 4
    # (time 3) already shows the frame at 4.
    assert _run(clock, [(-EPS, 1), (1 + EPS, 1), (4 + EPS, 1)]) == [[0], [0], [-1, 0, 0]]
    assert clock.sync_opts == 5


def test_frames_too_close_are_dropped():
    clock = DumpClock(single_stream=True)
    # at 0.2: delta0 = -0.8, delta = 0.2 -> written once (sync_opts 2); at 0.4: delta0 = -1.6,
    # delta = -0.6 (not < -1.1) -> written (3); at 0.6: delta = -2.4 + 1 = -1.4 < -1.1 -> dropped;
    # at 4: delta0 = 1, delta = 2 > 1.1 -> lrintf(2) = 2, delta0 <= 1.1 -> no previous frame:
    # both pictures are this one.
    frames = [(-EPS, 1), (0.2, 1), (0.4, 1), (0.6, 1), (4 + EPS, 1)]
    assert _run(clock, frames) == [[0], [0], [0], [], [0, 0]]


def test_a_late_first_frame_single_stream_or_not():
    # One stream (vscfr): the clock restarts at the first frame (sync_opts = llrint(3) = 3): 1 picture.
    clock = DumpClock(single_stream=True)
    assert _run(clock, [(3 + EPS, 1)]) == [[0]] and clock.sync_opts == 4
    # Two streams (cfr): delta0 = 3, delta = 4 -> 4 pictures, lrintf(3 - 0.6) = 2 of the previous
    # frame, which does not exist yet: all 4 are the first frame.
    clock = DumpClock(single_stream=False)
    assert _run(clock, [(3 + EPS, 1)]) == [[-1, -1, 0, 0]]
    # At the end the last frame is written again mid(2, 0, 0) = 0 times; after three gaps of
    # previous-frame counts 2, 1, 2 it would be mid(2, 1, 2) = 2 times.
    assert clock.flush() == 0
    clock._last_nb0 = [2, 1, 2]
    assert clock.flush() == 2


def test_frame_times_by_hand():
    # 25 fps in 1/12800: pts 512 is frame 512 / 12800 * 25 = 1; duration 512 -> 1 frame.
    assert frame_times(512, 512, Fraction(1, 12800), Fraction(25), 0) == (1 + EPS, 1.0)
    assert frame_times(0, 512, Fraction(1, 12800), Fraction(25), 0) == (-EPS, 1.0)
    # A packet of 3 frames' duration; a missing duration counts 1.
    assert frame_times(1024, 1536, Fraction(1, 12800), Fraction(25), 0)[1] == 3.0
    assert frame_times(1024, 0, Fraction(1, 12800), Fraction(25), 0)[1] == 1.0
    # The file starts at 0.13 s (another stream first): 0.13 s is subtracted; at 200 fps, pts
    # 2080 / 16000 s = 0.13 s -> 0, pts 2720 -> 0.17 s - 0.13 s = 0.04 s * 200 = 8.
    assert frame_times(2080, 640, Fraction(1, 16000), Fraction(200), 130_000) == (-EPS, 8.0)
    assert frame_times(2720, 640, Fraction(1, 16000), Fraction(200), 130_000)[0] == 8 + EPS
    # 30000/1001 fps in 1/15360 (a real NTSC mp4): pts 512 -> 512/15360 * 30000/1001 = 0.999001 frames.
    t, d = frame_times(512, 512, Fraction(1, 15360), Fraction(30000, 1001), 0)
    assert abs(t - 1000 / 1001) < 1e-4 and d == 1.0


def test_packet_durations_as_ffmpeg_51_demuxes_an_mp4():
    # No reordering: each packet lasts until the next dts; the last until the stream's end
    # (1536 - 1024 = 512), or, when the end is before it (an edit list), the fallback.
    packets = [(0, 0), (512, 512), (1024, 1024)]
    assert packet_durations(packets, stream_duration=1536, fallback=7) == {0: 512, 512: 512, 1024: 512}
    assert packet_durations(packets, stream_duration=1000, fallback=7)[1024] == 7
    gap = [(0, 0), (1536, 1536)]  # a 3-frame gap: the first packet lasts 1536
    assert packet_durations(gap, stream_duration=2048, fallback=7) == {0: 1536, 1536: 512}
    # B-frames (pts != dts): mov_read_packet sets no duration, every packet gets the fallback,
    # whatever the gaps.
    reordered = [(0, -1024), (1536, -512), (512, 0), (1024, 512), (4096, 1024)]
    assert packet_durations(reordered, stream_duration=4608, fallback=512) == dict.fromkeys([0, 1536, 512, 1024, 4096],
                                                                                           512)


def test_fallback_duration():
    tb = Fraction(1, 12800)
    # The codec's 25 fps (SPS timing): 12800 / 25 = 512 ticks.
    assert fallback_duration(tb, Fraction(50), Fraction(25)) == 512
    # 30000/1001 fps: 12800 * 1001 / 30000 = 427.09 -> 427 (rounded down).
    assert fallback_duration(tb, None, Fraction(30000, 1001)) == 427
    # A codec rate of 1000 fps (x264 given 1 ms timestamps) is not below 1000: none.
    assert fallback_duration(Fraction(1, 16000), Fraction(200), Fraction(1000)) == 0
    # No codec rate: one frame of r_frame_rate, 12800 / 50 = 256.
    assert fallback_duration(tb, Fraction(50), None) == 256
    # A time base coarser than 1 ms (1/100 s): one tick.
    assert fallback_duration(Fraction(1, 100), None, Fraction(25)) == 1


# --- against the ffmpeg command-line tool ----------------------------------------------------


def _pictures(n: int, seed: int, smooth: bool, size=(48, 64)) -> list[np.ndarray]:
    """Noise (each frame unlike any other), or a sliding gradient with a coloured square (x264
    codes B-frames only where frames predict each other)."""
    rng = np.random.default_rng(seed)
    if not smooth:
        return [rng.integers(0, 256, (*size, 3), dtype=np.uint8) for _ in range(n)]
    h, w = size
    y, x = np.mgrid[0:h, 0:w]
    out = []
    for k in range(n):
        im = np.stack([(x * 3 + 2 * k) % 256, (y * 4 + k) % 256, (x + y) % 256], -1).astype(np.uint8)
        im[(5 * k) % (h - 8):(5 * k) % (h - 8) + 8, 10:18] = rng.integers(0, 256, 3)
        out.append(im)
    return out


def _write(path: Path, pts_ms: list[int], *, seed: int, bframes: int = 0) -> None:
    """An H.264 mp4 with the given presentation times (ms): lossless RGB (libx264rgb, qp 0, which
    codes no B-frames) or, with ``bframes``, lossy 4:2:0 with up to that many B-frames."""
    import av

    tb = Fraction(1, 1000)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264" if bframes else "libx264rgb", rate=25)
        stream.width, stream.height = 64, 48
        stream.pix_fmt = "yuv420p" if bframes else "rgb24"
        stream.time_base = stream.codec_context.time_base = tb
        stream.codec_context.max_b_frames = bframes
        stream.options = {"bf": str(bframes), "preset": "medium"} if bframes else {"qp": "0", "preset": "ultrafast"}
        for img, t in zip(_pictures(len(pts_ms), seed, smooth=bool(bframes)), pts_ms):
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts, frame.time_base = t, tb
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _ffmpeg(*args) -> None:
    subprocess.run([FFMPEG, "-loglevel", "error", "-y", *map(str, args)], check=True)


# Irregular times (ms) at a nominal 25 fps: gaps (200 after 80: duplicates), bursts (440, 441,
# 442; 1180, 1181: drops). ffmpeg 5.1 guesses r_frame_rate 1000 and average 375/23 here, so the
# dump runs at the average rate (av_guess_frame_rate).
IRREGULAR = [0, 40, 80, 200, 210, 220, 230, 240, 400, 440, 441, 442, 520, 600, 610, 700, 1000, 1040, 1060, 1100,
             1180, 1181, 1300, 1330, 1390, 1500, 1520, 1530, 1540, 1800]
STEADY = [40 * k for k in range(30)]
# 40 ms steps with frames missing, moved by 5-30 ms, and two 10 ms bursts: r_frame_rate 200.
JITTERED = [0, 40, 80, 120, 160, 320, 360, 400, 440, 480, 540, 565, 600, 640, 680, 720, 760, 840, 880, 920, 960, 1000,
            1040, 1080, 1120, 1160, 1200, 1240, 1280, 1400, 1410, 1480, 1520, 1560, 1600, 1640, 1680, 1720, 1760, 1800,
            1810, 1820, 1840, 1880, 1920, 1960, 2000, 2040, 2080, 2120, 2160, 2200, 2240, 2280, 2320, 2360]
VIDEOS = {
    "constant.mp4": dict(pts_ms=STEADY, seed=1),
    "irregular.mp4": dict(pts_ms=IRREGULAR, seed=2),
    "late_start.mp4": dict(pts_ms=[400 + t for t in STEADY], seed=3),  # one stream: no initial copies
    "jittered.mp4": dict(pts_ms=JITTERED, seed=4),
    # B-frames (lossy 4:2:0: the same H.264 decoder and yuv -> rgb give the same bits as ffmpeg's).
    "bframes.mp4": dict(pts_ms=STEADY, seed=5, bframes=3),
    "bframes_irregular.mp4": dict(pts_ms=IRREGULAR, seed=6, bframes=3),
    "bframes_jittered.mp4": dict(pts_ms=JITTERED, seed=7, bframes=2),
}
# Video after audio (as in many Charades files): two streams (cfr, not vscfr), a start offset
# that ffmpeg fills with copies of the first frame, and an edit list.
AFTER_AUDIO = {"audio_first.mp4": "irregular.mp4", "audio_first_jittered.mp4": "jittered.mp4",
               "audio_first_bframes.mp4": "bframes_irregular.mp4"}
ALL = [*VIDEOS, *AFTER_AUDIO, "concat.mp4", "concat_audio.mp4"]


@pytest.fixture(scope="module")
def dumped(tmp_path_factory):
    """Each test video and ffmpeg's own dump of it, ``ffmpeg -i VIDEO.mp4 DIR/%06d.png``."""
    root = tmp_path_factory.mktemp("dump")
    videos = root / "videos"
    videos.mkdir()
    for name, spec in VIDEOS.items():
        _write(videos / name, **spec)
    for name, video in AFTER_AUDIO.items():
        _ffmpeg("-itsoffset", "0.13", "-i", videos / video, "-f", "lavfi", "-i", "anullsrc=r=16000", "-c:v", "copy",
                "-c:a", "aac", "-shortest", videos / name)
    # Segments of 25, 10, 50 and 30000/1001 fps joined with their own timestamps (-vsync vfr),
    # re-encoded with B-frames, with and without an audio stream.
    listing = root / "segments.txt"
    with listing.open("w") as f:
        for i, rate in enumerate(["25", "10", "50", "30000/1001"]):
            _ffmpeg("-f", "lavfi", "-i", f"testsrc2=size=96x64:rate={rate}", "-t", "1", "-c:v", "libx264", "-bf", "2",
                    "-pix_fmt", "yuv420p", root / f"segment{i}.mp4")
            f.write(f"file 'segment{i}.mp4'\n")
    joined = ["-f", "concat", "-safe", "0", "-i", listing]
    encode = ["-vsync", "vfr", "-c:v", "libx264", "-bf", "3", "-pix_fmt", "yuv420p"]
    _ffmpeg(*joined, *encode, videos / "concat.mp4")
    _ffmpeg(*joined, "-f", "lavfi", "-t", "4", "-i", "sine=r=22050", *encode, "-c:a", "aac",
            videos / "concat_audio.mp4")
    for video in videos.iterdir():
        out = root / "dump" / video.name
        out.mkdir(parents=True)
        _ffmpeg("-i", video, out / "%06d.png")
    return root


def _dump(root: Path, name: str) -> dict[int, np.ndarray]:
    return {int(p.stem): np.asarray(Image.open(p).convert("RGB")) for p in sorted((root / "dump" / name).iterdir())}


@needs_ffmpeg
@pytest.mark.parametrize("name", ALL)
def test_every_picture_is_the_dump_commands(dumped, name):
    theirs = _dump(dumped, name)
    source = Mp4Frames(dumped)
    assert source.frame_numbers(name) == sorted(theirs)  # the same keys, the last ones included
    ours = source.read(name, sorted(theirs))
    for number, image in zip(sorted(theirs), ours):
        assert np.array_equal(image, theirs[number]), (name, number)
    with pytest.raises(FrameError, match=f"video ends before frame {max(theirs) + 1:06d}.png"):
        source.read(name, [max(theirs) + 1])


@needs_ffmpeg
def test_the_videos_exercise_the_rule(dumped):
    """The dump is not "picture N = decoded frame N - 1" on the irregular video (frames dropped
    and duplicated), and the B-frame videos do reorder (some packet has pts != dts)."""
    import av

    with av.open(str(dumped / "videos" / "irregular.mp4")) as container:
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    theirs = _dump(dumped, "irregular.mp4")
    shown = [next(i for i, d in enumerate(decoded) if np.array_equal(d, theirs[n])) for n in sorted(theirs)]
    assert shown != list(range(len(decoded)))
    assert set(range(len(decoded))) - set(shown)  # dropped frames
    assert len(shown) > len(set(shown))  # duplicated frames
    for name in ("bframes.mp4", "bframes_irregular.mp4", "bframes_jittered.mp4", "concat.mp4"):
        with av.open(str(dumped / "videos" / name)) as container:
            assert any(p.pts != p.dts for p in container.demux(video=0) if p.pts is not None), name
    # A video 0.13 s after its audio, at 200 fps, first packet 40 ms: delta0 = 0.13 * 200 = 26,
    # delta = 26 + 0.04 * 200 = 34 -> 34 pictures of the first frame (25 = lrintf(26 - 0.6) in
    # place of a previous frame there is not, 9 its own); picture 35 is the second frame.
    start = _dump(dumped, "audio_first_jittered.mp4")
    assert all(np.array_equal(start[n], start[1]) for n in range(1, 35)) and not np.array_equal(start[35], start[1])


# --- on the synthetic Action Genome ----------------------------------------------------------


@pytest.fixture(scope="module")
def ag(tmp_path_factory):
    root = tmp_path_factory.mktemp("frames") / "ag"
    summary = generate_synthetic_ag(root, SynthConfig(videos=2, frames_per_video=4, width=160, height=120, seed=3),
                                    progress=False)
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
    with pytest.raises(FrameError, match="video ends before frame 005000.png") as e:
        Mp4Frames(root).read(video, [frames[0], 5000])
    assert e.value.path == root / "videos" / video
    with pytest.raises(FrameError, match="no frame 000000.png: AG's dump numbers its pictures from 000001.png"):
        Mp4Frames(root).read(video, [0, frames[0]])


def test_truncated_video_names_the_file(ag, tmp_path):
    root, _, numbers = ag
    video, frames = next(iter(numbers.items()))
    (tmp_path / "videos").mkdir()
    data = (root / "videos" / video).read_bytes()
    (tmp_path / "videos" / video).write_bytes(data[: len(data) // 3])
    with pytest.raises(FrameError) as e:
        Mp4Frames(tmp_path).read(video, [max(frames)])
    assert e.value.path == tmp_path / "videos" / video


def test_damaged_video_midstream_names_the_file(ag, tmp_path):
    """Garbage in the middle of the coded pictures: the decoder fails midway (PyAV raises
    InvalidDataError from avcodec_send_packet); one FrameError naming the video, even for a
    frame before the damage (its number depends on every timestamp, and the rest is lost)."""
    root, _, numbers = ag
    video, frames = next(iter(numbers.items()))
    (tmp_path / "videos").mkdir()
    data = bytearray((root / "videos" / video).read_bytes())
    start = data.find(b"mdat") + 2000
    data[start:start + 20000] = bytes((b * 7 + 13) % 256 for b in data[start:start + 20000])
    (tmp_path / "videos" / video).write_bytes(bytes(data))
    with pytest.raises(FrameError, match="undecodable video") as e:
        Mp4Frames(tmp_path).read(video, [frames[0]])
    assert e.value.path == tmp_path / "videos" / video


def test_a_frame_of_another_size_is_named_or_rescaled(ag):
    root, _, numbers = ag
    video, frames = next(iter(numbers.items()))
    png = PngFrames(root)
    sizes = [(160, 120)] * len(frames)
    assert all(np.array_equal(a, b) for a, b in zip(png.read_sized(video, frames, sizes), png.read(video, frames)))
    wrong = [(160, 120)] * (len(frames) - 1) + [(320, 240)]
    with pytest.raises(FrameError, match=r"frame is 160x120 but its annotation is 320x240 \(bbox_size\)") as e:
        png.read_sized(video, frames, wrong)
    assert e.value.path == root / "frames" / video / f"{frames[-1]:06d}.png"
    with pytest.raises(FrameError, match=rf"\(frame {frames[-1]:06d}.png\): frame is 160x120"):
        Mp4Frames(root).read_sized(video, frames, wrong)
    resized = png.read_sized(video, frames, wrong, rescale=True)
    assert [im.shape for im in resized] == [(120, 160, 3)] * (len(frames) - 1) + [(240, 320, 3)]
    # Bilinear 2x: a flat picture stays flat; the resize is PIL's.
    flat = np.full((120, 160, 3), 77, np.uint8)
    assert np.array_equal(fit_frame(flat, (320, 240), "x", rescale=True), np.full((240, 320, 3), 77, np.uint8))
    assert resized[-1].dtype == np.uint8 and resized[-1].flags.writeable


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
