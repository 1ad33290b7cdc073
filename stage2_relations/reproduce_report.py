"""The report of ``cli.py reproduce`` (:mod:`stage2_relations.reproduce`): each table in the
paper's layout, our mean +- sd over seeds with the paper's figure beside it in brackets, the
paired differences (with the paper's gain beside them), as Markdown (printed and
``reproduce.md``), ``reproduce.csv`` (one row per table x row x column), ``reproduce.tex``,
``reproduce.json``, and per table ``table<N>.png`` (values and differences against the paper's)
and ``table<N>_curves.png`` (the training curves of every seed of each variant).
"""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from common.files import atomic_write, write_json, write_text
from stage2_relations.compare_report import plot_curves, save_figure
from stage2_relations.evaluation.seeds import Difference, Summary
from stage2_relations.reproduce import HEADERS, RowResult, TableResult

DIGITS = {"params": 2, "fps": 2}
"""Decimals of our figures in a column (the metrics: 1, as the paper; the tiny heads' parameter
counts need two)."""
PAPER_DIGITS = {"params": 1, "fps": 2}
"""Decimals of the paper's figures, as printed (the metrics: 1)."""
UNITS = {"params": "million parameters", "fps": "frames/s"}


def _digits(column: str) -> int:
    return DIGITS.get(column, 1)


def _header(column: str) -> str:
    return HEADERS.get(column, column)


def value_text(s: Summary, column: str) -> str:
    """``35.9 ± 0.8`` (one seed, or a parameter count: the value alone)."""
    d = _digits(column)
    if s.std is None or column == "params":
        return f"{s.mean:.{d}f}"
    return f"{s.mean:.{d}f} ± {s.std:.{d}f}"


def diff_text(d: Difference, column: str) -> str:
    """``+7.2 ± 1.5 >2sd`` (``>2sd``: |mean| > 2 sd of the per-seed differences)."""
    p = _digits(column)
    if d.std is None or column == "params":
        return f"{d.mean:+.{p}f}"
    return f"{d.mean:+.{p}f} ± {d.std:.{p}f}" + (" >2sd" if d.exceeds_2sd else "")


def paper_gain(result: TableResult, row: RowResult, column: str) -> float | None:
    """The paper's difference of ``row`` from its baseline: the printed gain where the paper
    prints one, else the difference of the paper's two values (Table 4)."""
    r = row.published
    if r.baseline is None or column not in r.values:
        return None
    if r.gain and column in r.gain:
        return float(r.gain[column])
    base = next(x for x in result.table.rows if x.variant == r.baseline)
    return float(r.values[column]) - float(base.values[column])


def _paper(row: RowResult, column: str) -> str:
    """The paper's figure as printed, or '–' where the paper's table has no such column."""
    value = row.published.values.get(column)
    return "–" if value is None else f"{value:.{PAPER_DIGITS.get(column, 1)}f}"


def _rows(result: TableResult) -> list[tuple[str, str, list[str]]]:
    """(method, run, cells) of the value rows and the difference rows, in the paper's order."""
    t = result.table
    out = []
    for row in result.rows:
        cells = [f"{value_text(row.values[c], c)} [{_paper(row, c)}]" for c in t.report_columns]
        out.append((row.published.method, row.published.variant, cells))
        if row.diffs is not None:
            cells = []
            for c in t.report_columns:
                g = paper_gain(result, row, c)
                cells.append(diff_text(row.diffs[c], c) + ("" if g is None else f" [{g:+.{PAPER_DIGITS.get(c, 1)}f}]"))
            out.append((f"Δ vs {row.published.baseline}", "paired", cells))
    return out


def table_title(result: TableResult) -> str:
    t, c = result.table, result.comparison
    seeds = ",".join(map(str, c.seeds))
    return (f"{t.caption.split('.')[0]} ({t.mode.upper()}, with constraint, test split): mean ± sd over seeds {seeds} "
            f"(n={len(c.seeds)}); [x]: the paper's figure ({t.caption})")


def format_markdown(results: Sequence[TableResult], header: Sequence[str] = ()) -> str:
    """Every table as a Markdown table, after the ``header`` lines and a legend."""
    lines = list(header) + [
        "Cells: ours as mean ± sample sd over seeds, then [the paper's figure]. Δ rows: the per-seed differences "
        "from the baseline run (same seed), mean ± sd, '>2sd' when |mean| > 2 sd; [the paper's gain] beside. "
        "Params in millions, FPS in frames/s, metrics in percent.", ""]
    for result in results:
        t = result.table
        table = [["method", "run"] + [_header(c) for c in t.report_columns]]
        table += [[m, r] + cells for m, r, cells in _rows(result)]
        widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
        lines += [f"**{table_title(result)}**", ""]
        for i, row in enumerate(table):
            lines.append("| " + " | ".join(x.ljust(w) for x, w in zip(row, widths)) + " |")
            if i == 0:
                lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


_LATEX = {"_": r"\_", "%": r"\%", "&": r"\&", "#": r"\#", "†": r"$^\dagger$", "–": "--", "±": r"$\pm$",
          "ĉ": r"$\hat{c}$", "Δ": r"$\Delta$", ">": r"$>$"}


def _latex(text: str) -> str:
    return "".join(_LATEX.get(ch, ch) for ch in text)


def format_latex(results: Sequence[TableResult]) -> str:
    """One ``tabular`` per table (plain LaTeX, no package), cells as in the Markdown."""
    out = ["% cli.py reproduce: ours mean $\\pm$ sd over seeds, [the RS-Net paper's figure]"]
    for result in results:
        t = result.table
        out += [f"% {table_title(result)}", r"\begin{tabular}{ll" + "r" * len(t.report_columns) + "}", r"\hline",
                " & ".join(["method", "run"] + [_latex(_header(c)) for c in t.report_columns]) + r" \\", r"\hline"]
        out += [" & ".join(_latex(x) for x in [m, r] + cells) + r" \\" for m, r, cells in _rows(result)]
        out += [r"\hline", r"\end{tabular}", ""]
    return "\n".join(out)


def csv_rows(results: Sequence[TableResult]) -> list[dict[str, Any]]:
    """One row per table x row x column: ours (mean, sd, n), the paired difference, the paper's."""
    rows = []
    for result in results:
        for row in result.rows:
            for c in result.table.report_columns:
                s, d = row.values[c], (row.diffs or {}).get(c)
                g = paper_gain(result, row, c)
                rows.append({
                    "table": result.table.number, "mode": result.table.mode, "method": row.published.method,
                    "variant": row.published.variant, "column": c, "unit": UNITS.get(c, "percent"),
                    "mean": s.mean, "std": "" if s.std is None else s.std, "n": s.n,
                    "diff_vs": row.published.baseline or "", "diff_mean": "" if d is None else d.mean,
                    "diff_std": "" if d is None or d.std is None else d.std,
                    "exceeds_2sd": "" if d is None else d.flag,
                    "paper": row.published.values.get(c, ""), "paper_diff": "" if g is None else g,
                })
    return rows


def to_json(results: Sequence[TableResult]) -> dict[str, Any]:
    def row(r: RowResult) -> dict[str, Any]:
        return {"method": r.published.method, "variant": r.published.variant, "baseline": r.published.baseline,
                "paper": dict(r.published.values),
                "values": {c: dataclasses.asdict(s) for c, s in r.values.items()},
                "diffs": None if r.diffs is None else {c: dataclasses.asdict(d) for c, d in r.diffs.items()},
                "per_seed": {c: {str(k): v for k, v in s.items()} for c, s in r.per_seed.items()}}

    return {"tables": [{"number": x.table.number, "caption": x.table.caption, "mode": x.table.mode,
                        "columns": list(x.table.report_columns), "seeds": x.comparison.seeds,
                        "threads": x.comparison.threads, "test_videos": x.comparison.test_videos,
                        "rows": [row(r) for r in x.rows]} for x in results]}


def plot_table(result: TableResult, path: str | Path) -> Path:
    """Two panels: each metric's mean +- sd per row with the paper's value as a black tick, and
    each Δ row's paired difference +- sd with the paper's gain as a black tick."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    t = result.table
    metrics = [c for c in t.columns if c not in ("params", "fps")]
    x = np.arange(len(metrics))
    seen: dict[str, RowResult] = {}
    for r in result.rows:  # Table 4 prints the full model twice: one bar
        seen.setdefault(r.published.variant, r)
    rows, diffs = list(seen.values()), [r for r in seen.values() if r.diffs is not None]
    fig = Figure(figsize=(11, 7.5), dpi=100)
    FigureCanvasAgg(fig)
    for k, (panel, group) in enumerate((("values", rows), ("differences", diffs))):
        ax = fig.add_subplot(2, 1, k + 1)
        width = 0.8 / max(len(group), 1)
        for j, r in enumerate(group):
            pos = x + (j - (len(group) - 1) / 2) * width
            if panel == "values":
                mean = [r.values[m].mean for m in metrics]
                err = [r.values[m].std or 0.0 for m in metrics]
                paper = [r.published.values[m] for m in metrics]
            else:
                mean = [r.diffs[m].mean for m in metrics]
                err = [r.diffs[m].std or 0.0 for m in metrics]
                paper = [paper_gain(result, r, m) for m in metrics]
            ax.bar(pos, mean, width, yerr=err, capsize=3, label=f"{r.label}" if panel == "values"
                   else f"{r.label} - {r.published.baseline}")
            ax.scatter(pos, paper, marker="_", s=300, color="black", zorder=3,
                       label="the paper" if j == 0 else None)
        ax.axhline(0, color="grey", lw=0.5)
        ax.set_xticks(x)
        ax.set_xticklabels(metrics)
        ax.set_ylabel("percent" if panel == "values" else "difference, points")
        ax.set_title(f"Table {t.number}, {t.mode.upper()}: {panel}, ours mean +- sd over seeds "
                     f"{','.join(map(str, result.comparison.seeds))}; black: the paper")
        ax.legend(fontsize=7, ncol=2)
    return save_figure(fig, path)


def write_outputs(results: Sequence[TableResult], out_dir: str | Path, report: str) -> dict[str, Path]:
    """reproduce.md (``report``), .csv, .tex, .json, and table<N>.png, table<N>_curves.png."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {name: out / f"reproduce.{name}" for name in ("md", "csv", "tex", "json")}
    write_text(paths["md"], report)
    rows = csv_rows(results)
    with atomic_write(paths["csv"], "w") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    write_text(paths["tex"], format_latex(results))
    write_json(paths["json"], to_json(results), indent=2)
    for result in results:
        n = result.table.number
        paths[f"table{n}"] = plot_table(result, out / f"table{n}.png")
        paths[f"table{n}_curves"] = plot_curves(result.comparison, out / f"table{n}_curves.png")
    return paths


__all__ = ["format_markdown", "format_latex", "csv_rows", "to_json", "plot_table", "write_outputs", "paper_gain",
           "value_text", "diff_text"]
