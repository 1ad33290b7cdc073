"""Thread counts (``common.threads``): the default from the cores a process may use, and
``train`` recording the count it ran with, which ``--resume`` may change."""

from __future__ import annotations

import json

import pytest
import torch

from common import threads
from common.threads import available_cores, default_threads, resolve_threads, torch_threads
from tests.helpers.stage2 import TINY_HEAD, one_thread, write_learnable_store

_one_thread = pytest.fixture(autouse=True, scope="module")(one_thread)


@pytest.mark.parametrize("cores, busy, local, workers, current, want", [
    (8, 0.0, 1, 0, 8, 8),     # a whole, quiet machine, no workers: every core
    (8, 0.0, 2, 1, 8, 3),     # two ranks share 8 cores, each gives one core to its worker
    (2, 0.0, 1, 4, 2, 1),     # more workers than cores: still one thread
    (16, 0.0, 1, 0, 4, 4),    # never more than torch's setting (OMP_NUM_THREADS)
    (2, 0.5, 1, 0, 2, 1),     # a 2-core machine with one other busy process: one thread
    (2, 1.0, 1, 0, 2, 1),     # a loaded machine: one thread, not two spinning against the load
    (8, 0.25, 1, 0, 8, 6),
])
def test_default_threads_by_hand(cores, busy, local, workers, current, want):
    assert default_threads(workers, cores=cores, busy=busy, local_processes=local, current=current) == want


def test_busy_fraction_is_the_load_over_the_cpus(monkeypatch):
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (3.0, 0.0, 0.0))
    monkeypatch.setattr(threads.os, "cpu_count", lambda: 4)
    assert threads.busy_fraction() == 0.75
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (9.0, 0.0, 0.0))
    assert threads.busy_fraction() == 1.0


def test_the_default_does_not_follow_the_load(monkeypatch):
    """The same command on the same machine picks the same count, loaded or not (results
    differ in the last bits with it): the load counts only when given."""
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (8.0, 0.0, 0.0))
    monkeypatch.setattr(threads, "available_cores", lambda: 4)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert default_threads(0, current=64) == 4
    assert default_threads(1, current=64) == 3
    assert default_threads(0, busy=threads.busy_fraction(), current=64) == 1


def test_available_cores_reads_affinity_and_cgroup_quota(monkeypatch, tmp_path):
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.setattr(threads, "CPU_MAX", tmp_path / "absent")
    assert available_cores() == 4
    quota = tmp_path / "cpu.max"
    quota.write_text("150000 100000\n")  # 1.5 cores -> 2
    monkeypatch.setattr(threads, "CPU_MAX", quota)
    assert available_cores() == 2
    quota.write_text("max 100000\n")
    assert available_cores() == 4


def test_local_world_size_shares_the_cores(monkeypatch):
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert default_threads(0, cores=8, busy=0.0, current=64) == 2
    assert resolve_threads(3) == 3  # an explicit count is taken as it is


def test_torch_threads_sets_and_restores():
    before = torch.get_num_threads()
    with torch_threads(2) as n:
        assert n == 2 and torch.get_num_threads() == 2
    assert torch.get_num_threads() == before


def test_train_records_threads_and_resume_may_change_them(tmp_path):
    from stage2_relations.train import TrainConfig, train

    store = write_learnable_store(tmp_path / "learn.h5")
    cfg = TrainConfig(store=str(store), mode="predcls", head="sttran", head_cfg=TINY_HEAD, epochs=1, lr=3e-3,
                      videos_per_batch=2, preload=True, device="cpu", threads=1, max_videos=4, val_max_videos=2)
    lines: list[str] = []
    train(cfg, tmp_path / "run", progress=False, echo=lines.append)
    assert "1 threads" in lines[0]
    assert json.loads((tmp_path / "run" / "run.json").read_text())["threads"] == 1
    resumed = train(TrainConfig(**{**cfg.to_dict(), "epochs": 2, "threads": 2}), tmp_path / "run", resume=True,
                    progress=False, echo=lines.append)
    assert [row["threads"] for row in resumed["history"]] == [1, 2]
    assert json.loads((tmp_path / "run" / "run.json").read_text())["threads"] == 2
    assert torch.get_num_threads() == 1  # train leaves the caller's count as it was
