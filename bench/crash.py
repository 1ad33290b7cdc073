"""Crash benchmark: SIGKILL `detect` and `train` at random moments, resume, compare.

For each command, one uninterrupted reference run, then ``--kills`` trials (20 by default).
A trial starts the command in its own process group and kills the group (the command and its
DataLoader workers) with SIGKILL at a random moment of one of three kinds (each about a third
of the trials, in random order):

* ``time``: after a delay drawn uniformly over the reference run's working time (from a second
  before its first write to its end; the seconds before are imports and reading inputs); a run
  that ends before its kill (a shared machine runs faster or slower than the reference) is
  started again with a delay drawn over its own length, up to 3 attempts;
* ``fsync``: inside a file write, when the n-th ``os.fsync`` is called (the data is in the
  temporary file, not yet renamed into place: a segment, the manifest, last.pth, best.pth, a
  log, the config), n drawn over the count of the reference run;
* ``rename``: between two writes, right after the n-th ``os.replace`` / ``os.rename`` returns
  (e.g. last.pth in place, best.pth and the logs not yet).

Then ``--main-kills`` trials (10 by default) of a fourth kind:

* ``main``: SIGKILL of the command's main process alone, as the kernel's OOM killer sends it,
  after a delay drawn as for ``time``, while its DataLoader workers (``detect --workers 1``,
  ``train --set num_workers=1``) may live on. The rerun starts at once: it must not be refused
  for a lock that a worker still holds, and no process of the killed command may be left when
  it ends (``orphans``).

The fsync and rename kinds run the command through this script's ``_child`` mode, which wraps those two
functions; the command itself is unchanged. Then the command is run again to completion (a
rerun of `detect`, `train --resume`), and the result must equal the reference:

* detect: the same videos, each :meth:`store.VideoRecord.equals` the reference's, ``store
  check`` clean, no temporary file left;
* train: last.pth's model weights bit for bit, and the log rows (log.json and last.pth's
  history, without the timing columns), best.pth of the same epoch.

Data: ``cli.py synth`` (6 videos of 5 frames, 160x120), a random-weights ``small`` detector
(:func:`stage1_detect.detectors.save_detector`), the tiny STTran recipe
(configs/demo_sttran.yaml, SGDET, 3 epochs, dropout on). Every run uses one torch thread, so
runs are bit-for-bit comparable.

    python bench/crash.py                 # 20 kills each and 10 of the main process alone, about 25 min
    python bench/crash.py --kills 0 --main-kills 10   # the main-process kills only, about 12 min

Figures go to stdout and ``bench/results/crash.json`` (work files under bench/results/crash_work).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TIMING = ("time_s", "train_fps", "val_fps")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}


# --- the child: the CLI with os.fsync / os.replace wrapped -----------------------------------


def _child(kind: str, n: int, count_file: str, args: list[str]) -> None:
    """Run ``cli.py ARGS``; kill the own process group at the n-th ``kind`` event (n = 0: count
    the events and write the counts to ``count_file`` at exit)."""
    import atexit

    counts = {"fsync": 0, "rename": 0}

    def kill() -> None:
        os.killpg(os.getpgid(0), signal.SIGKILL)

    real_fsync, real_replace, real_rename = os.fsync, os.replace, os.rename

    def fsync(fd):  # noqa: ANN001
        counts["fsync"] += 1
        counts.setdefault("first_fsync_at", time.time())
        if kind == "fsync" and counts["fsync"] == n:
            kill()
        return real_fsync(fd)

    def after_rename(real):  # noqa: ANN001
        def wrapped(*a, **k):  # noqa: ANN002, ANN003
            out = real(*a, **k)
            counts["rename"] += 1
            if kind == "rename" and counts["rename"] == n:
                kill()
            return out
        return wrapped

    os.fsync = fsync
    os.replace = after_rename(real_replace)
    os.rename = after_rename(real_rename)
    counting = n == 0 and count_file != "-"  # "-": a plain run, nothing to record
    if counting:
        atexit.register(lambda: Path(count_file).write_text(json.dumps(counts)))
    import torch

    torch.set_num_threads(1)
    sys.argv = ["cli.py", *args]
    from cli import main

    try:
        main(standalone_mode=False)
    finally:
        if counting:
            Path(count_file).write_text(json.dumps(counts))


# --- the parent -------------------------------------------------------------------------------


def _cli(args: list[str], *, kind: str = "none", n: int = 0, count_file: str = "", timeout: float = 900) -> int:
    cmd = [sys.executable, str(Path(__file__).resolve()), "_child", kind, str(n), count_file or "-", *args]
    proc = subprocess.run(cmd, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=timeout, start_new_session=True)
    if proc.returncode not in (0, -signal.SIGKILL):
        raise RuntimeError(f"{' '.join(args)} exited {proc.returncode}:\n{proc.stdout[-3000:]}")
    return proc.returncode


def _killed_after(args: list[str], delay: float, *, main_only: bool = False) -> tuple[int, float, int]:
    """Exit code of the command killed after ``delay`` seconds, its seconds alive, and its process
    group's id. ``main_only``: SIGKILL its main process alone (as the OOM killer does), not its
    group (its DataLoader workers, which may outlive it)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "_child", "none", "0", "-", *args]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        proc.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL) if main_only else os.killpg(proc.pid, signal.SIGKILL)
    return proc.wait(), time.perf_counter() - t0, proc.pid


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _counted(args: list[str], work: Path) -> tuple[float, dict[str, int]]:
    """Duration of an uninterrupted run and its counts of fsync and renames; ``start`` is when
    it first wrote (the seconds before are imports and reading the inputs)."""
    count_file = work / "counts.json"
    t0, wall0 = time.perf_counter(), time.time()
    _cli(args, n=0, count_file=str(count_file))
    counts = json.loads(count_file.read_text())
    counts["start"] = max(0.0, counts.pop("first_fsync_at", wall0) - wall0 - 1.0)
    return time.perf_counter() - t0, counts


def _kinds(rng: random.Random, n: int) -> list[str]:
    """n kinds of kill, the three about equally often, in random order."""
    kinds = (["time", "fsync", "rename"] * n)[:n]
    rng.shuffle(kinds)
    return kinds


def _trial(rng: random.Random, kind: str, args: list[str], duration: float, counts: dict[str, int],
           reset: Callable[[], None]) -> dict:
    if kind in ("time", "main"):
        # The reference's duration is one sample of a shared machine's speed: a run that ends
        # before its kill is started again (``reset``), its delay drawn over that run's own length.
        for attempt in range(1, 4):
            delay = rng.uniform(counts["start"], duration)
            rc, alive, pgid = _killed_after(args, delay, main_only=kind == "main")
            if rc == -signal.SIGKILL:
                break
            reset()
            duration = min(duration, alive)
        trial = {"kind": kind, "at": round(delay, 2), "attempts": attempt, "killed": rc == -signal.SIGKILL}
        return {**trial, "pgid": pgid} if kind == "main" else trial
    n = rng.randint(1, max(1, counts[kind]))
    rc = _cli(args, kind=kind, n=n)
    return {"kind": kind, "at": n, "of": counts[kind], "killed": rc == -signal.SIGKILL}


def _kill_and_resume(command: str, rng: random.Random, kills: int, args_of: Callable[[Path], list[str]],
                     target: Path, duration: float, counts: dict[str, int],
                     same: Callable[[Path], str], kinds: list[str] | None = None) -> list[dict]:
    """``kills`` trials: run ``command`` into a fresh ``target``, kill it (:func:`_trial`), run it
    again to completion, and compare with the reference (``same`` returns a problem or "").
    ``kinds``: the kinds of kill (default: :func:`_kinds`). After a ``main`` kill the rerun starts
    at once; a refusal (a lock still held) is a failed trial, as is a process of the killed
    command alive when the rerun ends."""
    trials = []
    for k, kind in enumerate(kinds or _kinds(rng, kills)):
        shutil.rmtree(target, ignore_errors=True)
        trial = _trial(rng, kind, args_of(target), duration, counts,
                       reset=lambda: shutil.rmtree(target, ignore_errors=True))
        pgid = trial.pop("pgid", None)
        try:
            _cli(args_of(target))
            trial["problem"] = same(target)
        except RuntimeError as e:  # the rerun failed, e.g. refused: a lock still held
            trial["problem"] = f"rerun failed: {str(e).strip().splitlines()[-1][:300]}"
        if pgid is not None:
            trial["orphans"] = _group_alive(pgid)
            if trial["orphans"]:
                os.killpg(pgid, signal.SIGKILL)
                trial["problem"] = trial["problem"] or "a process of the killed command outlived the rerun"
        trial["ok"] = not trial["problem"]
        trials.append(trial)
        print(f"{command} kill {k + 1:2d}: {trial}", flush=True)
    return trials


def _same_store(path: Path, reference: Path) -> str:
    from store import check_store, open_store

    problems = check_store(path)
    if problems:
        return f"store check: {problems[0]}"
    leftovers = [p.name for p in path.iterdir() if ".tmp-" in p.name]
    if leftovers:
        return f"leftover temporaries {leftovers}"
    with open_store(path) as a, open_store(reference) as b:
        if sorted(a.videos()) != sorted(b.videos()):
            return f"videos differ: {sorted(set(a.videos()) ^ set(b.videos()))}"
        for v in b.videos():
            if not a.read_video(v).equals(b.read_video(v)):
                return f"video {v} differs in {a.read_video(v).differences(b.read_video(v))}"
    return ""


def _rows(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TIMING} for row in history]


def _same_run(run: Path, reference: Path) -> str:
    import torch

    from common.torch_files import load_torch

    a, b = (load_torch(p / "last.pth") for p in (run, reference))
    if a["epoch"] != b["epoch"]:
        return f"epoch {a['epoch']} vs {b['epoch']}"
    for k in b["model"]:
        if not torch.equal(a["model"][k], b["model"][k]):
            return f"weights differ: {k}"
    if _rows(a["history"]) != _rows(b["history"]):
        return "last.pth history differs"
    logged = json.loads((run / "log.json").read_text())
    if _rows(logged) != _rows(b["history"]):
        return "log.json differs from the reference's rows"
    csv_rows = (run / "log.csv").read_text().splitlines()
    if len(csv_rows) != 1 + len(b["history"]):
        return f"log.csv has {len(csv_rows) - 1} rows"
    best_a, best_b = (load_torch(p / "best.pth")["epoch"]
                      for p in (run, reference))
    if best_a != best_b:
        return f"best.pth of epoch {best_a}, the reference's {best_b}"
    leftovers = [p.name for p in run.iterdir() if ".tmp-" in p.name]
    if leftovers:
        return f"leftover temporaries {leftovers}"
    return ""


def setup(work: Path) -> dict[str, Path]:
    import torch

    from stage1_detect.detectors import build_detector, save_detector

    root = work / "ag"
    if not (root / "annotations").exists():
        subprocess.run([sys.executable, "cli.py", "synth", "--out", str(root), "--videos", "6", "--frames", "5",
                        "--size", "160x120", "--seed", "3"], cwd=REPO, env=ENV, check=True, capture_output=True)
    weights = work / "detector.pth"
    if not weights.exists():
        torch.manual_seed(0)
        detector = build_detector("small", {"score_thresh": 0.0, "max_detections": 6,
                                            "rpn_post_nms_top_n_test": 8, "min_size": 120, "max_size": 160})
        with torch.no_grad():
            detector.model.roi_heads.box_predictor.cls_score.bias[1] += 3.0  # a person box in every frame
        save_detector(detector, weights)
    return {"root": root, "weights": weights}


def main() -> None:
    ap = argparse.ArgumentParser(description="SIGKILL detect and train at random moments; resumed == uninterrupted")
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--main-kills", type=int, default=10,
                    help="trials killing the main process alone (the OOM killer's way), per command")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, default=Path(__file__).parent / "results" / "crash_work")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "crash.json")
    ap.add_argument("--only", choices=["detect", "train"], default=None)
    args = ap.parse_args()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    data = setup(work)
    rng = random.Random(args.seed)
    results: dict[str, list[dict]] = {}
    started = time.perf_counter()

    def detect_args(store: Path) -> list[str]:
        return ["detect", str(data["root"]), "--store", str(store), "--weights", str(data["weights"]),
                "--segment-mb", "0", "--workers", "1", "--frames", "png"]

    reference = work / "reference.h5"
    if reference.exists():
        shutil.rmtree(reference)
    duration, counts = _counted(detect_args(reference), work)
    print(f"detect reference: {duration:.1f} s (first write at {counts['start'] + 1:.1f} s), {counts['fsync']} fsync "
          f"and {counts['rename']} renames", flush=True)
    if args.only in (None, "detect"):
        # the rerun continues what was committed
        results["detect"] = _kill_and_resume("detect", rng, args.kills, detect_args, work / "trial.h5", duration,
                                             counts, same=lambda store: _same_store(store, reference))
        results["detect_main"] = _kill_and_resume("detect_main", rng, args.main_kills, detect_args, work / "trial.h5",
                                                  duration, counts, same=lambda store: _same_store(store, reference),
                                                  kinds=["main"] * args.main_kills)

    if args.only in (None, "train"):
        def train_args(run: Path) -> list[str]:
            return ["train", "--config", str(REPO / "configs" / "demo_sttran.yaml"), "--store", str(reference),
                    "--out", str(run), "--epochs", "3", "--device", "cpu", "--no-progress", "--resume"]

        ref_run = work / "reference_run"
        shutil.rmtree(ref_run, ignore_errors=True)
        duration, counts = _counted(train_args(ref_run), work)
        print(f"train reference: {duration:.1f} s (first write at {counts['start'] + 1:.1f} s), {counts['fsync']} "
              f"fsync and {counts['rename']} renames", flush=True)
        # --resume: continue (or start, without last.pth) and repair
        results["train"] = _kill_and_resume("train", rng, args.kills, train_args, work / "trial_run", duration,
                                            counts, same=lambda run: _same_run(run, ref_run))
        # with a DataLoader worker (num_workers may change on --resume; the batches are the same)
        results["train_main"] = _kill_and_resume(
            "train_main", rng, args.main_kills, lambda run: [*train_args(run), "--set", "num_workers=1"],
            work / "trial_run", duration, counts, same=lambda run: _same_run(run, ref_run),
            kinds=["main"] * args.main_kills)

    summary = {cmd: {"ok": sum(t["ok"] for t in ts), "trials": len(ts), "killed": sum(t["killed"] for t in ts),
                     "by_kind": {kind: sum(t["kind"] == kind for t in ts) for kind in ("time", "fsync", "rename", "main")},
                     "orphans": sum(bool(t.get("orphans")) for t in ts)}
               for cmd, ts in results.items()}
    for cmd, s in summary.items():
        print(f"{cmd}: {s['ok']}/{s['trials']} resumed runs equal the uninterrupted one "
              f"({s['killed']} killed before the end; kinds {s['by_kind']}; {s['orphans']} left a process behind)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"summary": summary, "trials": results, "seed": args.seed,
                                    "seconds": time.perf_counter() - started}, indent=2))
    print(f"wrote {args.out} in {(time.perf_counter() - started) / 60:.1f} min")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_child":
        _child(sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5:])
    else:
        main()
