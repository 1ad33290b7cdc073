"""Frame sources: the annotated frames of a video as RGB arrays.

Action Genome ships the frames as PNGs (``frames/VIDEO.mp4/NNNNNN.png``, about 300 GB) written
by its ``tools/dump_frames.py``: ``ffmpeg -i videos/VIDEO.mp4 frames/VIDEO.mp4/%06d.png``. The
frame number in a key is therefore **not** the decoded frame index: it counts, from 1, the
pictures of ffmpeg's image2 output, which is written at the stream's constant frame rate, so
that ffmpeg duplicates decoded frames where the timestamps leave a gap and drops them where
they come too close. :class:`Mp4Frames` replays that choice (:class:`DumpClock`, the
``-vsync cfr`` rule of ffmpeg 5.1, Debian 12's version) from the timestamps PyAV decodes and
the packet durations 5.1's demuxer gives (:func:`packet_durations`), so that key
``NNNNNN.png`` gives the picture the dump command writes under that name; the rule is written
out in ``docs/ag_detector.md`` ("Frames").

A source is cheap to construct and opens files only in :meth:`FrameSource.read`, so it
can be handed to DataLoader workers.
"""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence

import numpy as np
from PIL import Image

from common.errors import FileError

FIRST_NUMBER = 1
"""The number of the first PNG of the dump: ffmpeg's image2 muxer ``-start_number`` default."""


class FrameError(FileError, RuntimeError):
    """A frame or video that cannot be read; names the file and the frame."""

    def __init__(self, path: Path | str, problem: str | None = None):
        super().__init__(path, problem)
        self.path = Path(self.file)


class FrameSource(abc.ABC):
    """Reads frames of one video by frame number (the number in AG's key ``NNNNNN.png``)."""

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
    def frame_path(self, video: str, number: int) -> str:
        """How an error names frame ``number`` of ``video`` (a file, or a video and a key)."""

    @abc.abstractmethod
    def frame_numbers(self, video: str) -> list[int]:
        """Every frame number :meth:`read` can give for ``video``, ascending (for a video
        without annotations, whose frames no key lists: ``cli.py predict``)."""

    def read_sized(self, video: str, frame_numbers: Sequence[int], sizes: Sequence[tuple[int, int]], *,
                   rescale: bool = False) -> list[np.ndarray]:
        """:meth:`read`, each frame checked against its annotated ``(width, height)``.

        A frame of another size raises :class:`FrameError` naming it (its boxes would be stored in
        other pixels than its ground truth), unless ``rescale``: then it is resized to the
        annotated size (PIL bilinear), so that its detections share the annotation's pixels.
        """
        images = self.read(video, frame_numbers)
        return [fit_frame(image, size, self.frame_path(video, number), rescale=rescale)
                for image, number, size in zip(images, frame_numbers, sizes, strict=True)]


def fit_frame(image: np.ndarray, size: tuple[int, int], where: str, *, rescale: bool = False) -> np.ndarray:
    """``image`` (uint8 (H, W, 3)) if it is ``size`` = (width, height) pixels; otherwise resized
    to it (PIL bilinear) when ``rescale``, else :class:`FrameError` naming ``where``."""
    width, height = (int(v) for v in size)
    if image.shape[1] == width and image.shape[0] == height:
        return image
    if not rescale:
        raise FrameError(where, f"frame is {image.shape[1]}x{image.shape[0]} but its annotation is {width}x{height} "
                                f"(bbox_size); detect --rescale-frames resizes it to the annotation")
    return np.array(Image.fromarray(image).resize((width, height), Image.BILINEAR))


class PngFrames(FrameSource):
    """``ROOT/frames/VIDEO.mp4/NNNNNN.png``."""

    name = "png"

    def path(self, video: str, number: int) -> Path:
        return self.root / "frames" / video / f"{number:06d}.png"

    def frame_path(self, video: str, number: int) -> str:
        return str(self.path(video, number))

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


# ---------------------------------------------------------------------------------------------
# ffmpeg's constant-frame-rate selection for image2 output (fftools/ffmpeg.c do_video_out, 5.1)


@dataclass
class DumpClock:
    """Which decoded frames ffmpeg's image2 output writes, and how often each.

    The ``-vsync`` rule ``cfr`` (``vscfr`` when the input file has a single stream) of ffmpeg
    5.1's ``do_video_out``, fed one decoded frame at a time in presentation order:

    * ``sync_ipts``: the frame's timestamp in output frames (float; see :func:`frame_times`);
    * ``duration``: its duration in output frames (1, or its packet's duration rounded);

    :meth:`push` returns, for the pictures this frame makes ffmpeg write, which frame each one
    shows: ``-1`` for the previous decoded frame (duplicated into a gap before this one), ``0``
    for this frame. An empty list drops the frame. :meth:`flush` is the number of further
    copies of the last frame written at the end of the stream.

    The rule, with ``sync_opts`` the output timestamp of the next picture (in frames):
    ``delta0 = sync_ipts - sync_opts`` (the drift), ``delta = delta0 + duration``. With
    ``vscfr``, a first frame at ``delta0 >= 0.5`` restarts the clock at it (``sync_opts =
    llrint(sync_ipts)``) instead of filling the gap. Then ``delta < -1.1`` drops the frame;
    ``delta > 1.1`` writes it ``lrintf(delta)`` times, the first ``lrintf(delta0 - 0.6)`` of
    them (when ``delta0 > 1.1``) being the previous frame; otherwise it is written once. At
    the end the last frame is written again the median of the last three previous-frame counts.
    """

    single_stream: bool
    sync_opts: int = 0
    """The output timestamp of the next picture, in frames."""
    written: int = 0
    """Pictures written so far (ffmpeg's ``frame_number``)."""
    _last_nb0: list[int] = field(default_factory=lambda: [0, 0, 0])

    def push(self, sync_ipts: float, duration: float) -> list[int]:
        delta0 = sync_ipts - self.sync_opts
        delta = delta0 + duration
        nb0, nb = 0, 1
        # ffmpeg's "Clipping frame in rate conversion" (delta0 < 0 < delta: delta0 = 0) is left
        # out: it leaves delta as it was, and a negative delta0 passes neither test below.
        if self.single_stream and self.written == 0 and delta0 >= 0.5:  # vscfr: no initial duplicates
            delta = duration
            delta0 = 0.0
            self.sync_opts = _llrint(sync_ipts)
        if delta < -1.1:
            nb = 0
        elif delta > 1.1:
            nb = _lrintf(delta)
            if delta0 > 1.1:
                nb0 = _lrintf(delta0 - 0.6)
        nb0 = min(nb0, nb)
        self._last_nb0 = [nb0, *self._last_nb0[:2]]
        self.sync_opts += nb
        self.written += nb
        return [-1] * nb0 + [0] * (nb - nb0)

    def flush(self) -> int:
        return sorted(self._last_nb0)[1]


def _lrintf(x: float) -> int:
    """C's ``lrintf``: to float32, then to the nearest integer, ties to even."""
    return int(np.rint(np.float32(x)))


def _llrint(x: float) -> int:
    """C's ``llrint`` on a double: nearest integer, ties to even (Python's ``round``)."""
    return int(round(x))


def _rescale(a: int, b: Fraction, c: Fraction) -> int:
    """libavutil's ``av_rescale_q(a, b, c)``: a * b / c rounded to nearest, halves away from 0."""
    num, den = a * b.numerator * c.denominator, b.denominator * c.numerator
    q, r = divmod(abs(num), den)
    return (-1 if num < 0 else 1) * (q + (2 * r >= den))


def frame_times(pts: int, duration: int, time_base: Fraction, rate: Fraction, start_time: int) -> tuple[float, float]:
    """A decoded frame's ``(sync_ipts, duration)`` in output frames, as ffmpeg 5.1 computes them.

    ``pts`` and ``duration`` (the frame's packet duration) are in the stream's ``time_base``;
    ``rate`` is the output frame rate (:func:`output_rate`); ``start_time`` the input file's
    start in microseconds (``AVFormatContext.start_time``), which ffmpeg subtracts from every
    timestamp. The timestamp goes through ``av_rescale_q`` into ``1/rate`` with extra bits of
    precision, plus ``2**-17`` towards its sign (``adjust_frame_pts_to_encoder_tb``);
    the duration is ``lrintf(duration * time_base * rate)`` when that is positive, else 1.
    """
    encoder_tb = 1 / rate
    shifted = pts + _rescale(-start_time, Fraction(1, 1_000_000), time_base)
    extra = min(max(29 - (encoder_tb.denominator.bit_length() - 1), 0), 16)
    fine = Fraction(encoder_tb.numerator, encoder_tb.denominator << extra)
    sync_ipts = _rescale(shifted, time_base, fine) / (1 << extra)
    # "avoid exact midpoints": 5.1 adds FFSIGN(x) / 2**17, and FFSIGN(0) is -1 (ffmpeg -debug_ts
    # prints "exact:-0.000008" for a frame at 0).
    sync_ipts += (1.0 if sync_ipts > 0 else -1.0) / (1 << 17)
    frames = _lrintf(float(duration * time_base / encoder_tb))
    return sync_ipts, float(frames if frames > 0 else 1)


def fallback_duration(time_base: Fraction, r_frame_rate: Fraction | None, codec_rate: Fraction | None) -> int:
    """The duration libavformat 5.1 gives an H.264 packet that has none (``compute_pkt_fields``:
    ``ff_compute_frame_duration`` with the parser), in ``time_base``; 0 when it gives none.

    One frame of the codec's rate (the SPS timing: ``framerate`` over 2 ticks a frame, times
    the parser's ``repeat_pict`` + 1 = 2) when that rate is below 1000 fps; one tick when the
    time base is coarser than 1 ms; one frame of ``r_frame_rate`` when the codec has no rate.
    Rounded down (``av_rescale_rnd(..., AV_ROUND_DOWN)``).
    """
    if r_frame_rate and not codec_rate:
        step = 1 / r_frame_rate
    elif time_base.numerator * 1000 > time_base.denominator:
        step = time_base
    elif codec_rate and codec_rate.denominator * 1000 > codec_rate.numerator:
        step = 1 / codec_rate
    else:
        return 0
    return math.floor(step / time_base)


def packet_durations(packets: Sequence[tuple[int, int]], *, stream_duration: int | None,
                     fallback: int) -> dict[int, int]:
    """The duration ffmpeg 5.1's mp4 demuxer gives each packet, by the packet's pts.

    ``packets``: ``(pts, dts)`` of every packet in file order, in the stream's time base.
    Without composition offsets (no ``ctts``: pts == dts everywhere) a packet lasts until the
    next one's dts, the last one until ``stream_duration`` (when that is not before it).
    With them (B-frames) ``mov_read_packet`` sets no duration. A packet left without one gets
    ``fallback`` (:func:`fallback_duration`). Newer demuxers (PyAV's) read the durations from
    ``stts`` instead, which differs with B-frames or at the end of an edited track.
    """
    if any(pts != dts for pts, dts in packets):
        return {pts: fallback for pts, _ in packets}
    out = {}
    for (pts, dts), (_, next_dts) in zip(packets, packets[1:]):
        out[pts] = next_dts - dts
    if packets:
        last_pts, last_dts = packets[-1]
        end = stream_duration if stream_duration is not None else -1
        out[last_pts] = end - last_dts if end >= last_dts else fallback
    return out


def output_rate(stream) -> Fraction:
    """The dump's frame rate for a PyAV video stream: ``av_guess_frame_rate`` (the stream's
    ``r_frame_rate``, or its average rate where ``r_frame_rate`` > 210 and the average < 70),
    ffmpeg's 25 fps when neither is known."""
    rate = stream.guessed_rate
    return Fraction(rate.numerator, rate.denominator) if rate else Fraction(25)


def dump_pictures(decoded: Iterable, *, time_base: Fraction, rate: Fraction, start_time: int,
                  single_stream: bool, durations: Mapping[int, int]) -> Iterator[tuple[int, object]]:
    """``(number, frame)`` for every picture ``ffmpeg -i VIDEO DIR/%06d.png`` writes, in order.

    ``decoded`` yields the decoded frames in presentation order (anything with a ``pts`` in
    ``time_base``); ``durations`` maps a pts to its packet's duration (:func:`packet_durations`;
    0 when absent); ``number`` counts from :data:`FIRST_NUMBER`; a duplicated frame comes once
    per copy.
    """
    clock = DumpClock(single_stream=single_stream)
    number, previous = FIRST_NUMBER, None
    for frame in decoded:
        if frame.pts is None:
            raise ValueError("a decoded frame has no timestamp")
        sync_ipts, duration = frame_times(frame.pts, durations.get(frame.pts, 0), time_base, rate, start_time)
        for which in clock.push(sync_ipts, duration):
            yield number, (frame if which == 0 or previous is None else previous)
            number += 1
        previous = frame
    for _ in range(clock.flush() if previous is not None else 0):
        yield number, previous
        number += 1


class Mp4Frames(FrameSource):
    """``ROOT/videos/VIDEO.mp4`` decoded with PyAV; frame number ``N`` is the ``N``-th picture
    (from 1) that AG's dump command writes (:func:`dump_pictures`)."""

    name = "mp4"

    def path(self, video: str) -> Path:
        return self.root / "videos" / video

    def frame_path(self, video: str, number: int) -> str:
        return f"{self.path(video)} (frame {number:06d}.png)"

    def available(self, video: str) -> bool:
        return self.path(video).is_file()

    def frame_numbers(self, video: str) -> list[int]:
        """Every frame number the dump command writes for ``video`` (decodes the whole video)."""
        return self._decode(video, None)[0]

    def read(self, video: str, frame_numbers: Sequence[int]) -> list[np.ndarray]:
        wanted = set(int(n) for n in frame_numbers)
        if min(wanted, default=FIRST_NUMBER) < FIRST_NUMBER:
            raise FrameError(self.path(video), f"no frame {min(wanted):06d}.png: AG's dump numbers its pictures from "
                                               f"{FIRST_NUMBER:06d}.png")
        found = self._decode(video, wanted)[1]
        missing = sorted(wanted - found.keys())
        if missing:
            raise FrameError(self.path(video), f"video ends before frame {missing[0]:06d}.png (the dump command "
                                               f"writes fewer pictures; {len(missing)} frames missing)")
        return [found[int(n)] for n in frame_numbers]

    def _decode(self, video: str, wanted: set[int] | None) -> tuple[list[int], dict[int, np.ndarray]]:
        """The numbers of the pictures met and the wanted ones as RGB (all numbers when
        ``wanted`` is None, no pictures); stops once every wanted picture is found."""
        import av

        path = self.path(video)
        numbers: list[int] = []
        found: dict[int, np.ndarray] = {}
        last = max(wanted, default=0) if wanted is not None else math.inf
        try:
            with av.open(str(path)) as container:  # the packets' timestamps first: no decoding
                if not container.streams.video:
                    raise FrameError(path, "has no video stream")
                stream = container.streams.video[0]
                packets = [(p.pts, p.dts) for p in container.demux(stream) if p.pts is not None and p.dts is not None]
                codec_rate = stream.codec_context.framerate
                fallback = fallback_duration(stream.time_base, stream.base_rate or None,
                                             Fraction(codec_rate) if codec_rate else None)
                durations = packet_durations(packets, stream_duration=stream.duration, fallback=fallback)
            with av.open(str(path)) as container:
                stream = container.streams.video[0]
                # One sequential decode: AG annotates a sparse subset of frames, and which picture
                # a number shows depends on every timestamp before it.
                pictures = dump_pictures(container.decode(stream), time_base=stream.time_base,
                                         rate=output_rate(stream), start_time=container.start_time or 0,
                                         single_stream=len(container.streams) == 1, durations=durations)
                for number, frame in pictures:
                    numbers.append(number)
                    if wanted is not None and number in wanted:
                        found[number] = frame.to_ndarray(format="rgb24")
                    if number >= last:
                        break
        except FileNotFoundError:
            raise FrameError(path, "missing video") from None
        except FrameError:
            raise
        except (av.error.FFmpegError, OSError, ValueError, EOFError, RuntimeError) as e:  # PyAV on a damaged file
            # An error midway loses the pictures after it, and which picture a number shows
            # depends on every timestamp before it: nothing of a damaged video is trusted.
            raise FrameError(path, f"undecodable video: {e}") from e
        return numbers, found


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
