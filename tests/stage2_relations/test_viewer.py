"""``cli.py view`` (stage2_relations.viewer) on a hand-built evaluated run: two frames whose
triplets, hits, recalls and RS-Net suppressions are worked out by hand below, as documents
and as a page rendered in headless Chromium."""

from __future__ import annotations

import json

import numpy as np
import pytest

from common.errors import InputError
from rules.modes import Mode
from stage2_relations.evaluation.predictions_io import write_predictions
from stage2_relations.evaluation.structures import FrameGroundTruth, FramePredictions, GroundTruthSet, PredictionSet
from stage2_relations.scene_graphs import documents_from_predictions, validate
from stage2_relations.viewer import ViewOptions, ViewRun, _base_ranks, load_run, write_page
from store.vocabulary import ACTION_GENOME as V
from tests.helpers.browser import assert_not_blank, chromium, wait_for

CUP, TABLE = V.objects.index("cup"), V.objects.index("table")
LOOKING_AT, IN_FRONT_OF, BEHIND, ABOVE = 0, 5, 6, 3
HOLDING, TOUCHING = V.predicates.index("holding"), V.predicates.index("touching")
PERSON_BOX, CUP_BOX, TABLE_BOX = [10, 10, 50, 70], [60, 40, 80, 60], [0, 60, 100, 80]


def _row(n: int, at: int, p: float, rest: float) -> list[float]:
    row = [rest] * n
    row[at] = p
    return row


def _contacting(pid: int, p: float) -> list[float]:
    return _row(17, pid - 9, p, 0.1)


def _frames(rsnet: bool):
    """Frame 1: person and cup (scores 0.9, 0.5), one pair, relevance 0.5. Frame 2: person,
    cup and table (scores 1), pairs (person, cup) with relevance 0.1 and (person, table) with 0.9.
    Probabilities are powers of two or tenths whose float32 products round as shown."""
    a = FramePredictions(
        pred_boxes=np.array([PERSON_BOX, CUP_BOX]), pred_labels=np.array([1, CUP]), pred_scores=np.array([0.9, 0.5]),
        pred_pairs=np.array([[0, 1]]), pred_attention=np.array([[0.7, 0.2, 0.1]]),
        pred_spatial=np.array([_row(6, BEHIND - 3, 0.6, 0.1)]), pred_contacting=np.array([_contacting(HOLDING, 0.5)]),
        pred_pair_scores=np.array([0.5]) if rsnet else None)
    b = FramePredictions(
        pred_boxes=np.array([PERSON_BOX, CUP_BOX, TABLE_BOX]), pred_labels=np.array([1, CUP, TABLE]),
        pred_scores=np.ones(3), pred_pairs=np.array([[0, 1], [0, 2]]),
        pred_attention=np.array([[0.9, 0.05, 0.05], [0.5, 0.3, 0.2]]),
        pred_spatial=np.array([_row(6, BEHIND - 3, 0.8, 0.1), _row(6, ABOVE - 3, 0.4, 0.1)]),
        pred_contacting=np.array([_contacting(HOLDING, 0.7), _contacting(TOUCHING, 0.3)]),
        pred_pair_scores=np.array([0.1, 0.9]) if rsnet else None)
    gt_a = FrameGroundTruth(np.array([PERSON_BOX, CUP_BOX]), np.array([1, CUP]),
                            np.array([[0, 1, LOOKING_AT], [0, 1, IN_FRONT_OF]]))
    gt_b = FrameGroundTruth(np.array([PERSON_BOX, CUP_BOX]), np.array([1, CUP]), np.array([[0, 1, HOLDING]]))
    return [a, b], [gt_a, gt_b]


def _file(tmp_path, rsnet: bool):
    names = ["v.mp4/000001.png", "v.mp4/000002.png"]
    preds, gts = _frames(rsnet)
    widths = (3, 6, 17)
    return write_predictions(tmp_path / f"{'rsnet' if rsnet else 'base'}.npz",
                             PredictionSet.from_frames(preds, widths=widths, frame_names=names), mode=Mode.SGDET,
                             ground_truth=GroundTruthSet.from_frames(gts, frame_names=names), vocabulary=V,
                             metadata={"config": {"head": "sttran"}})


def _trip(doc, f):
    return [(t["subject"], t["predicate"], t["object"], t["score"], t["hit"]) for t in doc["frames"][f]["triplets"]]


def test_documents_of_an_evaluated_run_by_hand(tmp_path):
    (doc,) = documents_from_predictions(_file(tmp_path, rsnet=True))
    validate(doc)
    assert doc["run"]["rsnet"] and doc["video"] == "v.mp4"
    # Frame 1, weight s_person * s_cup * p_{t,0} = 0.9 * 0.5 * 0.5 = 0.225:
    # looking_at 0.225 * 0.7 = 0.1575 (GT: hit), behind (cup, person) 0.225 * 0.6 = 0.135 (GT says
    # in_front_of: miss), holding 0.225 * 0.5 = 0.1125 (not in GT: miss).
    got = _trip(doc, 0)
    assert [g[:3] for g in got] == [(0, "looking_at", 1), (1, "behind", 0), (0, "holding", 1)]
    assert [g[3] for g in got] == pytest.approx([0.1575, 0.135, 0.1125], rel=1e-6)
    assert [g[4] for g in got] == [True, False, False]
    gt = doc["frames"][0]["ground_truth"]["triplets"]
    # GT spatial triplets are (object, person): in_front_of reads (cup, person)
    assert [(t["subject"], t["predicate"], t["object"], t["recalled_at_rank"]) for t in gt] == [
        (0, "looking_at", 1, 0), (1, "in_front_of", 0, None)]
    # Frame 2: (person, table) 0.9 * {0.5, 0.4, 0.3} = 0.45, 0.36, 0.27 rank 0-2; (person, cup)
    # 0.1 * {0.9, 0.8, 0.7} = 0.09, 0.08, 0.07 rank 3-5; holding (rank 5) recalls the GT.
    got = _trip(doc, 1)
    assert [g[3] for g in got] == pytest.approx([0.45, 0.36, 0.27, 0.09, 0.08, 0.07], rel=1e-6)
    assert [g[4] for g in got] == [False] * 5 + [True]
    assert doc["frames"][1]["ground_truth"]["triplets"][0]["recalled_at_rank"] == 5
    # Without the relevance the (person, cup) triplets rank first: 0.9, 0.8, 0.7 before 0.5, 0.4, 0.3.
    assert _base_ranks(doc["frames"][1]) == [3, 4, 5, 0, 1, 2]


def test_page_refuses_runs_of_two_vocabularies(tmp_path):
    (doc,) = documents_from_predictions(_file(tmp_path, rsnet=False))
    other = json.loads(json.dumps(doc))
    other["vocabulary"]["objects"][CUP] = "mug"
    with pytest.raises(InputError, match="another vocabulary"):
        write_page([ViewRun("a", [doc]), ViewRun("b", [other])], tmp_path / "page")


def _rows(driver, run: int, table: str = "trips"):
    from selenium.webdriver.common.by import By

    rows = driver.find_elements(By.CSS_SELECTOR, f'.run[data-run="{run}"] table.{table} tr[class]')
    return [(r.get_attribute("class"), [td.text for td in r.find_elements(By.TAG_NAME, "td")]) for r in rows]


def _expected(doc, f, k, groups=("attention", "spatial", "contacting")):
    frame = doc["frames"][f]
    name = lambda i: f"{frame['boxes'][i]['label']}#{i}"  # noqa: E731
    return [("hit" if t["hit"] else "miss",
             [str(t["rank"] + 1), name(t["subject"]), t["predicate"], name(t["object"]), f"{t['score']:.4f}"])
            for t in frame["triplets"] if t["rank"] < k and t["group"] in groups]


def test_page_in_chromium_shows_the_triplets_hits_and_suppressions(tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    base, rsnet = load_run(_file(tmp_path, rsnet=False), "STTran"), load_run(_file(tmp_path, rsnet=True),
                                                                              "STTran + RS-Net")
    page = write_page([base, rsnet], tmp_path / "page", options=ViewOptions(top_k=3), progress=False)
    assert page.stat().st_size < 40_000  # the scene graphs live in data/*.js, loaded per video
    docs = [base.documents[0], rsnet.documents[0]]
    with chromium() as driver:
        driver.get(page.as_uri())
        wait_for(driver, '.run[data-run="1"] table.trips')
        for run in (0, 1):  # frame 1 at top-3: the triplets, numbered, with their hit or miss
            assert [(c, cells[:5]) for c, cells in _rows(driver, run)] == _expected(docs[run], 0, 3)
        gts = _rows(driver, 1, "gts")
        assert [(c, cells[1], cells[3]) for c, cells in gts] == [("hit", "looking_at", "hit at 1"),
                                                                 ("miss", "in_front_of", "miss")]
        driver.find_element(By.CSS_SELECTOR, '#strip div[data-i="1"]').click()  # frame 2
        wait_for(driver, ".run table.sup")
        assert [(c, cells[:5]) for c, cells in _rows(driver, 1)] == _expected(docs[1], 1, 3)
        # RS-Net's relevance pushed the (person, cup) triplets from ranks 1-3 to 4-6; the baseline has none
        sup = _rows(driver, 1, "sup")
        assert [cells[:4] for _, cells in sup] == [["1→4", "person#0", "looking_at", "cup#1"],
                                                   ["2→5", "cup#1", "behind", "person#0"],
                                                   ["3→6", "person#0", "holding", "cup#1"]]
        assert _rows(driver, 0, "sup") == []
        assert [cells[3] for _, cells in _rows(driver, 1, "gts")] == ["miss"]  # holding ranks 6th
        Select(driver.find_element(By.ID, "topk")).select_by_value("10")
        assert [(c, cells[:5]) for c, cells in _rows(driver, 1)] == _expected(docs[1], 1, 10)
        assert [cells[3] for _, cells in _rows(driver, 1, "gts")] == ["hit at 6"]
        driver.find_element(By.CSS_SELECTOR, '.grp[value="spatial"]').click()  # hide the spatial group
        shown = _rows(driver, 1)
        assert [(c, cells[:5]) for c, cells in shown] == _expected(docs[1], 1, 10, ("attention", "contacting"))
        assert len(shown) == 4
        timeline = driver.find_elements(By.CSS_SELECTOR, '.tl tr[data-run="1"] th')
        labels = {e.text for e in timeline}
        assert "person – looking_at – cup" in labels and "cup – behind – person" not in labels
        # the over-time row of (person, holding, cup): predicted in both frames; the GT of frame 2
        # has it, recalled within the top-10 (green outline)
        (row,) = [r for r in driver.find_elements(By.CSS_SELECTOR, '.tl tr[data-run="1"]')
                  if r.find_element(By.TAG_NAME, "th").text == "person – holding – cup"]
        cells = row.find_elements(By.TAG_NAME, "td")
        assert [c.get_attribute("class").strip() for c in cells] == ["", "gtok"]
        assert [float(c.get_attribute("data-score")) for c in cells] == pytest.approx([0.1125, 0.07], rel=1e-3)
        assert_not_blank(driver.get_screenshot_as_png())


def test_bad_inputs_of_view_and_predict_say_what_is_wrong(tmp_path):
    from click.testing import CliRunner

    from cli import main

    def cli(*args):
        result = CliRunner().invoke(main, [str(a) for a in args])
        return result.exit_code, result.output

    (tmp_path / "broken.json").write_text('{"format": "dsgg-scene-graphs", "schema_version": 1}')
    (tmp_path / "future.json").write_text('{"format": "dsgg-scene-graphs", "schema_version": 9}')
    assert cli("view", tmp_path / "broken.json", "--out", tmp_path / "p") == (
        1, f"Error: {tmp_path / 'broken.json'}: $: missing 'video'\n")
    assert cli("view", tmp_path / "future.json", "--out", tmp_path / "p") == (
        1, f"Error: {tmp_path / 'future.json'}: schema version 9, this code reads 1\n")
    assert cli("view", _file(tmp_path, rsnet=False), "--out", tmp_path / "p", "--video", "nothere.mp4") == (
        1, "Error: video 'nothere.mp4' is in none of the runs\n")
    (tmp_path / "run").mkdir()
    (tmp_path / "keys.txt").write_text("v.mp4/000001.png\n")
    code, out = cli("predict", tmp_path / "keys.txt", "--run", tmp_path / "run", "--weights", tmp_path / "keys.txt",
                    "--out", tmp_path / "o", "--every", "2", "--frames", tmp_path / "keys.txt")
    assert (code, out.splitlines()[-1]) == (2, "Error: give --every or --frames, not both")
