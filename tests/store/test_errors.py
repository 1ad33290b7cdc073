"""Every bad store raises a StoreError that names the file and the problem."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import google_crc32c
import h5py
import numpy as np
import pytest

from store import StoreError, StoreWriter, check_store, open_store
from store.schema import ROW_ARRAYS
from store.testing import synthetic_meta
from store.vocabulary import ACTION_GENOME, Vocabulary
from tests.helpers.store import small_meta, small_videos, write_store


def _h5_store(tmp_path: Path, n: int = 3) -> tuple[Path, list[Path]]:
    meta = small_meta()
    path = write_store(tmp_path / "s.h5", meta, small_videos(meta, n), segment_bytes=0)
    return path, sorted(path.glob("*.h5"))


def _raises(path: Path, file: Path, match: str) -> None:
    with pytest.raises(StoreError, match=match) as e:
        open_store(path)
    assert e.value.file == str(file)
    problems = check_store(path)
    assert any(p.file == str(file) and p.problem == e.value.problem for p in problems), problems


def test_missing_path_and_empty_folder(tmp_path):
    with pytest.raises(StoreError, match="no store at this path"):
        open_store(tmp_path / "nothing.h5")
    (tmp_path / "empty.h5").mkdir()
    with pytest.raises(StoreError, match="no committed segments"):
        open_store(tmp_path / "empty.h5")


def test_other_schema_version_h5(tmp_path):
    path, segs = _h5_store(tmp_path)
    with h5py.File(segs[1], "r+") as f:
        f.attrs["schema_version"] = 99
    _raises(path, segs[1], "schema_version 99 is not supported")


def test_other_schema_version_zarr(tmp_path):
    meta = small_meta()
    path = write_store(tmp_path / "s.zarr", meta, small_videos(meta, 2), segment_bytes=0)
    seg = sorted(path.glob("*.zarr"))[0]
    doc = json.loads((seg / "zarr.json").read_text())
    doc["attributes"]["schema_version"] = 0
    (seg / "zarr.json").write_text(json.dumps(doc))
    _raises(path, seg, "schema_version 0 is not supported")


def test_truncated_h5_segment(tmp_path):
    path, segs = _h5_store(tmp_path)
    size = segs[2].stat().st_size
    with open(segs[2], "r+b") as fh:
        fh.truncate(size // 2)
    _raises(path, segs[2], "truncated or corrupted")


def test_truncated_zarr_shard_found_by_check(tmp_path):
    meta = small_meta()
    path = write_store(tmp_path / "s.zarr", meta, small_videos(meta, 2), segment_bytes=0)
    seg = sorted(path.glob("*.zarr"))[0]
    shard = next(p for p in (seg / "pairs" / "union").rglob("*") if p.is_file() and p.name != "zarr.json")
    shard.write_bytes(shard.read_bytes()[:10])
    problems = check_store(path)
    assert any(p.file == str(seg) and "pairs/union" in p.problem for p in problems), problems


def test_corrupted_bytes_fail_checksum(tmp_path):
    path, segs = _h5_store(tmp_path)
    with h5py.File(segs[0], "r") as f:
        offset = f["pairs/union"].id.get_offset()
    with open(segs[0], "r+b") as fh:
        fh.seek(offset + 3)
        b = fh.read(1)
        fh.seek(offset + 3)
        fh.write(bytes([b[0] ^ 0xFF]))
    store = open_store(path)  # structure is intact: opening is fine, reading the video is not
    with pytest.raises(StoreError, match="checksum mismatch in 'pairs/union' of video 'vid0000.mp4'") as e:
        store.read_video("vid0000.mp4")
    assert e.value.file == str(segs[0])
    store.read_video("vid0000.mp4", fields=("gt_boxes",))  # the arrays that are intact read fine
    store.read_video("vid0001.mp4")
    assert open_store(path, verify=False).read_video("vid0000.mp4").pair_union.shape[0] > 0  # the option to skip
    problems = check_store(path)
    assert [(p.file, p.problem) for p in problems] == [
        (str(segs[0]), "checksum mismatch in 'pairs/union' of video 'vid0000.mp4': the data is corrupted")]
    assert check_store(path, deep=False) == []


def _foreign_part(tmp_path: Path, path: Path, meta) -> Path:
    """A segment written with ``meta`` elsewhere, then dropped into ``path``."""
    other = write_store(tmp_path / "other.h5", meta, small_videos(meta, 1, seed=7), part="x")
    seg = next(other.glob("*.h5"))
    dst = path / seg.name
    shutil.copy(seg, dst)
    return dst


def test_part_with_another_vocabulary(tmp_path):
    path, _ = _h5_store(tmp_path)
    vocab = Vocabulary(ACTION_GENOME.objects, tuple(ACTION_GENOME.predicates[:-1]) + ("dancing_with",),
                       ACTION_GENOME.predicate_groups)
    meta = synthetic_meta(feature_dim=16, union_shape=(8,), vocabulary=vocab)
    seg = _foreign_part(tmp_path, path, meta)
    _raises(path, seg, "vocabulary differs from the rest of the store")
    with pytest.raises(StoreError, match="cannot append: vocabulary differs"):
        StoreWriter(tmp_path / "other.h5", small_meta())


def test_part_with_another_feature_size(tmp_path):
    path, _ = _h5_store(tmp_path)
    seg = _foreign_part(tmp_path, path, synthetic_meta(feature_dim=32, union_shape=(8,)))
    _raises(path, seg, "feature size differs from the rest of the store: 32 here, 16 expected")


def test_array_with_wrong_feature_size(tmp_path):
    path, segs = _h5_store(tmp_path)
    with h5py.File(segs[0], "r+") as f:
        n = f["gt_objects/features"].shape[0]
        del f["gt_objects/features"]
        f.create_dataset("gt_objects/features", data=np.zeros((n, 12), np.float16))
    _raises(path, segs[0], "array 'gt_objects/features' is float16 .* wrong feature size")


def test_missing_array(tmp_path):
    path, segs = _h5_store(tmp_path)
    with h5py.File(segs[1], "r+") as f:
        del f["detections/scores"]
    _raises(path, segs[1], "array 'detections/scores' is missing")


@pytest.mark.parametrize("key,row,col,delta,match", [
    ("frames/pairs", 1, 0, 1, "frames/pairs has a gap or overlap after row 0"),
    ("frames/gt_objects", -1, 1, -1, "frames/gt_objects ends at"),
    ("videos/detections", 0, 0, 2, "videos/detections starts at 2, not 0"),
])
def test_offsets_that_do_not_add_up(tmp_path, key, row, col, delta, match):
    path, segs = _h5_store(tmp_path)
    with h5py.File(segs[0], "r+") as f:
        r = f[key][...]
        r[row, col] += delta
        f[key][...] = r
    _raises(path, segs[0], "offsets do not add up: " + match)


def test_same_video_in_two_segments(tmp_path):
    path, segs = _h5_store(tmp_path)
    dup = path / "copy-000001.h5"
    shutil.copy(segs[0], dup)
    _raises(path, sorted([segs[0], dup])[1], "is also in segment")


def test_schema_version_1_asks_for_a_new_extraction(tmp_path):
    path, segs = _h5_store(tmp_path)
    with h5py.File(segs[0], "r+") as f:
        f.attrs["schema_version"] = 1
    _raises(path, segs[0], r"schema_version 1 \(one extraction per mode, before one store served every mode\) is "
                           r"not supported by this code, which reads schema_version 3: re-extract it with `cli.py detect`")


def test_schema_version_2_asks_for_a_new_extraction(tmp_path):
    path, segs = _h5_store(tmp_path)
    with h5py.File(segs[0], "r+") as f:
        f.attrs["schema_version"] = 2
    _raises(path, segs[0], r"schema_version 2 \(without per-video checksums\) is not supported by this code, which "
                           r"reads schema_version 3: re-extract it with `cli.py detect`")


@pytest.mark.parametrize("key, row, value, problem", [
    ("gt_relations/subject", 0, 50, "rel_subject of frame 0 outside 0..3"),
    # Frame 0 of vid0000 has 4 GT objects and 2 detections: joint indices 0..5.
    ("pairs/object", 0, 6, "pair_object of frame 0 outside the frame's 6 boxes"),
    ("pairs/subject", 0, -1, "pair_subject of frame 0 outside the frame's 6 boxes"),
    ("gt_objects/small", 0, 1, "gt_small of frame 0 must be 0/1 and 0 for the person (row 0)"),
    ("gt_objects/small", 1, 2, "gt_small of frame 0 must be 0/1 and 0 for the person (row 0)"),
])
def test_index_out_of_range_found_by_deep_check(tmp_path, key, row, value, problem):
    path, segs = _h5_store(tmp_path)
    with h5py.File(segs[0], "r+") as f:
        assert f["frames/gt_objects"][0].tolist() == [0, 4] and f["frames/detections"][0].tolist() == [0, 2]
        a = f[key][...]
        a[row] = value
        f[key][...] = a
        # a consistent edit: the video's checksum of that array follows the data
        lo, hi = f[f"videos/{key.split('/')[0]}"][0]
        crc = f["videos/crc32c"][...]
        crc[0, [s.key for s in ROW_ARRAYS].index(key)] = google_crc32c.value(np.ascontiguousarray(a[lo:hi]).tobytes())
        f["videos/crc32c"][...] = crc
    problems = check_store(path)
    assert len(problems) == 1 and problems[0].file == str(segs[0])
    assert problems[0].problem == f"bad index: video 'vid0000.mp4': {problem}"


def test_not_a_store(tmp_path):
    p = tmp_path / "x.h5"
    with h5py.File(p, "w") as f:
        f["a"] = 1
    with pytest.raises(StoreError, match="not a feature store segment"):
        open_store(p)


def test_file_errors_rebuild_from_their_message_as_a_dataloader_worker_reraises_them():
    """torch re-raises a worker's exception as ``type(e)(message)``: every error that names a
    file takes its one message back apart, the frame of an annotation error included."""
    from stage1_detect.ag_annotations import AnnotationError
    from stage1_detect.frames import FrameError

    for error in (StoreError("s.h5/0-000001.h5", "checksum mismatch"), FrameError("v.mp4", "cannot decode frame 3"),
                  AnnotationError("ann/object_bbox_and_relationship.pkl", "no person box", frame="A.mp4/000001.png")):
        again = type(error)(str(error))
        assert str(again) == str(error) and again.problem == error.problem and again.file == error.file
    again = AnnotationError(str(AnnotationError("a.pkl", "bad", frame="A.mp4/1.png")))
    assert again.path == Path("a.pkl")
