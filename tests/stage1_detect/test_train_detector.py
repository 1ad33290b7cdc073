"""Detector training (``stage1_detect.train_detector``): schedule, and exact resume."""

from __future__ import annotations

import csv
import json
import logging

import pytest
import torch

import stage1_detect.train_detector as td
from stage1_detect.detectors import build_detector
from stage1_detect.train_detector import DetectorTrainConfig, lr_at, train_detector
from synth import SynthConfig, generate_synthetic_ag

# Tiny and fast: frames processed at 64x48, 3 frames a step, the cosine part of the
# schedule reached in the second step.
CFG = DetectorTrainConfig(arch="small", settings={"min_size": 48, "max_size": 64}, epochs=2, batch_size=3,
                          lr=1e-3, warmup_steps=1, num_workers=0, val_fraction=0.0, hflip=0.5, seed=7)


@pytest.fixture(scope="module")
def ag(tmp_path_factory):
    root = tmp_path_factory.mktemp("train") / "ag"
    # 3 videos x 4 frames; the reader keeps 2 train videos of 3 frames (video 1 is too short,
    # and frame 1 of video 0 has no person box; see synth.edge_case_plan).
    generate_synthetic_ag(root, SynthConfig(videos=3, frames_per_video=4, width=160, height=120, seed=0),
                          progress=False)
    return root


def test_lr_schedule():
    cfg = DetectorTrainConfig(lr=1.0, warmup_steps=4, min_lr_ratio=0.1)
    assert [lr_at(s, 14, cfg) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_at(4, 14, cfg) == pytest.approx(1.0)
    assert lr_at(9, 14, cfg) == pytest.approx(0.1 + 0.9 * 0.5)  # half way down the cosine
    assert lr_at(14, 14, cfg) == pytest.approx(0.1)
    assert lr_at(20, 14, cfg) == pytest.approx(0.1)


class _Preempted(Exception):
    pass


def _stop_after_first_epoch(monkeypatch):
    """Make the run die right after epoch 1's checkpoint, as a preempted job would."""
    info = td.log.info

    def fake_info(msg, *args, **kwargs):
        info(msg, *args, **kwargs)
        if msg.startswith("epoch") and args[0] == 1:
            raise _Preempted

    monkeypatch.setattr(td.log, "info", fake_info)


def _weights(path):
    return torch.load(path, weights_only=True)["model"]


def test_resume_gives_the_same_weights(ag, tmp_path, monkeypatch, caplog):
    full = train_detector(ag, tmp_path / "full", CFG, progress=False)
    assert full.epochs == 2 and full.val is None

    with monkeypatch.context() as m:
        _stop_after_first_epoch(m)
        with pytest.raises(_Preempted):
            train_detector(ag, tmp_path / "resumed", CFG, progress=False)
    state = torch.load(tmp_path / "resumed" / "last.pth", weights_only=False)
    assert (state["epoch"], state["step"]) == (0, 2)  # 6 frames, 3 a step
    resumed = train_detector(ag, tmp_path / "resumed", CFG, resume=True, progress=False)

    a, b = _weights(full.checkpoint), _weights(resumed.checkpoint)
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert different == []
    assert resumed.final_loss == full.final_loss
    # Training moved the weights (a test of nothing would also pass the equality above).
    torch.manual_seed(CFG.seed)
    initial = build_detector("small", {"num_classes": 37, "person_label": 1, **CFG.settings}).model.state_dict()
    changed = [k for k in a if not torch.equal(a[k], initial[k])]
    assert "roi_heads.box_predictor.cls_score.weight" in changed and "backbone.body.0.weight" in changed
    assert torch.equal(_weights(tmp_path / "full" / "last.pth")["backbone.body.0.weight"], a["backbone.body.0.weight"])
    # The run folder's recipe is a recipe: --config takes it back, same config (as `train`'s).
    assert DetectorTrainConfig.from_yaml(tmp_path / "full" / "config.yaml") == CFG
    run = json.loads((tmp_path / "full" / "run.json").read_text())
    assert run["root"] == str(ag) and "git_revision" in run and "torch" in run["versions"]
    rows = list(csv.reader((tmp_path / "resumed" / "log.csv").open()))
    assert [r[:2] for r in rows] == [r[:2] for r in csv.reader((tmp_path / "full" / "log.csv").open())]
    assert [r[0] for r in rows] == ["epoch", "1", "2"]

    # Resuming with another epoch count changes the schedule: said in a warning.
    last = tmp_path / "resumed" / "last.pth"
    state = torch.load(last, weights_only=False)
    state["config"]["epochs"] = 5
    torch.save(state, last)
    with caplog.at_level(logging.WARNING, logger="stage1_detect.train_detector"):
        train_detector(ag, tmp_path / "resumed", CFG, resume=True, progress=False)  # nothing left to train
    assert "resuming a 5-epoch run with epochs=2: the learning-rate schedule changes" in caplog.text


def test_a_non_finite_loss_is_one_line_naming_epoch_and_step(ag, tmp_path, monkeypatch):
    from common.errors import NonFiniteError

    def nan_detector(arch, settings):  # the real detector with one NaN weight: every loss is NaN
        detector = build_detector(arch, settings)
        with torch.no_grad():
            detector.model.backbone.body[0].weight.view(-1)[0] = float("nan")
        return detector

    monkeypatch.setattr(td, "build_detector", nan_detector)
    with pytest.raises(NonFiniteError) as e:
        train_detector(ag, tmp_path / "nan", CFG, progress=False)
    line = str(e.value)
    assert "\n" not in line and "not finite at epoch 1, step 1" in line and str(tmp_path / "nan") in line
    assert not (tmp_path / "nan" / "last.pth").exists()  # nothing of the epoch saved


# --- the run folder: train's rules (common.training_run) ------------------------------------------


def test_resume_refuses_other_settings_naming_the_field(ag, tmp_path):
    """Before, train-detector resumed with any recipe (only another epoch count was warned of)."""
    import yaml

    from common.errors import ConfigError

    out = tmp_path / "run"
    out.mkdir()  # killed in epoch 1: config.yaml, no last.pth
    (out / "config.yaml").write_text(yaml.safe_dump({**CFG.to_dict(), "lr": 0.01}, sort_keys=False))
    with pytest.raises(ConfigError) as e:
        train_detector(ag, out, CFG, resume=True, progress=False)
    assert str(e.value) == (f"{out}: --resume with settings other than the run's (lr: run 0.01, now 0.001): resume "
                            f"with the run's settings, or start a new run (--overwrite or another --out)")


def test_resume_takes_one_weights_file_named_two_ways(tmp_path, monkeypatch):
    """init_weights / backbone_weights named absolute by the run and relative from another
    directory on resume name one file: the same run (as `train` takes one store written two
    ways); another file is refused naming the field. Before, the paths were compared as strings."""
    import dataclasses

    import yaml

    from common.errors import ConfigError

    weights, other = tmp_path / "w" / "coco.pth", tmp_path / "w" / "other.pth"
    weights.parent.mkdir()
    weights.write_bytes(b"weights")
    other.write_bytes(b"weights")
    out = tmp_path / "run"
    out.mkdir()  # killed in epoch 1: config.yaml, no last.pth
    saved = {**CFG.to_dict(), "init_weights": str(weights), "backbone_weights": str(weights)}
    (out / "config.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    relative = dataclasses.replace(CFG, init_weights="../w/coco.pth", backbone_weights="../w/./coco.pth")
    assert td.resume_state(td.training_run(out), relative, device="cpu") is None
    with pytest.raises(ConfigError) as e:
        td.resume_state(td.training_run(out), dataclasses.replace(relative, init_weights="../w/other.pth"),
                        device="cpu")
    assert str(e.value) == (f"{out}: --resume with settings other than the run's (init_weights: run '{weights}', "
                            f"now '../w/other.pth'): resume with the run's settings, or start a new run "
                            f"(--overwrite or another --out)")
    monkeypatch.chdir(weights.parent)  # the run named them relative, the resume absolute
    (out / "config.yaml").write_text(yaml.safe_dump({**saved, "init_weights": "coco.pth"}, sort_keys=False))
    assert td.resume_state(td.training_run(out), dataclasses.replace(CFG, init_weights=str(weights),
                                                                     backbone_weights=str(weights)),
                           device="cpu") is None


def test_resume_refuses_fewer_epochs_than_the_run_has(ag, tmp_path):
    """Before, a 3-epoch run resumed with epochs 2 wrote its weights as a 2-epoch detector."""
    from common.errors import ConfigError
    from common.torch_files import save_torch

    out = tmp_path / "run"
    out.mkdir()
    save_torch({"model": {}, "optimizer": {}, "epoch": 2, "step": 6, "config": {**CFG.to_dict(), "epochs": 3}},
               out / "last.pth")
    with pytest.raises(ConfigError) as e:
        train_detector(ag, out, CFG, resume=True, progress=False)
    assert str(e.value) == f"{out}: the run has completed 3 epochs; --resume with epochs 2 would not continue it"


def test_a_full_disk_is_one_line_and_keeps_the_epoch_before(ag, tmp_path, monkeypatch):
    """Before, a bare OS error that did not say which epoch was intact."""
    import errno
    import os

    from common.errors import UserError

    real_save = torch.save

    def save(obj, f, *a, **k):  # the disk is full when epoch 2's checkpoint (0-based 1) is written
        if isinstance(obj, dict) and obj.get("epoch") == 1 and "step" in obj:
            f.write(b"PK\x03\x04 a part of a checkpoint")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, f, *a, **k)

    out = tmp_path / "run"
    with monkeypatch.context() as m:
        m.setattr(torch, "save", save)
        with pytest.raises(UserError) as e:
            train_detector(ag, out, CFG, progress=False)
    assert str(e.value) == (f"{out}: cannot write the checkpoint of epoch 2: No space left on device (errno 28); "
                            f"the run is intact up to epoch 1 (last.pth): fix that and --resume")
    assert torch.load(out / "last.pth", weights_only=True)["epoch"] == 0
    assert [row["epoch"] for row in json.loads((out / "log.json").read_text())] == [1]
    assert not [p.name for p in out.iterdir() if ".tmp-" in p.name]
    resumed = train_detector(ag, out, CFG, resume=True, progress=False)
    assert [row["epoch"] for row in json.loads((out / "log.json").read_text())] == [1, 2]
    assert resumed.epochs == 2


def test_cli_resume_takes_the_runs_recipe(ag, tmp_path):
    """`train-detector --resume` without --config continues with the run's config.yaml, as
    `train --resume` does (the run's settings are required on resume)."""
    import yaml

    from tests.helpers.cli import run_cli

    recipe = tmp_path / "det.yaml"
    recipe.write_text(yaml.safe_dump({**CFG.to_dict(), "epochs": 1}))
    out = tmp_path / "run"
    r = run_cli("train-detector", ag, "--out", out, "--config", recipe, "--device", "cpu")
    assert r.exit_code == 0, r.output
    r = run_cli("train-detector", ag, "--out", out, "--resume", "--epochs", "2", "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert [row["epoch"] for row in json.loads((out / "log.json").read_text())] == [1, 2]
