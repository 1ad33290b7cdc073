"""The command line end to end on small synthetic data."""

from __future__ import annotations

import re

import pytest
from click.testing import CliRunner

from cli import main
from store import open_store


def run(*args: str, code: int = 0):
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == code, result.output
    return result.output


def test_dataset_prints_splits_and_filters(ag_root):
    out = run("dataset", ag_root, "--val-fraction", "0")
    assert re.search(r"train\s+1\s+3\s+3\s+8", out)
    assert re.search(r"test\s+1\s+3\s+3\s+12", out)
    assert re.search(r"frames_no_person_box\s+train\s+1", out)
    assert "skipped objects (2)" in out


def test_dataset_strict_fails_naming_the_frame(ag_root):
    out = run("dataset", ag_root, "--strict", code=1)
    assert "AAAAA.mp4/000035.png" in out and "no box" in out


def test_detect_takes_no_mode(ag_root, tmp_path):
    # One extraction serves every mode: --mode is refused before anything is read or loaded.
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"")
    out = run("detect", ag_root, "--store", tmp_path / "s.h5", "--weights", weights, "--mode", "sgdet", code=2)
    assert "detect takes no --mode: one extraction serves every mode" in out and "train --mode sgdet" in out
    out = run("detect", ag_root, "--store", tmp_path / "s.h5", "--weights", weights, "--keep-frames-without-person",
              code=2)
    assert "detect takes no --keep-frames-without-person: every stored frame needs its person box" in out
    assert not (tmp_path / "s.h5").exists()


def test_synth_refuses_a_folder_that_is_not_synthetic(ag_root):
    out = run("synth", "--out", ag_root, "--videos", "2", code=1)
    assert "refusing" in out
    assert (ag_root / "annotations" / "person_bbox.pkl").exists()


def test_every_error_a_user_can_fix_takes_the_one_error_path():
    """The group prints these as one line: each is a UserError (no per-command except blocks)."""
    from cli import _user_error
    from common.errors import ConfigError, InputError
    from stage1_detect.action_genome import AnnotationError
    from stage1_detect.ag_checkpoint import CheckpointError
    from stage2_relations.compare import RunMismatch

    for error in (AnnotationError("f.pkl", "bad"), CheckpointError("f.pth: bad"), RunMismatch("run: other"),
                  ConfigError("recipe: bad"), InputError("file: bad"), FileNotFoundError("gone")):
        assert _user_error(error), type(error).__name__
    assert not _user_error(ValueError("a bug")) and not _user_error(KeyError("a bug"))


def test_mode_choices_come_from_mode():
    from cli import MODE_CHOICE
    from rules.modes import Mode

    assert list(MODE_CHOICE.choices) == [m.value for m in Mode]
    for command in ("dataset", "train", "eval", "compare"):
        (option,) = [p for p in main.commands[command].params if p.name == "mode"]
        assert option.type is MODE_CHOICE, command


def test_backend_choices_and_help_come_from_the_registry():
    from stage1_detect.detector_backends import DETECTOR_BACKENDS

    for command in ("detect", "predict"):
        (option,) = [p for p in main.commands[command].params if p.name == "backend"]
        assert list(option.type.choices) == list(DETECTOR_BACKENDS) and option.default == "torchvision", command
        assert all(f"{b.name}, {b.description}" in option.help for b in DETECTOR_BACKENDS.values())


def test_commands_that_set_torch_threads_restore_them(tmp_path, monkeypatch):
    """--threads holds for the command (common.threads.torch_threads) and only for it, even one
    that fails: the count is the given one while the evaluation runs, the old one after."""
    import torch

    from common.errors import InputError
    from stage2_relations import evaluate_checkpoint

    before = torch.get_num_threads()
    seen = []

    def evaluation_that_fails(request, echo):
        seen.append(torch.get_num_threads())
        raise InputError("w.pth: not a checkpoint")

    monkeypatch.setattr(evaluate_checkpoint, "evaluate_checkpoint", evaluation_that_fails)
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"")
    run("eval", "--checkpoint", weights, "--threads", before + 1, code=1)  # another count than now's
    assert seen == [before + 1]
    assert torch.get_num_threads() == before


@pytest.mark.slow
def test_demo_runs_the_pipeline(tmp_path):
    out = run("demo", "--out", tmp_path / "demo", "--videos", "6", "--detector-epochs", "1", "--device", "cpu",
              "--seeds", "0,1", "--epochs", "1")
    assert "[5/7] store check ok" in out and "[6/7] trained and evaluated 2 variants x 2 seeds" in out
    # the Table 2 rows over the seeds, the paper's figures beside, the paired difference
    assert "[7/7] " in out and "| STTran† [1]" in out and "[25.1]" in out and "| Δ vs sttran" in out
    assert (tmp_path / "demo" / "runs" / "sgdet" / "sttran_rsnet" / "seed1" / "last.pth").exists()
    assert (tmp_path / "demo" / "view" / "page" / "index.html").as_uri() in out
    store = open_store(tmp_path / "demo" / "store.h5")
    # 6 videos: the reader keeps those with 3 or more frames, split 10% train -> val.
    assert len(store.videos()) >= 3
    assert store.meta.detector.arch == "small"
    assert store.meta.vocabulary.objects[1] == "person"
