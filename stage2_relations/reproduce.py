"""``cli.py reproduce``: the RS-Net paper's Tables 2, 3 and 4 in one command, over seeds, with the
paper's published figure beside each cell.

* **The paper's figures** are one data file, :data:`PAPER_TABLES` (``rsnet_paper_tables.yaml``):
  each table's caption, mode and columns, and per row the paper's wording, its values and the
  run of this project it is compared with (a key of :data:`VARIANTS`).
* **The variants** (:data:`VARIANTS`): the three baselines with and without RS-Net, and the
  Table 4 ablations of STTran + RS-Net, each a recipe option (``rsnet.temporal_token``,
  ``rsnet.context_fusion``; docs/reproduce.md quotes the paper's wording for each row).
* **A recipe set** (``configs/reproduce/paper.yaml``: the full-size heads and the paper's
  optimiser settings, for a GPU; ``configs/reproduce/small.yaml``: the tiny demo heads for a
  CPU and the synthetic data) names the training recipe of each baseline with and without
  RS-Net; :func:`table_variants` sets the table's mode and the ablation options on it.
* **Running** is :func:`stage2_relations.compare.run_comparison` once per table into
  ``OUT/<mode>/<variant>/seed<k>/``, so it is resumable exactly as ``compare`` is: a rerun
  trains only the runs that are missing or unfinished, and Tables 2 and 4 share the
  STTran + RS-Net SGDET runs.
* **The expected time** (:func:`estimate_time`) before anything runs: the training step's cost
  a frame from ``bench/results/train_speed.json`` where a row measured the same recipe on the
  same kind of device, else the documented figures of :data:`DOCUMENTED_STEP_S`; it says which.

The tables, files and figures are written by :mod:`stage2_relations.reproduce_report`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from common.config import load_yaml_mapping
from common.errors import ConfigError
from common.training_run import epochs_done
from stage2_relations.compare import Comparison, Variant, load_variants, run_comparison
from stage2_relations.evaluation.seeds import Difference, Summary, paired_difference, summarize

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
PAPER_TABLES = Path(__file__).with_name("rsnet_paper_tables.yaml")
RECIPE_SETS = REPO / "configs" / "reproduce"
BENCH_TRAIN_SPEED = REPO / "bench" / "results" / "train_speed.json"
TABLES = (2, 3, 4)

# What a column of the paper means in a run's metric_values (stage2_relations.compare), and the
# factor from this project's units (fractions, parameter counts) to the paper's (percent, millions).
COLUMNS = {"params": ("params", 1e-6), "fps": ("fps", 1.0),
           **{m: (f"with:{m}", 100.0) for m in ("R@10", "R@20", "R@50", "P@10", "P@20", "mR@10", "mR@20")}}
HEADERS = {"params": "Params (M)", "fps": "FPS"}


# --- the variants ---------------------------------------------------------------------------


@dataclass(frozen=True)
class VariantSpec:
    """One run kind of the tables: ``recipe`` names the entry of a recipe set it trains from,
    ``options`` the recipe fields (dotted keys) that make it an ablation."""

    key: str
    recipe: str
    label: str
    options: Mapping[str, Any] = field(default_factory=dict)


VARIANTS: dict[str, VariantSpec] = {v.key: v for v in (
    VariantSpec("sttran", "sttran", "STTran"),
    VariantSpec("sttran_rsnet", "sttran_rsnet", "STTran + RS-Net"),
    VariantSpec("stket", "stket", "STKET"),
    VariantSpec("stket_rsnet", "stket_rsnet", "STKET + RS-Net"),
    VariantSpec("dsgdetr", "dsgdetr", "DSG-DETR"),
    VariantSpec("dsgdetr_rsnet", "dsgdetr_rsnet", "DSG-DETR + RS-Net"),
    # Table 4 (section 4.4): STTran + RS-Net with one part removed
    VariantSpec("sttran_rsnet_no_temporal", "sttran_rsnet", "STTran + RS-Net, no temporal encoder",
                {"rsnet.temporal_token": "none", "rsnet.context_fusion": False}),
    VariantSpec("sttran_rsnet_mean_token", "sttran_rsnet", "STTran + RS-Net, mean token",
                {"rsnet.temporal_token": "mean"}),
    VariantSpec("sttran_rsnet_no_fusion", "sttran_rsnet", "STTran + RS-Net, no context fusion",
                {"rsnet.context_fusion": False}),
)}


# --- the paper's figures --------------------------------------------------------------------


@dataclass(frozen=True)
class PublishedRow:
    """A row of a paper's table: its wording (``method``), values in the paper's units, the
    variant it is compared with and, for a row compared with another, that row's variant
    (``baseline``) and the paper's printed gain."""

    method: str
    variant: str
    values: Mapping[str, float]
    baseline: str | None = None
    gain: Mapping[str, float] | None = None


@dataclass(frozen=True)
class PublishedTable:
    number: int
    caption: str
    mode: str
    columns: tuple[str, ...]
    rows: tuple[PublishedRow, ...]

    @property
    def report_columns(self) -> tuple[str, ...]:
        """The columns we print: the paper's, after Params and FPS where the paper has none
        (Tables 3 and 4: the ablations change the parameter count)."""
        return tuple(c for c in ("params", "fps") if c not in self.columns) + self.columns

    @property
    def variants(self) -> list[str]:
        """The variants the table needs, in the order of its rows, each once."""
        return list(dict.fromkeys(r.variant for r in self.rows))


def load_published(path: str | Path = PAPER_TABLES) -> dict[int, PublishedTable]:
    """The paper's Tables 2-4 from the data file; ConfigError naming the file for a row whose
    variant is unknown or whose values miss a column."""
    data = load_yaml_mapping(path)
    out = {}
    for number, t in data["tables"].items():
        rows = tuple(PublishedRow(r["method"], r["variant"], dict(r["values"]), r.get("baseline"), r.get("gain"))
                     for r in t["rows"])
        table = PublishedTable(int(number), t["caption"], t["mode"], tuple(t["columns"]), rows)
        for r in rows:
            unknown = {r.variant, r.baseline} - set(VARIANTS) - {None}
            missing = set(table.columns) - set(r.values)
            if unknown or missing or set(table.columns) - set(COLUMNS):
                raise ConfigError(f"{path}: table {number}, {r.method!r}: unknown variant {sorted(unknown)} or "
                                  f"columns missing {sorted(missing)}")
        out[table.number] = table
    return out


def only_rows(table: PublishedTable, variants: Sequence[str]) -> PublishedTable:
    """``table`` with only the rows of ``variants`` (the demo's STTran pair of Table 2)."""
    rows = tuple(r for r in table.rows if r.variant in variants)
    if not rows or any(r.baseline is not None and r.baseline not in variants for r in rows):
        raise ConfigError(f"table {table.number}: rows {list(variants)} leave a row without its baseline or none")
    return dataclasses.replace(table, rows=rows)


def parse_tables(text: str) -> list[int]:
    """``"2,3,4"`` -> [2, 3, 4]; ConfigError for a table the paper data does not hold."""
    try:
        numbers = [int(p) for p in str(text).split(",") if p.strip()]
    except ValueError:
        raise ConfigError(f"--tables {text!r}: give table numbers such as 2,3,4") from None
    bad = [n for n in numbers if n not in TABLES]
    if bad or not numbers:
        raise ConfigError(f"--tables {text!r}: the paper's tables here are {', '.join(map(str, TABLES))}")
    return list(dict.fromkeys(numbers))


# --- recipe sets ----------------------------------------------------------------------------


@dataclass(frozen=True)
class RecipeSet:
    """``configs/reproduce/<name>.yaml``: a training recipe per baseline with and without RS-Net
    (keys of :class:`VariantSpec`'s ``recipe``), and fields set for every run."""

    name: str
    path: Path
    recipes: Mapping[str, Path]
    overrides: Mapping[str, Any]


def load_recipe_set(name_or_path: str | Path) -> RecipeSet:
    """A recipe set by name (``paper``, ``small``: ``configs/reproduce/NAME.yaml``) or path."""
    path = Path(name_or_path)
    if not path.suffix:
        path = RECIPE_SETS / f"{name_or_path}.yaml"
        if not path.is_file():
            known = sorted(p.stem for p in RECIPE_SETS.glob("*.yaml"))
            raise ConfigError(f"--recipes {name_or_path!r}: no such recipe set; known: {', '.join(known)} or a path")
    data = load_yaml_mapping(path)
    recipes = {k: (path.parent / v).resolve() for k, v in (data.get("recipes") or {}).items()}
    needed = {v.recipe for v in VARIANTS.values()}
    if needed - set(recipes):
        raise ConfigError(f"{path}: recipes: missing {', '.join(sorted(needed - set(recipes)))}")
    for key, p in recipes.items():
        if not p.is_file():
            raise ConfigError(f"{path}: recipes: {key}: {p} does not exist")
    return RecipeSet(path.stem, path, recipes, dict(data.get("set") or {}))


def table_variants(table: PublishedTable, recipe_set: RecipeSet,
                   overrides: Mapping[str, Any] | None = None) -> list[Variant]:
    """The :class:`~stage2_relations.compare.Variant` of each run kind the table needs: its
    recipe from the set, then the set's fields, ``overrides`` (store, device, ``--set``), the
    table's mode and the ablation's options, later ones winning."""
    out = []
    for key in table.variants:
        spec = VARIANTS[key]
        merged = {**recipe_set.overrides, **{k: v for k, v in (overrides or {}).items() if v is not None},
                  "mode": table.mode, **spec.options}
        out += load_variants([str(recipe_set.recipes[spec.recipe])], [key], merged)
    return out


# --- the expected time ----------------------------------------------------------------------

EVAL_FRACTION = 1 / 3
"""An evaluated frame costs this fraction of a training step (forward only, no backward)."""

DOCUMENTED_STEP_S = {
    # CPU training step, seconds a frame. Full size: bench/train_speed.py (realistic setting,
    # 2 cores, 2026-11-30, README "Benchmarks"): STTran 35.7 ms, STTran + RS-Net 65.0 ms; STKET
    # and DSG-DETR scaled from STTran by the paper's parameter counts (219.3 / 126.3, 186.2 / 126.3)
    # with RS-Net's 29.3 ms added. Small (configs/reproduce/small.yaml): 2 epochs of `train` of
    # each recipe in SGDET on a demo-sized store (80 synthetic videos, 690 train / 76 val frames),
    # CPU seconds of the process on one thread over 2 x (train + val / 3) frames, 2026-12-05
    # (SGCLS measured 0.55-1.05 times these).
    ("full", "sttran"): 0.0357, ("full", "sttran_rsnet"): 0.0650,
    ("full", "stket"): 0.0620, ("full", "stket_rsnet"): 0.0913,
    ("full", "dsgdetr"): 0.0525, ("full", "dsgdetr_rsnet"): 0.0818,
    ("small", "sttran"): 0.00205, ("small", "sttran_rsnet"): 0.00200,
    ("small", "stket"): 0.00255, ("small", "stket_rsnet"): 0.00389,
    ("small", "dsgdetr"): 0.00277, ("small", "dsgdetr_rsnet"): 0.00352,
}
RUN_OVERHEAD_S = 3.0
"""Seconds a run costs besides its frames (opening the store, building the model, the test
evaluation's setup, p_t0), measured with 1-epoch runs of the tiny test heads on 2 shared cores."""
GPU_SPEEDUP_GUESS = 10.0
"""No GPU figure is in the repository: a GPU step is guessed at the CPU's divided by this
(``bench/train_speed.py --device cuda`` measures it; its JSON then replaces the guess)."""


@dataclass(frozen=True)
class Estimate:
    """Expected seconds of the whole plan and of what is still to run, and one line per recipe
    saying where its per-frame cost came from."""

    seconds: float
    remaining_seconds: float
    runs: int
    remaining_runs: int
    sources: tuple[str, ...]

    def line(self) -> str:
        return (f"expected time: {_duration(self.seconds)} for {self.runs} runs, {_duration(self.remaining_seconds)} "
                f"for the {self.remaining_runs} not yet trained")


def _duration(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 5400 else f"{seconds / 60:.1f} min"


def _split_frames(store_path: str) -> dict[str, int]:
    from store import open_store

    st = open_store(store_path)
    frames: dict[str, int] = {}
    for v in st.videos():
        frames[st.split_of(v)] = frames.get(st.split_of(v), 0) + st.num_rows(v, "frames")
    return frames


def step_cost(variant: Variant, device_type: str, bench: Mapping[str, Any] | None) -> tuple[float, str]:
    """(seconds a training frame, where that figure comes from) for ``variant`` on a device of
    ``device_type`` ('cpu' / 'cuda'): a ``bench/results/train_speed.json`` row of the same recipe
    and device kind (its store epoch over its frames), else :data:`DOCUMENTED_STEP_S`."""
    cfg, recipe = variant.config, Path(variant.recipe or "")
    if bench and str(bench.get("device", "cpu")).split(":")[0] == device_type:
        for row in bench.get("rows", []):
            if Path(row["recipe"]).name == recipe.name and row["frames"]:
                return row["store_s"] / row["frames"], f"bench/results/train_speed.json ({recipe.name})"
    size = "full" if int(cfg.head_cfg.get("hidden", 512)) >= 256 else "small"
    key = (size, cfg.head + ("_rsnet" if cfg.rsnet is not None else ""))
    cost = DOCUMENTED_STEP_S[key]
    source = f"documented CPU figure for {size} {key[1]}"
    if device_type != "cpu":
        cost /= GPU_SPEEDUP_GUESS
        source += f" / {GPU_SPEEDUP_GUESS:g} (GPU: a guess, not measured)"
    return cost, source


def device_kind(device: str) -> str:
    """'cpu' or 'cuda' for a ``--device`` as written, without needing that device here (an
    estimate for a GPU is made on a machine without one); 'auto' is this machine's."""
    if device == "auto":
        from common.runtime import resolve_device

        return resolve_device(device).type
    return device.split(":")[0]


def estimate_time(plan: Sequence[tuple[Path, Variant]], seeds: Sequence[int],
                  bench_path: str | Path | None = BENCH_TRAIN_SPEED) -> Estimate:
    """Expected seconds of training and evaluating every (run folder parent, variant) x seed:
    per epoch the store's train frames at :func:`step_cost` plus its val frames at
    :data:`EVAL_FRACTION` of it, and per run the test frames once (twice with RS-Net's p_t0) plus
    :data:`RUN_OVERHEAD_S`.
    A run whose ``last.pth`` holds some epochs counts only the rest as remaining."""
    bench = None
    if bench_path is not None and Path(bench_path).is_file():
        try:
            bench = json.loads(Path(bench_path).read_text())
        except (OSError, ValueError):
            log.warning("%s: unreadable, using the documented per-frame figures", bench_path)
    frames_of: dict[str, dict[str, int]] = {}
    total = remaining = 0.0
    runs_left = 0
    sources: dict[str, str] = {}
    for parent, variant in plan:
        cfg = variant.config
        if cfg.store not in frames_of:
            frames_of[cfg.store] = _split_frames(cfg.store)
        frames = frames_of[cfg.store]
        cost, source = step_cost(variant, device_kind(cfg.device), bench)
        sources[Path(variant.recipe or variant.name).name] = source
        epoch = cost * (frames.get(cfg.train_split, 0) + EVAL_FRACTION * frames.get(cfg.val_split, 0))
        test = cost * EVAL_FRACTION * frames.get("test", 0) * (2 if variant.rsnet else 1) + RUN_OVERHEAD_S
        for seed in seeds:
            done = epochs_done(parent / variant.name / f"seed{seed}")
            total += cfg.epochs * epoch + test
            if done < cfg.epochs:
                remaining += (cfg.epochs - done) * epoch + test
                runs_left += 1
    lines = tuple(f"{name}: {src}" for name, src in sorted(sources.items()))
    return Estimate(total, remaining, len(plan) * len(seeds), runs_left, lines)


# --- running and the tables' numbers --------------------------------------------------------


@dataclass(frozen=True)
class RowResult:
    """One row of a reproduced table: the paper's row, our mean +- sd over seeds per column in
    the paper's units, and the paired differences from the row's baseline (None without one)."""

    published: PublishedRow
    label: str
    values: Mapping[str, Summary]
    diffs: Mapping[str, Difference] | None
    per_seed: Mapping[str, Mapping[int, float]]


@dataclass
class TableResult:
    table: PublishedTable
    comparison: Comparison
    rows: list[RowResult]


def per_seed_columns(comparison: Comparison, variant: str, columns: Sequence[str],
                     rule: str = "sttran") -> dict[str, dict[int, float]]:
    """``{column: {seed: value in the paper's units}}`` of one variant of a comparison."""
    values = comparison.per_seed(rule)[variant]
    return {c: {s: COLUMNS[c][1] * v for s, v in values[COLUMNS[c][0]].items()} for c in columns}


def table_rows(table: PublishedTable, comparison: Comparison) -> list[RowResult]:
    """Our numbers for each row of ``table`` from the comparison of its variants."""
    rows = []
    for r in table.rows:
        seeds = per_seed_columns(comparison, r.variant, table.report_columns)
        values = {c: summarize([v[s] for s in sorted(v)]) for c, v in seeds.items()}
        diffs = None
        if r.baseline is not None:
            base = per_seed_columns(comparison, r.baseline, table.report_columns)
            diffs = {c: paired_difference(seeds[c], base[c]) for c in table.report_columns}
        rows.append(RowResult(r, VARIANTS[r.variant].label, values, diffs, seeds))
    return rows


TablePlan = tuple[PublishedTable, Path, list[Variant]]
"""A table, the folder its runs go to (``OUT/<mode>``), its variants."""


def plan_tables(tables: Sequence[int], recipe_set: RecipeSet, out: str | Path,
                overrides: Mapping[str, Any] | None = None,
                published: Mapping[int, PublishedTable] | None = None) -> list[TablePlan]:
    """(table, the folder its runs go to, its variants) for each table asked for."""
    published = published or load_published()
    return [(published[n], Path(out) / published[n].mode, table_variants(published[n], recipe_set, overrides))
            for n in tables]


def run_reproduction(plan: Sequence[TablePlan], seeds: Sequence[int], *,
                     progress: bool = True, echo: Callable[[str], None] = print) -> list[TableResult]:
    """Train (or reuse) and evaluate each table's variants x seeds (``run_comparison`` into the
    table's mode folder), then our numbers per row."""
    results = []
    for table, folder, variants in plan:
        echo(f"Table {table.number} ({table.mode.upper()}): {len(variants)} variants x {len(seeds)} seeds in {folder}")
        comparison = run_comparison(variants, seeds, folder, progress=progress,
                                    echo=lambda s, n=table.number: echo(f"[Table {n}] {s}"))
        results.append(TableResult(table, comparison, table_rows(table, comparison)))
    return results


__all__ = ["VARIANTS", "VariantSpec", "PublishedRow", "PublishedTable", "load_published", "only_rows", "parse_tables",
           "RecipeSet", "load_recipe_set", "table_variants", "Estimate", "estimate_time", "step_cost",
           "RowResult", "TableResult", "TablePlan", "table_rows", "plan_tables", "run_reproduction", "per_seed_columns",
           "DOCUMENTED_STEP_S", "EVAL_FRACTION", "RUN_OVERHEAD_S", "TABLES", "COLUMNS", "HEADERS"]
