"""``cli.py eval``'s options as one request, and the one test view that eval scores and that
compare checks an earlier evaluation against."""

from __future__ import annotations

import dataclasses
import json

import pytest

from cli import main
from rules.modes import Mode
from rules.pairing import SgdetBoxes
from stage2_relations.compare import CONSTRAINTS, SPLIT, evaluation_is_current, scored_view
from stage2_relations.eval_request import EvalRequest, Protocol
from stage2_relations.evaluate_checkpoint import EvaluationView, evaluation_view
from stage2_relations.evaluation.structures import Constraint, MeanRecall, PaddedCells, PrecisionDenominator
from stage2_relations.recipe import check_config
from stage2_relations.view_options import ObjectScores

EVAL = main.commands["eval"]


def _request(*args: str) -> EvalRequest:
    params = dict(EVAL.make_context("eval", list(args)).params)
    params.pop("threads")
    return EvalRequest.from_options(**params)


def test_every_eval_option_is_a_field_of_the_request():
    """Declared once: each option's name is a field of EvalRequest or of its Protocol (threads
    the command applies itself), and the choices of a rule are its enum's values."""
    fields = {f.name for f in dataclasses.fields(EvalRequest)} | {f.name for f in dataclasses.fields(Protocol)}
    options = {p.name for p in EVAL.params} - {"help", "threads"}
    assert options <= fields and fields - options == {"protocol"}
    kinds = {"sgdet_boxes": SgdetBoxes, "object_scores": ObjectScores, "constraints": Constraint,
             "mean_recall": MeanRecall, "padded_cells": PaddedCells, "precision_denominator": PrecisionDenominator,
             "mode": Mode}
    for p in EVAL.params:
        if p.name in kinds:
            assert list(p.type.choices) == [m.value for m in kinds[p.name]], p.name


def test_the_options_become_the_request(tmp_path):
    r = _request("--run", str(tmp_path))
    assert r == EvalRequest(run_dir=tmp_path) and r.sources == 1
    assert r.protocol == Protocol() and r.protocol.constraints == (Constraint.WITH, Constraint.SEMI, Constraint.NO)
    (tmp_path / "x.pth").write_bytes(b"")
    r = _request("--run", str(tmp_path), "--checkpoint", str(tmp_path / "x.pth"), "--constraint", "no", "--constraint",
                 "with", "--mean-recall", "all_frames", "--padded-cells", "ignore", "--precision-denominator",
                 "returned", "--iou-threshold", "0.7", "--semi-threshold", "0.5", "--sgdet-boxes", "raw",
                 "--object-scores", "detector", "--mode", "sgdet", "--split", "val", "--max-videos", "2")
    assert r.sources == 2 and (r.split, r.max_videos, r.mode) == ("val", 2, Mode.SGDET)
    assert (r.sgdet_boxes, r.object_scores) == (SgdetBoxes.RAW, ObjectScores.DETECTOR)
    assert r.protocol == Protocol(constraints=(Constraint.NO, Constraint.WITH), semi_threshold=0.5,
                                  mean_recall=MeanRecall.ALL_FRAMES, padded_cells=PaddedCells.IGNORE,
                                  precision_denominator=PrecisionDenominator.RETURNED, iou_threshold=0.7)
    assert r.protocol.scoring() == dict(semi_threshold=0.5, padded_cells=PaddedCells.IGNORE,
                                        precision_denominator=PrecisionDenominator.RETURNED, iou_threshold=0.7)


@pytest.mark.parametrize("recipe, rule", [({"mode": "sgdet"}, "sttran"), ({"mode": "sgdet"}, "detector"),
                                          ({"mode": "sgcls"}, "classifier"),
                                          ({"mode": "sgdet", "head": "dsgdetr", "sgdet_boxes": "raw"}, "sttran")])
def test_compare_checks_the_view_eval_scores(recipe, rule):
    """compare's 'already evaluated' check and eval's scoring read one EvaluationView: what
    evaluate_checkpoint writes into metrics.json (through JSON) is current, and any other store,
    split, mode or view option is not."""
    cfg = check_config({"store": "/data/s.h5", **recipe}, "recipe.yaml")
    view = evaluation_view(cfg, SPLIT, object_scores=rule)
    assert scored_view(cfg, rule) == view and isinstance(view, EvaluationView)
    assert view.mode is Mode(cfg.mode) and view.options.negatives is False
    written = json.loads(json.dumps({**view.describe(), "results": {c: {} for c in CONSTRAINTS},
                                     "compare": {"checkpoint_sha256": "abc"}}))
    assert evaluation_is_current(written, cfg, rule, "abc")
    assert not evaluation_is_current(written, cfg, rule, "abd")
    other_boxes = "raw" if view.options.sgdet_boxes is SgdetBoxes.STTRAN else "sttran"
    for key, value in (("store", "/data/t.h5"), ("split", "val"), ("mode", "predcls")):
        assert not evaluation_is_current({**written, key: value}, cfg, rule, "abc"), key
    changed = {**written, "view": {**written["view"], "sgdet_boxes": other_boxes}}
    assert not evaluation_is_current(changed, cfg, rule, "abc")
