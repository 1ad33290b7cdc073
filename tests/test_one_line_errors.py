"""Tracebacks turned into one line, and messages made clear (issue 19): a class file that is not
UTF-8, a real full disk during `train` and `store merge`, a file size limit, a detector mismatch
(the differing keys, not two dicts), NaN probabilities (not "apply softmax"), a predictions
header that is not JSON, predictions of one mode scored as another, `stats --out` inside the
store, and `store check` on a store whose manifest is the only record of a lost segment.

Each test failed on the code before it. The full-disk tests mount a small tmpfs and need root;
elsewhere they skip, saying so.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from store import check_store
from store.records import DetectorInfo
from store.testing import synthetic_meta
from synth import SynthConfig, generate_synthetic_ag
from tests.helpers.cli import error_line, run_cli
from tests.helpers.predictions import write_tiny_predictions
from tests.helpers.stage2 import TINY_HEAD, one_thread, write_learnable_store

REPO = Path(__file__).resolve().parents[1]
_one_thread = pytest.fixture(autouse=True, scope="module")(one_thread)


def _cli_subprocess(*args, preexec=None, prelude: str = "") -> subprocess.CompletedProcess:
    """The CLI in its own process (a real OS error, no traceback allowed on stdout or stderr)."""
    code = (f"import sys; sys.path[:0] = [{str(REPO)!r}]\n{prelude}\nfrom cli import main\n"
            f"sys.argv = ['cli.py', *{[str(a) for a in args]!r}]\nmain()\n")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                          preexec_fn=preexec, env={**os.environ, "OMP_NUM_THREADS": "1"})


def _one_line(p: subprocess.CompletedProcess) -> str:
    text = p.stdout + p.stderr
    assert p.returncode == 1, text
    assert "Traceback" not in text and "Exception ignored" not in text, text
    return [ln for ln in text.replace("\r", "\n").splitlines() if ln.startswith("Error: ")][-1][len("Error: "):]


@contextlib.contextmanager
def _tmpfs(path: Path, size: str):
    path.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                                           capture_output=True).returncode != 0:
        pytest.skip("a real full disk needs a small tmpfs, which needs root")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], capture_output=True)


# --- tracebacks --------------------------------------------------------------------------------


def test_a_class_file_that_is_not_utf8_is_one_line(tmp_path):
    root = tmp_path / "ag"
    generate_synthetic_ag(root, SynthConfig(videos=4, frames_per_video=4, width=160, height=120, seed=0),
                          progress=False)
    classes = root / "annotations" / "object_classes.txt"
    classes.write_bytes(classes.read_bytes().replace(b"bag", b"b\xe4g"))  # Latin-1
    from stage1_detect.detectors import build_detector, save_detector

    save_detector(build_detector("small", {"min_size": 120, "max_size": 160}), tmp_path / "d.pth")
    line = error_line(run_cli("detect", root, "--store", tmp_path / "s.h5", "--weights", tmp_path / "d.pth"))
    assert line.startswith(f"{classes}: not UTF-8 text (byte ")
    assert "a class file is one class name a line, in UTF-8" in line


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return write_learnable_store(tmp_path_factory.mktemp("one_line") / "store.h5", n_train=30, n_val=2)


def test_a_full_disk_during_train_is_one_line_naming_what_is_intact(tmp_path, store):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(dict(store=str(store), mode="predcls", head_cfg={**TINY_HEAD, "hidden": 64},
                                          epochs=2, lr=1e-3, preload=True, device="cpu", max_videos=2)))
    with _tmpfs(tmp_path / "disk", "400k") as disk:  # room for the run's small files, not for last.pth
        line = _one_line(_cli_subprocess("train", "--config", recipe, "--out", disk / "run", "--no-progress"))
        assert line == (f"{disk / 'run'}: cannot write the checkpoint of epoch 1: No space left on device (errno 28); "
                        f"no epoch was saved yet (--resume starts from epoch 1): fix that and --resume")
        assert not [p.name for p in (disk / "run").iterdir() if ".tmp-" in p.name]
    with _tmpfs(tmp_path / "disk2", "4k") as disk:  # not even config.yaml fits: the file is named
        line = _one_line(_cli_subprocess("train", "--config", recipe, "--out", disk / "run", "--no-progress"))
        assert line == f"{disk / 'run' / 'config.yaml'}: No space left on device (errno 28)"


def test_a_full_disk_during_store_merge_is_one_line(tmp_path, store):
    # the free-space check passes (disabled), and HDF5 meets the real full disk while writing
    with _tmpfs(tmp_path / "disk", "150k") as disk:
        p = _cli_subprocess("store", "merge", store, disk / "m.h5",
                            prelude="import store.check as c; c._check_free_space = lambda dst, store: None")
        assert _one_line(p) == (f"{disk / 'm.h5'}: cannot write the merged store: No space left on device (errno 28) "
                                f"(nothing was written; the source is untouched)")
        assert not any(n for n in os.listdir(disk) if n.startswith("m.h5"))


def _limit_file_size():
    import resource

    resource.setrlimit(resource.RLIMIT_FSIZE, (50 * 1024, resource.RLIM_INFINITY))


def test_a_file_size_limit_is_named_with_the_file(tmp_path, store):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(dict(store=str(store), mode="predcls", head_cfg={**TINY_HEAD, "hidden": 64},
                                          epochs=1, lr=1e-3, preload=True, device="cpu", max_videos=2)))
    line = _one_line(_cli_subprocess("train", "--config", recipe, "--out", tmp_path / "run", "--no-progress",
                                     preexec=_limit_file_size))
    assert line.startswith(f"{tmp_path / 'run'}: cannot write the checkpoint of epoch 1: File too large (errno 27)")
    line = _one_line(_cli_subprocess("store", "merge", store, tmp_path / "m.h5", preexec=_limit_file_size))
    assert line.startswith(f"{tmp_path / 'm.h5'}: needs about ") and "(ulimit -f): File too large (errno 27)" in line


# --- messages ----------------------------------------------------------------------------------


def test_a_detector_mismatch_names_only_the_differing_keys():
    settings = {f"setting_{i:02d}": i for i in range(40)}
    a = synthetic_meta(detector=DetectorInfo("small", {**settings, "score_thresh": 0.05}, "a" * 64))
    b = synthetic_meta(detector=DetectorInfo("small", {**settings, "score_thresh": 0.5}, "a" * 64))
    why = a.incompatibility(b)
    assert why == "detector differs from the rest of the store in settings.score_thresh: 0.5 here, 0.05 expected"


def _nan_attention(a):
    a[0, 1] = np.nan
    return a


def test_nan_probabilities_are_named_as_such(tmp_path):
    path = write_tiny_predictions(tmp_path / "p.npz", {"pred_attention": _nan_attention})
    line = error_line(run_cli("eval", "--predictions", path))
    assert line == (f"{path}: pred_attention holds 1 value that is not finite (NaN or inf), the first in row 0 "
                    f"(frame 'A.mp4/000001.png'): the model's outputs were not finite")


def test_a_header_that_is_not_json_is_one_line(tmp_path):
    path = write_tiny_predictions(tmp_path / "p.npz", {"header": lambda h: np.array("{'format': not json")})
    line = error_line(run_cli("eval", "--predictions", path))
    assert line.startswith(f"{path}: its 'header' array is not the JSON this format writes (Expecting property name "
                           f"enclosed in double quotes at character 1)")


def test_predictions_of_one_mode_are_not_scored_as_another(tmp_path):
    path = write_tiny_predictions(tmp_path / "p.npz")  # PREDCLS
    line = error_line(run_cli("eval", "--predictions", path, "--mode", "sgdet"))
    assert line == (f"{path}: holds predcls predictions (its header's mode); scoring them as sgdet would print a "
                    f"SGDET table of another task: evaluate them as predcls (leave out --mode)")
    assert run_cli("eval", "--predictions", path, "--mode", "predcls").exit_code == 0


def test_stats_out_inside_the_store_is_refused_before_writing(tmp_path, store):
    line = error_line(run_cli("stats", store, "--out", store / "stats"))
    assert line == (f"{store / 'stats'}: is inside the store {store}: write the tables outside it (`detect` refuses "
                    f"a store folder that holds other files)")
    assert not (store / "stats").exists()


def test_store_check_keeps_the_manifest_that_records_a_lost_segment(tmp_path):
    from store import StoreWriter
    from store.testing import synthetic_video
    from tests.helpers.stage2 import tiny_meta

    meta = tiny_meta()
    path = tmp_path / "s.h5"
    for i in range(2):  # two segments
        with StoreWriter(path, meta) as w:
            w.write_video(synthetic_video(meta, f"v{i}.mp4", seed=i))
    segments = sorted(p for p in path.glob("*.h5"))
    segments[0].unlink()
    problems = [str(p) for p in check_store(path)]
    assert problems == [f"{path / 'manifest.json'}: lists segment {segments[0].name} (1 video: v0.mp4), which is "
                        f"not in the folder: restore the file, or rerun `detect` to extract those videos again; keep "
                        f"manifest.json until then, it is the only record of what the segment held"]
    assert not any("delete manifest.json" in p for p in problems)
