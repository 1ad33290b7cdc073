"""Non-finite values are caught where they enter (issue 19): a detector's outputs (per video,
named), a store's features (`store check`), and a training step's loss and gradients (one line
naming the epoch and the step, and the likely cause). Before, a detector with NaN weights wrote
NaN features that the full `store check` called ok, and training stopped with a traceback
(FloatingPointError, or torch's overflow error for a learning rate beyond float32).

Each test failed on the code before it.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from stage1_detect.detectors import build_detector, save_detector
from store import StoreWriter, check_store
from synth import SynthConfig, generate_synthetic_ag
from tests.helpers.cli import error_line, run_cli
from tests.helpers.stage2 import TINY_HEAD, learnable_video, tiny_meta, write_learnable_store


def _nan_store(path: Path, nan_video: str = "v001.mp4") -> Path:
    """A learnable store (2 train, 1 val videos) whose video ``nan_video`` has NaN GT features."""
    meta = tiny_meta()
    protos = np.random.default_rng(0).standard_normal((meta.vocabulary.num_objects, meta.feature_dim))
    with StoreWriter(path, meta) as w:
        for i, split in enumerate(("train", "train", "val")):
            rec = learnable_video(meta, f"v{i:03d}.mp4", split, i, protos)
            if rec.name == nan_video:
                feats = rec.gt_features.copy()
                feats[0, :3] = np.nan
                rec = dataclasses.replace(rec, gt_features=feats)
            w.write_video(rec)
    return path


def test_store_check_reports_nan_features_by_video(tmp_path):
    store = _nan_store(tmp_path / "nan.h5")
    problems = [str(p) for p in check_store(store)]
    assert len(problems) == 1, problems
    assert "video 'v001.mp4' holds values that are not finite (NaN or inf) in gt_features (3 of " in problems[0]
    r = run_cli("store", "check", store)
    assert r.exit_code == 1 and "v001.mp4" in r.output and "not finite" in r.output


def test_detect_refuses_a_detector_that_outputs_nan(tmp_path):
    root = tmp_path / "ag"
    generate_synthetic_ag(root, SynthConfig(videos=4, frames_per_video=4, width=160, height=120, seed=0),
                          progress=False)
    torch.manual_seed(0)
    det = build_detector("small", {"min_size": 120, "max_size": 160})
    with torch.no_grad():
        for p in det.model.roi_heads.parameters():
            p.fill_(float("nan"))
    save_detector(det, tmp_path / "nan.pth")
    store = tmp_path / "s.h5"
    line = error_line(run_cli("detect", root, "--store", store, "--weights", tmp_path / "nan.pth", "--workers", "0"))
    assert re.match(r"\w+\.mp4: the detector's outputs are not finite \(NaN or inf\) in gt_features \(", line), line
    assert "the video was not written" in line
    assert not check_store(store) or "no committed segments" in str(check_store(store)[0])


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    store = write_learnable_store(tmp_path_factory.mktemp("nf") / "store.h5", n_train=3, n_val=1)
    return dict(store=str(store), mode="predcls", head="sttran", head_cfg=TINY_HEAD, epochs=1, lr=3e-3,
                videos_per_batch=1, preload=True, device="cpu")


def _train(tmp_path, recipe, *args):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return run_cli("train", "--config", path, "--out", tmp_path / "run", "--no-progress", *args)


def test_training_on_nan_features_names_epoch_step_and_the_store(tmp_path, good):
    store = _nan_store(tmp_path / "nan.h5", nan_video="v000.mp4")
    line = error_line(_train(tmp_path, {**good, "store": str(store)}))
    assert line.startswith("epoch 1, step "), line
    assert "the loss is not finite" in line and "v000.mp4" in line
    assert "its input features holds 3 non-finite values: the store's data is not finite" in line


def test_a_learning_rate_that_blows_up_the_weights_is_named(tmp_path, good):
    line = error_line(_train(tmp_path, {**good, "lr": 1e30, "epochs": 2}))
    assert line.startswith("epoch 1, step 2: the loss is not finite") or line.startswith("epoch 1, step 2: the grad")
    assert "the weights have grown to |w| = " in line and "a learning rate too large (lr 1e+30)?" in line


def test_a_learning_rate_beyond_float32_is_refused_by_the_recipe_check(tmp_path, good):
    line = error_line(_train(tmp_path, {**good, "lr": 1e300}))
    assert line == f"{tmp_path / 'r.yaml'}: lr: must be > 0 and below 3.4e+38 (float32's largest), got 1e+300"


class _InfGrad(torch.autograd.Function):
    """Identity forward; an infinite gradient backward: a finite loss whose gradients overflow."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return g * float("inf")


def test_non_finite_gradients_are_one_line(tmp_path, good, monkeypatch):
    from stage2_relations.heads.base import RelationHead

    real = RelationHead.loss

    def loss(self, output, batch):
        return {k: _InfGrad.apply(v) for k, v in real(self, output, batch).items()}

    monkeypatch.setattr(RelationHead, "loss", loss)
    line = error_line(_train(tmp_path, good))
    assert line.startswith("epoch 1, step 1: the gradients are not finite (the loss was "), line
    assert "the inputs and weights are finite: the step overflowed" in line
