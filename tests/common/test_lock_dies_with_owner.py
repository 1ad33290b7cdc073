"""A lock dies with its owner (issue 19): a SIGKILL of the process that holds a store part's or a
run folder's lock, and of it alone (as the kernel's OOM killer sends it), lets a rerun take the
lock at once, even while the owner's forked children (DataLoader workers) live on; and a
DataLoader worker started with :func:`common.files.die_with_parent` dies with its parent.

Before, a forked worker shared the lock's open file description and held the ``flock`` after its
parent died: every rerun was refused, naming the dead process, until the workers noticed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from common.files import LockedError, WriterLock

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork and prctl: Linux")


def _start(code: str, *args: str) -> tuple[subprocess.Popen, list[str]]:
    """Run ``code`` in a new Python process; it prints its children's pids on one line."""
    prelude = f"import sys, os, time; sys.path[:0] = [{str(REPO)!r}]\n"
    proc = subprocess.Popen([sys.executable, "-c", prelude + textwrap.dedent(code), *args], stdout=subprocess.PIPE,
                            text=True)
    line = proc.stdout.readline().split()
    assert line, "the holder printed nothing"
    return proc, line


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ")[-1][:1] not in ("Z", "X")  # a zombie is dead
    except FileNotFoundError:
        return False


def _kill_main_only(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def test_a_forked_child_does_not_keep_the_lock_of_its_killed_parent(tmp_path):
    lock_file = tmp_path / ".rank0.lock"
    proc, pids = _start("""
        import multiprocessing as mp
        from common.files import WriterLock
        lock = WriterLock(sys.argv[1], folder=sys.argv[1], what="part 'rank0' is being written").acquire()
        ready = mp.get_context("fork").Event()

        def work():  # runs after the fork's handlers, as a DataLoader worker's loop does
            ready.set()
            time.sleep(120)

        child = mp.get_context("fork").Process(target=work)
        child.start()
        ready.wait(30)
        print(child.pid, flush=True)
        time.sleep(120)
    """, str(lock_file))
    child = int(pids[0])
    try:
        with pytest.raises(LockedError):  # held while the owner lives
            WriterLock(lock_file, folder=tmp_path, what="x").acquire()
        _kill_main_only(proc)
        assert _alive(child), "the test needs the child alive after its parent's death"
        lock = WriterLock(lock_file, folder=tmp_path, what="x").acquire()  # before: LockedError
        assert lock.held
        lock.release()
    finally:
        if _alive(child):
            os.kill(child, signal.SIGKILL)


def test_a_dataloader_worker_dies_with_its_parent(tmp_path):
    proc, pids = _start("""
        import functools
        from torch.utils.data import DataLoader, Dataset
        from common.files import die_with_parent

        class Slow(Dataset):
            def __len__(self):
                return 100
            def __getitem__(self, i):
                time.sleep(0.05)
                return os.getpid()

        loader = DataLoader(Slow(), batch_size=None, num_workers=2, multiprocessing_context="fork",
                            worker_init_fn=functools.partial(die_with_parent, parent=os.getpid()))
        it = iter(loader)
        seen = {next(it) for _ in range(6)}
        print(*sorted(seen), flush=True)
        time.sleep(120)
    """)
    workers = [int(p) for p in pids]
    assert workers and all(_alive(w) for w in workers)
    _kill_main_only(proc)
    deadline = time.time() + 10
    while time.time() < deadline and any(_alive(w) for w in workers):
        time.sleep(0.1)
    left = [w for w in workers if _alive(w)]
    for w in left:
        os.kill(w, signal.SIGKILL)
    assert not left, f"workers {left} outlived their parent"


def test_die_with_parent_exits_a_worker_whose_parent_is_already_gone():
    code = textwrap.dedent(f"""
        import sys; sys.path[:0] = [{str(REPO)!r}]
        from common.files import die_with_parent
        die_with_parent(0, parent=1)  # this process's parent is not pid 1
        print("survived")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 1 and "survived" not in out.stdout and not out.stderr, out.stderr


def test_a_readers_instant_shared_lock_does_not_fail_a_starting_writer(tmp_path):
    """`open_store` asks `lock_holder` whether a writer is active by taking a shared lock for an
    instant; a writer starting in that instant waits for it instead of failing."""
    import fcntl
    import threading

    lock_file = tmp_path / ".rank0.lock"
    lock_file.write_text("{}")
    reader = os.open(lock_file, os.O_RDONLY)
    fcntl.flock(reader, fcntl.LOCK_SH)  # the reader's instant, made 50 ms long
    threading.Timer(0.05, lambda: fcntl.flock(reader, fcntl.LOCK_UN)).start()
    try:
        lock = WriterLock(lock_file, folder=tmp_path, what="part 'rank0' is being written").acquire()
        lock.release()
    finally:
        os.close(reader)
    # A lock held for longer is another writer's: refused, naming it.
    holder = WriterLock(lock_file, folder=tmp_path, what="part 'rank0' is being written").acquire()
    try:
        with pytest.raises(LockedError, match="is being written by another process"):
            WriterLock(lock_file, folder=tmp_path, what="part 'rank0' is being written").acquire()
    finally:
        holder.release()
