"""Every command's inputs validated (issue 11): weights that are garbage, text, empty or of another
kind, a non-npz or malformed predictions file, thresholds out of range, a detector recipe with a
wrong field. Each is one line naming the file (or option) and the problem, never a traceback,
"Aborted!" or a silently scored result.

Each test states the behaviour the issue asked for; each failed on the code before it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner

from cli import main
from stage1_detect.detectors import build_detector, save_detector
from synth import SynthConfig, generate_synthetic_ag
from stage2_relations.recipe import TrainConfig
from stage2_relations.train import train
from tests.helpers.predictions import write_tiny_predictions
from tests.helpers.stage2 import TINY_HEAD, write_learnable_store


def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _error_line(r, code: int = 1) -> str:
    assert r.exit_code == code, r.output
    assert "Traceback" not in r.output and "Aborted" not in r.output, r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert lines[-1].startswith("Error: "), r.output
    return lines[-1][len("Error: "):]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    base = tmp_path_factory.mktemp("robust_inputs")
    root = base / "ag"
    generate_synthetic_ag(root, SynthConfig(videos=4, frames_per_video=4, width=160, height=120, seed=0), progress=False)
    torch.manual_seed(0)
    save_detector(build_detector("small", {"min_size": 120, "max_size": 160}), base / "detector.pth")
    (base / "garbage.pth").write_bytes(bytes(range(7, 256)) * 20)
    (base / "text.pth").write_text("these are not weights\n")
    (base / "empty.pth").write_bytes(b"")
    data = (base / "detector.pth").read_bytes()
    (base / "truncated.pth").write_bytes(data[: len(data) // 3])
    store = write_learnable_store(base / "s.h5", n_train=2, n_val=0)
    cfg = TrainConfig(store=str(store), head_cfg=TINY_HEAD, epochs=1, device="cpu", preload=True)
    train(cfg, base / "run", progress=False, echo=lambda s: None)
    return {"root": root, "base": base, "relation": base / "run" / "last.pth", **{
        n: base / f"{n}.pth" for n in ("detector", "garbage", "text", "empty", "truncated")}}


@pytest.mark.parametrize("weights, expected", [
    ("garbage", "{path}: not a detector checkpoint: not a PyTorch file"),
    ("text", "{path}: not a detector checkpoint: a text file"),
    ("empty", "{path}: is empty (0 bytes), not a detector checkpoint: an interrupted write?"),
    ("truncated", "{path}: not a readable detector checkpoint: a truncated or damaged PyTorch zip file (an "
                  "interrupted write or copy?)"),
    ("relation", "{path}: not a detector checkpoint: it is a relation-head checkpoint (stage 2, `train`)"),
])
def test_detect_names_weights_that_are_not_a_detector(files, tmp_path, weights, expected):
    store = tmp_path / "s.h5"
    line = _error_line(_run("detect", files["root"], "--store", store, "--weights", files[weights]))
    assert line == expected.format(path=files[weights])
    assert not store.exists()


@pytest.mark.parametrize("checkpoint, expected", [
    ("detector", "{path}: not a relation-head checkpoint of `train` (a detector checkpoint (stage 1))"),
    ("empty", "{path}: is empty (0 bytes), not a relation-head checkpoint: an interrupted write?"),
    ("text", "{path}: not a relation-head checkpoint: a text file"),
])
def test_eval_names_a_checkpoint_that_is_not_a_relation_head(files, checkpoint, expected):
    line = _error_line(_run("eval", "--checkpoint", files[checkpoint]))
    assert line == expected.format(path=files[checkpoint])


def test_an_empty_file_is_not_aborted_even_with_vv(files):
    r = _run("-vv", "detect", files["root"], "--store", files["base"] / "x.h5", "--weights", files["empty"])
    assert "Aborted" not in r.output and r.exit_code != 0
    assert "is empty (0 bytes)" in (r.output + repr(r.exception))


# --- predictions files -------------------------------------------------------------------------


def _predictions(path: Path, **tamper) -> Path:
    return write_tiny_predictions(path, tamper)


def _flip_first_box(b):
    b = b.copy()
    b[1, [0, 2]] = b[1, [2, 0]]
    return b


def _infinite_box(b):
    b = b.copy()
    b[1, 2] = np.inf
    return b


def _same_names(n):
    return np.array([n[0], n[0]])


@pytest.mark.parametrize("tamper, expected", [
    ({"pred_boxes": _flip_first_box}, "pred_boxes: row 1 (frame 'A.mp4/000001.png') has x1 > x2 or y1 > y2 "
                                      "(boxes are xyxy): [29.0, 10.0, 10.0, 29.0]"),
    ({"gt_boxes": _infinite_box}, "gt_boxes: row 1 (frame 'A.mp4/000001.png') is not finite: [10.0, 10.0, inf, 29.0]"),
    ({"frame_names": _same_names}, "the predictions' frame_names name frame 'A.mp4/000001.png' twice: each frame "
                                   "must appear once"),
])
def test_eval_refuses_malformed_predictions(tmp_path, tamper, expected):
    path = _predictions(tmp_path / "p.npz", **tamper)
    line = _error_line(_run("eval", "--predictions", path))
    assert line == f"{path}: {expected}"


def test_eval_refuses_a_file_that_is_not_npz(tmp_path):
    path = tmp_path / "p.npz"
    path.write_text("frame,box\n")
    line = _error_line(_run("eval", "--predictions", path))
    assert line == f"{path}: not a dsgg-predictions file (an .npz of arrays): not a numpy file"
    np.save(tmp_path / "one.npy", np.zeros(3))
    line = _error_line(_run("eval", "--predictions", tmp_path / "one.npy"))
    assert line == f"{tmp_path / 'one.npy'}: not a dsgg-predictions file: one .npy array, not an .npz of arrays"


@pytest.mark.parametrize("option, value, expected", [
    ("--iou-threshold", "7", "Invalid value for '--iou-threshold': 7.0 is not in the range 0<x<=1."),
    ("--iou-threshold", "0", "Invalid value for '--iou-threshold': 0.0 is not in the range 0<x<=1."),
    ("--semi-threshold", "-3", "Invalid value for '--semi-threshold': -3.0 is not in the range 0<=x<1."),
])
def test_eval_thresholds_out_of_range(tmp_path, option, value, expected):
    path = _predictions(tmp_path / "p.npz")
    assert _error_line(_run("eval", "--predictions", path, option, value), code=2) == expected


# --- detector recipes --------------------------------------------------------------------------


@pytest.mark.parametrize("recipe, args, expected", [
    ({"epochs": 0}, [], "{recipe}: epochs: must be >= 1, got 0"),
    ({"lr": -0.1}, [], "{recipe}: lr: must be > 0, got -0.1"),
    ({"hflip": "yes"}, [], "{recipe}: hflip: must be a number, got 'yes'"),
    ({"learning_rate": 1}, [], "{recipe}: unknown field 'learning_rate'; known: arch, backbone_weights, batch_size, "
     "epochs, filter_small, frame_source, grad_clip, hflip, init_weights, lr, max_val_frames, min_lr_ratio, "
     "num_workers, seed, settings, val_fraction, val_seed, warmup_steps, weight_decay"),
    ({}, ["--lr", "0"], "--lr: lr: must be > 0, got 0.0"),
    ({"settings": {"min_sise": 3}}, [], "{recipe}: settings: unknown key 'min_sise'; known: anchor_sizes, "),
    ({"arch": "r18"}, [], "{recipe}: arch: unknown architecture 'r18'; known: "),
])
def test_detector_recipe_errors_are_one_line(files, tmp_path, recipe, args, expected):
    path = tmp_path / "det.yaml"
    path.write_text(yaml.safe_dump({"arch": "small", **recipe}))
    line = _error_line(_run("train-detector", files["root"], "--out", tmp_path / "run", "--config", path, *args))
    expected = expected.format(recipe=path)
    assert line.startswith(expected) if expected.endswith(" ") else line == expected
