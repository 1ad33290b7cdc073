"""Every recipe and option is checked before the first step of work (issue 19), for every variant
of a comparison: a GloVe file that is not one or of another width, an unknown ``val_split``, a
YAML key given twice, SGDET on a store without detections, head widths the constructor rejects,
RS-Net's ``max_frames`` below a video's length, seeds beyond the range, a device that does not
exist, and ``--seeds`` naming a huge range. Each is one line, never a traceback or a run that
silently does something else (random embeddings, no validation, the last duplicate key).

Each test failed on the code before it.
"""

from __future__ import annotations

import dataclasses
import logging
import time

import numpy as np
import pytest
import yaml

from stage2_relations.evaluation.seeds import MAX_SEED, parse_seeds
from store import StoreWriter
from tests.helpers.cli import error_line, run_cli
from tests.helpers.stage2 import TINY_HEAD, TINY_RSNET, learnable_video, one_thread, tiny_meta, write_learnable_store

_one_thread = pytest.fixture(autouse=True, scope="module")(one_thread)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return write_learnable_store(tmp_path_factory.mktemp("checked") / "store.h5", n_train=3, n_val=1)


def _good(store) -> dict:
    return dict(store=str(store), mode="predcls", head="sttran", head_cfg=TINY_HEAD, epochs=1, lr=3e-3,
                videos_per_batch=2, preload=True, device="cpu")


def _train(tmp_path, recipe: dict | str, *args):
    path = tmp_path / "r.yaml"
    path.write_text(recipe if isinstance(recipe, str) else yaml.safe_dump(recipe))
    return run_cli("train", "--config", path, "--out", tmp_path / "run", "--no-progress", *args)


def _nothing_trained(tmp_path):
    assert not (tmp_path / "run" / "last.pth").exists() and not (tmp_path / "run" / "config.yaml").exists()


# --- GloVe ---------------------------------------------------------------------------------


def _glove_line(word: str, n: int) -> str:
    return word + " " + " ".join(f"{0.01 * (i + 1):.2f}" for i in range(n)) + "\n"


@pytest.mark.parametrize("content, expected", [
    ("hello world\nfoo bar\n", "{path}: not a GloVe text file (a word and its numbers per line): line 1 reads "
                               "'hello world'"),
    (_glove_line("person", 50), "{path}: holds 50-d vectors; the head's embed_dim is 8: use GloVe vectors of 8 "
                                "values or set head_cfg.embed_dim: 50"),
    (_glove_line("zebra", 8) + _glove_line("quokka", 8), "{path}: holds none of the "),
    (_glove_line("zebra", 8) + _glove_line("person", 5), "{path}: line 2 ('person') has 5 values, the file's first "
                                                         "line 8: not a GloVe text file"),
    ("", "{path}: is empty, not a GloVe text file"),
])
def test_a_glove_file_that_gives_no_embedding_is_one_line(tmp_path, store, content, expected):
    glove = tmp_path / "glove.txt"
    glove.write_text(content)
    line = error_line(_train(tmp_path, {**_good(store), "glove": str(glove)}))
    expected = expected.format(path=glove)
    assert line.startswith(expected), line
    _nothing_trained(tmp_path)


def test_a_glove_file_of_the_right_width_sets_the_class_embeddings(tmp_path, store):
    from stage2_relations.heads.embeddings import glove_embeddings

    vocab = tiny_meta().vocabulary
    glove = tmp_path / "glove.txt"
    glove.write_text(_glove_line("zebra", 8) + _glove_line("person", 8))
    out = glove_embeddings(glove, vocab, 8)
    person = [i for i, n in enumerate(vocab.objects) if n.split("/")[0] == "person"][0]
    np.testing.assert_allclose(out[person].numpy(), [0.01 * (i + 1) for i in range(8)], rtol=1e-6)
    glove.write_bytes(b"person \xff\xfe 0.1\n")
    with pytest.raises(Exception, match="not UTF-8 text"):
        glove_embeddings(glove, vocab, 8, seed=1)


# --- the rest of the recipe against its store ------------------------------------------------


def test_an_unknown_val_split_is_refused(tmp_path, store):
    line = error_line(_train(tmp_path, {**_good(store), "val_split": "vall"}))
    assert line == f"val_split: 'vall' is not a split of {store} (its splits: train, val): the run would train " \
                   f"without validation"
    _nothing_trained(tmp_path)


def test_a_yaml_key_given_twice_is_refused_naming_it(tmp_path, store):
    text = yaml.safe_dump(_good(store)) + "lr: 0.5\n"
    line = error_line(_train(tmp_path, text))
    assert line.startswith(f"{tmp_path / 'r.yaml'}: not valid YAML at line ")
    assert "key 'lr' is given twice (first at line " in line
    nested = "store: x\nhead_cfg: {hidden: 16, hidden: 32}\n"
    assert "key 'hidden' is given twice" in error_line(_train(tmp_path, nested))


def test_sgdet_on_a_store_without_detections_is_announced_before_training(tmp_path, caplog):
    meta = tiny_meta()
    protos = np.random.default_rng(0).standard_normal((meta.vocabulary.num_objects, meta.feature_dim))
    path = tmp_path / "nodet.h5"
    with StoreWriter(path, meta) as w:
        for i, split in enumerate(("train", "train", "val")):
            rec = learnable_video(meta, f"v{i:03d}.mp4", split, i, protos)
            w.write_video(_without_detections(rec))
    # a warning, not an error: the demo's one-epoch detector finds nothing and the demo must run
    with caplog.at_level(logging.WARNING, logger="stage2_relations.recipe"):
        r = _train_sgdet(tmp_path, path)
    warned = [rec.getMessage() for rec in caplog.records if rec.name == "stage2_relations.recipe"]
    assert warned == [f"{path}: none of its 2 'train' videos holds a detection: SGDET trains on the detector's boxes, "
                      f"so this run learns nothing of them (a detector that found nothing, or a store extracted "
                      f"without one)"], warned
    assert r.exit_code == 0, r.output


def _train_sgdet(tmp_path, store):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({**_good(store), "mode": "sgdet"}))
    return run_cli("train", "--config", path, "--out", tmp_path / "run", "--no-progress")


def _without_detections(rec):
    """The video with no detection: the pairs among GT boxes only, as a detector finding nothing gives."""
    keep_pairs = (rec.pair_subject < np.repeat(np.diff(rec.gt_offsets), np.diff(rec.pair_offsets))) & \
                 (rec.pair_object < np.repeat(np.diff(rec.gt_offsets), np.diff(rec.pair_offsets)))
    frame_of_pair = np.repeat(np.arange(rec.num_frames), np.diff(rec.pair_offsets))
    pair_counts = np.bincount(frame_of_pair[keep_pairs], minlength=rec.num_frames)
    return dataclasses.replace(
        rec, det_boxes=rec.det_boxes[:0], det_scores=rec.det_scores[:0], det_labels=rec.det_labels[:0],
        det_dists=rec.det_dists[:0], det_features=rec.det_features[:0],
        det_offsets=np.zeros_like(rec.det_offsets), pair_subject=rec.pair_subject[keep_pairs],
        pair_object=rec.pair_object[keep_pairs], pair_union=rec.pair_union[keep_pairs],
        pair_offsets=np.concatenate([[0], np.cumsum(pair_counts)]).astype(rec.pair_offsets.dtype))


def test_head_widths_the_constructor_rejects_are_one_line(tmp_path, store):
    line = error_line(_train(tmp_path, {**_good(store), "head_cfg": {**TINY_HEAD, "num_heads": 3}}))
    assert line == "the recipe's head_cfg / rsnet: the model cannot be built: embed_dim must be divisible by num_heads"
    _nothing_trained(tmp_path)


def test_rsnet_max_frames_below_a_video_is_refused_before_training(tmp_path, store):
    line = error_line(_train(tmp_path, {**_good(store), "rsnet": {**TINY_RSNET, "max_frames": 1}}))
    assert line == "rsnet.max_frames: 1 is fewer than the frames of video 'v000.mp4' (4, split 'train'): RS-Net " \
                   "cannot take it; set it to the longest video's frames or more"
    _nothing_trained(tmp_path)


@pytest.mark.parametrize("seed", [2**70, MAX_SEED + 1, -1])
def test_a_seed_out_of_range_is_one_line(tmp_path, store, seed):
    line = error_line(_train(tmp_path, {**_good(store), "seed": seed}))
    assert line == f"{tmp_path / 'r.yaml'}: seed: must be in 0..{MAX_SEED}, got {seed}"


@pytest.mark.parametrize("device, expected", [
    ("tpu", "device 'tpu': not a device name ('cpu', 'cuda', 'cuda:1' or 'auto')"),
    ("cuda:99", "device 'cuda:99': "),
])
def test_a_device_that_does_not_exist_is_one_line(tmp_path, store, device, expected):
    line = error_line(_train(tmp_path, _good(store), "--device", device), code=2)
    assert line.startswith(f"Invalid value for --device: {expected}"), line


# --- compare -------------------------------------------------------------------------------


def test_huge_seed_ranges_are_refused_at_once():
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=r"names 100000000 seeds, more than 1000"):
        parse_seeds("0-99999999")
    with pytest.raises(ValueError, match="outside 0..4294967295"):
        parse_seeds("0-99999999999999")
    with pytest.raises(ValueError, match="above the largest seed"):
        parse_seeds("1" * 5000)
    assert time.perf_counter() - t0 < 1.0
    assert parse_seeds("0-2,7") == [0, 1, 2, 7]


def test_compare_checks_every_variant_before_training_the_first(tmp_path):
    from tests.stage2_relations.test_compare import write_store_with_test

    st = write_store_with_test(tmp_path / "s.h5", n_train=2, n_val=1, n_test=1)
    recipes = []
    for name, extra in (("a", {}), ("b", {"val_split": "vall"}), ("c", {"head_cfg": {**TINY_HEAD, "num_heads": 3}})):
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump({**_good(st), **extra}))
        recipes += ["--config", path]
    out = tmp_path / "cmp"
    line = error_line(run_cli("compare", *recipes, "--seeds", "0", "--out", out, "--no-progress"))
    assert line.startswith(f"variant 'b' ({tmp_path / 'b.yaml'}): val_split: 'vall' is not a split of ")
    assert not out.exists() or not any(out.rglob("last.pth"))  # variant a was not trained first
    recipes[3] = tmp_path / "a.yaml"
    line = error_line(run_cli("compare", *recipes, "--name", "a", "--name", "a2", "--name", "c", "--seeds", "0",
                            "--out", out, "--no-progress"))
    assert line == f"variant 'c' ({tmp_path / 'c.yaml'}): the recipe's head_cfg / rsnet: the model cannot be " \
                   f"built: embed_dim must be divisible by num_heads"
    assert not out.exists() or not any(out.rglob("last.pth"))


def test_overwrite_keeps_the_old_run_when_the_new_recipe_fails_its_checks(tmp_path, store):
    r = _train(tmp_path, _good(store))
    assert r.exit_code == 0, r.output
    before = (tmp_path / "run" / "last.pth").read_bytes()
    glove = tmp_path / "glove.txt"
    glove.write_text("hello world\n")
    line = error_line(_train(tmp_path, {**_good(store), "glove": str(glove)}, "--overwrite"))
    assert line.startswith(f"{glove}: not a GloVe text file")
    assert (tmp_path / "run" / "last.pth").read_bytes() == before  # nothing removed before the checks


def test_compare_checks_every_test_view_before_training(tmp_path):
    """The object-scores rule 'detector' is SGDET's: an SGCLS comparison asking for it is refused
    by the test view eval builds (one place), naming the variant, before anything trains."""
    from tests.stage2_relations.test_compare import write_store_with_test

    st = write_store_with_test(tmp_path / "s.h5", n_train=2, n_val=1, n_test=1)
    path = tmp_path / "a.yaml"
    path.write_text(yaml.safe_dump({**_good(st), "mode": "sgcls"}))
    out = tmp_path / "cmp"
    line = error_line(run_cli("compare", "--config", path, "--seeds", "0", "--out", out, "--no-progress",
                              "--object-scores", "sttran,detector"))
    assert line == "variant a: object-scores rule 'detector' is an SGDET rule, not sgcls"
    assert not out.exists() or not any(out.rglob("last.pth"))
