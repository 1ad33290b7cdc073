"""`cli.py compare`: the statistics on hand-made numbers, the Table-2 text, p_{t,0} on a stub
model, and the command end to end (2 variants x 2 seeds): files, an interrupted run that
resumes, a rerun that neither retrains nor re-evaluates, a changed config that is refused."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner

from stage2_relations import compare
from stage2_relations.compare import (Difference, Summary, TableRow, aggregate, format_table2, paired_difference,
                                      parse_seeds, relation_score_summary, summarize)
from stage2_relations.data import Collator, VideoDataset
from stage2_relations.view_options import ViewOptions
from store import StoreWriter
from tests.helpers.stage2 import TINY_HEAD, TINY_RSNET, learnable_video, one_thread, tiny_meta, write_learnable_store

_one_thread = pytest.fixture(autouse=True, scope="module")(one_thread)


def write_store_with_test(path: Path, n_train: int = 8, n_val: int = 2, n_test: int = 3, seed: int = 0) -> Path:
    """The learnable store of tests.helpers.stage2 with a test split too (same class prototypes)."""
    meta = tiny_meta()
    protos = np.random.default_rng(seed).standard_normal((meta.vocabulary.num_objects, meta.feature_dim))
    splits = ["train"] * n_train + ["val"] * n_val + ["test"] * n_test
    with StoreWriter(path, meta) as w:
        for i, split in enumerate(splits):
            w.write_video(learnable_video(meta, f"v{i:03d}.mp4", split, seed * 1000 + i, protos))
    return path


# --- statistics on hand-made numbers ------------------------------------------------------


def test_summary_is_mean_and_sample_std():
    s = summarize([1.0, 2.0, 6.0])
    assert s.mean == pytest.approx(3.0) and s.n == 3
    # deviations -2, -1, 3: squares 4 + 1 + 9 = 14, ddof=1 -> 14 / 2 = 7
    assert s.std == pytest.approx(math.sqrt(7.0))
    one = summarize([0.25])
    assert one == Summary(0.25, None, 1)
    with pytest.raises(ValueError, match="no values"):
        summarize([])


def test_paired_difference_pairs_by_seed():
    # the reference drifts a lot between seeds, the variant follows it +2 (+-0.1): paired, the
    # difference is clear although the two samples' spreads overlap
    ref = {0: 10.0, 1: 20.0, 2: 30.0}
    var = {2: 32.1, 0: 11.9, 1: 22.0}  # order of the seeds does not matter
    d = paired_difference(var, ref)
    assert d.mean == pytest.approx(2.0) and d.n == 3
    assert d.std == pytest.approx(0.1)  # diffs 1.9, 2.0, 2.1
    assert d.exceeds_2sd is True and d.flag == "yes"
    unpaired = summarize(list(var.values())).mean - summarize(list(ref.values())).mean
    assert unpaired == pytest.approx(2.0) and summarize(list(ref.values())).std == pytest.approx(10.0)
    # diffs 1, 3, 2: mean 2, sd 1: 2 > 2 * 1 is false
    d = paired_difference({0: 1.0, 1: 3.0, 2: 2.0}, {0: 0.0, 1: 0.0, 2: 0.0})
    assert (d.mean, d.std, d.flag) == (pytest.approx(2.0), pytest.approx(1.0), "no")
    assert paired_difference({5: 3.0}, {5: 1.0}) == Difference(2.0, None, 1)
    assert Difference(2.0, None, 1).flag == "n/a" and Difference(2.0, None, 1).exceeds_2sd is None
    with pytest.raises(ValueError, match="seeds differ"):
        paired_difference({0: 1.0, 1: 2.0}, {0: 1.0, 2: 2.0})


def test_aggregate_against_the_first_variant():
    per_seed = {
        "A": {"with:R@20": {0: 0.30, 1: 0.34}, "params": {0: 100.0, 1: 100.0}},
        "B": {"with:R@20": {0: 0.35, 1: 0.37}, "params": {0: 150.0, 1: 150.0}, "p0_gap": {0: 0.2, 1: 0.4}},
    }
    agg = aggregate(per_seed, "A")
    assert agg["A"]["with:R@20"].difference is None
    assert agg["A"]["with:R@20"].summary.mean == pytest.approx(0.32)
    assert agg["A"]["with:R@20"].summary.std == pytest.approx(math.sqrt(2) * 0.02)
    d = agg["B"]["with:R@20"].difference  # diffs 0.05, 0.03
    assert d.mean == pytest.approx(0.04) and d.std == pytest.approx(math.sqrt(2) * 0.01) and d.flag == "yes"
    assert agg["B"]["params"].difference == Difference(50.0, 0.0, 2)
    assert agg["B"]["p0_gap"].difference is None  # the reference has no RS-Net


def test_parse_seeds():
    assert parse_seeds("0,1,2") == [0, 1, 2]
    assert parse_seeds("0-3") == [0, 1, 2, 3]
    assert parse_seeds(" 4, 0-1") == [4, 0, 1]
    for bad, match in (("0,x", "cannot read"), ("3-1", "empty"), ("1,1", "repeated"), ("", "cannot read")):
        with pytest.raises(ValueError, match=match):
            parse_seeds(bad)


def test_format_table2_single_seed_and_seeds():
    rows = [{"name": "STTran", "params": 126.3e6, "fps": 0.74,
             "metrics": {"R@10": 0.251, "R@20": 0.339, "P@10": 0.179, "P@20": 0.142, "mR@10": 0.165, "mR@20": 0.208}},
            {"name": "Ours-STTran", "params": 158.6e6, "fps": 0.75,
             "metrics": {"R@10": 0.283, "R@20": 0.348, "P@10": 0.207, "P@20": 0.149, "mR@10": 0.189, "mR@20": 0.232}}]
    text = format_table2(rows, reference="STTran")
    lines = text.splitlines()
    assert lines[0].split() == ["method", "Params", "(M)", "FPS", "R@10", "R@20", "P@10", "P@20", "mR@10", "mR@20"]
    assert lines[1].split() == ["STTran", "126.30", "0.74", "25.1", "33.9", "17.9", "14.2", "16.5", "20.8"]
    assert lines[2].split() == ["Ours-STTran", "158.60", "0.75", "28.3", "34.8", "20.7", "14.9", "18.9", "23.2"]
    # the paper's gains: +3.2 +0.9 +2.8 +0.7 +2.4 +2.4
    assert lines[3].split() == ["diff", "vs", "STTran", "+32.30", "+0.01", "+3.2", "+0.9", "+2.8", "+0.7", "+2.4",
                                "+2.4"]
    # over seeds: mean +- sd and the paired difference with its flag
    a = TableRow("A", Summary(1e6, 0.0, 2), Summary(10.0, 1.0, 2), {"R@20": Summary(0.30, 0.02, 2)})
    b = TableRow("B", Summary(2e6, 0.0, 2), Summary(9.0, 0.5, 2), {"R@20": Summary(0.35, 0.01, 2)},
                 diffs={"R@20": Difference(0.05, 0.01, 2), "fps": Difference(-1.0, 0.8, 2),
                        "params": Difference(1e6, 0.0, 2)})
    text = format_table2([a, b], reference="A", metrics=("R@20",), title="T")
    assert text.splitlines()[0] == "T"
    assert "30.0 +- 2.0" in text and "35.0 +- 1.0" in text and "10.00 +- 1.00" in text
    assert "+5.0 +- 1.0 yes" in text and "-1.00 +- 0.80 no" in text and "+1.00" in text
    with pytest.raises(ValueError, match="reference"):
        format_table2([a], reference="C")


class _StubScorer(torch.nn.Module):
    """p_{t,0} = 0.8 on positives, 0.2 on negatives."""

    def forward(self, batch):
        return dataclasses.make_dataclass("Out", ["pair_scores"])(0.2 + 0.6 * batch.pair_positive.float())


def test_relation_score_summary_counts_every_pair(tmp_path):
    store = write_store_with_test(tmp_path / "s.h5", n_train=0, n_val=0, n_test=3)
    ds = VideoDataset(str(store), "test", "predcls", train=True,
                      options=ViewOptions(negatives=True, negative_ratio=1e9))
    positive = torch.cat([Collator.of(ds)([ds[i]]).pair_positive for i in range(len(ds))])
    s = relation_score_summary(_StubScorer(), ds, "cpu", videos_per_batch=2)
    assert s["positives"] == int(positive.sum()) > 0 and s["negatives"] == int((~positive).sum()) > 0
    assert s["positive_mean"] == pytest.approx(0.8) and s["negative_mean"] == pytest.approx(0.2)
    assert s["gap"] == pytest.approx(0.6) and s["videos"] == 3
    # the default ratio (1.2) keeps fewer negatives: the summary's view keeps them all
    sampled = VideoDataset(str(store), "test", "predcls", train=True, options=ViewOptions(negatives=True))
    assert relation_score_summary(_StubScorer(), sampled, "cpu")["negatives"] < s["negatives"]


# --- the command ----------------------------------------------------------------------------


def _recipe(path: Path, store: Path, rsnet) -> Path:
    cfg = dict(store=str(store), mode="predcls", head="sttran", head_cfg=TINY_HEAD, rsnet=rsnet, epochs=2, lr=3e-3,
               videos_per_batch=2, preload=True, device="cpu")
    path.write_text(yaml.safe_dump(cfg))
    return path


def _invoke(*args):
    from cli import main

    return CliRunner().invoke(main, ["compare", *map(str, args)])


def test_compare_errors_are_one_line(tmp_path):
    store = write_learnable_store(tmp_path / "no_test.h5", n_train=2, n_val=1)
    a = _recipe(tmp_path / "a.yaml", store, None)
    out = tmp_path / "cmp"
    r = _invoke("--config", a, "--config", a, "--seeds", "0", "--out", out)
    assert r.exit_code == 1 and "variant names repeat" in r.output
    r = _invoke("--config", a, "--name", "A", "--name", "B", "--seeds", "0", "--out", out)
    assert r.exit_code == 1 and "2 --name for 1 --config" in r.output
    r = _invoke("--config", a, "--seeds", "0,x", "--out", out)
    assert r.exit_code == 2 and "--seeds" in r.output and "cannot read 'x'" in r.output
    r = _invoke("--config", tmp_path / "missing.yaml", "--out", out)
    assert r.exit_code == 2 and "missing.yaml" in r.output and "does not exist" in r.output
    r = _invoke("--config", a, "--out", out)
    assert r.exit_code == 1 and "no 'test' split (it has train, val)" in r.output
    r = _invoke("--config", a, "--out", out, "--set", "seed=3")
    assert r.exit_code == 1 and "--seeds" in r.output
    assert not out.exists()


def test_compare_end_to_end(tmp_path, monkeypatch):
    store = write_store_with_test(tmp_path / "s.h5")
    a = _recipe(tmp_path / "sttran.yaml", store, None)
    b = _recipe(tmp_path / "rsnet.yaml", store, TINY_RSNET)
    out = tmp_path / "cmp"
    args = ["--config", a, "--config", b, "--name", "STTran", "--name", "RSNet", "--seeds", "0,1",
            "--out", out, "--no-progress", "--device", "cpu"]

    # 1. interrupted: STTran seed 0 stops after its first epoch (last.pth holds epoch 1 of 2)
    class Interrupt(Exception):
        pass

    def echo(line):
        if line.startswith("[STTran seed 0] epoch 1/2"):
            raise Interrupt

    variants = compare.load_variants([a, b], ["STTran", "RSNet"], {"device": "cpu"})
    with pytest.raises(Interrupt):
        compare.run_comparison(variants, [0, 1], out, progress=False, echo=echo)
    assert torch.load(out / "STTran" / "seed0" / "last.pth", weights_only=False)["epoch"] == 1
    assert not (out / "STTran" / "seed1").exists()

    # 2. the command resumes it and runs the rest
    calls = {"train": [], "eval": 0, "last_eval": None}
    real_train, real_eval = compare.train, compare.evaluate_checkpoint

    def spy_train(cfg, run_dir, **kw):
        calls["train"].append((Path(run_dir).relative_to(out).as_posix(), kw["resume"]))
        return real_train(cfg, run_dir, **kw)

    def spy_eval(request, **kw):
        calls["eval"] += 1
        calls["last_eval"] = real_eval(request, **kw)
        return calls["last_eval"]

    monkeypatch.setattr(compare, "train", spy_train)
    monkeypatch.setattr(compare, "evaluate_checkpoint", spy_eval)
    r = _invoke(*args)
    assert r.exit_code == 0, r.output
    assert calls["train"] == [("STTran/seed0", True), ("STTran/seed1", False), ("RSNet/seed0", False),
                              ("RSNet/seed1", False)]
    assert calls["eval"] == 4
    # table_row (the demo's single-run Table-2 row) reads what metrics.json holds
    row = compare.table_row("x", calls["last_eval"])
    saved = compare.metric_values(json.loads((out / "RSNet" / "seed1" / "eval_test_predcls_sttran" / "metrics.json")
                                             .read_text()))
    assert row.metrics == {m: pytest.approx(saved[f"with:{m}"]) for m in compare.EVAL_METRICS}
    assert (row.params, row.fps) == (saved["params"], pytest.approx(saved["fps"]))
    assert "[STTran seed 0] resuming from last.pth at epoch 2 of 2" in r.output
    assert "[STTran seed 0] trained epochs 2-2 (resumed)" in r.output
    assert "[RSNet seed 1] trained 2 epochs, val R@20" in r.output
    for variant in ("STTran", "RSNet"):
        for seed in (0, 1):
            run = out / variant / f"seed{seed}"
            assert torch.load(run / "last.pth", weights_only=False)["epoch"] == 2
            assert yaml.safe_load((run / "config.yaml").read_text())["seed"] == seed
            assert (run / "eval_test_predcls_sttran" / "metrics.json").exists()
            assert (run / "relation_scores_test_predcls.json").exists() == (variant == "RSNet")
    for name in ("compare.json", "compare.csv", "compare.png", "compare.txt"):
        assert (out / name).exists(), name

    # the printed tables: header with seeds and threads, Table-2 columns, diff rows, p_t0
    assert "seeds 0,1 (n=2)" in r.output and f"torch threads {torch.get_num_threads()}" in r.output
    assert "Params (M)" in r.output and "mR@20" in r.output and "No constraint, object scores: sttran" in r.output
    diff_rows = [line for line in r.output.splitlines() if line.startswith("  diff vs STTran")]
    assert len(diff_rows) == 2 and all(line.rstrip().endswith(("yes", "no")) for line in diff_rows)
    assert "p_t0 (RS-Net relation score)" in r.output

    # the numbers: compare.json's aggregates are the mean / sd / paired diffs of the runs' metrics.json
    data = json.loads((out / "compare.json").read_text())
    r20 = {(v, s): json.loads((out / v / f"seed{s}" / "eval_test_predcls_sttran" / "metrics.json").read_text())
           ["results"]["with"]["recall"]["20"] for v in ("STTran", "RSNet") for s in (0, 1)}
    agg = data["aggregate"]["sttran"]["RSNet"]["with:R@20"]
    assert agg["mean"] == pytest.approx((r20["RSNet", 0] + r20["RSNet", 1]) / 2)
    assert agg["std"] == pytest.approx(abs(r20["RSNet", 0] - r20["RSNet", 1]) / math.sqrt(2))
    diffs = [r20["RSNet", s] - r20["STTran", s] for s in (0, 1)]
    assert agg["diff"]["mean"] == pytest.approx(np.mean(diffs))
    assert agg["diff"]["std"] == pytest.approx(np.std(diffs, ddof=1))
    assert data["seeds"] == [0, 1] and data["reference"] == "STTran" and len(data["runs"]) == 4
    p0 = data["aggregate"]["p0"]["RSNet"]
    assert set(p0) == {"p0_positive", "p0_negative", "p0_gap"} and "STTran" not in data["aggregate"]["p0"]
    with open(out / "compare.csv") as f:
        rows = list(csv.DictReader(f))
    row = next(x for x in rows if (x["variant"], x["rule"], x["constraint"], x["metric"]) ==
               ("RSNet", "sttran", "with", "R@20"))
    assert float(row["mean"]) == pytest.approx(agg["mean"]) and row["n"] == "2"
    assert row["exceeds_2sd"] in ("yes", "no") and float(row["diff_mean"]) == pytest.approx(agg["diff"]["mean"])
    # per variant x rule: 2 constraints x 7 metrics + params + fps; RSNet also 3 p_t0 rows
    assert len(rows) == 2 * 16 + 3

    # 3. a rerun neither retrains nor re-evaluates, and prints the same tables
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.suffix in (".pth", ".json") and p.parent != out}
    calls = {"train": [], "eval": 0, "last_eval": None}
    r2 = _invoke(*args)
    assert r2.exit_code == 0, r2.output
    assert calls == {"train": [], "eval": 0, "last_eval": None}
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert "already trained (2 epochs), not retrained" in r2.output and "0 run(s) trained now" in r2.output
    table = lambda text: text[text.index("With constraint"):text.index("compare: 2 variant")]  # noqa: E731
    assert table(r2.output) == table(r.output)

    # 4. a changed config in an existing run folder is refused, naming the folder, before any training
    r3 = _invoke(*args, "--set", "lr=0.5")
    assert r3.exit_code == 1 and str(out / "STTran" / "seed0") in r3.output and "lr: run 0.003, now 0.5" in r3.output
    assert calls == {"train": [], "eval": 0, "last_eval": None}
    # ... but another device is the same run
    r4 = _invoke(*args[:-1], "auto")
    assert r4.exit_code == 0 and calls == {"train": [], "eval": 0, "last_eval": None}
