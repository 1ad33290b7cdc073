"""No code runs from a file (issue 19): a crafted checkpoint or annotation pickle whose reduce
would create a file is refused with one line naming the file and the refused callable, at every
entry point that reads one, and the file is not created. Every file the project writes loads
weights-only; ``--trust-checkpoint`` is the explicit opt-in for a file one trusts.

Each test failed on the code before it (the readers loaded with ``weights_only=False`` or
``pickle.load``, so the marker file appeared).
"""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path, PurePosixPath

import pytest
import torch
import yaml

from common.errors import InputError
from common.torch_files import load_torch, plain_data, save_torch
from stage1_detect.action_genome import load_action_genome
from stage1_detect.ag_annotations import AnnotationError
from stage2_relations.compare import run_state
from stage2_relations.heads.stket import with_output_branch
from stage2_relations.recipe import TrainConfig
from stage2_relations.train import train
from tests.helpers import REPO
from tests.helpers.ag import fixture_annotations, write_root
from tests.helpers.cli import error_line, run_cli
from tests.helpers.stage2 import TINY_HEAD, one_thread, write_learnable_store

_one_thread = pytest.fixture(autouse=True, scope="module")(one_thread)


class _Touch:
    """Unpickled, runs ``touch MARKER``: what a crafted file does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _evil_checkpoint(path: Path, marker: Path, base: dict | None = None) -> Path:
    """A checkpoint like ``base`` (a real one) whose 'model' entry runs ``touch marker`` when unpickled."""
    payload = dict(base or {})
    payload["model"] = _Touch(marker)
    torch.save(payload, path)
    return path


def _ours(path: Path) -> dict:
    """A checkpoint this test's own run wrote (trusted: read in full)."""
    return torch.load(path, weights_only=False)


def _assert_refused(line: str, path: Path, marker: Path) -> None:
    assert line.startswith(f"{path}: refused: "), line
    assert "posix.system" in line or "os.system" in line, line
    assert "--trust-checkpoint" in line, line
    assert not marker.exists(), "the crafted file ran code"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    base = tmp_path_factory.mktemp("security")
    store = write_learnable_store(base / "s.h5", n_train=3, n_val=2)
    cfg = TrainConfig(store=str(store), head_cfg=TINY_HEAD, epochs=1, device="cpu", preload=True,
                      videos_per_batch=2)
    train(cfg, base / "run", progress=False, echo=lambda s: None)
    return base / "run"


def test_every_file_train_writes_loads_weights_only(run):
    for name in ("last.pth", "best.pth", "derived.pt"):
        torch.load(run / name, weights_only=True)  # raises for anything beyond tensors and plain values


def test_a_crafted_file_is_refused_by_load_torch(tmp_path):
    marker = tmp_path / "MARKER"
    path = _evil_checkpoint(tmp_path / "evil.pth", marker)
    with pytest.raises(InputError) as e:
        load_torch(path)
    _assert_refused(str(e.value), path, marker)


def test_eval_checkpoint_refuses_a_crafted_file(run, tmp_path):
    marker = tmp_path / "MARKER"
    path = _evil_checkpoint(tmp_path / "evil.pth", marker, _ours(run / "last.pth"))
    _assert_refused(error_line(run_cli("eval", "--checkpoint", path, "--split", "val")), path, marker)


@pytest.mark.parametrize("name, command", [
    ("best.pth", ("eval", "--run", "{run}", "--split", "val")),
    ("last.pth", ("train", "--out", "{run}", "--resume", "--epochs", "2", "--no-progress")),
])
def test_a_run_folder_refuses_a_crafted_checkpoint(run, tmp_path, name, command):
    """`eval --run` reads best.pth, `train --resume` last.pth: either crafted is refused."""
    marker = tmp_path / "MARKER"
    folder = tmp_path / "run"
    shutil.copytree(run, folder)
    path = _evil_checkpoint(folder / name, marker, _ours(run / name))
    _assert_refused(error_line(run_cli(*(a.format(run=folder) for a in command))), path, marker)


def test_compare_rerun_refuses_a_crafted_last_pth(run, tmp_path):
    marker = tmp_path / "MARKER"
    ckpt = _ours(run / "last.pth")
    path = _evil_checkpoint(tmp_path / "last.pth", marker, ckpt)
    with pytest.raises(InputError) as e:
        run_state(TrainConfig(**ckpt["config"]), tmp_path)
    _assert_refused(str(e.value), path, marker)


def test_stket_branch_copy_refuses_a_crafted_file(tmp_path):
    marker = tmp_path / "MARKER"
    path = _evil_checkpoint(tmp_path / "evil.pth", marker, {"config": {"head": "stket", "head_cfg": {}}})
    with pytest.raises(InputError) as e:
        with_output_branch(path, "temporal", tmp_path / "out.pth")
    _assert_refused(str(e.value), path, marker)
    assert not (tmp_path / "out.pth").exists()


def test_crash_bench_reads_checkpoints_weights_only(run, tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_crash", REPO / "bench" / "crash.py")
    crash = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(crash)
    marker = tmp_path / "MARKER"
    folder = tmp_path / "run"
    shutil.copytree(run, folder)
    path = _evil_checkpoint(folder / "last.pth", marker, _ours(run / "last.pth"))
    with pytest.raises(InputError) as e:
        crash._same_run(folder, run)
    _assert_refused(str(e.value), path, marker)


def test_train_detector_resume_refuses_a_crafted_last_pth(tmp_path):
    from synth import SynthConfig, generate_synthetic_ag

    root = tmp_path / "ag"
    generate_synthetic_ag(root, SynthConfig(videos=4, frames_per_video=4, width=160, height=120, seed=0),
                          progress=False)
    marker = tmp_path / "MARKER"
    out = tmp_path / "det"
    out.mkdir()
    path = _evil_checkpoint(out / "last.pth", marker, {"optimizer": {}, "epoch": 0, "step": 0})
    line = error_line(run_cli("train-detector", root, "--out", out, "--resume", "--epochs", "1"))
    _assert_refused(line, path, marker)


def test_trust_checkpoint_loads_a_checkpoint_with_other_python_objects(run, tmp_path):
    """The opt-in: a checkpoint holding a harmless non-plain object (a path object) is refused by
    default, naming it, and read with --trust-checkpoint."""
    ckpt = _ours(run / "last.pth")
    ckpt["note"] = PurePosixPath("made/by/hand")
    path = tmp_path / "old.pth"
    torch.save(ckpt, path)
    line = error_line(run_cli("eval", "--checkpoint", path, "--split", "val", "--out", tmp_path / "e"))
    assert line.startswith(f"{path}: refused: ") and "PurePosixPath" in line, line
    r = run_cli("eval", "--checkpoint", path, "--split", "val", "--out", tmp_path / "e", "--trust-checkpoint")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "e" / "metrics.json").exists()


def test_a_checkpoint_with_torch_version_in_its_provenance_still_loads(run, tmp_path):
    """Checkpoints written before plain_data hold torch.__version__ (a TorchVersion): allowlisted."""
    ckpt = _ours(run / "last.pth")
    ckpt["provenance"]["versions"]["torch"] = torch.__version__
    torch.save(ckpt, tmp_path / "old.pth")
    assert load_torch(tmp_path / "old.pth")["provenance"]["versions"]["torch"] == str(torch.__version__)


def test_plain_data_converts_look_alikes_and_refuses_objects(tmp_path):
    import enum

    import numpy as np

    class Color(enum.Enum):
        RED = "red"

    out = plain_data({"v": torch.__version__, "n": np.float32(0.5), "p": Path("a/b"), "e": Color.RED,
                      "a": np.arange(3), "t": (1, [True, None])})
    assert type(out["v"]) is str and out["n"] == 0.5 and type(out["n"]) is float
    assert out["p"] == "a/b" and out["e"] == "red" and torch.equal(out["a"], torch.arange(3))
    assert out["t"] == (1, [True, None])
    with pytest.raises(TypeError, match=r"x.pth\['cfg'\]: a .*TrainConfig is not plain data"):
        save_torch({"cfg": TrainConfig()}, tmp_path / "x.pth")
    assert not (tmp_path / "x.pth").exists()


# --- Action Genome's annotation pickles ------------------------------------------------------


def test_a_crafted_annotation_pickle_is_refused(tmp_path):
    marker = tmp_path / "MARKER"
    root = write_root(tmp_path / "ag", *fixture_annotations())
    person = root / "annotations" / "person_bbox.pkl"
    data = pickle.loads(person.read_bytes())
    data[next(iter(data))]["bbox_mode"] = _Touch(marker)
    person.write_bytes(pickle.dumps(data, protocol=4))
    line = error_line(run_cli("dataset", root))
    assert line.startswith(f"{person}: refused to unpickle posix.system"), line
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, 4, 5])  # 5: numpy rebuilds arrays with _frombuffer
def test_real_annotation_pickles_load(ag_root, protocol):
    """What AG's pickles hold (dicts, lists, tuples, numpy arrays and scalars) still loads, in
    the protocols a user's re-saved file may have."""
    import numpy as np

    before = load_action_genome(ag_root).summary()
    person = ag_root / "annotations" / "person_bbox.pkl"
    data = pickle.loads(person.read_bytes())
    first = next(iter(data))
    data[first]["bbox_score"] = np.float32(0.9)  # a numpy scalar, as AG's detector scores are
    data[first]["keypoints"] = np.zeros((1, 17, 3), np.float32)
    person.write_bytes(pickle.dumps(data, protocol=protocol))
    assert load_action_genome(ag_root).summary() == before


def test_a_pickle_naming_another_module_names_it(tmp_path):
    root = write_root(tmp_path / "ag", *fixture_annotations())
    person = root / "annotations" / "person_bbox.pkl"
    person.write_bytes(pickle.dumps({"x": yaml.YAMLObject}, protocol=4))
    with pytest.raises(AnnotationError, match=r"refused to unpickle yaml\.YAMLObject"):
        load_action_genome(root)
