"""Every bad input tried, and what the user sees: the table of docs/robustness.md.

Each probe builds a bad input (a broken recipe, a foreign file, a busy folder, a full disk, ...)
in a scratch folder, runs the command through the CLI (in this process, as ``click`` runs it,
or in a subprocess where another process or a real full disk is part of the probe) and records
the exit code and the last line the user sees. Paths are shown relative to the scratch folder.

    python bench/bad_inputs.py                 # about 2 minutes on 2 cores
    python bench/bad_inputs.py --markdown      # the table only

Writes ``bench/results/bad_inputs.md`` and ``bench/results/bad_inputs.json``. A tiny tmpfs for
the full-disk probe needs root; without it that probe says "skipped".
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import signal
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]  # the project, and its tests' helpers as tests.helpers

import h5py  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from click.testing import CliRunner  # noqa: E402

from cli import main  # noqa: E402


class Probes:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.rows: list[dict] = []

    def rel(self, text: str) -> str:
        return text.replace(str(self.base) + "/", "").replace(str(self.base), ".")

    def record(self, area: str, what: str, command: str, code: int, seen: str, pick: str = "") -> None:
        lines = [ln.rsplit("]", 1)[-1] if "%|" in ln else ln  # the text after a tqdm bar
                 for ln in seen.replace("\r", "\n").splitlines()]
        chosen = [ln for ln in lines if pick and pick in ln]  # a WARNING line may be picked
        lines = [ln for ln in lines if ln.strip() and not ln.startswith("WARNING")]
        seen = chosen[0] if chosen else lines[-1] if lines else "(nothing)"
        row = {"area": area, "input": what, "command": self.rel(command), "exit": code, "seen": self.rel(seen)}
        self.rows.append(row)
        print(f"[{code}] {area}: {what}\n    {row['seen']}", flush=True)

    def cli(self, area: str, what: str, *args, pick: str = "") -> None:
        args = [str(a) for a in args]
        r = CliRunner().invoke(main, args)
        seen = r.output
        if r.exception is not None and not isinstance(r.exception, SystemExit):
            seen += f"\nTraceback: {type(r.exception).__name__}: {r.exception}"
        self.record(area, what, "cli.py " + " ".join(args), r.exit_code, seen, pick)

    def subprocess(self, area: str, what: str, *args, env: dict | None = None, preexec=None, pick: str = "") -> None:
        """The CLI in its own process; ``"-c", CODE`` first runs CODE before the CLI (a monkeypatch)."""
        args = [str(a) for a in args]
        prelude = ""
        if args[:1] == ["-c"]:
            prelude, args = args[1], args[2:]
        code = (f"import sys; sys.path[:0] = [{str(REPO)!r}]\n{prelude}\nfrom cli import main\n"
                f"sys.argv = ['cli.py', *{args!r}]\nmain()\n")
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, env=env,
                           preexec_fn=preexec)
        lines = [ln for ln in (p.stdout + "\n" + p.stderr).splitlines() if ln.strip() and "detect rank" not in ln]
        traceback = any(ln.startswith(("Traceback", "Exception ignored")) for ln in lines) or p.returncode < 0
        seen = "\n".join(lines) + (f"\nTraceback ... {lines[-1]}" if traceback else "")
        self.record(area, what, "cli.py " + " ".join(args), p.returncode, seen, pick)


def mounted_ok(folder: Path, size: str) -> bool:
    """Mount a tmpfs of ``size`` on ``folder`` (a real full disk); False without root."""
    folder.mkdir()
    return os.geteuid() == 0 and subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                                                capture_output=True).returncode == 0


def limit_file_size() -> None:
    """preexec_fn: files of this process at most 50 KB (``ulimit -f 50``)."""
    import resource

    resource.setrlimit(resource.RLIMIT_FSIZE, (50 * 1024, resource.RLIM_INFINITY))


def holder(code: str, *args: str) -> subprocess.Popen:
    prelude = f"import sys, time; sys.path[:0] = [{str(REPO)!r}]\n"
    proc = subprocess.Popen([sys.executable, "-c", prelude + textwrap.dedent(code) +
                             "\nprint('READY', flush=True)\ntime.sleep(300)\n", *args],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "READY"
    return proc


def flip_byte(segment: Path, key: str) -> None:
    with h5py.File(segment, "r") as f:
        start = f[key].id.get_offset()
    with open(segment, "r+b") as fh:
        fh.seek(start + 3)
        b = fh.read(1)
        fh.seek(start + 3)
        fh.write(bytes([b[0] ^ 0x10]))


def predictions(path: Path, tamper: dict | None = None) -> Path:
    from tests.helpers.predictions import write_tiny_predictions

    return write_tiny_predictions(path, tamper)


def run(base: Path) -> Probes:
    from stage1_detect.detectors import build_detector, save_detector
    from synth import SynthConfig, generate_synthetic_ag
    from tests.helpers.stage2 import TINY_HEAD, TINY_RSNET, write_learnable_store
    from store import StoreError, StoreWriter
    from store.records import DetectorInfo
    from store.testing import synthetic_meta
    from store.testing import synthetic_video
    from tests.helpers.stage2 import tiny_meta

    P = Probes(base)
    torch.set_num_threads(1)
    ag = base / "ag"
    generate_synthetic_ag(ag, SynthConfig(videos=4, frames_per_video=4, width=160, height=120, seed=0), progress=False)
    torch.manual_seed(0)
    det = base / "detector.pth"
    save_detector(build_detector("small", {"min_size": 120, "max_size": 160}), det)
    store = write_learnable_store(base / "store.h5", n_train=4, n_val=2)
    recipe = base / "recipe.yaml"
    good = dict(store=str(store), mode="predcls", head="sttran", head_cfg=TINY_HEAD, epochs=2, lr=3e-3,
                videos_per_batch=2, preload=True, device="cpu")
    recipe.write_text(yaml.safe_dump(good))
    run_dir = base / "run"
    CliRunner().invoke(main, ["train", "--config", str(recipe), "--out", str(run_dir), "--no-progress"])
    (base / "garbage.pth").write_bytes(bytes(range(7, 256)) * 20)
    (base / "text.pth").write_text("these are not weights\n")
    (base / "empty.pth").write_bytes(b"")
    (base / "truncated.pth").write_bytes(det.read_bytes()[:20000])

    # --- detect and the store -----------------------------------------------------------------
    A = "detect / store"
    notstore = base / "notes_folder"
    notstore.mkdir()
    (notstore / "notes.txt").write_text("mine")
    (notstore / "manifest.json").write_text('{"mine": true}')
    P.cli(A, "--store: a folder with other files (notes.txt, one's own manifest.json)", "detect", ag, "--store",
          notstore, "--weights", det)
    busy = base / "busy.h5"
    h = holder("""
        from store.writer import lock_part
        lock = lock_part(sys.argv[1], "rank0")
    """, str(busy))
    try:
        P.cli(A, "a second `detect` on the same part of a store (one `--split train`, one `--split test`)",
              "detect", ag, "--store", busy, "--weights", det, "--split", "test")
    finally:
        h.kill()
        h.wait()
    for name, what in (("garbage", "random bytes"), ("text", "a text file"), ("empty", "an empty file"),
                       ("truncated", "a truncated checkpoint")):
        P.cli(A, f"--weights: {what}", "detect", ag, "--store", base / "x.h5", "--weights", base / f"{name}.pth")
    P.cli(A, "--weights: a relation-head checkpoint (last.pth of `train`)", "detect", ag, "--store", base / "x.h5",
          "--weights", run_dir / "last.pth")
    P.cli(A, "--mode sgdet (one store serves every mode)", "detect", ag, "--store", base / "x.h5", "--weights", det,
          "--mode", "sgdet")
    tiny = base / "tiny"
    tiny.mkdir()
    mounted = os.geteuid() == 0 and subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48k", "tmpfs", str(tiny)],
                                                   capture_output=True).returncode == 0
    if mounted:
        try:
            P.subprocess(A, "a full disk during `detect` (a 48 KB tmpfs)", "detect", ag, "--store", tiny / "s.h5",
                         "--weights", det, "--segment-mb", "0", "--workers", "2")
        finally:
            subprocess.run(["umount", str(tiny)], capture_output=True)
    else:
        P.record(A, "a full disk during `detect`", "(needs root for a tmpfs)", -1, "skipped")
    flipped = write_learnable_store(base / "flipped.h5", n_train=3, n_val=1)
    flip_byte(next(flipped.glob("*.h5")), "gt_objects/features")
    P.cli(A, "one flipped byte in a segment's features: `store check`", "store", "check", flipped, pick="PROBLEM")
    P.cli(A, "one flipped byte: `store check --quick` (structure only)", "store", "check", "--quick", flipped)
    frecipe = base / "flipped.yaml"
    frecipe.write_text(yaml.safe_dump({**good, "store": str(flipped)}))
    P.cli(A, "one flipped byte: `train` on that store", "train", "--config", frecipe, "--out", base / "frun",
          "--no-progress")
    edited = write_learnable_store(base / "edited.h5", n_train=3, n_val=1)
    with StoreWriter(edited, tiny_meta()) as w:  # a second segment
        w.write_video(synthetic_video(tiny_meta(), "extra.mp4", seed=5))
    doc = json.loads((edited / "manifest.json").read_text())
    doc["segments"][1]["splits"] = ["test"] * len(doc["segments"][1]["splits"])
    (edited / "manifest.json").write_text(json.dumps(doc))
    P.cli(A, "a manifest.json edited by hand: `store check`", "store", "check", edited, pick="PROBLEM")
    P.cli(A, "`store merge` into a folder inside the source", "store", "merge", store, store / "merged.h5")
    P.cli(A, "`store merge` onto an existing file", "store", "merge", store, det)
    v2 = write_learnable_store(base / "v2.h5", n_train=2, n_val=0)
    with h5py.File(next(v2.glob("*.h5")), "r+") as f:
        f.attrs["schema_version"] = 2
    P.cli(A, "a store of schema 2 (before per-video checksums)", "stats", v2)
    P.cli(A, "--store: no store at the path", "train", "--config", recipe, "--store", base / "nothing.h5", "--out",
          base / "r0", "--no-progress")
    # issue 19
    busy_dead = base / "orphaned.h5"
    h = holder("""
        import multiprocessing as mp
        from store.writer import lock_part
        lock = lock_part(sys.argv[1], "rank0")
        ready = mp.get_context("fork").Event()
        def work():
            ready.set()
            time.sleep(300)
        worker = mp.get_context("fork").Process(target=work)
        worker.start()
        ready.wait(30)
        open(sys.argv[2], "w").write(str(worker.pid))
    """, str(busy_dead), str(base / "worker.pid"))
    worker_pid = int((base / "worker.pid").read_text())
    h.kill()  # the main process alone, as the OOM killer does; its forked worker lives on
    h.wait()
    try:
        P.cli(A, "`detect` rerun at once after its main process alone was SIGKILLed (a forked worker still alive)",
              "detect", ag, "--store", busy_dead, "--weights", det, "--workers", "0", pick="written to")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker_pid, signal.SIGKILL)
    nan_det = base / "nan_detector.pth"
    torch.manual_seed(0)
    broken = build_detector("small", {"min_size": 120, "max_size": 160})
    with torch.no_grad():
        for prm in broken.model.roi_heads.parameters():
            prm.fill_(float("nan"))
    save_detector(broken, nan_det)
    P.cli(A, "--weights: a detector with NaN weights", "detect", ag, "--store", base / "nan.h5", "--weights", nan_det,
          "--workers", "0")
    nanstore = base / "nan_features.h5"
    with StoreWriter(nanstore, tiny_meta()) as w:
        rec = synthetic_video(tiny_meta(), "v000.mp4", seed=1, split="train")
        feats = rec.gt_features.copy()
        feats[0, :2] = np.nan
        w.write_video(dataclasses.replace(rec, gt_features=feats))
    P.cli(A, "NaN features in a store (valid checksums): `store check`", "store", "check", nanstore, pick="PROBLEM")
    classes_ag = base / "ag_latin1"
    shutil.copytree(ag, classes_ag)
    cf = classes_ag / "annotations" / "object_classes.txt"
    cf.write_bytes(cf.read_bytes().replace(b"bag", b"b\xe4g"))
    P.cli(A, "a class file that is not UTF-8 (Latin-1)", "detect", classes_ag, "--store", base / "l.h5", "--weights",
          det)
    P.cli(A, "`stats --out` into the store's folder", "stats", store, "--out", store / "stats")
    lost = write_learnable_store(base / "lost.h5", n_train=2, n_val=0)
    with StoreWriter(lost, tiny_meta()) as w:  # a second segment
        w.write_video(synthetic_video(tiny_meta(), "extra.mp4", seed=5))
    sorted(lost.glob("*.h5"))[0].unlink()
    P.cli(A, "a segment deleted, the manifest its only record: `store check`", "store", "check", lost, pick="PROBLEM")
    other = synthetic_meta(feature_dim=16, union_shape=(8,), source={"dataset": "synthetic",
                                                                       "reader": {"min_frames": 1}},
                           detector=DetectorInfo("synthetic", {"score_thresh": 0.5, "nms": 0.4}, "0" * 64))
    mixed = write_learnable_store(base / "mixed.h5", n_train=2, n_val=0)
    P.record(A, "a part written with another detector's settings (the meta check)", "(StoreMeta.incompatibility)", 1,
             str(StoreError(mixed, tiny_meta().incompatibility(other) or "")))
    big = write_learnable_store(base / "big.h5", n_train=30, n_val=0)
    if mounted_ok(base / "tiny_merge", "150k"):
        try:
            P.subprocess(A, "a full disk during `store merge` (a 150 KB tmpfs, free-space check off)", "-c",
                         "import store.check as c; c._check_free_space = lambda dst, store: None", "store", "merge",
                         big, base / "tiny_merge" / "m.h5")
        finally:
            subprocess.run(["umount", str(base / "tiny_merge")], capture_output=True)
    else:
        P.record(A, "a full disk during `store merge`", "(needs root for a tmpfs)", -1, "skipped")
    P.subprocess(A, "`store merge` under a file size limit (ulimit -f 50 KB)", "store", "merge", big,
                 base / "limited.h5", preexec=limit_file_size)

    # --- train -----------------------------------------------------------------------------------
    T = "train"
    P.cli(T, "rerun on a finished run's folder, without --resume", "train", "--config", recipe, "--out", run_dir,
          "--no-progress")
    P.cli(T, "--resume with another --lr, --seed and --store", "train", "--out", run_dir, "--resume", "--lr", "0.01",
          "--seed", "3", "--store", flipped, "--no-progress")
    P.cli(T, "--resume and --overwrite together", "train", "--out", run_dir, "--resume", "--overwrite")
    slow = base / "slow.yaml"
    slow.write_text(yaml.safe_dump({**good, "epochs": 500, "preload": True}))
    busy_run = base / "busy_run"
    first = subprocess.Popen([sys.executable, str(REPO / "cli.py"), "train", "--config", str(slow), "--out",
                              str(busy_run), "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)
    try:
        for line in first.stdout:
            if line.startswith("epoch 1/"):
                break
        P.cli(T, "a second `train` on the same --out while the first runs", "train", "--config", slow, "--out",
              busy_run, "--resume", "--no-progress")
    finally:
        first.kill()
        first.wait()
    bad = base / "bad.yaml"
    for what, content in (
            ("`epochs: 0`", {**good, "epochs": 0}),
            ("`lr: fast`", {**good, "lr": "fast"}),
            ("`videos_per_batch: 1.5`", {**good, "videos_per_batch": 1.5}),
            ("`mode: sgdett`", {**good, "mode": "sgdett"}),
            ("`head: sttrann`", {**good, "head": "sttrann"}),
            ("`head_cfg` with an unknown key (`hiden`)", {**good, "head_cfg": {**TINY_HEAD, "hiden": 4}}),
            ("`rsnet` with an unknown key (`dmodel`)", {**good, "rsnet": {"dmodel": 64}}),
            ("`learning_rate: 1e-3` (unknown field)", {**good, "learning_rate": 1e-3}),
            ("`negative_iou: 2`", {**good, "negative_iou": 2}),
    ):
        bad.write_text(yaml.safe_dump(content))
        P.cli(T, f"recipe: {what}", "train", "--config", bad, "--out", base / "rb", "--no-progress")
    bad.write_text(f"store: {store}\nhead_cfg: {{hidden: 16\nepochs: 2\n")
    P.cli(T, "recipe: a YAML syntax error", "train", "--config", bad, "--out", base / "rb")
    bad.write_text("- store: x\n- epochs: 2\n")
    P.cli(T, "recipe: a YAML list, not a mapping", "train", "--config", bad, "--out", base / "rb")
    for args, what in ((["--set", "weight_decay=-1"], "`--set weight_decay=-1`"),
                       (["--set", "head_cfg.hidden=big"], "`--set head_cfg.hidden=big`"),
                       (["--set", "head_cfg.hidden=-8"], "`--set head_cfg.hidden=-8` (a negative width)"),
                       (["--set", "plateau_factor=1.5"], "`--set plateau_factor=1.5`"),
                       (["--set", "lr"], "`--set lr` (no value)"),
                       (["--lr", "-1"], "`--lr -1`"),
                       (["--epochs", "0"], "`--epochs 0`")):
        P.cli(T, what, "train", "--config", recipe, "--out", base / "rb", "--no-progress", *args)
    meta = tiny_meta()
    allsmall = base / "allsmall.h5"
    with StoreWriter(allsmall, meta) as w:
        for i in range(3):
            w.write_video(synthetic_video(meta, f"v{i}.mp4", seed=i, split="train", small_fraction=1.0))
    P.cli(T, "--mode sgcls on a store with no object of _filtersmall", "train", "--config", recipe, "--store",
          allsmall, "--mode", "sgcls", "--out", base / "rs", "--no-progress")
    broken = base / "broken_run"
    shutil.copytree(run_dir, broken)
    data = (broken / "last.pth").read_bytes()
    (broken / "last.pth").write_bytes(data[: len(data) // 2])
    P.cli(T, "--resume with a truncated last.pth", "train", "--out", broken, "--resume", "--no-progress")
    (broken / "last.pth").write_bytes(b"")
    P.cli(T, "--resume with an empty last.pth", "train", "--out", broken, "--resume", "--no-progress")
    shutil.rmtree(broken)
    shutil.copytree(run_dir, broken)
    (broken / "best.pth").write_bytes(b"")
    (broken / "log.csv").write_text("epoch\n")
    P.cli(T, "--resume of a finished run with an empty best.pth and a log row missing (a kill between writes)",
          "train", "--out", broken, "--resume", "--no-progress", pick="repaired")
    wrong_ds = write_learnable_store(base / "val_only.h5", n_train=0, n_val=2)
    P.cli(T, "--store with no train split", "train", "--config", recipe, "--store", wrong_ds, "--out", base / "rv",
          "--no-progress")
    # issue 19: every option checked before the first step of work
    (base / "notglove.txt").write_text("hello world\nfoo bar\n")
    (base / "glove50.txt").write_text("person " + " ".join(["0.1"] * 50) + "\n")
    for what, content in (
            ("`glove:` a text file that is not GloVe", {**good, "glove": str(base / "notglove.txt")}),
            ("`glove:` vectors of another width (50-d for embed_dim 8)", {**good, "glove": str(base / "glove50.txt")}),
            ("`val_split: vall` (no such split)", {**good, "val_split": "vall"}),
            ("`head_cfg.num_heads: 3` (the width 8 is not divisible)", {**good, "head_cfg": {**TINY_HEAD, "num_heads": 3}}),
            ("`rsnet.max_frames: 1`", {**good, "rsnet": {**TINY_RSNET, "max_frames": 1}}),
            ("`seed: 2**70` (beyond 64 bits)", {**good, "seed": 2**70}),
            ("`lr: 1e300` (beyond float32)", {**good, "lr": 1e300}),
    ):
        bad.write_text(yaml.safe_dump(content))
        P.cli(T, f"recipe: {what}", "train", "--config", bad, "--out", base / "rb", "--no-progress")
    bad.write_text(yaml.safe_dump(good) + "lr: 0.5\n")
    P.cli(T, "recipe: a YAML key given twice (`lr`)", "train", "--config", bad, "--out", base / "rb", "--no-progress")
    P.cli(T, "`--device tpu`", "train", "--config", recipe, "--out", base / "rb", "--no-progress", "--device", "tpu")
    P.cli(T, "`--device cuda:7` (no such device here)", "train", "--config", recipe, "--out", base / "rb",
          "--no-progress", "--device", "cuda:7")
    nodet = base / "nodet.h5"
    with StoreWriter(nodet, tiny_meta()) as w:
        for i in range(2):
            w.write_video(synthetic_video(tiny_meta(), f"v{i}.mp4", seed=i, split="train", no_detections=True))
    P.subprocess(T, "--mode sgdet on a store without detections (a warning before any work; the demo's detector "
                    "of one epoch finds nothing)", "train", "--config", recipe, "--store", nodet, "--mode", "sgdet",
                 "--out", base / "rn", "--no-progress", pick="WARNING")
    bad.write_text(yaml.safe_dump({**good, "store": str(nanstore)}))
    P.cli(T, "a store with NaN features (valid checksums)", "train", "--config", bad, "--out", base / "rnan",
          "--no-progress")
    bad.write_text(yaml.safe_dump({**good, "lr": 1e30, "epochs": 1}))
    P.cli(T, "`lr: 1e30` (the weights blow up)", "train", "--config", bad, "--out", base / "rlr", "--no-progress")
    if mounted_ok(base / "tiny_train", "400k"):
        try:
            P.subprocess(T, "a full disk during `train` (a 400 KB tmpfs)", "train", "--config", recipe, "--out",
                         base / "tiny_train" / "run", "--no-progress", "--set", "head_cfg.hidden=64")
        finally:
            subprocess.run(["umount", str(base / "tiny_train")], capture_output=True)
    else:
        P.record(T, "a full disk during `train`", "(needs root for a tmpfs)", -1, "skipped")
    P.subprocess(T, "`train` under a file size limit (ulimit -f 50 KB)", "train", "--config", recipe, "--out",
                 base / "limited_run", "--no-progress", "--set", "head_cfg.hidden=64", preexec=limit_file_size)

    # --- eval --------------------------------------------------------------------------------------
    E = "eval"
    P.cli(E, "--checkpoint: a detector checkpoint", "eval", "--checkpoint", det)
    P.cli(E, "--checkpoint: an empty file", "eval", "--checkpoint", base / "empty.pth")
    P.cli(E, "--checkpoint: a text file", "eval", "--checkpoint", base / "text.pth")
    nothing = base / "empty_run"
    nothing.mkdir()
    P.cli(E, "--run: a folder without best.pth or last.pth", "eval", "--run", nothing)
    (base / "p.npz").write_text("frame,box\n")
    P.cli(E, "--predictions: a CSV named .npz", "eval", "--predictions", base / "p.npz")
    np.save(base / "one.npy", np.zeros(3))
    P.cli(E, "--predictions: one .npy array", "eval", "--predictions", base / "one.npy")
    good_preds = predictions(base / "good.npz")
    (base / "cut.npz").write_bytes(good_preds.read_bytes()[:300])
    P.cli(E, "--predictions: a truncated .npz", "eval", "--predictions", base / "cut.npz")

    def swap(b):
        b[1, [0, 2]] = b[1, [2, 0]]
        return b

    def inf(b):
        b[1, 2] = np.inf
        return b

    P.cli(E, "--predictions: a box with x1 > x2", "eval", "--predictions", predictions(base / "swap.npz",
                                                                                         {"pred_boxes": swap}))
    P.cli(E, "--predictions: an infinite GT box", "eval", "--predictions", predictions(base / "inf.npz",
                                                                                        {"gt_boxes": inf}))
    P.cli(E, "--predictions: a frame name twice", "eval", "--predictions",
          predictions(base / "dup.npz", {"frame_names": lambda n: np.array([n[0], n[0]])}))
    P.cli(E, "--iou-threshold 7", "eval", "--predictions", good_preds, "--iou-threshold", "7")
    P.cli(E, "--semi-threshold -3", "eval", "--predictions", good_preds, "--semi-threshold", "-3")

    def nan(a):
        a[0, 1] = np.nan
        return a

    P.cli(E, "--predictions: a NaN probability", "eval", "--predictions",
          predictions(base / "nan.npz", {"pred_attention": nan}))
    P.cli(E, "--predictions: a header that is not JSON", "eval", "--predictions",
          predictions(base / "hdr.npz", {"header": lambda h: np.array("{'format': not json")}))
    P.cli(E, "--predictions of PREDCLS with --mode sgdet", "eval", "--predictions", good_preds, "--mode", "sgdet")

    # --- compare -----------------------------------------------------------------------------------
    C = "compare"
    with_test = base / "with_test.h5"
    with StoreWriter(with_test, tiny_meta()) as w:
        for i, split in enumerate(("train", "train", "val", "test")):
            w.write_video(synthetic_video(tiny_meta(), f"v{i}.mp4", seed=i, split=split))
    ra, rbad = base / "a.yaml", base / "c.yaml"
    ra.write_text(yaml.safe_dump({**good, "store": str(with_test)}))
    rbad.write_text(yaml.safe_dump({**good, "store": str(with_test), "head_cfg": {**TINY_HEAD, "num_heads": 3}}))
    t0 = time.perf_counter()
    P.cli(C, "--seeds 0-99999999 (a huge range)", "compare", "--config", ra, "--seeds", "0-99999999", "--out",
          base / "cmp")
    P.cli(C, "--seeds 99999999999999999999999 (beyond 64 bits)", "compare", "--config", ra, "--seeds",
          "99999999999999999999999", "--out", base / "cmp")
    P.cli(C, "a third variant whose head widths the constructor rejects (checked before the first trains)",
          "compare", "--config", ra, "--config", ra, "--config", rbad, "--name", "a", "--name", "b", "--name", "c",
          "--seeds", "0", "--out", base / "cmp", "--no-progress")
    assert time.perf_counter() - t0 < 60, "compare probes should fail before any training"

    # --- train-detector -----------------------------------------------------------------------------
    D = "train-detector"
    dr = base / "det.yaml"
    for what, content in (("`epochs: 0`", {"epochs": 0}), ("`lr: -0.1`", {"lr": -0.1}),
                          ("`hflip: yes`", {"hflip": "yes"}), ("`frame_source: jpg`", {"frame_source": "jpg"}),
                          ("`settings: {min_sise: 3}`", {"settings": {"min_sise": 3}}),
                          ("`arch: r18`", {"arch": "r18"})):
        dr.write_text(yaml.safe_dump({"arch": "small", **content}))
        P.cli(D, f"recipe: {what}", "train-detector", ag, "--out", base / "dr", "--config", dr)
    P.cli(D, "`--lr 0`", "train-detector", ag, "--out", base / "dr", "--lr", "0")
    dres = base / "det_run"
    dres.mkdir()
    (dres / "last.pth").write_bytes(b"PK\x03\x04broken")
    P.cli(D, "--resume with a damaged last.pth", "train-detector", ag, "--out", dres, "--resume", "--epochs", "1")
    issue19_cases(P, base, ag=ag, det=det, run_dir=run_dir)
    return P


class _Touch:
    """A crafted pickle's payload: unpickled, it runs ``touch MARKER``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def issue19_cases(P: Probes, base: Path, *, ag: Path, det: Path, run_dir: Path) -> None:
    """Crafted files (no code runs), runs bound to their stores, one run-folder rule (issue 19)."""
    import pickle

    from tests.helpers.stage2 import TINY_HEAD, learnable_video, tiny_meta
    from store import StoreWriter

    S = "security: no code runs from a file"
    marker = base / "MARKER"
    ckpt = torch.load(run_dir / "last.pth", weights_only=True)
    evil = base / "evil.pth"
    torch.save({**ckpt, "model": _Touch(marker)}, evil)
    P.cli(S, "--checkpoint: a crafted .pth whose pickle calls os.system", "eval", "--checkpoint", evil)
    evil_run = base / "evil_run"
    shutil.copytree(run_dir, evil_run)
    shutil.copy(evil, evil_run / "last.pth")
    P.cli(S, "`train --resume`: a crafted last.pth", "train", "--out", evil_run, "--resume", "--no-progress")
    evil_det = base / "evil_det"
    evil_det.mkdir()
    torch.save({"model": _Touch(marker), "optimizer": {}, "epoch": 0, "step": 0}, evil_det / "last.pth")
    P.cli(S, "`train-detector --resume`: a crafted last.pth", "train-detector", ag, "--out", evil_det, "--resume",
          "--epochs", "1")
    evil_ag = base / "evil_ag"
    shutil.copytree(ag, evil_ag)
    person = evil_ag / "annotations" / "person_bbox.pkl"
    data = pickle.loads(person.read_bytes())
    data[next(iter(data))]["bbox_mode"] = _Touch(marker)
    person.write_bytes(pickle.dumps(data))
    P.cli(S, "`dataset`: a crafted person_bbox.pkl", "dataset", evil_ag)
    assert not marker.exists(), "a crafted file ran code"

    R = "runs bound to their stores"
    meta = tiny_meta()

    def segmented(path: Path, seed: int) -> Path:
        protos = np.random.default_rng(seed).standard_normal((meta.vocabulary.num_objects, meta.feature_dim))
        with StoreWriter(path, meta, segment_bytes=0) as w:
            for i in range(4):
                w.write_video(learnable_video(meta, f"v{i:03d}.mp4", "train" if i < 2 else "val", i, protos))
        return path

    bound = segmented(base / "bound.h5", 0)
    bound_run = base / "bound_run"
    bound_recipe = base / "bound.yaml"
    bound_recipe.write_text(yaml.safe_dump(dict(store=str(bound), head_cfg=TINY_HEAD, epochs=1, preload=True,
                                                videos_per_batch=2, device="cpu")))
    CliRunner().invoke(main, ["train", "--config", str(bound_recipe), "--out", str(bound_run), "--no-progress"])
    shutil.rmtree(bound)
    segmented(bound, 5)
    P.cli(R, "`train --resume` on a store re-extracted at the run's path", "train", "--out", bound_run, "--resume",
          "--epochs", "2", "--no-progress")
    shutil.rmtree(bound)
    segmented(bound, 0)
    sorted(bound.glob("*.h5"))[1].unlink()
    P.cli(R, "`eval --run` on a copy of the store missing a segment", "eval", "--run", bound_run, "--split", "val")
    P.cli(R, "`store merge` of that incomplete copy (it merged 3 of 4 videos, exit 0)", "store", "merge", bound,
          base / "merged3.h5")
    written = segmented(base / "written.h5", 0)
    h = holder("""
        from store.writer import lock_part
        lock = lock_part(sys.argv[1], "rank1")
    """, str(written))
    try:
        P.cli(R, "`store merge` of a store `detect` is still writing", "store", "merge", written, base / "mw.h5")
    finally:
        h.kill()
        h.wait()
    other_ag = base / "other_ag"
    from synth import SynthConfig, generate_synthetic_ag

    generate_synthetic_ag(other_ag, SynthConfig(videos=4, frames_per_video=4, width=160, height=120, seed=1),
                          progress=False)
    ds_store = base / "ds.h5"
    CliRunner().invoke(main, ["detect", str(ag), "--store", str(ds_store), "--weights", str(det), "--max-videos", "1",
                              "--workers", "0"])
    P.cli(R, "`detect` continuing a store made from another dataset root", "detect", other_ag, "--store", ds_store,
          "--weights", det, "--max-videos", "1", "--workers", "0")

    F = "run folders: nothing replaced unasked"
    det_run = base / "det_done"
    det_run.mkdir()
    shutil.copy(det, det_run / "detector.pth")
    P.cli(F, "`train-detector` into a finished run without --resume", "train-detector", ag, "--out", det_run,
          "--epochs", "1")
    P.cli(F, "`eval --save-predictions` naming the run's checkpoint", "eval", "--run", run_dir, "--split", "val",
          "--save-predictions", run_dir / "best.pth")
    P.cli(F, "`convert-ag-detector` with DST = SRC", "convert-ag-detector", det, det)
    syn = base / "syn"
    generate_synthetic_ag(syn, SynthConfig(videos=2, frames_per_video=3, width=160, height=120, seed=0),
                          progress=False)
    (syn / "annotations" / "my_notes.txt").write_text("mine")
    P.cli(F, "`synth --out` onto an earlier dataset holding the user's file", "synth", "--out", syn, "--videos", "2",
          "--frames", "3", "--size", "160x120")


def markdown(rows: list[dict]) -> str:
    out = []
    for area in dict.fromkeys(r["area"] for r in rows):
        out += [f"### {area}", "", "| bad input | exit | what the user sees |", "|---|---|---|"]
        for r in rows:
            if r["area"] == area:
                seen = r["seen"].replace("|", "\\|")
                out.append(f"| {r['input']} | {r['exit']} | `{seen}` |")
        out.append("")
    return "\n".join(out)


def main_() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--markdown", action="store_true", help="print only the table")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        probes = run(Path(tmp))
    table = markdown(probes.rows)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bad_inputs.md").write_text(table)
    (args.out / "bad_inputs.json").write_text(json.dumps(probes.rows, indent=2))
    if args.markdown:
        print(table)
    tracebacks = [r for r in probes.rows if "Traceback" in r["seen"]]
    print(f"{len(probes.rows)} bad inputs, {len(tracebacks)} ending in a traceback, "
          f"{sum(r['exit'] == 0 for r in probes.rows)} exiting 0, in {time.perf_counter() - t0:.0f} s; "
          f"wrote {args.out / 'bad_inputs.md'}")


if __name__ == "__main__":
    main_()
