"""TensorBoard event files of `train`: read back with TensorBoard's own reader they hold each
epoch's log row (loss terms, learning rate, validation metrics), a resume continues them
without doubling an epoch, a run started again hides the old one's, and without the package
a run says so in one line and goes on."""

from __future__ import annotations

import json
import sys

import pytest

from stage2_relations import tensorboard_log
from stage2_relations.recipe import TrainConfig
from stage2_relations.tensorboard_log import MISSING, TensorBoardLog, scalar_tags
from stage2_relations.train import train
from tests.helpers.stage2 import TINY_HEAD, TINY_RSNET, one_thread, write_learnable_store

_one_thread = pytest.fixture(autouse=True, scope="module")(one_thread)


def test_scalar_tags_of_a_log_row():
    row = {"epoch": 3, "lr": 1e-3, "loss_total": 2.5, "loss_relation_score": 0.5, "train_fps": 100.0,
           "val_R@10": 0.25, "val_R@20": 0.5, "val_fps": 80.0, "time_s": 1.5, "threads": 2}
    assert scalar_tags(row) == {"lr": 1e-3, "loss/total": 2.5, "loss/relation_score": 0.5,
                                "speed/train_fps": 100.0, "val/R@10": 0.25, "val/R@20": 0.5,
                                "speed/val_fps": 80.0, "time/epoch_s": 1.5}


def _scalars(run_dir):
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    acc = accumulator.EventAccumulator(str(run_dir / tensorboard_log.FOLDER))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_event_files_hold_the_logged_values(tmp_path):
    pytest.importorskip("torch.utils.tensorboard")
    store = write_learnable_store(tmp_path / "s.h5", n_train=4, n_val=2)
    cfg = TrainConfig(store=str(store), mode="predcls", head_cfg=TINY_HEAD, rsnet=TINY_RSNET, epochs=1, lr=3e-3,
                      videos_per_batch=2, preload=True, device="cpu")
    run = tmp_path / "run"
    train(cfg, run, progress=False, echo=lambda s: None)
    train(TrainConfig(**{**cfg.to_dict(), "epochs": 2}), run, resume=True, progress=False, echo=lambda s: None)
    history = json.loads((run / "log.json").read_text())
    scalars = _scalars(run)
    for tag, key in (("loss/total", "loss_total"), ("loss/relation_score", "loss_relation_score"), ("lr", "lr"),
                     ("val/R@20", "val_R@20"), ("val/R@10", "val_R@10")):
        # one value per epoch (the resume wrote epoch 2 only), as float32 of log.json's
        assert [s for s, _ in scalars[tag]] == [1, 2], tag
        assert [v for _, v in scalars[tag]] == pytest.approx([row[key] for row in history], rel=1e-6), tag

    # started again with --overwrite for one epoch: the old run's epochs are hidden
    train(TrainConfig(**{**cfg.to_dict(), "lr": 1e-3}), run, overwrite=True, progress=False, echo=lambda s: None)
    new = json.loads((run / "log.json").read_text())
    scalars = _scalars(run)
    assert scalars["lr"] == [(1, pytest.approx(new[0]["lr"]))] and new[0]["lr"] != history[0]["lr"]
    assert scalars["loss/total"] == [(1, pytest.approx(new[0]["loss_total"], rel=1e-6))]


def test_without_tensorboard_one_line_once(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as when not installed
    monkeypatch.setattr(tensorboard_log, "_told", False)
    lines = []
    for _ in range(2):
        board = TensorBoardLog(tmp_path, echo=lines.append)
        board.epoch({"epoch": 1, "lr": 0.1})
        board.close()
    assert lines == [MISSING] and "pip install" in MISSING
    assert not (tmp_path / tensorboard_log.FOLDER).exists()
