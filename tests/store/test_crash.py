"""Crash safety: a writer killed with SIGKILL mid-video loses only the uncommitted videos."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from store import StoreWriter, check_store, open_store
from tests.helpers.store import BACKEND_SUFFIXES, assert_store_holds, small_meta, small_videos, write_store

HELPER = Path(__file__).with_name("crash_writer.py")
N_VIDEOS, N_COMMIT = 5, 3


def _run_until_hanging(path: Path) -> list[str]:
    proc = subprocess.Popen([sys.executable, str(HELPER), str(path), str(N_VIDEOS), str(N_COMMIT)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line.strip())
            if line.startswith("HANGING"):
                break
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read()
    return lines


@pytest.mark.parametrize("suffix", BACKEND_SUFFIXES)
def test_sigkill_mid_video_then_resume(tmp_path, suffix):
    meta = small_meta()
    videos = small_videos(meta, N_VIDEOS)
    path = tmp_path / f"crashed{suffix}"
    lines = _run_until_hanging(path)
    assert lines == [f"COMMITTED {k}" for k in range(1, N_COMMIT + 1)] + ["HANGING"]
    # The half-written segment is there, under its temporary name.
    leftovers = [p.name for p in path.iterdir() if ".tmp-" in p.name and not p.name.startswith("manifest")]
    assert len(leftovers) == 1, sorted(p.name for p in path.iterdir())

    assert check_store(path) == []
    assert_store_holds(path, videos[:N_COMMIT])

    with StoreWriter(path, meta, segment_bytes=0) as w:
        done = w.committed_videos()
        assert done == {v.name for v in videos[:N_COMMIT]}
        for v in videos:
            if v.name not in done:
                w.write_video(v)
    assert not [p for p in path.iterdir() if ".tmp-" in p.name]
    assert check_store(path) == []

    clean = write_store(tmp_path / f"clean{suffix}", meta, videos, segment_bytes=0)
    with open_store(path) as a, open_store(clean) as b:
        assert a.videos() == b.videos()
        for v in a.videos():
            assert a.read_video(v).differences(b.read_video(v)) == []
