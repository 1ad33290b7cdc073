"""`cli.py reproduce`: the paper's figures (data file consistent with its printed gains), the
Table 4 rows as recipe options, both recipe sets, our numbers per row on hand-made seeds, the
expected time by hand, and the command end to end on a tiny store: three tables with the
published figures, interrupted after Table 2 then rerun (only the missing runs train), and a
rerun that trains nothing and prints the same tables."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

from common.errors import ConfigError
from stage2_relations import compare
from stage2_relations.evaluation.seeds import Difference, Summary
from stage2_relations.reproduce import (
    RUN_OVERHEAD_S,
    VARIANTS,
    Estimate,
    estimate_time,
    load_published,
    load_recipe_set,
    only_rows,
    parse_tables,
    plan_tables,
    table_rows,
)
from stage2_relations.reproduce_report import csv_rows, format_latex, format_markdown, paper_gain
from store.reader import store_location
from tests.helpers.stage2 import TINY_HEADS, TINY_RSNET, one_thread
from tests.stage2_relations.test_compare import write_store_with_test

_one_thread = pytest.fixture(autouse=True, scope="module")(one_thread)


# --- the paper's figures and the variants -------------------------------------------------


def test_published_figures_agree_with_the_papers_printed_gains():
    tables = load_published()
    assert sorted(tables) == [2, 3, 4]
    assert (tables[2].mode, tables[3].mode, tables[4].mode) == ("sgdet", "sgcls", "sgdet")
    gains = 0
    for t in tables.values():
        by_variant = {r.variant: r for r in t.rows}
        for r in t.rows:
            assert set(t.columns) <= set(r.values), (t.number, r.method)
            for c, g in (r.gain or {}).items():  # e.g. Table 2 Ours-STTran R@10: 28.3 - 25.1 = +3.2
                assert g == pytest.approx(r.values[c] - by_variant[r.baseline].values[c], abs=0.051), (t.number, c)
                gains += 1
    assert gains == 3 * 6 + 3 * 4  # every printed gain of Tables 2 and 3
    assert tables[2].rows[1].values["R@10"] == 28.3 and tables[2].rows[0].values["params"] == 126.3
    assert tables[3].rows[5].values["P@20"] == 56.3 and tables[4].rows[0].values["R@10"] == 28.0
    assert tables[2].variants == ["sttran", "sttran_rsnet", "stket", "stket_rsnet", "dsgdetr", "dsgdetr_rsnet"]
    # Table 4's five rows are four runs: learnable token = with context fusion = the full model
    assert tables[4].variants == ["sttran_rsnet_no_temporal", "sttran_rsnet_mean_token", "sttran_rsnet",
                                  "sttran_rsnet_no_fusion"]


@pytest.mark.parametrize("set_name", ["paper", "small"])
def test_every_table_variant_resolves_with_its_mode_and_ablation_option(set_name, tmp_path):
    recipes = load_recipe_set(set_name)
    plan = plan_tables([2, 3, 4], recipes, tmp_path, {"store": "unused.h5"})
    rsnet = {}
    for table, folder, variants in plan:
        assert folder == tmp_path / table.mode
        for v in variants:
            assert v.config.mode == table.mode and v.config.store == store_location("unused.h5")  # absolute: one store
            assert v.recipe == str(recipes.recipes[VARIANTS[v.name].recipe])
            if table.number == 4:
                rsnet[v.name] = (v.config.rsnet["temporal_token"] if "temporal_token" in v.config.rsnet
                                 else "learnable", v.config.rsnet.get("context_fusion", True))
    # the paper's wording -> the recipe options (docs/reproduce.md)
    assert rsnet == {"sttran_rsnet": ("learnable", True),            # learnable token, with context fusion
                     "sttran_rsnet_no_temporal": ("none", False),    # no temporal encoder
                     "sttran_rsnet_mean_token": ("mean", True),      # mean token ĉ_mean
                     "sttran_rsnet_no_fusion": ("learnable", False)}  # no context fusion
    sizes = {v.config.head_cfg.get("hidden") for _, _, vs in plan for v in vs}
    assert sizes == ({None} if set_name == "paper" else {64})  # paper: full size (the heads' defaults)
    if set_name == "paper":
        assert {v.config.epochs for _, _, vs in plan for v in vs} == {10}
        assert {v.config.lr for _, _, vs in plan for v in vs} == {1e-5, 2e-5}  # STKET's own 2e-5


def test_bad_tables_and_sets_are_one_line(tmp_path):
    assert parse_tables("4, 2") == [4, 2]
    for bad in ("1", "2,x", ""):
        with pytest.raises(ConfigError, match="--tables"):
            parse_tables(bad)
    with pytest.raises(ConfigError, match="no such recipe set; known: paper, small"):
        load_recipe_set("huge")
    (tmp_path / "s.yaml").write_text("recipes: {sttran: a.yaml}\n")
    with pytest.raises(ConfigError, match="missing dsgdetr"):
        load_recipe_set(tmp_path / "s.yaml")
    with pytest.raises(ConfigError, match="without its baseline"):
        only_rows(load_published()[2], ["sttran_rsnet"])


# --- our numbers per row, by hand ---------------------------------------------------------------


class _Seeds:
    """What table_rows reads of a Comparison: per_seed(rule) and the seeds."""

    seeds = [0, 1, 2]

    def __init__(self, per_seed):
        self._per_seed = per_seed

    def per_seed(self, rule):
        return self._per_seed


def _variant(r10: dict[int, float], params: float) -> dict:
    keys = [f"with:{m}" for m in ("R@10", "R@20", "P@10", "P@20", "mR@10", "mR@20")]
    return {**{k: r10 for k in keys}, "params": {s: params for s in r10}, "fps": {0: 10.0, 1: 12.0, 2: 14.0}}


def test_table_rows_and_cells_by_hand():
    table = only_rows(load_published()[2], ["sttran", "sttran_rsnet"])
    per_seed = {"sttran": _variant({0: 0.30, 1: 0.32, 2: 0.34}, 1.0e6),
                "sttran_rsnet": _variant({0: 0.35, 1: 0.36, 2: 0.40}, 1.5e6)}
    from stage2_relations.reproduce import TableResult

    rows = table_rows(table, _Seeds(per_seed))
    base, ours = rows
    assert base.values["R@10"] == Summary(pytest.approx(32.0), pytest.approx(2.0), 3)  # 30, 32, 34 percent
    # 35, 36, 40: deviations -2, -1, 3 -> sd sqrt(14 / 2) = sqrt(7)
    assert ours.values["R@10"].mean == pytest.approx(37.0) and ours.values["R@10"].std == pytest.approx(math.sqrt(7))
    assert base.diffs is None
    # per seed 5, 4, 6: mean 5, sd 1, 5 > 2 * 1
    assert ours.diffs["R@10"] == Difference(pytest.approx(5.0), pytest.approx(1.0), 3)
    assert ours.values["params"].mean == pytest.approx(1.5) and ours.diffs["params"].mean == pytest.approx(0.5)
    result = TableResult(table, _Seeds(per_seed), rows)
    md = format_markdown([result])
    lines = [line for line in md.splitlines() if line.startswith("| ")]
    assert [c.strip() for c in lines[1].split("|")[1:-1]] == [
        "STTran† [1]", "sttran", "1.00 [126.3]", "12.00 ± 2.00 [0.74]"] + [
        f"32.0 ± 2.0 [{v}]" for v in ("25.1", "33.9", "17.9", "14.2", "16.5", "20.8")]
    diff = [c.strip() for c in lines[3].split("|")[1:-1]]
    assert diff[:4] == ["Δ vs sttran", "paired", "+0.50 [+32.3]", "+0.00 ± 0.00 [+0.01]"]
    assert diff[4] == "+5.0 ± 1.0 >2sd [+3.2]" and diff[5] == "+5.0 ± 1.0 >2sd [+0.9]"
    assert "the paper's figure (Table 2. Performance comparison" in md
    tex = format_latex([result])
    assert r"32.0 $\pm$ 2.0 [25.1]" in tex and r"STTran$^\dagger$ [1]" in tex and r"$\Delta$ vs sttran" in tex
    assert r"+5.0 $\pm$ 1.0 $>$2sd [+3.2]" in tex
    csv = {(r["variant"], r["column"]): r for r in csv_rows([result])}
    assert csv["sttran_rsnet", "R@10"]["paper"] == 28.3 and csv["sttran_rsnet", "R@10"]["paper_diff"] == 3.2
    assert csv["sttran_rsnet", "R@10"]["diff_mean"] == pytest.approx(5.0)
    assert csv["sttran_rsnet", "R@10"]["exceeds_2sd"] == "yes" and csv["sttran", "R@10"]["diff_vs"] == ""


def test_table4_paper_difference_is_of_its_values():
    table = load_published()[4]
    from stage2_relations.reproduce import RowResult, TableResult

    row = RowResult(table.rows[0], "x", {}, None, {})
    assert paper_gain(TableResult(table, None, []), row, "R@10") == pytest.approx(28.0 - 28.3)


# --- the expected time, by hand ---------------------------------------------------------------


def test_estimate_by_hand(tmp_path):
    store = write_store_with_test(tmp_path / "s.h5", n_train=4, n_val=1, n_test=2)  # 4 frames a video
    recipes = {}
    for key in ("sttran", "sttran_rsnet"):
        recipes[key] = tmp_path / f"{key}.yaml"
        recipes[key].write_text(yaml.safe_dump(dict(store=str(store), head_cfg=TINY_HEADS["sttran"], epochs=2,
                                                     rsnet=TINY_RSNET if key.endswith("rsnet") else None,
                                                     device="cpu")))
    variants = compare.load_variants([recipes["sttran"], recipes["sttran_rsnet"]], ["sttran", "sttran_rsnet"])
    bench = tmp_path / "train_speed.json"
    bench.write_text(json.dumps({"device": "cpu", "rows": [{"recipe": "configs/sttran.yaml", "store_s": 2.0,
                                                            "frames": 100}]}))
    done = tmp_path / "out" / "sttran" / "seed0"  # one of its 2 epochs trained
    done.mkdir(parents=True)
    (done / "last.pth").write_bytes(b"x")
    (done / "log.json").write_text(json.dumps([{"epoch": 1}]))
    est = estimate_time([(tmp_path / "out", v) for v in variants], [0, 1], bench)
    # sttran from the bench row: 2.0 s / 100 frames = 0.02 s a frame; 16 train, 4 val, 8 test frames
    epoch = 0.02 * (16 + 4 / 3)          # 0.34667 s
    run = 2 * epoch + 0.02 / 3 * 8 + RUN_OVERHEAD_S
    # sttran_rsnet: the documented small CPU figure, test frames twice (p_t0)
    from stage2_relations.reproduce import DOCUMENTED_STEP_S

    c = DOCUMENTED_STEP_S["small", "sttran_rsnet"]
    run_rs = 2 * c * (16 + 4 / 3) + 2 * c / 3 * 8 + RUN_OVERHEAD_S
    assert est.seconds == pytest.approx(2 * run + 2 * run_rs)
    assert est.remaining_seconds == pytest.approx(est.seconds - epoch) and (est.runs, est.remaining_runs) == (4, 4)
    assert est.sources == ("sttran.yaml: bench/results/train_speed.json (sttran.yaml)",
                           "sttran_rsnet.yaml: documented CPU figure for small sttran_rsnet")
    assert Estimate(600, 60, 4, 1, ()).line() == "expected time: 10.0 min for 4 runs, 1.0 min for the 1 not yet trained"
    assert Estimate(7200, 5400, 4, 3, ()).line().startswith("expected time: 2.0 h for 4 runs, 1.5 h for the 3")


# --- the command end to end ---------------------------------------------------------------


def _recipe_set(tmp_path: Path, store: Path) -> Path:
    recipes = {}
    for head in ("sttran", "stket", "dsgdetr"):
        for rs in (False, True):
            key = head + ("_rsnet" if rs else "")
            cfg = dict(store=str(store), mode="sgdet", head=head, head_cfg=TINY_HEADS[head],
                       rsnet=TINY_RSNET if rs else None, epochs=1, lr=3e-3, videos_per_batch=2, preload=True,
                       device="cpu")
            if head == "dsgdetr":
                cfg["sgdet_boxes"] = "raw"
            (tmp_path / f"{key}.yaml").write_text(yaml.safe_dump(cfg))
            recipes[key] = f"{key}.yaml"
    path = tmp_path / "tiny_set.yaml"
    path.write_text(yaml.safe_dump({"recipes": recipes, "set": {}}))
    return path


@pytest.mark.slow
def test_reproduce_end_to_end_resumes(tmp_path, monkeypatch):
    from cli import main

    store = write_store_with_test(tmp_path / "s.h5", n_train=4, n_val=1, n_test=2)
    out = tmp_path / "out"
    args = ["reproduce", "--store", str(store), "--recipes", str(_recipe_set(tmp_path, store)), "--seeds", "0",
            "--out", str(out), "--no-progress", "--device", "cpu"]
    trained = []
    real_train = compare.train

    def spy_train(cfg, run_dir, **kw):
        trained.append(Path(run_dir).relative_to(out).as_posix())
        return real_train(cfg, run_dir, **kw)

    monkeypatch.setattr(compare, "train", spy_train)

    # 1. "killed half way": only Table 2 ran
    r = CliRunner().invoke(main, [*args, "--tables", "2"])
    assert r.exit_code == 0, r.output
    first = sorted(trained)
    assert first == sorted(f"sgdet/{v}/seed0" for v in ("sttran", "sttran_rsnet", "stket", "stket_rsnet",
                                                        "dsgdetr", "dsgdetr_rsnet"))
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.pth")}

    # 2. the whole command trains only what is missing: SGCLS and the three ablations
    trained.clear()
    r = CliRunner().invoke(main, [*args, "--tables", "2,3,4"])
    assert r.exit_code == 0, r.output
    assert sorted(trained) == sorted([f"sgcls/{v}/seed0" for v in ("sttran", "sttran_rsnet", "stket", "stket_rsnet",
                                                                   "dsgdetr", "dsgdetr_rsnet")]
                                     + [f"sgdet/{v}/seed0" for v in ("sttran_rsnet_no_temporal",
                                                                     "sttran_rsnet_mean_token",
                                                                     "sttran_rsnet_no_fusion")])
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert "expected time:" in r.output and "for the 9 not yet trained" in r.output
    for n in (2, 3, 4):
        assert f"**Table {n} (" in r.output
    # the published figures beside ours, and ours read from the runs' metrics.json
    assert "[25.1]" in r.output and "[+3.2]" in r.output and "[45.7]" in r.output and "[28.0]" in r.output
    # Tables 3 and 4 print our parameters and frames/s too; the paper has none there
    ablation = next(line for line in r.output.splitlines() if line.startswith("| No temporal encoder"))
    assert ablation.split("|")[3].strip().endswith("[–]") and ablation.split("|")[5].strip().endswith("[28.0]")
    metrics = json.loads((out / "sgdet" / "sttran" / "seed0" / "eval_test_sgdet_sttran" / "metrics.json").read_text())
    row = next(line for line in r.output.splitlines() if line.startswith("| STTran† [1]"))
    assert f"| {metrics['parameters'] / 1e6:.2f} [126.3]" in row
    assert f"{100 * metrics['results']['with']['recall']['10']:.1f} [25.1]" in row
    for name in ("reproduce.md", "reproduce.csv", "reproduce.tex", "reproduce.json", "table2.png", "table3.png",
                 "table4.png", "table2_curves.png", "table4_curves.png"):
        assert (out / name).stat().st_size > 0, name
    data = json.loads((out / "reproduce.json").read_text())
    assert [t["number"] for t in data["tables"]] == [2, 3, 4] and len(data["tables"][2]["rows"]) == 5

    # 3. a rerun trains nothing and prints the same tables
    trained.clear()
    r2 = CliRunner().invoke(main, [*args, "--tables", "2,3,4"])
    assert r2.exit_code == 0 and trained == [] and "0 run(s) trained now" in r2.output
    tables = lambda text: text[text.index("**Table 2"):text.index("reproduce: 3 table(s)")]  # noqa: E731
    assert tables(r2.output) == tables(r.output)
    assert torch.get_num_threads() == 1
