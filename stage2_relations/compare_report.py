"""The report of a comparison (:mod:`stage2_relations.compare`): the printed tables, and the
files ``compare.json`` (every run and aggregate), ``compare.csv`` (one row per variant x rule x
metric), ``compare.png`` (bars with sd error bars), ``compare_curves.png`` (the training curves
of every seed of each variant, from the runs' ``log.json``) and ``compare.txt``.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from common.files import atomic_write, write_json, write_text
from common.runtime import resolve_device
from stage2_relations.compare import CONSTRAINTS, RELATION_SCORE_METRICS, SPLIT, UNITS, Comparison
from stage2_relations.evaluation.seeds import EVAL_METRICS, MEAN_RECALL, Aggregate, TableRow, format_cell, format_table2


def _table_rows(comparison: Comparison, agg: Mapping[str, Mapping[str, Aggregate]],
                constraint: str) -> list[TableRow]:
    rows = []
    for v in comparison.variants:
        a = agg[v.name]
        metrics = {m: a[f"{constraint}:{m}"].summary for m in EVAL_METRICS}
        diffs = {m: a[f"{constraint}:{m}"].difference for m in EVAL_METRICS}
        diffs.update(params=a["params"].difference, fps=a["fps"].difference)
        rows.append(TableRow(v.name, a["params"].summary, a["fps"].summary, metrics,
                             diffs if v.name != comparison.reference else None))
    return rows


def format_report(comparison: Comparison) -> str:
    """The printed report: a header with the seeds and the thread count, per rule the
    Table-2-shaped table (with constraint) and the no-constraint table, then p_{t,0}."""
    c = comparison
    cfg = c.variants[0].config
    n = len(c.seeds)
    aggs = c.aggregates()
    lines = [
        f"compare: {len(c.variants)} variant(s) x seeds {','.join(map(str, c.seeds))} (n={n}), "
        f"{cfg.mode.upper()}, {c.test_videos} test videos of {cfg.store}, {resolve_device(cfg.device)}, "
        f"torch threads {c.threads}",
        f"values: mean +- sample sd over seeds (percent; one seed: the value); mR: {MEAN_RECALL.value} definition",
        f"diff rows: per-seed differences (variant - {c.reference}, same seed), mean +- sd; "
        f"yes/no: |mean| > 2 sd (>2sd)" if n > 1 else
        f"diff rows: variant - {c.reference} (one seed: no spread, >2sd n/a)",
    ]
    for rule in c.rules:
        rule_note = f"object scores: {rule}"
        lines += ["", format_table2(_table_rows(c, aggs[rule], "with"), reference=c.reference, title=f"With constraint "
                                    f"(RS-Net Table 2 columns), {rule_note}")]
        lines += ["", format_table2(_table_rows(c, aggs[rule], "no"), reference=c.reference, metrics=EVAL_METRICS,
                                    cost=False, title=f"No constraint, {rule_note}")]
    p0 = aggs["p0"]
    if p0:
        lines += ["", f"p_t0 (RS-Net relation score) on the {SPLIT} split, every negative pair:"]
        counts = {v: [r.relation_scores for r in c.runs if r.variant == v and r.relation_scores] for v in p0}
        table = [["variant", "positives", "negatives", "gap (pos - neg)", "pairs pos / neg"]]
        for v, a in p0.items():
            cells = [format_cell(a[m].summary, 1.0, 3) if m in a else "-" for m in RELATION_SCORE_METRICS]
            pairs = f"{counts[v][0]['positives']} / {counts[v][0]['negatives']}" if counts[v] else "-"
            table.append([v] + cells + [pairs])
        widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
        lines += [r[0].ljust(widths[0]) + "".join("  " + x.rjust(w) for x, w in zip(r[1:], widths[1:]))
                  for r in table]
    return "\n".join(lines)


def csv_rows(comparison: Comparison) -> list[dict[str, Any]]:
    """One row per variant x rule x metric (metric and constraint in separate columns;
    p_t0 rows, which no rule affects, have an empty rule)."""
    rows = []
    for rule, by_variant in comparison.aggregates().items():
        for variant, metrics in by_variant.items():
            for key, a in metrics.items():
                constraint, _, metric = key.rpartition(":")
                d = a.difference
                rows.append({
                    "variant": variant, "rule": "" if rule == "p0" else rule, "constraint": constraint,
                    "metric": metric, "unit": UNITS.get(metric, "fraction"), "mean": a.summary.mean,
                    "std": "" if a.summary.std is None else a.summary.std, "n": a.summary.n,
                    "diff_mean": "" if d is None else d.mean,
                    "diff_std": "" if d is None or d.std is None else d.std,
                    "exceeds_2sd": "" if d is None else d.flag,
                })
    return rows


def to_json(comparison: Comparison) -> dict[str, Any]:
    """compare.json: the setup, every run and every aggregate."""
    c = comparison

    def agg(a: Aggregate) -> dict[str, Any]:
        d = a.difference
        return {**dataclasses.asdict(a.summary),
                "diff": None if d is None else {**dataclasses.asdict(d), "exceeds_2sd": d.exceeds_2sd}}

    return {
        "reference": c.reference, "seeds": c.seeds, "rules": c.rules, "split": SPLIT, "threads": c.threads,
        "test_videos": c.test_videos, "mean_recall": MEAN_RECALL.value,
        "variants": [{"name": v.name, "recipe": v.recipe, "rsnet": v.rsnet,
                      "config": {k: val for k, val in v.config.to_dict().items() if k != "seed"}} for v in c.variants],
        "runs": [r.to_dict() for r in c.runs],
        "aggregate": {rule: {v: {m: agg(a) for m, a in ms.items()} for v, ms in by_v.items()}
                      for rule, by_v in c.aggregates().items()},
    }


def save_figure(fig, path: str | Path) -> Path:
    """A matplotlib figure as a PNG at ``path`` after ``tight_layout``, written whole or not at all."""
    fig.tight_layout()
    path = Path(path)
    with atomic_write(path) as fh:
        fig.savefig(fh, format="png")
    return path


def plot_comparison(comparison: Comparison, path: str | Path) -> Path:
    """Grouped bars (percent) with sd error bars: one panel per rule and constraint, one group
    per metric, one bar per variant; matplotlib's Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    c = comparison
    panels = [(rule, con) for rule in c.rules for con in CONSTRAINTS]
    fig = Figure(figsize=(12, 3.6 * len(panels)), dpi=100)
    FigureCanvasAgg(fig)
    aggs = c.aggregates()
    x = np.arange(len(EVAL_METRICS))
    width = 0.8 / len(c.variants)
    for i, (rule, con) in enumerate(panels):
        ax = fig.add_subplot(len(panels), 1, i + 1)
        top = 1.0
        for j, v in enumerate(c.variants):
            summaries = [aggs[rule][v.name][f"{con}:{m}"].summary for m in EVAL_METRICS]
            means = np.array([100 * s.mean for s in summaries])
            errs = np.array([100 * (s.std or 0.0) for s in summaries])
            ax.bar(x + (j - (len(c.variants) - 1) / 2) * width, means, width, yerr=errs, capsize=3, label=v.name)
            top = max(top, float((means + errs).max()))
        ax.set_ylim(0, 1.1 * top)
        ax.set_xticks(x)
        ax.set_xticklabels(EVAL_METRICS)
        ax.set_ylabel("%")
        ax.set_title(f"{con} constraint, object scores {rule}: mean +- sd over seeds {','.join(map(str, c.seeds))}")
        ax.legend(fontsize=8)
    return save_figure(fig, path)


CURVES = (("loss_total", "training loss (total)"), ("lr", "learning rate"), ("val_R@20", "validation R@20 (with), %"))
"""The panels of :func:`plot_curves`: a key of a run's log.json rows and its title."""


def run_histories(comparison: Comparison) -> dict[str, dict[int, list[dict[str, Any]]]]:
    """``{variant: {seed: log.json rows}}`` of every run of the comparison (a run without a
    readable log.json is left out)."""
    out: dict[str, dict[int, list[dict[str, Any]]]] = {v.name: {} for v in comparison.variants}
    for r in comparison.runs:
        try:
            out[r.variant][r.seed] = json.loads((Path(r.run_dir) / "log.json").read_text())
        except (OSError, ValueError):
            continue
    return out


def plot_curves(comparison: Comparison, path: str | Path) -> Path:
    """Training curves, one row of panels per variant (total loss, learning rate, validation
    R@20 in percent, each against the epoch), one line per seed, so that the seeds of a variant
    are seen together; matplotlib's Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    histories = run_histories(comparison)
    fig = Figure(figsize=(12, 2.6 * len(histories) + 0.4), dpi=100)
    FigureCanvasAgg(fig)
    for i, (variant, by_seed) in enumerate(histories.items()):
        for j, (key, title) in enumerate(CURVES):
            ax = fig.add_subplot(len(histories), len(CURVES), i * len(CURVES) + j + 1)
            for seed, rows in sorted(by_seed.items()):
                points = [(row["epoch"], row[key]) for row in rows if key in row]
                if points:
                    e, v = zip(*points)
                    ax.plot(e, [100 * x for x in v] if key.startswith("val_") else v, marker=".",
                            label=f"seed {seed}")
            if key == "lr":
                ax.set_yscale("log")
            ax.set_title(f"{variant}: {title}", fontsize=9)
            ax.set_xlabel("epoch", fontsize=8)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            if ax.lines:
                ax.legend(fontsize=7)
    return save_figure(fig, path)


def write_outputs(comparison: Comparison, out_dir: str | Path, report: str | None = None) -> dict[str, Path]:
    """compare.json, compare.csv, compare.png, compare_curves.png and compare.txt (the printed
    report) in ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {name: out / f"compare.{name}" for name in ("json", "csv", "png", "txt")}
    write_json(paths["json"], to_json(comparison), indent=2)
    rows = csv_rows(comparison)
    with atomic_write(paths["csv"], "w") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    plot_comparison(comparison, paths["png"])
    paths["curves"] = plot_curves(comparison, out / "compare_curves.png")
    write_text(paths["txt"], (report if report is not None else format_report(comparison)) + "\n")
    return paths


__all__ = ["csv_rows", "format_report", "plot_comparison", "plot_curves", "run_histories", "save_figure", "to_json",
           "write_outputs"]
