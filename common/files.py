"""Files that are written whole or not at all, and one writer per folder (PyTorch files:
:mod:`common.torch_files`).

* :func:`atomic_write` (and :func:`write_text`, :func:`write_json`, :func:`copy_file`): the
  content goes to a temporary file in the same folder (``.NAME.tmp-PID``), is flushed and
  fsynced, then renamed over ``NAME`` and the folder fsynced. A reader, or a process resumed
  after a crash, sees the old file or the new one, never a part. :func:`remove_temps` removes
  the temporaries a killed writer left, by their exact names.
* :class:`WriterLock`: an exclusive ``fcntl.flock`` on a lock file. The OS releases it when the
  process dies (even by SIGKILL), so a stale lock never blocks; a second writer fails at once
  with :class:`LockedError` naming the folder and the holder's pid. The holder records the
  temporary files it creates in the lock file, so the next holder removes exactly those a
  crash left (and nothing that merely looks like one). The lock is the holder's alone: a
  forked child (a DataLoader worker) closes its copy at once (:func:`os.register_at_fork`), so
  a kill of the holder alone (the OOM killer's way) frees it, whatever its children do; and
  :func:`die_with_parent` makes a DataLoader worker die with the process that started it.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import sys
import weakref
from pathlib import Path
from typing import IO, Any, Iterator

from common.errors import UserError

_TEMP = re.compile(r"^\.(?P<name>.+)\.tmp-(?P<pid>\d+)$")


def fsync_dir(path: Path | str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_path(path: Path | str) -> Path:
    """The temporary name :func:`atomic_write` uses for ``path`` in this process."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def errno_in_message(e: BaseException) -> int | None:
    """The errno that HDF5 writes inside its error messages (``"... errno = 28, ..."``), if any."""
    m = re.search(r"errno = (\d+)", str(e))
    return int(m.group(1)) if m else None


def describe_os_error(e: BaseException) -> str:
    """``"No space left on device (errno 28)"``: the reason of an OSError without the path (also
    for h5py's, which put the errno inside a long message)."""
    code = getattr(e, "errno", None) or errno_in_message(e)
    if code:
        return f"{os.strerror(code)} (errno {code})"
    text = str(e).strip().splitlines()
    return text[0][:200] if text else type(e).__name__


@contextlib.contextmanager
def atomic_write(path: Path | str, mode: str = "wb", tmp: Path | None = None) -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path`` for writing; on a clean exit, fsync it and rename it
    over ``path``. On an exception the temporary file is removed and ``path`` is untouched.
    ``tmp`` names the temporary (default :func:`temp_path`), for a writer that records it."""
    path = Path(path)
    tmp = temp_path(path) if tmp is None else Path(tmp)
    try:
        with open(tmp, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if e.filename is None:  # a write's error names no file ("File too large"): name the one being written
            raise OSError(e.errno, e.strerror or describe_os_error(e), str(path)) from e
        raise
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


def write_text(path: Path | str, text: str) -> None:
    with atomic_write(path, "w") as fh:
        fh.write(text)


def write_json(path: Path | str, payload: Any, **kwargs: Any) -> None:
    write_text(path, json.dumps(payload, **kwargs))


def copy_file(src: Path | str, dst: Path | str) -> None:
    """Copy ``src`` to ``dst`` whole or not at all."""
    with open(src, "rb") as fin, atomic_write(dst) as fout:
        shutil.copyfileobj(fin, fout, 1 << 20)


def remove_temps(folder: Path | str, names: set[str] | frozenset[str]) -> list[Path]:
    """Remove the temporaries of :func:`atomic_write` for the files ``names`` in ``folder``
    (``.NAME.tmp-PID``) whose process is gone; returns what was removed."""
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        m = _TEMP.match(p.name)
        if m and m["name"] in names and not _alive(int(m["pid"])):
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --- one writer per folder ----------------------------------------------------------------


class LockedError(UserError):
    """Another process holds the lock of a folder (or of a part of a store)."""


_HELD: "weakref.WeakSet[WriterLock]" = weakref.WeakSet()
"""The locks this process holds, closed in every child it forks."""


def _drop_inherited_locks() -> None:
    """In a forked child: close the copies of the parent's lock descriptors. A ``flock`` belongs
    to the open file description, which a fork shares: a child that kept its copy would hold the
    lock after its parent died (a DataLoader worker outliving a SIGKILLed ``detect``, every rerun
    refused). Closing the copy leaves the parent's lock as it is."""
    for lock in list(_HELD):
        if lock._fd is not None:
            with contextlib.suppress(OSError):
                os.close(lock._fd)
            lock._fd = None
    _HELD.clear()


os.register_at_fork(after_in_child=_drop_inherited_locks)

_PR_SET_PDEATHSIG = 1


def die_with_parent(worker_id: int = 0, *, parent: int | None = None) -> None:
    """A DataLoader ``worker_init_fn`` (``functools.partial(die_with_parent, parent=os.getpid())``):
    on Linux the kernel SIGKILLs this worker when the thread that started it dies (prctl
    ``PR_SET_PDEATHSIG``), and a worker whose parent is already gone exits now. Elsewhere it does
    nothing (torch's own watchdog notices a dead parent within seconds when the worker is idle)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    if parent is not None and os.getppid() != parent:  # it died before the prctl
        os._exit(1)


class WriterLock:
    """An exclusive lock that dies with its process, held while writing ``folder``.

    ``lock_file`` holds JSON: the holder's pid, host, start time and the temporary files it
    has created and not yet renamed (:meth:`record` / :meth:`forget`). :attr:`previous` is what
    the previous holder left there: after a crash, its unfinished temporaries.
    """

    def __init__(self, lock_file: Path | str, *, folder: Path | str, what: str,
                 remove_on_release: bool = False) -> None:
        self.lock_file = Path(lock_file)
        self.folder = Path(folder)
        self.what = what
        self.remove_on_release = remove_on_release
        self.previous: dict[str, Any] = {}
        self._fd: int | None = None
        self._state: dict[str, Any] = {}

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> "WriterLock":
        while True:
            fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                _flock_exclusive(fd)
            except OSError as e:
                holder = _read_state(fd)
                os.close(fd)
                if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise
                pid = holder.get("pid", "?")
                host = holder.get("host")
                since = holder.get("since")
                raise LockedError(
                    f"{self.folder}: {self.what} by another process (pid {pid}"
                    f"{' on ' + host if host and host != socket.gethostname() else ''}"
                    f"{', since ' + since if since else ''}); wait for it to finish or stop it") from None
            # The file may have been removed (remove_on_release) between open and flock.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.lock_file).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        self._fd = fd
        _HELD.add(self)
        self.previous = _read_state(fd)
        self._state = {"pid": os.getpid(), "host": socket.gethostname(),
                       "since": _dt.datetime.now().isoformat(timespec="seconds"), "temps": []}
        self._save()
        return self

    def record(self, name: str) -> None:
        """Note that ``name`` (in :attr:`folder`) is a temporary this process is about to create."""
        self._state["temps"].append(name)
        self._save()

    def forget(self, name: str) -> None:
        """``name`` was renamed into place or removed."""
        if name in self._state["temps"]:
            self._state["temps"].remove(name)
            self._save()

    def previous_temps(self) -> list[str]:
        """The temporaries the previous holder recorded and did not finish (plain names)."""
        temps = self.previous.get("temps", [])
        return [t for t in temps if isinstance(t, str) and "/" not in t and t not in ("", ".", "..")]

    def _save(self) -> None:
        if self._fd is None:
            return
        data = json.dumps(self._state).encode()
        os.pwrite(self._fd, data, 0)
        os.ftruncate(self._fd, len(data))

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            if self.remove_on_release:
                with contextlib.suppress(OSError):
                    self.lock_file.unlink()
            else:
                self._state["temps"] = []
                self._state["pid"] = None
                with contextlib.suppress(OSError):
                    self._save()
        finally:
            _HELD.discard(self)
            os.close(self._fd)
            self._fd = None

    def __del__(self) -> None:  # an unreleased lock (an exception before its owner took it) dies with it
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = None

    def __enter__(self) -> "WriterLock":
        return self.acquire() if not self.held else self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def __getstate__(self) -> dict[str, Any]:  # a DataLoader worker does not hold the lock
        d = dict(self.__dict__)
        d["_fd"] = None
        return d


def _flock_exclusive(fd: int, tries: int = 20, pause: float = 0.01) -> None:
    """``LOCK_EX | LOCK_NB``, tried again for a moment: a reader's :func:`lock_holder` holds a
    shared lock for an instant, which must not make a starting writer fail. A lock still held
    after ``tries`` is another writer's (the caller's OSError)."""
    import time

    for attempt in range(tries):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK) or attempt == tries - 1:
                raise
            time.sleep(pause)


def lock_holder(lock_file: Path | str) -> dict[str, Any] | None:
    """The state (pid, host, since) of the process holding :class:`WriterLock` ``lock_file`` now,
    or None when none does (or this process does). Takes a shared lock for an instant, so it
    works on a read-only copy too; never blocks."""
    try:
        fd = os.open(lock_file, os.O_RDONLY)
    except OSError:
        return None
    try:
        state = _read_state(fd)
        if state.get("pid") == os.getpid():
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                return state or {"pid": "?"}
            return None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _read_state(fd: int) -> dict[str, Any]:
    try:
        data = os.pread(fd, 1 << 16, 0)
        state = json.loads(data.decode()) if data else {}
        return state if isinstance(state, dict) else {}
    except (OSError, ValueError):
        return {}


__all__ = ["LockedError", "WriterLock", "atomic_write", "copy_file", "describe_os_error", "die_with_parent", "fsync_dir", "remove_temps", "temp_path", "write_json", "write_text"]


def sha256_of(path: Path | str, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file (a detector's weights as the store records them, a checkpoint)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()
