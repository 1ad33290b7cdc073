"""``cli.py predict`` end to end (stage1_detect.video_source, stage2_relations.scene_graphs).

One synthetic AG (8 videos at 160x120, mp4 frames), one untrained ``small`` detector (person
logit raised, as in the extraction tests), a store extracted from the mp4s one frame per
forward, and a tiny STTran + RS-Net trained one epoch in SGDET. A test video copied outside the
dataset and predicted on exactly its evaluated frames must give the triplets that ``eval``
scores for them, read back from ``eval --save-predictions``.
"""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
import torch

from stage1_detect.action_genome import ReaderOptions
from stage1_detect.detectors import build_detector, load_detector, save_detector
from stage1_detect.extract import ExtractConfig, extract
from stage1_detect.frames import FrameError
from stage1_detect.video_source import FrameSelection, LooseVideos, detect_videos, find_videos
from stage2_relations.evaluate_checkpoint import evaluate_checkpoint
from stage2_relations.evaluation.predictions_io import read_predictions
from stage2_relations.evaluation.structures import Constraint
from stage2_relations.evaluation.triplets import rank_triplets
from stage2_relations.recipe import TrainConfig
from stage2_relations.scene_graphs import (check_detector, documents_from_predictions, json_schema,
                                           load_sgdet_run, read_document, validate, write_scene_graphs)
from stage2_relations.train import train
from store import open_store
from store.errors import ConfigError, InputError
from store.modes import Mode
from synth import SynthConfig, generate_synthetic_ag
from tests.helpers.stage2 import TINY_HEAD, TINY_RSNET

PERSON = 1
SETTINGS = {"score_thresh": 0.0, "detections_per_img": 8, "rpn_post_nms_top_n_test": 10, "min_size": 120,
            "max_size": 160}
READER = ReaderOptions(val_fraction=0.2)
# One frame per forward: a frame's features then do not depend on which frames share its batch,
# so the dataset's store and predict's store hold the same numbers for the same frame.
EXTRACT = ExtractConfig(num_workers=0, segment_mb=0, frame_source="mp4", batch_size=1)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    base = tmp_path_factory.mktemp("predict")
    root = base / "ag"
    generate_synthetic_ag(root, SynthConfig(videos=8, frames_per_video=5, width=160, height=120, seed=0),
                          progress=False)
    torch.manual_seed(0)
    detector = build_detector("small", SETTINGS)
    with torch.no_grad():
        detector.model.roi_heads.box_predictor.cls_score.bias[PERSON] += 3.0
    weights = base / "detector.pth"
    save_detector(detector, weights)
    detector, sha = load_detector(weights)
    store = base / "store.h5"
    extract(root, store, detector, weights_sha256=sha, reader_options=READER, config=EXTRACT, progress=False)
    cfg = TrainConfig(store=str(store), mode="sgdet", head="sttran", head_cfg=TINY_HEAD, rsnet=TINY_RSNET, epochs=1,
                      lr=3e-3, videos_per_batch=1, preload=True, device="cpu", seed=0)
    run = base / "run"
    train(cfg, run, progress=False, echo=lambda line: None)
    preds_file = base / "eval_preds.npz"
    evaluate_checkpoint(run_dir=run, split="test", save_predictions=preds_file, out_dir=base / "eval",
                        echo=lambda line: None, num_frames_png=0)
    return {"base": base, "root": root, "weights": weights, "detector": detector, "sha": sha, "store": store,
            "run": run, "preds": preds_file}


def _predict(pipeline, paths, out, selection):
    run = load_sgdet_run(pipeline["run"])
    check_detector(run, pipeline["sha"], "small")
    store = out / "store.h5"
    summary = detect_videos(paths, store, pipeline["detector"], weights_sha256=pipeline["sha"],
                            vocabulary=run.meta.vocabulary, union_mode=run.meta.union_mode.value,
                            selection=selection, config=EXTRACT, progress=False)
    return summary, write_scene_graphs(store, run, out / "graphs", sources=paths, progress=False)


def test_predict_on_the_evaluated_frames_gives_the_evaluated_triplets(pipeline, tmp_path):
    pf = read_predictions(pipeline["preds"])
    names = list(pf.predictions.frame_names)
    video = names[0].split("/")[0]
    keys = [n for n in names if n.startswith(video + "/")]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(pipeline["root"] / "videos" / video, elsewhere / video)
    paths = find_videos([elsewhere / video])
    summary, written = _predict(pipeline, paths, tmp_path / "out", FrameSelection(keys=frozenset(keys)))
    assert summary.failed == [] and written.videos_written == 1
    doc = read_document(tmp_path / "out" / "graphs" / f"{video}.json")  # validates against the schema
    assert [f["key"] for f in doc["frames"]] == keys

    # The evaluation's triplets of those frames, from the saved predictions.
    idx = [names.index(k) for k in keys]
    ranked = rank_triplets(pf.predictions, constraint=Constraint.WITH, mode=Mode.SGDET, vocabulary=pf.vocabulary,
                           max_per_frame=10_000)
    pred = pf.predictions
    compared = 0
    for frame, i in zip(doc["frames"], idx):
        rows = range(int(ranked.offsets[i]), int(ranked.offsets[i + 1]))
        expected = [(pred.pred_boxes[ranked.subject[r]].tolist(), int(pred.pred_labels[ranked.subject[r]]),
                     pred.pred_boxes[ranked.object[r]].tolist(), int(pred.pred_labels[ranked.object[r]]),
                     int(ranked.predicate[r]), float(ranked.score[r])) for r in rows]
        boxes = frame["boxes"]
        got = [(boxes[t["subject"]]["box"], boxes[t["subject"]]["label_id"], boxes[t["object"]]["box"],
                boxes[t["object"]]["label_id"], t["predicate_id"], t["score"]) for t in frame["triplets"]]
        assert got == expected, frame["key"]
        compared += len(got)
    assert compared > 0
    # RS-Net's relevance is each triplet's p_{t,0}
    t = doc["frames"][0]["triplets"][0]
    assert t["relevance"] == doc["frames"][0]["pairs"][t["pair"]]["relevance"] is not None

    # The CSV holds the same triplets.
    with open(tmp_path / "out" / "graphs" / f"{video}.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == compared
    assert float(rows[0]["score"]) == doc["frames"][0]["triplets"][0]["score"]
