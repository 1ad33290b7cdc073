"""Runs bound to their stores and one run-folder rule (issue 19).

A run records its store's identity (per-video checksums) and absolute path; ``train --resume``,
``eval --run`` and ``compare`` refuse another or an incomplete store with one line naming the
store, the run and what differs; relative and absolute forms of one store are one store.
Readers and ``store merge`` refuse a store missing a segment its manifest lists, or one a writer
is still writing (``store stats`` says so). ``detect`` refuses to continue a store made from
another dataset. Every command that writes results replaces only what it was asked to.

Each test failed on the code before it (the store was used without a word, or the file replaced).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from common.run_folder import RunFolderError, claim_run_folder
from stage2_relations.compare import RunMismatch, run_state
from stage2_relations.recipe import TrainConfig
from stage2_relations.train import train
from store import StoreWriter
from tests.helpers import REPO
from tests.helpers.cli import error_line, run_cli
from tests.helpers.stage2 import TINY_HEAD, learnable_video, one_thread, tiny_meta

_one_thread = pytest.fixture(autouse=True, scope="module")(one_thread)


def _store(path: Path, *, seed: int = 0, n: int = 5) -> Path:
    """A learnable store (3 train, 2 val videos), one segment per video."""
    meta = tiny_meta()
    protos = np.random.default_rng(seed).standard_normal((meta.vocabulary.num_objects, meta.feature_dim))
    with StoreWriter(path, meta, segment_bytes=0) as w:
        for i in range(n):
            w.write_video(learnable_video(meta, f"v{i:03d}.mp4", "train" if i < 3 else "val", seed * 1000 + i,
                                          protos))
    return path


def _cfg(store: Path | str, **kw) -> TrainConfig:
    return TrainConfig(**{**dict(store=str(store), head_cfg=TINY_HEAD, epochs=1, device="cpu", preload=True,
                                 videos_per_batch=2), **kw})


@pytest.fixture
def trained(tmp_path):
    store = _store(tmp_path / "s.h5")
    train(_cfg(store), tmp_path / "run", progress=False, echo=lambda s: None)
    return store, tmp_path / "run"


def test_the_run_records_its_store(trained):
    store, run = trained
    ckpt = torch.load(run / "last.pth", weights_only=True)
    assert ckpt["store"]["path"] == str(store.resolve())
    assert sorted(ckpt["store"]["videos"]) == [f"v{i:03d}.mp4" for i in range(5)]


def test_resume_refuses_a_store_re_extracted_at_the_runs_path(trained):
    store, run = trained
    import shutil

    shutil.rmtree(store)
    _store(store, seed=7)  # same names and sizes, other content
    line = error_line(run_cli("train", "--out", run, "--resume", "--epochs", "2", "--no-progress"))
    assert line.startswith(f"{store.resolve()}: not the store {run / 'last.pth'} was trained on"), line
    assert "5 of its videos differ from the run's" in line, line


def test_eval_refuses_a_store_missing_a_segment(trained):
    """An incomplete copy: one segment gone, the manifest still lists it."""
    store, run = trained
    segments = sorted(store.glob("*.h5"))
    segments[1].unlink()
    line = error_line(run_cli("eval", "--run", run, "--split", "val"))
    assert line.startswith(f"{store.resolve()}: its manifest.json lists 1 segment(s) the folder lacks "
                           f"({segments[1].name}): an incomplete copy?"), line


def test_eval_refuses_a_store_that_lost_videos_even_without_a_manifest(trained):
    store, run = trained
    segments = sorted(store.glob("*.h5"))
    segments[3].unlink()  # v003, a val video
    (store / "manifest.json").unlink()
    line = error_line(run_cli("eval", "--run", run, "--split", "val"))
    assert line.startswith(f"{store.resolve()}: not the store {run / 'best.pth'} was trained on"), line
    assert "it lacks 1 of the run's 2 val videos (e.g. 'v003.mp4'): an incomplete copy?" in line, line


def test_eval_takes_a_copy_holding_only_the_split_it_scores(trained):
    """Videos of splits the evaluation does not read may be absent (a copy of the test split alone)."""
    store, run = trained
    for segment in sorted(store.glob("*.h5"))[:3]:  # the train videos
        segment.unlink()
    (store / "manifest.json").unlink()
    r = run_cli("eval", "--run", run, "--split", "val", "--constraint", "with")
    assert r.exit_code == 0, r.output


def test_merge_refuses_an_incomplete_copy(tmp_path):
    store = _store(tmp_path / "s.h5")
    sorted(store.glob("*.h5"))[2].unlink()
    line = error_line(run_cli("store", "merge", store, tmp_path / "m.h5"))
    assert "lists 1 segment(s) the folder lacks" in line, line
    assert not (tmp_path / "m.h5").exists()


@pytest.fixture
def writer_elsewhere(tmp_path):
    """A store with a part held by another live process (a `detect` still writing)."""
    store = _store(tmp_path / "s.h5")
    code = textwrap.dedent(f"""
        import sys, time
        sys.path[:0] = [{str(REPO)!r}]
        from store.writer import lock_part
        lock = lock_part({str(store)!r}, "rank1")
        print("READY", flush=True)
        time.sleep(120)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "READY"
        yield store, proc.pid
    finally:
        proc.kill()
        proc.wait()


def test_readers_refuse_a_store_being_written(writer_elsewhere, tmp_path):
    store, pid = writer_elsewhere
    line = error_line(run_cli("store", "merge", store, tmp_path / "m.h5"))
    assert line == (f"{store}: is being written (part 'rank1' by pid {pid}): its videos are not all committed yet; "
                    f"wait for the writer (`detect`) to finish"), line
    assert not (tmp_path / "m.h5").exists()
    line = error_line(run_cli("train", "--out", tmp_path / "run", "--store", store, "--set", "preload=true",
                            "--epochs", "1", "--no-progress"))
    assert "is being written (part 'rank1'" in line, line


def test_stats_says_a_writer_is_active(writer_elsewhere, caplog):
    store, pid = writer_elsewhere
    r = run_cli("stats", store)
    assert r.exit_code == 0, r.output
    assert any(f"part 'rank1' by pid {pid}" in m for m in caplog.messages), caplog.messages


def test_a_relative_store_path_is_the_same_store_from_anywhere(tmp_path, monkeypatch):
    _store(tmp_path / "s.h5")
    monkeypatch.chdir(tmp_path)
    train(_cfg("s.h5"), tmp_path / "run", progress=False, echo=lambda s: None)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    r = run_cli("eval", "--run", tmp_path / "run", "--split", "val", "--constraint", "with")
    assert r.exit_code == 0, r.output
    # resume with the absolute form of the store the run was made with (relative)
    result = train(_cfg(tmp_path / "s.h5", epochs=2), tmp_path / "run", resume=True, progress=False,
                   echo=lambda s: None)
    assert len(result["history"]) == 2


def test_compare_allows_more_epochs_as_train_resume_does(trained):
    store, run = trained
    assert run_state(_cfg(store, epochs=3), run)["epochs"] == 1  # resumable, as `train --resume --epochs 3`
    train(_cfg(store, epochs=2), run, resume=True, progress=False, echo=lambda s: None)
    with pytest.raises(RunMismatch, match=r"holds a run of 2 completed epochs, more than the 1 requested"):
        run_state(_cfg(store, epochs=1), run)


def test_compare_refuses_a_run_of_another_store(trained, tmp_path):
    store, run = trained
    other = _store(tmp_path / "other.h5", seed=3)
    with pytest.raises(RunMismatch, match="store: run"):
        run_state(_cfg(other), run)


def test_compare_takes_a_relative_and_an_absolute_store_as_one(trained, monkeypatch):
    """compare's reuse rule is train --resume's (`TrainingRun.resume_check`): a run folder whose
    config names its store relative (runs made before stores were recorded absolute) is the
    same run when compare is given the absolute path, and the other way round."""
    from common.torch_files import save_torch

    store, run = trained
    monkeypatch.chdir(store.parent)
    config = run / "config.yaml"
    config.write_text(config.read_text().replace(str(store), store.name))
    ckpt = torch.load(run / "last.pth", weights_only=True)  # the config the rule reads first
    save_torch({**ckpt, "config": {**ckpt["config"], "store": store.name}}, run / "last.pth")
    assert run_state(_cfg(store), run)["epochs"] == 1  # saved relative, asked absolute
    assert run_state(_cfg(store.name), run)["epochs"] == 1  # and the other way


def test_compare_reads_the_runs_config_as_train_resume_does(trained):
    """The run's settings are last.pth's (what its weights were trained with), config.yaml's only
    without one, for compare as for train --resume (compare read config.yaml first before): a
    config.yaml edited by hand does not decide."""
    import yaml

    from common.errors import ConfigError
    from stage2_relations.train import prepare_run_folder

    store, run = trained
    config = run / "config.yaml"
    edited = {**yaml.safe_load(config.read_text()), "lr": 0.5}
    config.write_text(yaml.safe_dump(edited, sort_keys=False))
    assert run_state(_cfg(store), run)["epochs"] == 1
    trained_lr = _cfg(store).lr
    with pytest.raises(RunMismatch, match=re.escape(f"another config (lr: run {trained_lr!r}, now 0.5)")):
        run_state(_cfg(store, lr=0.5), run)
    with pytest.raises(ConfigError, match=re.escape(f"(lr: run {trained_lr!r}, now 0.5)")):
        prepare_run_folder(run, _cfg(store, lr=0.5), resume=True, overwrite=False)
    (run / "last.pth").unlink()  # killed in its first epoch: config.yaml is all there is
    with pytest.raises(RunMismatch, match=re.escape(f"another config (lr: run 0.5, now {trained_lr!r})")):
        run_state(_cfg(store), run)


# --- detect and the dataset a store was made from --------------------------------------------


def test_detect_refuses_to_continue_a_store_made_from_another_dataset(tmp_path):
    from stage1_detect.detectors import build_detector, save_detector
    from synth import SynthConfig, generate_synthetic_ag

    small = dict(videos=4, frames_per_video=4, width=160, height=120)
    generate_synthetic_ag(tmp_path / "a", SynthConfig(**small, seed=0), progress=False)
    generate_synthetic_ag(tmp_path / "b", SynthConfig(**small, seed=1), progress=False)
    torch.manual_seed(0)
    save_detector(build_detector("small", {"min_size": 120, "max_size": 160}), tmp_path / "det.pth")
    store = tmp_path / "s.h5"
    args = ("--store", store, "--weights", tmp_path / "det.pth", "--max-videos", "1", "--workers", "0")
    r = run_cli("detect", tmp_path / "a", *args)
    assert r.exit_code == 0, r.output
    before = sorted(p.name for p in store.iterdir())
    line = error_line(run_cli("detect", tmp_path / "b", *args))
    was = (tmp_path / "a").resolve()
    assert line.startswith(f"{store}: made from another dataset ({was}, annotations sha256 "), line
    assert f"not {(tmp_path / 'b').resolve()}" in line, line
    assert sorted(p.name for p in store.iterdir()) == before
    # the same dataset at another path (a different mount) continues
    os.rename(tmp_path / "a", tmp_path / "a2")
    r = run_cli("detect", tmp_path / "a2", *args)
    assert r.exit_code == 0, r.output


# --- one run-folder rule ---------------------------------------------------------------------


def test_train_detector_refuses_a_finished_run_without_resume(tmp_path):
    from tests.helpers.ag import fixture_annotations, write_root

    root = write_root(tmp_path / "ag", *fixture_annotations())
    out = tmp_path / "det"
    out.mkdir()
    (out / "detector.pth").write_bytes(b"the user's trained detector")
    line = error_line(run_cli("train-detector", root, "--out", out, "--epochs", "1"))
    assert line == (f"{out}: holds a run (detector.pth): continue it with --resume, start it again with "
                    f"--overwrite, or choose another --out"), line
    assert (out / "detector.pth").read_bytes() == b"the user's trained detector"


def test_overwrite_removes_only_the_runs_files(tmp_path):
    (tmp_path / "last.pth").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("mine")
    assert claim_run_folder(tmp_path, ("last.pth", "log.csv"), resume=False, overwrite=True) == []
    assert not (tmp_path / "last.pth").exists() and (tmp_path / "notes.txt").read_text() == "mine"
    with pytest.raises(RunFolderError, match="give --resume or --overwrite, not both"):
        claim_run_folder(tmp_path, ("last.pth",), resume=True, overwrite=True)


def test_eval_save_predictions_refuses_to_replace_the_checkpoint(trained, tmp_path):
    _, run = trained
    before = (run / "best.pth").read_bytes()
    line = error_line(run_cli("eval", "--run", run, "--split", "val", "--save-predictions", run / "best.pth"))
    assert line == (f"{run / 'best.pth'}: --save-predictions names the input {run / 'best.pth'}; writing there "
                    f"would replace it: choose another path"), line
    assert (run / "best.pth").read_bytes() == before
    (tmp_path / "mine.npz").write_bytes(b"a user's file")
    line = error_line(run_cli("eval", "--run", run, "--split", "val", "--save-predictions", tmp_path / "mine.npz"))
    assert line.startswith(f"{tmp_path / 'mine.npz'}: exists and is not a predictions file (.npz)"), line
    # an earlier predictions file is replaced, as rerunning the command asks
    pred = tmp_path / "pred.npz"
    for _ in range(2):
        r = run_cli("eval", "--run", run, "--split", "val", "--constraint", "with", "--save-predictions", pred)
        assert r.exit_code == 0, r.output


def test_convert_refuses_dst_equal_to_src(tmp_path):
    src = tmp_path / "faster_rcnn_ag.pth"
    torch.save({"model": {}}, src)
    before = src.read_bytes()
    line = error_line(run_cli("convert-ag-detector", src, src))
    assert line == f"{src}: DST names the input {src}; writing there would replace it: choose another path", line
    assert src.read_bytes() == before
    (tmp_path / "mine.pth").write_bytes(b"not a conversion")
    line = error_line(run_cli("convert-ag-detector", src, tmp_path / "mine.pth"))
    assert line.startswith(f"{tmp_path / 'mine.pth'}: exists and is not a converted detector checkpoint"), line


def test_synth_keeps_a_users_file_in_an_earlier_dataset(tmp_path):
    out = tmp_path / "ag"
    args = ("synth", "--out", out, "--videos", "2", "--frames", "3", "--size", "160x120", "--no-png")
    assert run_cli(*args).exit_code == 0
    notes = out / "annotations" / "my_notes.txt"
    notes.write_text("mine")
    line = error_line(run_cli(*args))
    assert line.startswith(f"{out}: an earlier synthetic dataset, but annotations/my_notes.txt is not one synth "
                           f"writes"), line
    assert notes.read_text() == "mine"
    notes.unlink()
    assert run_cli(*args).exit_code == 0  # an earlier dataset of synth's own files only is regenerated
