"""Statistics over seeds and tables shaped like the RS-Net paper's Table 2 (pure functions).

:func:`summarize` gives the mean and the sample standard deviation (ddof=1; none with one
seed); :func:`paired_difference` compares a variant with a reference seed by seed (the same
seed giving the same video order, negatives and initial draw): the per-seed differences have a
mean and a standard deviation, and '>2sd' flags ``|mean difference| > 2 * sd(differences)``
('n/a' with one seed). That is a screen against seed noise, not a significance test: with the
standard error sd / sqrt(n) it asks for a paired t statistic above 2 * sqrt(n), looser than a
two-sided 5 % paired t-test with 2 or 3 seeds (critical t 12.7, 4.3), stricter from 4 seeds on.
:func:`format_table2` prints rows of values or summaries as the paper's Table 2;
:func:`table_row` makes a row of one evaluation. Used by :mod:`stage2_relations.compare` and the demo.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from stage2_relations.evaluation.metrics import MeanRecall

EVAL_METRICS = ("R@10", "R@20", "R@50", "P@10", "P@20", "mR@10", "mR@20")
"""Per constraint, in every JSON, CSV and plot."""
TABLE2_METRICS = ("R@10", "R@20", "P@10", "P@20", "mR@10", "mR@20")
"""The columns of the RS-Net paper's Table 2 after Params (M) and FPS."""
MEAN_RECALL = MeanRecall.DATASET


# --- statistics (pure) ------------------------------------------------------------------


@dataclass(frozen=True)
class Summary:
    """A metric over seeds: mean, sample standard deviation (ddof=1; None for one value), count."""

    mean: float
    std: float | None
    n: int


@dataclass(frozen=True)
class Difference:
    """Per-seed differences (variant - reference, same seed): mean, sample sd (None for one
    seed), number of seeds paired."""

    mean: float
    std: float | None
    n: int

    @property
    def exceeds_2sd(self) -> bool | None:
        """``|mean| > 2 * std``; None with one seed (no spread to compare with)."""
        return None if self.std is None else bool(abs(self.mean) > 2 * self.std)

    @property
    def flag(self) -> str:
        return {None: "n/a", True: "yes", False: "no"}[self.exceeds_2sd]


def summarize(values: Sequence[float]) -> Summary:
    """Mean and sample standard deviation (ddof=1) of ``values``; the std is None for one value."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise ValueError("no values to summarise")
    return Summary(float(x.mean()), float(x.std(ddof=1)) if x.size > 1 else None, int(x.size))


def paired_difference(values: Mapping[int, float], reference: Mapping[int, float]) -> Difference:
    """The differences ``values[s] - reference[s]`` over seeds ``s``, summarised. Both must
    hold the same seeds: an unpaired seed would make this a comparison of two samples."""
    if set(values) != set(reference):
        raise ValueError(f"seeds differ: {sorted(values)} vs reference {sorted(reference)}")
    s = summarize([values[k] - reference[k] for k in sorted(values)])
    return Difference(s.mean, s.std, s.n)


@dataclass(frozen=True)
class Aggregate:
    """One metric of one variant over seeds; ``difference`` against the reference (None for the
    reference itself, or when the reference lacks the metric)."""

    summary: Summary
    difference: Difference | None = None


def aggregate(per_seed: Mapping[str, Mapping[str, Mapping[int, float]]],
              reference: str) -> dict[str, dict[str, Aggregate]]:
    """``per_seed[variant][metric][seed]`` -> ``{variant: {metric: Aggregate}}``, each variant
    other than ``reference`` paired with it seed by seed on the metrics both have."""
    ref = per_seed.get(reference, {})
    out: dict[str, dict[str, Aggregate]] = {}
    for variant, metrics in per_seed.items():
        out[variant] = {}
        for metric, by_seed in metrics.items():
            diff = None
            if variant != reference and metric in ref:
                diff = paired_difference(by_seed, ref[metric])
            out[variant][metric] = Aggregate(summarize([by_seed[s] for s in sorted(by_seed)]), diff)
    return out


MAX_SEED = 2**32 - 1
"""The largest seed a run takes: ``epoch_order`` seeds a 64-bit generator with
``seed * 100003 + epoch``, and 32 bits is the common width of a seed (numpy's legacy one)."""
MAX_SEEDS = 1000
"""The most seeds one ``--seeds`` may name: each is a training run of every variant."""


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` or ``"0-4"`` (inclusive) or a mix (``"0-2,7"``) -> seeds in the given order.
    ValueError (one line) for anything else, a seed above :data:`MAX_SEED` or more than
    :data:`MAX_SEEDS` seeds, counted before any range is expanded."""
    parts = []
    for part in (p.strip() for p in str(text).split(",")):
        m = re.fullmatch(r"(-?\d+)(?:\s*-\s*(\d+))?", part)
        if not m:
            raise ValueError(f"seeds must look like 0,1,2 or 0-4; cannot read {part!r} in {text!r}")
        if len(m.group(1).lstrip("-")) > 20 or len(m.group(2) or "") > 20:  # int() of a huge text is slow
            raise ValueError(f"seed {part!r} is above the largest seed, {MAX_SEED}")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
        if hi < lo:
            raise ValueError(f"empty seed range {part!r}")
        if lo < 0 or hi > MAX_SEED:
            raise ValueError(f"seed {lo if lo < 0 else hi} in {part!r} is outside 0..{MAX_SEED}")
        parts.append((lo, hi))
    count = sum(hi - lo + 1 for lo, hi in parts)
    if count > MAX_SEEDS:
        raise ValueError(f"{text!r} names {count} seeds, more than {MAX_SEEDS} (each is a training run of every "
                         f"variant); give fewer")
    seeds = [s for lo, hi in parts for s in range(lo, hi + 1)]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"a seed is repeated in {text!r}")
    return seeds


# --- tables -----------------------------------------------------------------------------


Value = float | Summary


@dataclass(frozen=True)
class TableRow:
    """One row of :func:`format_table2`.

    params: parameter count; fps: frames/s; metrics: {"R@10": fraction in [0, 1], ...}. Each
    value is a float (one run) or a :class:`Summary` (over seeds). ``diffs`` (same keys, plus
    "params" / "fps") holds the paired differences against the reference; when it is None and
    a reference is named, the difference of the (mean) values is shown without spread.
    """

    name: str
    params: Value | None = None
    fps: Value | None = None
    metrics: Mapping[str, Value] = dataclasses.field(default_factory=dict)
    diffs: Mapping[str, Difference] | None = None


def _mean(v: Value | None) -> float | None:
    return None if v is None else v.mean if isinstance(v, Summary) else float(v)


def format_cell(v: Value | None, scale: float, digits: int, spread: bool = True) -> str:
    if v is None:
        return "-"
    if isinstance(v, Summary):
        if v.std is None or not spread:
            return f"{scale * v.mean:.{digits}f}"
        return f"{scale * v.mean:.{digits}f} +- {scale * v.std:.{digits}f}"
    return f"{scale * float(v):.{digits}f}"


def _diff_cell(d: Difference | None, scale: float, digits: int, spread: bool = True) -> str:
    if d is None:
        return ""
    if d.std is None or not spread:
        return f"{scale * d.mean:+.{digits}f}"
    return f"{scale * d.mean:+.{digits}f} +- {scale * d.std:.{digits}f} {d.flag}"


def format_table2(rows: Sequence[TableRow | Mapping[str, Any]], *, reference: str | None = None,
                  metrics: Sequence[str] = TABLE2_METRICS, cost: bool = True, title: str = "") -> str:
    """A table shaped like the RS-Net paper's Table 2: one row per method, columns Params (M)
    and FPS (when ``cost``), then ``metrics`` in percent with one decimal.

    rows: :class:`TableRow` or mappings with its fields (``name``, ``params``, ``fps``,
    ``metrics``, optional ``diffs``). With ``reference`` (a row's name), every other row is
    followed by a ``diff`` line: its paired differences ``mean +- sd yes/no`` (yes: the mean
    difference exceeds twice the sd of the per-seed differences) when the row has ``diffs``,
    else the difference of the values (one seed: no spread, no flag). Params never show a
    spread (the count does not depend on the seed).
    """
    rows = [r if isinstance(r, TableRow) else TableRow(**r) for r in rows]
    ref = next((r for r in rows if r.name == reference), None) if reference is not None else None
    if reference is not None and ref is None:
        raise ValueError(f"reference {reference!r} is not a row ({[r.name for r in rows]})")
    columns: list[tuple[str, str, float, int, bool]] = []  # header, key, scale, digits, spread
    if cost:
        columns += [("Params (M)", "params", 1e-6, 2, False), ("FPS", "fps", 1.0, 2, True)]
    columns += [(m, m, 100.0, 1, True) for m in metrics]

    def value(row: TableRow, key: str) -> Value | None:
        return getattr(row, key) if key in ("params", "fps") else row.metrics.get(key)

    table: list[list[str]] = [["method"] + [c[0] for c in columns]]
    for row in rows:
        table.append([row.name] + [format_cell(value(row, k), s, d, sp) for _, k, s, d, sp in columns])
        if ref is None or row is ref:
            continue
        cells = []
        for _, key, scale, digits, spread in columns:
            if row.diffs is not None:
                cells.append(_diff_cell(row.diffs.get(key), scale, digits, spread))
            else:
                a, b = _mean(value(row, key)), _mean(value(ref, key))
                cells.append("" if a is None or b is None else _diff_cell(Difference(a - b, None, 1), scale, digits))
        table.append([f"  diff vs {ref.name}"] + cells)
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    lines = [title] if title else []
    for r in table:
        lines.append(r[0].ljust(widths[0]) + "".join("  " + c.rjust(w) for c, w in zip(r[1:], widths[1:])))
    return "\n".join(lines)


def table_row(name: str, evaluation: Mapping[str, Any], constraint: str = "with",
              mean_recall: MeanRecall = MEAN_RECALL) -> TableRow:
    """The :class:`TableRow` of one :func:`~stage2_relations.evaluate_checkpoint.evaluate_checkpoint`
    result ({'results': {Constraint: EvaluationResult}, 'parameters', 'speed'}) under ``constraint``:
    R@K and P@K, and mR@K under ``mean_recall``, as :func:`~stage2_relations.evaluation.format_table`
    reads them."""
    result = next(r for c, r in evaluation["results"].items() if getattr(c, "value", c) == constraint)
    metrics = {}
    for m in EVAL_METRICS:
        name_, k = m.split("@")
        table = {"R": result.recall, "P": result.precision, "mR": result.mean_recall[MeanRecall(mean_recall)]}[name_]
        if int(k) in table:
            metrics[m] = float(table[int(k)])
    return TableRow(name, evaluation["parameters"], evaluation["speed"]["fps"], metrics)
