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

from common.errors import ConfigError, InputError
from common.files import sha256_of
from rules.modes import Mode
from stage1_detect.action_genome import ReaderOptions
from stage1_detect.extract import ExtractConfig, extract
from stage1_detect.frames import FrameError
from stage1_detect.video_source import FrameSelection, LooseVideos, detect_videos, find_videos
from stage2_relations.checkpoints import run_checkpoint
from stage2_relations.eval_request import EvalRequest
from stage2_relations.evaluate_checkpoint import evaluate_checkpoint
from stage2_relations.evaluation.predictions_io import read_predictions
from stage2_relations.evaluation.structures import Constraint
from stage2_relations.evaluation.triplets import rank_triplets
from stage2_relations.recipe import TrainConfig
from stage2_relations.scene_graphs import (
    check_detector,
    documents_from_predictions,
    json_schema,
    load_sgdet_run,
    read_document,
    validate,
    write_scene_graphs,
)
from stage2_relations.train import train
from synth import SynthConfig, generate_synthetic_ag
from tests.helpers.detector import person_finding_detector
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
    weights = base / "detector.pth"
    detector, sha = person_finding_detector(weights, SETTINGS, person=PERSON)
    store = base / "store.h5"
    extract(root, store, detector, weights_sha256=sha, reader_options=READER, config=EXTRACT, progress=False)
    cfg = TrainConfig(store=str(store), mode="sgdet", head="sttran", head_cfg=TINY_HEAD, rsnet=TINY_RSNET, epochs=1,
                      lr=3e-3, videos_per_batch=1, preload=True, device="cpu", seed=0)
    run = base / "run"
    train(cfg, run, progress=False, echo=lambda line: None)
    preds_file = base / "eval_preds.npz"
    evaluate_checkpoint(EvalRequest(run_dir=run, split="test", save_predictions=preds_file, out_dir=base / "eval"),
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


@pytest.mark.slow  # the pipeline fixture: about 25 s
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
    assert doc["run"]["checkpoint_sha256"] == sha256_of(run_checkpoint(pipeline["run"]))  # what resuming compares
    assert doc["computed"] == {"device": "cpu", "torch_threads": torch.get_num_threads()}

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


def _cli(*args, code: int = 0) -> str:
    from click.testing import CliRunner

    from cli import main

    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == code, result.output
    return result.output


@pytest.mark.slow  # the pipeline fixture: about 25 s
def test_frame_numbers_are_what_read_gives(pipeline, tmp_path):
    """The listing of an mp4 and of a frame folder follows the reading rule of stage1_detect.frames."""
    video = sorted((pipeline["root"] / "videos").iterdir())[0]
    folder = pipeline["root"] / "frames" / video.name
    source = LooseVideos({"a.mp4": video, video.name: folder})
    numbers = source.frame_numbers("a.mp4")
    assert len(numbers) > 5 and numbers == sorted(numbers)
    assert source.read("a.mp4", numbers[-1:])[0].shape == (120, 160, 3)
    with pytest.raises(FrameError, match="ends before"):
        source.read("a.mp4", [numbers[-1] + 1])
    assert len(source.read("a.mp4", numbers[:1])) == 1
    pngs = sorted(int(p.stem) for p in folder.glob("*.png"))
    assert source.frame_numbers(video.name) == pngs
    assert source.key(video.name, pngs[0]) == f"{video.name}/{pngs[0]:06d}.png"
    # Frame N of the mp4 is the PNG NNNNNN.png of the dump (up to codec loss), and has its key
    assert source.key("a.mp4", pngs[-1]) == f"a.mp4/{pngs[-1]:06d}.png"
    inner = [n for n in pngs if n + 1 <= numbers[-1]]
    dumped = source.read(video.name, inner)
    same = np.mean([np.abs(d.astype(float) - p).mean() for d, p in zip(source.read("a.mp4", inner), dumped)])
    next_ = np.mean([np.abs(d.astype(float) - p).mean() for d, p in zip(source.read("a.mp4", [n + 1 for n in inner]),
                                                                       dumped)])
    assert same < 8 and same < next_, (same, next_)


def test_find_videos_names_what_it_cannot_use(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(InputError, match="notes.txt: not an .mp4 file"):
        find_videos([tmp_path / "notes.txt"])
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for name in ("000001.png", "000002.jpg"):
        (mixed / name).write_bytes(b"")
    with pytest.raises(InputError, match="both .png and .jpg"):
        find_videos([mixed])
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for d in ("a", "b"):
        (tmp_path / d / "clip.mp4").write_bytes(b"")
    with pytest.raises(InputError, match="a second video named 'clip.mp4'"):
        find_videos([tmp_path / "a", tmp_path / "b"])


@pytest.mark.slow  # the pipeline fixture: about 25 s
def test_schema_rejects_what_it_does_not_describe(pipeline, tmp_path):
    pf = read_predictions(pipeline["preds"])
    video = pf.predictions.frame_names[0].split("/")[0]
    (doc,) = [d for d in documents_from_predictions(pipeline["preds"]) if d["video"] == video]
    validate(doc)
    assert json_schema()["properties"]["schema_version"] == {"const": 1}
    broken = json.loads(json.dumps(doc))
    broken["frames"][0]["triplets"][0]["score"] = 1.5
    with pytest.raises(InputError, match=r"\$\.frames\[0\]\.triplets\[0\]\.score: 1.5 outside"):
        validate(broken)
    del broken["frames"][0]["boxes"]
    with pytest.raises(InputError, match="missing 'boxes'"):
        validate(broken)


@pytest.mark.slow  # the pipeline fixture: about 25 s
def test_predict_refuses_another_detector_and_a_non_sgdet_run(pipeline, tmp_path):
    run = load_sgdet_run(pipeline["run"])
    with pytest.raises(ConfigError, match="is not the one of the run's store"):
        check_detector(run, "0" * 64, "small")
    cfg = TrainConfig(store=str(pipeline["store"]), mode="predcls", head="sttran", head_cfg=TINY_HEAD, epochs=1,
                      videos_per_batch=2, preload=True, device="cpu", seed=0)
    train(cfg, tmp_path / "predcls", progress=False, echo=lambda line: None)
    with pytest.raises(ConfigError, match="a predcls run; predict needs an SGDET run"):
        load_sgdet_run(tmp_path / "predcls")


@pytest.mark.slow  # the pipeline fixture: about 25 s
def test_predict_and_view_from_the_command_line(pipeline, tmp_path):
    """predict on a frame folder and an mp4 outside the dataset, resumed; a rerun with another
    frame rate is refused; view of predict's output and of the evaluated run, read in Chromium."""
    from selenium.webdriver.common.by import By

    from tests.helpers.browser import assert_not_blank, chromium, wait_for

    videos = sorted((pipeline["root"] / "videos").iterdir())
    clips = tmp_path / "clips"
    clips.mkdir()
    shutil.copy(videos[0], clips / videos[0].name)
    shutil.copytree(pipeline["root"] / "frames" / videos[1].name, clips / "dump")  # a folder of PNG frames
    out = tmp_path / "out"
    args = ["predict", clips / videos[0].name, clips / "dump", "--run", pipeline["run"], "--weights",
            pipeline["weights"], "--out", out, "--every", "3", "--device", "cpu", "--threads", "1"]
    printed = _cli(*args)
    assert "predict: 2 videos" in printed and "0 already done" in printed
    docs = {p.stem: read_document(p) for p in out.glob("*.json") if p.name != "scene_graphs.schema.json"}
    assert set(docs) == {videos[0].name, "dump"}
    mp4 = docs[videos[0].name]
    every = LooseVideos({"v": videos[0]}).frame_numbers("v")[::3]
    assert [f["number"] for f in mp4["frames"]] == every
    assert mp4["source"] == str((clips / videos[0].name).resolve()) and mp4["run"]["rsnet"]
    assert [f["key"] for f in docs["dump"]["frames"]] == [
        f"dump/{p.name}" for p in sorted((clips / "dump").glob("*.png"))][::3]
    assert json.loads((out / "scene_graphs.schema.json").read_text()) == json_schema()
    assert "0 videos" in _cli(*args) and "2 already done" in _cli(*args)  # resumed: nothing to redo
    refused = _cli(*args[:-6], "--every", "2", "--device", "cpu", "--threads", "1", code=1)
    assert "holds the frames of another selection (one frame in 3, not one frame in 2)" in refused
    (clips / "broken.mp4").write_bytes(b"not a video " * 300)  # reported; the other video goes on
    failed = _cli("predict", clips / "broken.mp4", clips / videos[0].name, *args[3:7], "--out", tmp_path / "out2",
                  "--every", "3", "--device", "cpu", "--threads", "1", code=3)
    assert "1 failed: " in failed and "broken.mp4: undecodable video" in failed and "predict: 1 videos" in failed
    assert read_document(tmp_path / "out2" / f"{videos[0].name}.json")["frames"] == mp4["frames"]
    (tmp_path / "keys.txt").write_text("another.mp4/000001.png\n")
    failed = _cli("predict", clips / videos[0].name, *args[3:7], "--out", tmp_path / "out3", "--frames",
                  tmp_path / "keys.txt", "--device", "cpu", "--threads", "1", code=3)
    assert f"{videos[0].name}: none of its frames is selected (1 listed frame keys (" in failed

    page_dir = tmp_path / "page"
    printed = _cli("view", out, pipeline["preds"], "--name", "predict", "--name", "eval", "--out", page_dir,
                   "--video", videos[0].name)
    assert "view: 1 videos, 2 run(s)" in printed and (page_dir / "index.html").as_uri() in printed
    assert len(list((page_dir / "frames").rglob("*.jpg"))) == len(mp4["frames"])
    with chromium() as driver:
        driver.get((page_dir / "index.html").as_uri())
        wait_for(driver, '.run[data-run="0"] table.trips')
        rows = driver.find_elements(By.CSS_SELECTOR, '.run[data-run="0"] table.trips tr[data-rank]')
        frame = mp4["frames"][0]
        name = lambda i: f"{frame['boxes'][i]['label']}#{i}"  # noqa: E731
        expected = [[name(t["subject"]), t["predicate"], name(t["object"]), f"{t['score']:.4f}"]
                    for t in frame["triplets"][:10]]
        assert [[td.text for td in r.find_elements(By.TAG_NAME, "td")][1:5] for r in rows] == expected
        image = driver.find_element(By.CSS_SELECTOR, '.run[data-run="0"] .pic img')
        assert driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth", image) == 160
        assert_not_blank(driver.get_screenshot_as_png())


@pytest.mark.slow  # the pipeline fixture: about 25 s
def test_the_demo_ends_with_the_page(pipeline):
    from demo import write_demo_page

    lines = []
    page = write_demo_page(pipeline["base"], {"STTran + RS-Net": pipeline["run"]}, detector=pipeline["weights"],
                           videos=2, echo=lines.append)
    tested = {n.split("/")[0] for n in read_predictions(pipeline["preds"]).predictions.frame_names}
    n = min(2, len(tested))
    assert lines == [f"[page] scene graphs of {n} test videos, STTran + RS-Net | STTran + RS-Net, every frame "
                     f"(predict): open {page.resolve().as_uri()}"]
    data = sorted((page.parent / "data").glob("*.js"))
    assert len(data) == n and len(list((page.parent / "frames").rglob("*.jpg"))) > 0
    first = json.loads(data[0].read_text().removeprefix("SG.loaded(").rstrip().removesuffix(");"))
    evaluated, predicted = first["runs"]
    # predict read every frame of the video, the evaluation its annotated SGDET frames only
    assert sum(f is not None for f in predicted) == len(first["frames"]) > sum(f is not None for f in evaluated) > 0
    assert all("gt" in f for f in evaluated if f is not None)
