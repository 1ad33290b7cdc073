"""Feature extraction of stage 1 (``stage1_detect.extract`` and ``cli.py detect``).

One synthetic AG (4 kept videos, 17 frames at 160x120) and one untrained ``small``
detector (every class scored, person logit raised so that a person is detected) per
module; one uninterrupted in-process extraction is the reference every other run (CLI,
killed and rerun, two ranks, splits in turn, mp4 frames, bad input) is compared with,
record by record with ``VideoRecord.differences``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.testing import assert_close

from rules.boxes import union_boxes
from rules.pairing import PairIndex, SttranClasses, stored_pairs, sttran_assignment
from stage1_detect.action_genome import ReaderOptions, load_action_genome
from stage1_detect.detection_step import sttran_positions
from stage1_detect.extract import ExtractConfig, extract, video_record
from stage1_detect.frames import PngFrames
from store import check_store, open_store
from store.vocabulary import ACTION_GENOME
from synth import SynthConfig, generate_synthetic_ag
from tests.helpers import REPO
from tests.helpers.detector import person_finding_detector

CLI = [sys.executable, str(REPO / "cli.py")]
PERSON = 1
COPY = SttranClasses.from_objects(ACTION_GENOME.objects).copy_classes  # book, chair, food
# 10 proposals x 36 classes, at most 16 detections, of which one person box (the raised
# person logit makes many person boxes, the single-person rule keeps one, and the cap of 16
# counts after that rule): exactly 16 a frame.
SETTINGS = {"score_thresh": 0.0, "max_detections": 16, "rpn_post_nms_top_n_test": 10, "min_size": 120,
            "max_size": 160}
# The CLI's reader defaults: the reference must read what `detect` reads (extract itself
# turns mark_small on).
READER = ReaderOptions()
MARKED = dataclasses.replace(READER, mark_small=True)
CONFIG = ExtractConfig(num_workers=0, segment_mb=0, frame_source="png", batch_size=3)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    base = tmp_path_factory.mktemp("extract")
    root = base / "ag"
    summary = generate_synthetic_ag(root, SynthConfig(videos=5, frames_per_video=5, width=160, height=120, seed=0),
                                    progress=False)
    weights = base / "detector.pth"
    detector, sha = person_finding_detector(weights, SETTINGS, person=PERSON)
    store = base / "reference.h5"
    result = extract(root, store, detector, weights_sha256=sha, reader_options=READER, config=CONFIG,
                     progress=False)
    with open_store(store) as s:
        records = {v: s.read_video(v) for v in s.videos()}
    return {"root": root, "weights": weights, "detector": detector.eval(), "sha": sha, "store": store,
            "records": records, "summary": result, "codec": summary.codec, "base": base}


def _assert_same_content(path: Path, reference: dict, only: set[str] | None = None) -> None:
    with open_store(path) as s:
        names = set(s.videos())
        assert names == (only if only is not None else set(reference))
        for v in names:
            assert s.read_video(v).differences(reference[v]) == [], v


def _threads() -> list[str]:
    """The reference store was computed in this process: the CLI runs with its thread count
    (features differ in the last bits with another)."""
    return ["--threads", str(torch.get_num_threads())]


def _detect(args, **kwargs):
    return subprocess.run(CLI + ["detect", *map(str, args), *_threads()], capture_output=True, text=True, cwd=REPO,
                          timeout=300, **kwargs)


# --- pure helpers ------------------------------------------------------------------------


def test_union_boxes():
    boxes = np.array([[0, 0, 10, 10], [5, -2, 8, 20], [20, 30, 40, 50]], np.float32)
    out = union_boxes(boxes[[0, 0, 2]], boxes[[1, 2, 2]])
    assert out.tolist() == [[0, -2, 10, 20], [0, 0, 40, 50], [20, 30, 40, 50]]
    assert union_boxes(boxes[:0], boxes[:0]).shape == (0, 4)


# --- the reference store -----------------------------------------------------------------


def test_reference_store_is_valid_and_complete(data):
    assert check_store(data["store"]) == []
    s = data["summary"]
    assert (s.videos_written, s.frames, s.failed) == (4, 17, [])
    ag = load_action_genome(data["root"], MARKED)
    expected = {v.name: v for split in ("train", "val", "test") for v in ag.videos(split)}
    assert set(data["records"]) == set(expected)
    with open_store(data["store"]) as st:
        assert st.meta.detector.arch == "small" and st.meta.detector.weights_sha256 == data["sha"]
        assert st.meta.feature_dim == 256 and st.meta.union_shape == (256,)
        assert {v: st.split_of(v) for v in st.videos()} == {n: v.split.value for n, v in expected.items()}
    n_small = 0
    for name, rec in data["records"].items():
        video = expected[name]
        assert rec.frame_names == tuple(f.name for f in video.frames)
        assert rec.frame_sizes.tolist() == [[160, 120]] * len(video.frames)
        assert all(n == 16 for n in np.diff(rec.det_offsets)), rec.det_offsets
        for i in range(rec.num_frames):
            assert (rec.det_labels[rec.frame_rows("detections", i)] == PERSON).sum() == 1
        for i, frame in enumerate(video.frames):
            g = rec.frame_rows("gt_objects", i)
            assert_close(rec.gt_boxes[g], frame.boxes(), rtol=0, atol=0)
            assert rec.gt_labels[g].tolist() == frame.labels(PERSON).tolist()
            # The reader's marks: objects absent from _filtersmall (never the person).
            assert rec.gt_small[g].tolist() == [0] + [int(o.small) for o in frame.objects]
            n_small += int(rec.gt_small[g].sum())
            # One relation row per object with a predicate, subject the person (row 0).
            r = rec.frame_rows("gt_relations", i)
            with_rel = [j for j, o in enumerate(frame.objects, 1) if o.predicates]
            assert rec.rel_subject[r].tolist() == [0] * len(with_rel)
            assert rec.rel_object[r].tolist() == with_rel
            for row, j in zip(rec.rel_labels[r], with_rel):
                assert np.nonzero(row)[0].tolist() == sorted(frame.objects[j - 1].predicates)
    # The generator's tiny objects (the report also counts those of the short video).
    assert 0 < n_small == sum(o.small for v in expected.values() for f in v.frames for o in f.objects)


def _joint_boxes(rec, i):
    """Frame ``i``'s boxes in the pairs' joint index: GT objects, then detections."""
    return np.concatenate([rec.gt_boxes[rec.frame_rows("gt_objects", i)], rec.det_boxes[rec.frame_rows("detections", i)]])


def _stored_pairs_of(rec, i):
    """:func:`stored_pairs` of frame ``i``'s stored boxes and distributions."""
    g, d = rec.frame_rows("gt_objects", i), rec.frame_rows("detections", i)
    return stored_pairs(rec.gt_boxes[g], rec.gt_small[g], rec.gt_dists[g], rec.det_boxes[d], rec.det_labels[d],
                        rec.det_dists[d], person=PERSON, copy_classes=COPY)


def test_stored_features_equal_direct_pooling(data):
    """GT-box, detection and union features of the store are the detector's pooled
    features of those boxes (stored in float16)."""
    det = data["detector"]
    ag = load_action_genome(data["root"], READER)
    videos = {v.name: v for split in ("train", "val", "test") for v in ag.videos(split)}
    name = sorted(data["records"])[0]
    rec, video = data["records"][name], videos[name]
    images = PngFrames(data["root"]).read(name, [f.frame_number for f in video.frames])
    # Frame i's place in STTran's SGDET frame list decides whether its boxes are clipped.
    positions = sttran_positions([any(not o.small for o in f.objects) for f in video.frames], READER.min_frames)
    for i, image in enumerate(images):
        maps = det.encode([torch.from_numpy(image).permute(2, 0, 1)])
        g, d, p = (rec.frame_rows(t, i) for t in ("gt_objects", "detections", "pairs"))
        ((gt_f, gt_dist),) = det.pool(maps, [torch.from_numpy(rec.gt_boxes[g])])
        assert_close(torch.from_numpy(rec.gt_features[g]).float(), gt_f, rtol=2e-3, atol=2e-3)
        assert_close(torch.from_numpy(rec.gt_dists[g]).float(), gt_dist, rtol=2e-3, atol=1e-4)
        ((detection,),) = [det.detect(maps, [positions[i]])]
        assert_close(torch.from_numpy(rec.det_boxes[d]), detection.boxes, rtol=0, atol=1e-3)
        assert_close(torch.from_numpy(rec.det_features[d]).float(), detection.features, rtol=2e-3, atol=2e-3)
        assert rec.det_labels[d].tolist() == detection.labels.tolist()
        # A detection's score is its class distribution at its label (float16 in the store).
        scores_from_dists = rec.det_dists[d][np.arange(d.stop - d.start), rec.det_labels[d]].astype(np.float32)
        assert_close(torch.from_numpy(scores_from_dists), torch.from_numpy(rec.det_scores[d]), rtol=1e-3, atol=0)
        # Every union feature is the pooled feature of its pair's union box (a box's own for a
        # pair of a box with itself).
        boxes = _joint_boxes(rec, i)
        sub, obj = rec.pair_subject[p], rec.pair_object[p]
        ((union_f, _),) = det.pool(maps, [torch.from_numpy(union_boxes(boxes[sub], boxes[obj]))])
        assert_close(torch.from_numpy(rec.pair_union[p]).float(), union_f, rtol=2e-3, atol=2e-3)
    assert rec.num_rows("pairs") > 0


def test_stored_pairs_are_the_pairing_rule_of_the_stored_boxes(data):
    """Each frame's pairs are ``stored_pairs`` of its stored boxes and float16 distributions,
    in that order: GT person with every GT object first, then the detection subjects' pairs."""
    n_det_pairs = 0
    for rec in data["records"].values():
        for i in range(rec.num_frames):
            p = rec.frame_rows("pairs", i)
            got = np.stack([rec.pair_subject[p], rec.pair_object[p]], 1)
            assert got.tolist() == _stored_pairs_of(rec, i).tolist()
            n_gt = rec.frame_rows("gt_objects", i).stop - rec.frame_rows("gt_objects", i).start
            assert got[: n_gt - 1].tolist() == [[0, j] for j in range(1, n_gt)]
            n_det_pairs += int(((got >= n_gt).all(1)).sum())
            # No unordered pair twice.
            assert len({(min(a, b), max(a, b)) for a, b in got.tolist()}) == len(got)
    assert n_det_pairs > 0


class _PerfectDetector:
    """Wraps a detector so that ``detect`` returns the GT boxes of the frames, in reverse
    order (person last), with their GT labels; features and pooling are the wrapped one's."""

    def __init__(self, detector, frames):
        self.detector = detector
        self.pending = [f.boxes()[::-1].copy() for f in frames]
        self.labels = [f.labels(PERSON)[::-1].copy() for f in frames]
        self.positions = []

    def encode(self, images):
        return self.detector.encode(images)

    def pool(self, maps, boxes):
        return self.detector.pool(maps, boxes)

    def pool_map(self, maps, boxes):
        return self.detector.pool_map(maps, boxes)

    def detect(self, maps, positions=None):
        from stage1_detect.frame_detector import FrameDetections

        self.positions.append(list(positions))
        out = []
        for _ in maps.original_sizes:
            boxes, labels = torch.from_numpy(self.pending.pop(0)), torch.from_numpy(self.labels.pop(0))
            ((features, dists),) = self.detector.pool(maps, [boxes])
            out.append(FrameDetections(boxes=boxes, scores=torch.ones(len(boxes)), labels=labels.long(),
                                       class_dists=dists, features=features))
        return out


def test_pairs_of_perfect_detections_serve_the_sgdet_training_view(data):
    """With detections equal to the GT boxes (reversed, person last), STTran's assignment gives
    each GT box its detection, and the store holds the union feature of (the person's
    detection, each object's detection), equal to that of the GT pair of the same boxes."""
    ag = load_action_genome(data["root"], MARKED)
    video = ag.videos("train")[0]
    images = PngFrames(data["root"]).read(video.name, [f.frame_number for f in video.frames])
    with open_store(data["store"]) as s:
        meta = s.meta
    perfect = _PerfectDetector(data["detector"], video.frames)
    rec = video_record(video, images, perfect, meta, batch_size=3)
    rec.validate(meta)
    # Each batch of 3 frames came with the frames' places in STTran's SGDET frame list.
    kept = [any(not o.small for o in f.objects) for f in video.frames]
    want = sttran_positions(kept, READER.min_frames)
    assert perfect.positions == [want[i:i + 3] for i in range(0, len(want), 3)]
    assert rec.differences(data["records"][video.name]) == [
        "det_offsets", "det_boxes", "det_scores", "det_labels", "det_dists", "det_features",
        "pair_offsets", "pair_subject", "pair_object", "pair_union"]
    n_pairs = 0
    for i in range(rec.num_frames):
        g, d, p = (rec.frame_rows(t, i) for t in ("gt_objects", "detections", "pairs"))
        n = g.stop - g.start
        a = sttran_assignment(rec.det_boxes[d], rec.gt_boxes[g], rec.gt_labels[g])
        assert a.found.tolist() == list(range(n - 1, -1, -1))
        assert a.labels.tolist() == rec.gt_labels[g][::-1].tolist()
        index = PairIndex(rec.pair_subject[p], rec.pair_object[p], 2 * n)
        det_rows = index.rows(np.full(n - 1, n + a.found[0]), n + a.found[1:])
        gt_rows = index.rows(np.zeros(n - 1, int), np.arange(1, n))
        assert (det_rows >= 0).all() and (gt_rows >= 0).all()
        assert_close(torch.from_numpy(rec.pair_union[p][det_rows]).float(),
                     torch.from_numpy(rec.pair_union[p][gt_rows]).float(), rtol=0, atol=2e-3)
        n_pairs += n - 1
    assert n_pairs > 0


def test_extraction_refuses_a_reading_that_serves_one_mode(data, tmp_path):
    for options, message in ((ReaderOptions(filter_small=True), "one extraction serves every mode"),
                             (ReaderOptions(require_visible_object=False), "require_visible_object=True"),
                             (ReaderOptions(require_person_box=False), "require_person_box=True")):
        with pytest.raises(ValueError, match=message):
            extract(data["root"], tmp_path / "no.h5", data["detector"], weights_sha256=data["sha"],
                    reader_options=options, config=CONFIG, progress=False)
    assert not (tmp_path / "no.h5").exists()


def test_a_failed_extraction_lets_the_next_one_in_the_same_process_write(data, tmp_path, monkeypatch):
    """The part's lock is released when anything between taking it and the writer fails (here
    the annotations): a retry in the same process (a notebook, a test session) is not told that
    the part "is being written by another process", its own pid."""
    import stage1_detect.extract as extract_module

    def broken(*_args, **_kwargs):
        raise RuntimeError("unreadable annotations")

    store = tmp_path / "retry.h5"
    with monkeypatch.context() as m:
        m.setattr(extract_module, "load_action_genome", broken)
        with pytest.raises(RuntimeError, match="unreadable annotations") as failure:  # kept, as a notebook keeps it
            extract(data["root"], store, data["detector"], weights_sha256=data["sha"], reader_options=READER,
                    config=dataclasses.replace(CONFIG, max_videos=1), progress=False)
    extract(data["root"], store, data["detector"], weights_sha256=data["sha"], reader_options=READER,
            config=dataclasses.replace(CONFIG, max_videos=1), progress=False)
    assert check_store(store) == [] and failure.value is not None


# --- runs compared with the reference ----------------------------------------------------


def _segments(store: Path) -> list[str]:
    if not store.is_dir():
        return []
    return sorted(p.name for p in store.iterdir() if p.name.endswith(".h5") and ".tmp-" not in p.name)


def test_detect_killed_with_sigkill_then_rerun_gives_the_same_store(data, tmp_path):
    """``cli.py detect`` killed (SIGKILL, whole process group) once its first video is
    committed, then rerun: the store equals the uninterrupted in-process run's. The rerun
    uses a DataLoader worker, the CLI's default path."""
    store = tmp_path / "killed.h5"
    args = [data["root"], "--store", store, "--weights", data["weights"], "--device", "cpu",
            "--batch-size", "3", "--segment-mb", "0", "--frames", "png"]
    proc = subprocess.Popen(CLI + ["detect", *map(str, args), "--workers", "0", *_threads()], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None and not _segments(store):
            time.sleep(0.002)
        still_running = proc.poll() is None
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert still_running, "the run ended before it could be killed"
    committed = _segments(store)
    assert 1 <= len(committed) < 4, committed
    assert check_store(store) == []  # what was committed is a valid store
    with open_store(store) as s:
        partial = set(s.videos())
    _assert_same_content(store, data["records"], only=partial)

    rerun = _detect(args + ["--workers", "1"])
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"detect: {4 - len(partial)} videos" in rerun.stdout
    assert f"{len(partial)} already committed" in rerun.stdout
    assert not [p for p in store.iterdir() if ".tmp-" in p.name]
    assert check_store(store) == []
    _assert_same_content(store, data["records"])
    # A run that finds everything committed writes nothing and says so.
    again = extract(data["root"], store, data["detector"], weights_sha256=data["sha"], reader_options=READER,
                    config=CONFIG, progress=False)
    assert (again.videos_written, again.videos_skipped_committed, again.failed) == (0, 4, [])
    log = [json.loads(line) for line in (tmp_path / "killed.h5.extraction_log.jsonl").read_text().splitlines()]
    assert [e["summary"].split(" (")[0] for e in log] == [f"detect: {4 - len(partial)} videos",
                                                          "detect: 0 videos"]


def test_two_ranks_and_splits_in_turn_give_the_same_store(data, tmp_path):
    """Rank r of 2 extracts every other video into its own part; the test split, then train
    and val, in separate runs into one store: together, the uninterrupted run's content."""
    store = tmp_path / "ranks.h5"
    shares = []
    for splits in (("test",), ("train", "val")):
        config = ExtractConfig(num_workers=0, segment_mb=0, frame_source="png", batch_size=3, splits=splits)
        for rank in (1, 0):
            s = extract(data["root"], store, data["detector"], weights_sha256=data["sha"], reader_options=READER,
                        config=config, rank=rank, world_size=2, progress=False)
            shares.append(s.videos_written)
    assert shares == [0, 1, 1, 2]  # 1 test video, then 3 train and val videos
    assert {p.split("-")[0] for p in _segments(store)} == {"rank0", "rank1"}
    assert check_store(store) == []
    _assert_same_content(store, data["records"])


def test_union_maps(data, tmp_path):
    """--union map stores STTran's RoIAlign map of each union box (here 128x7x7)."""
    store = tmp_path / "map.h5"
    config = ExtractConfig(num_workers=0, segment_mb=0, frame_source="png", batch_size=3, union_mode="map",
                           splits=("test",), max_videos=1)
    summary = extract(data["root"], store, data["detector"], weights_sha256=data["sha"], reader_options=READER,
                      config=config, progress=False)
    assert summary.videos_written == 1 and check_store(store) == []
    with open_store(store) as s:
        assert s.meta.union_mode.value == "map" and s.meta.union_shape == (128, 7, 7)
        (name,) = s.videos()
        rec = s.read_video(name)
    reference = data["records"][name]
    # Everything but the union features is what the pooled run stored.
    assert rec.differences(reference) == ["pair_union"]
    assert rec.pair_union.shape == (rec.num_rows("pairs"), 128, 7, 7) and rec.pair_union.dtype == np.float16
    (image,) = PngFrames(data["root"]).read(name, [int(rec.frame_names[0][-10:-4])])
    maps = data["detector"].encode([torch.from_numpy(image).permute(2, 0, 1)])
    p = rec.frame_rows("pairs", 0)
    boxes = _joint_boxes(rec, 0)
    unions = union_boxes(boxes[rec.pair_subject[p]], boxes[rec.pair_object[p]])
    (direct,) = data["detector"].pool_map(maps, [torch.from_numpy(unions.astype(np.float32))])
    assert_close(torch.from_numpy(rec.pair_union[p]).float(), direct, rtol=2e-3, atol=2e-3)


def test_detector_step_options_are_recorded_in_the_store(data, tmp_path):
    """The reference store holds STTran's step (recorded in the meta, detections class by class);
    `detect --nms-space resized --max-detections 5 --clip all --scale per-axis --detection-order
    score` writes the former step, and its meta says so."""
    step = ("nms_space", "max_detections", "clip", "box_scale", "detection_order")
    with open_store(data["store"]) as s:
        assert {k: s.meta.detector.settings[k] for k in step} == {
            "nms_space": "original", "max_detections": 16, "clip": "sttran", "box_scale": "one",
            "detection_order": "class"}  # 16: the fixture's cap (SETTINGS)
    for rec in data["records"].values():
        for i in range(rec.num_frames):
            labels = rec.det_labels[rec.frame_rows("detections", i)]
            assert labels[0] == PERSON and (np.diff(labels) >= 0).all()  # the person first, then by class
    store = tmp_path / "options.h5"
    run = _detect([data["root"], "--store", store, "--weights", data["weights"], "--device", "cpu", "--workers", "0",
                   "--split", "test", "--frames", "png", "--nms-space", "resized", "--max-detections", "5",
                   "--clip", "all", "--scale", "per-axis", "--detection-order", "score"])
    assert run.returncode == 0, run.stderr
    with open_store(store) as s:
        assert {k: s.meta.detector.settings[k] for k in step} == {
            "nms_space": "resized", "max_detections": 5, "clip": "all", "box_scale": "per-axis",
            "detection_order": "score"}
        (name,) = s.videos()
        rec = s.read_video(name)
    assert (np.diff(rec.det_offsets) == 5).all()
    for i in range(rec.num_frames):
        assert (np.diff(rec.det_scores[rec.frame_rows("detections", i)]) <= 0).all()


def test_mp4_frames_give_the_same_store_and_a_missing_video_is_reported(data, tmp_path):
    root = tmp_path / "ag"
    shutil.copytree(data["root"] / "annotations", root / "annotations")
    shutil.copytree(data["root"] / "videos", root / "videos")
    lost = sorted(data["records"])[1]
    (root / "videos" / lost).unlink()
    store = tmp_path / "mp4.h5"
    config = ExtractConfig(num_workers=0, segment_mb=0, frame_source="mp4", batch_size=3)
    summary = extract(root, store, data["detector"], weights_sha256=data["sha"], reader_options=READER,
                      config=config, progress=False)
    assert summary.failed == [f"{root / 'videos' / lost}: missing video"]
    assert summary.videos_written == 3
    events = [json.loads(line) for line in (tmp_path / "mp4.h5.extraction_log.jsonl").read_text().splitlines()]
    assert events[0]["video"] == lost and str(root / "videos" / lost) in events[0]["error"]
    assert "1 failed" in events[-1]["summary"] and lost in events[-1]["summary"]
    others = set(data["records"]) - {lost}
    if data["codec"] == "libx264rgb":  # lossless: the very same pixels, the very same store
        _assert_same_content(store, data["records"], only=others)
    else:
        with open_store(store) as s:
            for v in others:
                assert_close(s.read_video(v).gt_boxes, data["records"][v].gt_boxes)
                assert_close(s.read_video(v).det_boxes, data["records"][v].det_boxes, rtol=0, atol=1.0)


def test_truncated_png_is_reported_and_the_run_goes_on(data, tmp_path):
    root = tmp_path / "ag"
    shutil.copytree(data["root"] / "annotations", root / "annotations")
    shutil.copytree(data["root"] / "frames", root / "frames")
    bad_video = sorted(data["records"])[1]
    bad = root / "frames" / data["records"][bad_video].frame_names[2]
    bad.write_bytes(bad.read_bytes()[:100])
    store = tmp_path / "bad.h5"
    args = [root, "--store", store, "--weights", data["weights"], "--device", "cpu", "--workers", "1",
            "--batch-size", "3", "--segment-mb", "0"]
    run = _detect(args)
    assert run.returncode == 3, run.stderr[-3000:]
    assert "detect: 3 videos" in run.stdout and f"1 failed: {bad}: unreadable frame" in run.stdout
    events = [json.loads(line) for line in (tmp_path / "bad.h5.extraction_log.jsonl").read_text().splitlines()]
    assert [(e["video"], e["error"].split(":")[0]) for e in events if "video" in e] == [(bad_video, str(bad))]
    others = set(data["records"]) - {bad_video}
    assert check_store(store) == []
    _assert_same_content(store, data["records"], only=others)
    # A rerun retries only the failed video, and keeps everything committed.
    again = extract(root, store, data["detector"], weights_sha256=data["sha"], reader_options=READER,
                    config=CONFIG, progress=False)
    assert (again.videos_written, again.videos_skipped_committed) == (0, 3)
    assert again.failed == [f"{bad}: unreadable frame: {run.stdout.split('unreadable frame: ')[1].strip()}"]
    _assert_same_content(store, data["records"], only=others)
    # Once the frame is repaired, the rerun completes the store.
    shutil.copy(data["root"] / "frames" / data["records"][bad_video].frame_names[2], bad)
    fixed = extract(root, store, data["detector"], weights_sha256=data["sha"], reader_options=READER,
                    config=CONFIG, progress=False)
    assert (fixed.videos_written, fixed.videos_skipped_committed, fixed.failed) == (1, 3, [])
    _assert_same_content(store, data["records"])


def test_a_frame_of_another_size_fails_its_video_unless_rescaled(data, tmp_path):
    """A PNG of 320x240 where the annotation says 160x120 (bbox_size): its detections would be in
    other pixels than its GT boxes. By default the video is skipped, named, logged, exit 3; with
    --rescale-frames the frame is resized to the annotated size and every video is written."""
    root = tmp_path / "ag"
    shutil.copytree(data["root"] / "annotations", root / "annotations")
    shutil.copytree(data["root"] / "frames", root / "frames")
    bad_video = sorted(data["records"])[2]
    bad = root / "frames" / data["records"][bad_video].frame_names[1]
    with Image.open(bad) as im:
        im.resize((320, 240)).save(bad)
    args = [root, "--weights", data["weights"], "--device", "cpu", "--workers", "1", "--batch-size", "3",
            "--segment-mb", "0"]
    run = _detect([*args, "--store", tmp_path / "strict.h5"])
    assert run.returncode == 3, run.stderr[-3000:]
    message = f"{bad}: frame is 320x240 but its annotation is 160x120 (bbox_size)"
    assert "detect: 3 videos" in run.stdout and f"1 failed: {message}" in run.stdout
    events = [json.loads(line) for line in (tmp_path / "strict.h5.extraction_log.jsonl").read_text().splitlines()]
    assert [(e["video"], e["error"].startswith(message)) for e in events if "video" in e] == [(bad_video, True)]
    _assert_same_content(tmp_path / "strict.h5", data["records"], only=set(data["records"]) - {bad_video})

    run = _detect([*args, "--store", tmp_path / "rescaled.h5", "--rescale-frames"])
    assert run.returncode == 0, run.stderr[-3000:]
    assert "detect: 4 videos" in run.stdout
    with open_store(tmp_path / "rescaled.h5") as s:
        assert s.meta.source["rescale_frames"] is True
        rec = s.read_video(bad_video)
    # The same annotation, in the annotation's pixels.
    assert_close(rec.gt_boxes, data["records"][bad_video].gt_boxes)
    assert (rec.frame_sizes == [[160, 120]]).all()


def test_a_damaged_mp4_fails_its_video_on_every_run(data, tmp_path):
    """Garbage in the middle of one video's coded pictures: PyAV fails midway through the decode.
    The video is skipped, named and logged (exit 3 in the CLI); a rerun reports it again."""
    root = tmp_path / "ag"
    shutil.copytree(data["root"] / "annotations", root / "annotations")
    shutil.copytree(data["root"] / "videos", root / "videos")
    bad_video = sorted(data["records"])[0]
    path = root / "videos" / bad_video
    raw = bytearray(path.read_bytes())
    start = raw.find(b"mdat") + 2000
    raw[start:start + 20000] = bytes((b * 7 + 13) % 256 for b in raw[start:start + 20000])
    path.write_bytes(bytes(raw))
    config = dataclasses.replace(CONFIG, frame_source="mp4")
    for run in range(2):
        summary = extract(root, tmp_path / "damaged.h5", data["detector"], weights_sha256=data["sha"],
                          reader_options=READER, config=config, progress=False)
        assert len(summary.failed) == 1 and summary.failed[0].startswith(f"{path}: undecodable video: ")
        assert summary.videos_written == (3 if run == 0 else 0)
    events = [json.loads(line) for line in (tmp_path / "damaged.h5.extraction_log.jsonl").read_text().splitlines()]
    assert [e["video"] for e in events if "video" in e] == [bad_video, bad_video]
    with open_store(tmp_path / "damaged.h5") as s:
        assert set(s.videos()) == set(data["records"]) - {bad_video}
