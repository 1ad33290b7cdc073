"""The run-folder rules both trainers share (``common.training_run``), on hand-built folders:
a finished run refused without --resume / --overwrite, a resume with other settings refused
naming the field, a full disk one line with the previous epoch intact, the logs and best.pth
repaired from last.pth, and each trainer's epoch seeds unchanged."""

from __future__ import annotations

import csv
import errno
import json
import logging
import os
from pathlib import Path

import pytest
import torch
import yaml

from common.errors import ConfigError, UserError
from common.run_folder import RunFolderError
from common.torch_files import save_torch
from common.training_run import SeedRule, TrainingRun, config_differences, epochs_done, loss_terms, resume_recipe

FILES = ("config.yaml", "run.json", "log.csv", "log.json", "last.pth", "best.pth")
CONFIG = {"lr": 0.1, "seed": 0, "epochs": 2, "num_workers": 0}
DEFAULTS = {"lr": 0.01, "seed": 0, "epochs": 1, "num_workers": 0, "extra": "x"}


def _run(folder: Path) -> TrainingRun:
    return TrainingRun(folder, FILES, what="a run is being trained there", may_change=("epochs", "num_workers"),
                       defaults=DEFAULTS)


def _rows(n: int) -> list[dict]:
    return [{"epoch": e, "loss_total": 1.0 / e, "lr": 0.1} for e in range(1, n + 1)]


def _state(epoch: int, **config) -> dict:
    return {"model": {"w": torch.full((2,), float(epoch))}, "epoch": epoch, "history": _rows(epoch),
            "config": {**CONFIG, **config}}


@pytest.fixture
def finished(tmp_path) -> TrainingRun:
    """A run of 2 epochs, every file in place, as a trainer leaves it."""
    run = _run(tmp_path / "run")
    run.folder.mkdir()
    run.write_config(CONFIG, {"git_revision": "abc"})
    run.save_epoch(_state(1), _rows(1), epoch=1, improved=True)
    run.save_epoch(_state(2), _rows(2), epoch=2, improved=True)
    return run


def test_the_files_of_an_epoch(finished):
    folder = finished.folder
    assert yaml.safe_load((folder / "config.yaml").read_text()) == CONFIG
    assert list(yaml.safe_load((folder / "config.yaml").read_text())) == list(CONFIG)  # the recipe's order
    assert json.loads((folder / "run.json").read_text()) == {"git_revision": "abc"}
    assert torch.load(folder / "last.pth", weights_only=True)["epoch"] == 2
    assert torch.load(folder / "best.pth", weights_only=True)["epoch"] == 2
    assert json.loads((folder / "log.json").read_text()) == _rows(2)
    rows = list(csv.reader((folder / "log.csv").open()))
    assert rows == [["epoch", "loss_total", "lr"], ["1", "1", "0.1"], ["2", "0.5", "0.1"]]
    assert epochs_done(folder) == 2


def test_a_finished_run_is_refused_continued_or_replaced_only_as_asked(finished, tmp_path):
    folder = finished.folder
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(RunFolderError) as e:
        finished.claim(resume=False, overwrite=False)
    assert str(e.value) == (f"{folder}: holds a run (config.yaml, run.json, log.csv, log.json, last.pth, best.pth): "
                            f"continue it with --resume, start it again with --overwrite, or choose another --out")
    assert finished.claim(resume=True, overwrite=False) == list(FILES)
    assert finished.claim(resume=False, overwrite=True) == []
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]
    assert epochs_done(folder) == 0


def test_resume_refuses_other_settings_naming_each_field(finished):
    finished.check_resume({**CONFIG, "epochs": 5, "num_workers": 2},  # may change
                          checkpoint_config=_state(2)["config"], done=2, epochs=5)
    with pytest.raises(ConfigError) as e:
        finished.check_resume({**CONFIG, "lr": 0.2, "extra": "y"},
                              checkpoint_config=_state(2)["config"], done=2, epochs=2)
    # "extra" is absent from the run's config: it counts as its default
    assert str(e.value) == (f"{finished.folder}: --resume with settings other than the run's (lr: run 0.1, now 0.2; "
                            f"extra: run 'x', now 'y'): resume with the run's settings, or start a new run "
                            f"(--overwrite or another --out)")


def test_resume_without_last_pth_checks_config_yaml(finished):
    """A run killed in its first epoch has its config.yaml and no last.pth."""
    finished.checkpoint.unlink()
    with pytest.raises(ConfigError, match=r"\(seed: run 0, now 3\)"):
        finished.check_resume({**CONFIG, "seed": 3}, checkpoint_config=None, done=0, epochs=2)


def test_resume_never_shortens_a_run(finished):
    with pytest.raises(ConfigError) as e:
        finished.check_resume({**CONFIG, "epochs": 1}, checkpoint_config=_state(2)["config"],
                              done=2, epochs=1)
    assert str(e.value) == f"{finished.folder}: the run has completed 2 epochs; --resume with epochs 1 would not continue it"
    finished.check_resume(CONFIG, checkpoint_config=_state(2)["config"], done=2, epochs=2)


def test_resume_check_says_what_a_resume_meets_without_raising(finished):
    """What ``compare`` asks before it trains: the same rule as check_resume, as a value."""
    check = finished.resume_check({**CONFIG, "lr": 0.2, "epochs": 1}, checkpoint_config=_state(2)["config"], done=2,
                                  epochs=1)
    assert check.differences == ("lr: run 0.1, now 0.2",) and check.done == 2 and check.shortens
    assert not finished.resume_check(CONFIG, checkpoint_config=_state(2)["config"], done=2, epochs=3).shortens
    empty = _run(finished.folder.parent / "new").resume_check(CONFIG, checkpoint_config=None, done=0, epochs=1)
    assert empty.differences == () and not empty.shortens  # no run there: nothing to differ from


def test_resume_reads_last_pth_before_config_yaml(finished):
    """The run's settings are those of last.pth (what its weights were trained with); config.yaml
    only for a run killed in its first epoch. A config.yaml edited by hand does not win."""
    (finished.folder / "config.yaml").write_text(yaml.safe_dump({**CONFIG, "lr": 0.5}))
    assert finished.resume_check(CONFIG, checkpoint_config=_state(2)["config"], done=2, epochs=2).differences == ()
    assert finished.resume_check({**CONFIG, "lr": 0.5}, checkpoint_config=_state(2)["config"], done=2,
                                 epochs=2).differences == ("lr: run 0.1, now 0.5",)
    assert finished.resume_check(CONFIG, checkpoint_config=None, done=0, epochs=2).differences == (
        "lr: run 0.5, now 0.1",)


def test_resume_reads_the_runs_recipe_unless_given_one(finished, tmp_path):
    """Both trainers' commands: ``--resume`` without ``--config`` reads the run's config.yaml."""
    folder, given = finished.folder, tmp_path / "recipe.yaml"
    assert resume_recipe(folder, None, resume=True) == folder / "config.yaml"
    assert resume_recipe(folder, given, resume=True) == given
    assert resume_recipe(folder, None, resume=False) is None
    assert resume_recipe(tmp_path / "new", None, resume=True) is None  # no run yet: the defaults


def test_config_differences_takes_one_value_written_two_ways():
    same = {"store": lambda a, b: Path(a).name == Path(b).name}
    assert config_differences({"store": "/x/s.h5"}, {"store": "s.h5"}, {}, same=same) == []
    assert config_differences({"store": "/x/s.h5"}, {"store": "t.h5"}, {}, same=same) == [
        "store: run '/x/s.h5', now 't.h5'"]


def _full_disk_at(monkeypatch, epoch: int) -> None:
    """torch.save fails as on a full disk for the checkpoint of ``epoch``, after a partial write."""
    real_save = torch.save

    def save(obj, f, *a, **k):
        if isinstance(obj, dict) and obj.get("epoch") == epoch:
            f.write(b"PK\x03\x04 a part of a checkpoint")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", save)


def test_a_full_disk_is_one_line_and_keeps_the_epoch_before(finished, monkeypatch):
    folder = finished.folder
    before = {n: (folder / n).read_bytes() for n in FILES}
    _full_disk_at(monkeypatch, 3)
    with pytest.raises(UserError) as e:
        finished.save_epoch(_state(3), _rows(3), epoch=3, improved=True)
    assert str(e.value) == (f"{folder}: cannot write the checkpoint of epoch 3: No space left on device (errno 28); "
                            f"the run is intact up to epoch 2 (last.pth): fix that and --resume")
    assert {n: (folder / n).read_bytes() for n in FILES} == before  # nothing already written lost
    assert not [p.name for p in folder.iterdir() if ".tmp-" in p.name]


def test_a_full_disk_in_the_first_epoch_says_resume_starts_over(tmp_path, monkeypatch):
    run = _run(tmp_path)
    _full_disk_at(monkeypatch, 1)
    with pytest.raises(UserError, match=r"epoch 1: No space left on device \(errno 28\); no epoch was saved yet "
                                        r"\(--resume starts from epoch 1\): fix that and --resume$"):
        run.save_epoch(_state(1), _rows(1), epoch=1)
    assert not run.checkpoint.exists() and epochs_done(tmp_path) == 0


def test_repair_rebuilds_the_logs_and_best_pth_from_last_pth(finished, caplog):
    """As a kill after last.pth of epoch 2 leaves them: best.pth empty, log.json one row short."""
    folder = finished.folder
    (folder / "best.pth").write_bytes(b"")
    (folder / "log.json").write_text(json.dumps(_rows(1)))
    said = []
    finished.repair(_rows(2), done=2, best_epoch=2, echo=said.append)
    assert said == ["repaired best.pth from last.pth (epoch 2; it held nothing usable)"]
    assert torch.load(folder / "best.pth", weights_only=True)["epoch"] == 2
    assert json.loads((folder / "log.json").read_text()) == _rows(2) and epochs_done(folder) == 2
    # best.pth of an earlier epoch cannot be rebuilt from last.pth: a warning, nothing replaced
    save_torch(_state(2), folder / "best.pth")
    with caplog.at_level(logging.WARNING, logger="common.training_run"):
        finished.repair(_rows(2), done=2, best_epoch=1, echo=said.append)
    assert "holds epoch 2, not epoch 1, the best; it cannot be rebuilt from last.pth (epoch 2)" in caplog.text
    assert len(said) == 1


def test_a_trainer_without_best_pth_repairs_its_logs_only(tmp_path):
    run = TrainingRun(tmp_path, ("last.pth", "log.json", "log.csv"), what="x", best=None)
    run.save_epoch(_state(1), _rows(1), epoch=1, improved=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pth", "log.csv", "log.json"]
    run.repair(_rows(1), done=1, best_epoch=1, echo=pytest.fail)


def test_epochs_done_reads_the_logs_of_a_run_with_last_pth(tmp_path):
    (tmp_path / "log.json").write_text(json.dumps(_rows(3)))
    assert epochs_done(tmp_path) == 0  # no last.pth: no run
    (tmp_path / "last.pth").write_bytes(b"")
    assert epochs_done(tmp_path) == 3
    (tmp_path / "log.json").write_text("[{")
    assert epochs_done(tmp_path) == 0


def test_each_trainers_epoch_seeds_are_its_formula_of_before():
    """The demo's figures depend on them: train's (seed * 1000003 + e * 7919) mod 2^31 and
    train-detector's seed * 1000 + e."""
    from stage1_detect.train_detector import EPOCH_SEEDS as DETECTOR
    from stage2_relations.train import EPOCH_SEEDS as RELATIONS

    assert RELATIONS.epoch_seed(3, 2) == 3 * 1_000_003 + 2 * 7919 == 3_015_847
    assert RELATIONS.epoch_seed(5000, 1) == (5000 * 1_000_003 + 7919) % 2**31 == 5_000_015_000 + 7919 - 2 * 2**31
    assert DETECTOR.epoch_seed(7, 1) == 7001
    assert DETECTOR.epoch_seed(10**7, 0) == 10**10  # no modulus: beyond 2^31 as before
    assert SeedRule(2, 3, modulus=5).epoch_seed(4, 1) == (8 + 3) % 5


def test_loss_terms():
    assert loss_terms({"ce": torch.tensor(0.6931, requires_grad=True), "box": torch.tensor(float("nan"))}) == (
        "ce 0.6931, box nan")
