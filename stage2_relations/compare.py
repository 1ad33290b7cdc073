"""``cli.py compare``: several recipes x seeds from one store; means, spreads, paired differences.

For each variant (a recipe plus the shared overrides) and seed, :func:`run_comparison` trains
a run folder, evaluates it on the test split for each constraint and object-scores rule, and
measures RS-Net's p_{t,0} (:func:`relation_score_summary`)::

    OUT/<variant>/seed<k>/                          a `train` run folder (config.yaml, last.pth, best.pth ...)
    OUT/<variant>/seed<k>/eval_test_<mode>_<rule>/  evaluate_checkpoint's files (metrics.json ...)
    OUT/<variant>/seed<k>/relation_scores_test_<mode>.json   p_{t,0} of positives / negatives (RS-Net)
    OUT/compare.json  compare.csv  compare.png  compare.txt

Reuse: a finished run folder is not trained again, a shorter one resumes, one of another config
is an error; an evaluation is redone only when its metrics.json does not match the checkpoint,
split, mode, store or view options. Statistics: :mod:`stage2_relations.evaluation.seeds`. The
rules in full: docs/stage2.md, "Comparing variants over seeds".
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from common.errors import ConfigError, InputError, UserError
from common.files import sha256_of, write_json
from common.runtime import resolve_device
from stage2_relations.checkpoints import load_checkpoint, read_checkpoint, run_checkpoint
from stage2_relations.eval_request import EvalRequest, Protocol
from stage2_relations.evaluate_checkpoint import EvaluationView, evaluate_checkpoint, evaluation_view
from stage2_relations.evaluation import MeanRecall
from stage2_relations.evaluation.seeds import (  # noqa: F401
    EVAL_METRICS,
    MEAN_RECALL,
    Aggregate,
    Difference,
    Summary,
    TableRow,
    aggregate,
    format_table2,
    paired_difference,
    parse_seeds,
    summarize,
    table_row,
)
from stage2_relations.recipe import TrainConfig, check_run_inputs, load_config
from stage2_relations.train import train, training_run
from stage2_relations.view_options import ObjectScores, ViewOptions
from store.reader import store_location

log = logging.getLogger(__name__)

SPLIT = "test"
CONSTRAINTS = ("with", "no")
RELATION_SCORE_METRICS = ("p0_positive", "p0_negative", "p0_gap")
UNITS = {"params": "parameters", "fps": "frames/s", "p0_positive": "probability", "p0_negative": "probability",
         "p0_gap": "probability"}


# --- RS-Net's relation scores ------------------------------------------------------------


@torch.no_grad()
def relation_score_summary(model: torch.nn.Module, dataset, device: str | torch.device = "cpu", *,
                           videos_per_batch: int = 1) -> dict[str, Any]:
    """Mean p_{t,0} (``RelationOutput.pair_scores``) of ``model`` over the positive and over the
    negative pairs of ``dataset`` (``batch.pair_positive``), the model in eval mode.

    dataset: a :class:`~stage2_relations.data.VideoDataset`, normally the training view with
    every negative (``ViewOptions(negatives=True, negative_ratio=1e9)``). Returns
    {'positive_mean', 'negative_mean' (None without such pairs), 'gap' (positive - negative),
    'positives', 'negatives' (pair counts), 'videos'}. Raises ValueError for a model without
    a relation scorer (no RS-Net).
    """
    from torch.utils.data import DataLoader

    from stage2_relations.data import Collator

    model.eval()
    loader = DataLoader(dataset, batch_size=videos_per_batch, shuffle=False, collate_fn=Collator.of(dataset))
    sums, counts = [0.0, 0.0], [0, 0]  # positives, negatives
    for batch in loader:
        batch = batch.to(device)
        scores = model(batch).pair_scores
        if scores is None:
            raise ValueError("the model has no relation scorer (pair_scores is None): RS-Net only")
        scores = scores.double().cpu()
        positive = batch.pair_positive.cpu()
        for i, mask in enumerate((positive, ~positive)):
            sums[i] += float(scores[mask].sum())
            counts[i] += int(mask.sum())
    means = [s / c if c else None for s, c in zip(sums, counts)]
    gap = means[0] - means[1] if None not in means else None
    return {"positive_mean": means[0], "negative_mean": means[1], "gap": gap, "positives": counts[0],
            "negatives": counts[1], "videos": len(dataset)}


def relation_score_view(cfg: TrainConfig) -> ViewOptions:
    """The recipe's training view with every negative kept (ratio 1e9: no random drop; the
    IoU rule of section 4.2 still removes near-duplicates of positives)."""
    return dataclasses.replace(cfg.view_options(), negatives=True, negative_ratio=1e9)


# --- variants and runs ------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    """A recipe with the shared overrides applied; ``config.seed`` is replaced per run."""

    name: str
    config: TrainConfig
    recipe: str | None = None

    @property
    def rsnet(self) -> bool:
        return self.config.rsnet is not None


class RunMismatch(UserError, ValueError):
    """A run folder holds another config than the one requested."""


def load_variants(recipes: Sequence[str | Path], names: Sequence[str] | None = None,
                  overrides: Mapping[str, Any] | None = None) -> list[Variant]:
    """One :class:`Variant` per recipe (YAML) with ``overrides`` applied (``load_config``'s
    dotted keys). Names default to the recipe file stems. Checks what a comparison needs: at
    least one recipe, names unique and usable as folder names, one store and one mode for all
    (set them with overrides when the recipes differ), no ``seed`` override (seeds are the
    comparison's)."""
    if not recipes:
        raise ConfigError("give at least one recipe (--config)")
    overrides = dict(overrides or {})
    if overrides.get("seed") is not None:
        raise ConfigError("seed is set per run by --seeds; do not override it")
    for path in recipes:
        if not Path(path).is_file():
            raise FileNotFoundError(f"recipe not found: {path}")
    if names:
        if len(names) != len(recipes):
            raise ConfigError(f"{len(names)} --name for {len(recipes)} --config: give one name per recipe or none")
    else:
        names = [Path(p).stem for p in recipes]
    if len(set(names)) != len(names):
        raise ConfigError(f"variant names repeat ({', '.join(names)}): name each recipe with --name")
    for n in names:
        if not n or n in (".", "..") or not re.fullmatch(r"[\w.+=@-]+", n):
            raise ConfigError(f"variant name {n!r} is not a plain folder name (letters, digits, . _ - + = @)")
    variants = [Variant(n, load_config(p, overrides), str(p)) for n, p in zip(names, recipes)]
    # the runs name their store absolutely (train does): relative and absolute forms are one store
    variants = [dataclasses.replace(v, config=dataclasses.replace(v.config, store=store_location(v.config.store)))
                if v.config.store else v for v in variants]
    for key in ("store", "mode"):
        values = {getattr(v.config, key) for v in variants}
        if len(values) != 1:
            raise ConfigError(f"the recipes name different {key}s ({', '.join(sorted(map(str, values)))}): "
                              f"compare runs every variant on one; set --{key}")
    if not variants[0].config.store:
        raise ConfigError("no store: give --store or recipes that name one")
    return variants


def check_store(variants: Sequence[Variant]) -> int:
    """The number of test videos of the shared store; ValueError when it has no test split."""
    from store import open_store

    path = variants[0].config.store
    st = open_store(path)
    test = st.videos(SPLIT)
    if not test:
        splits = sorted({st.split_of(v) for v in st.videos()})
        raise ConfigError(f"{path}: no {SPLIT!r} split (it has {', '.join(splits) or 'no videos'}); "
                          f"compare evaluates on the test split")
    return len(test)


def check_variants(variants: Sequence[Variant]) -> None:
    """Every variant's device, recipe inputs and model (:func:`~stage2_relations.recipe.check_run_inputs`,
    with the test split's videos for RS-Net's ``max_frames``), before the first is trained: a
    width the head rejects in the third variant used to surface after the first two had trained.
    A recipe error names the variant and its recipe file."""
    from store import open_store

    st = open_store(variants[0].config.store, verify=False)
    try:
        for v in variants:
            try:
                resolve_device(v.config.device)
                check_run_inputs(v.config, st, splits=(SPLIT,))
            except (ConfigError, InputError) as e:
                raise type(e)(f"variant {v.name!r} ({v.recipe or 'no recipe file'}): {e}") from None
    finally:
        st.close()


def run_state(cfg: TrainConfig, run_dir: Path, *, trust: bool = False) -> dict[str, Any]:
    """What a run folder holds: {'epochs': completed epochs (0: none), 'best_r20', 'history'}.
    Raises :class:`RunMismatch`, naming the folder, when ``train --resume`` would refuse ``cfg``
    there (its own rule, :meth:`~common.training_run.TrainingRun.resume_check`): a config that
    differs from the run's (last.pth's, else config.yaml's) in a field it does not let change,
    each named, or fewer epochs than the run has completed. ``trust``: read last.pth with full pickle."""
    run = training_run(run_dir)
    ckpt = read_checkpoint(run.checkpoint, trust=trust) if run.checkpoint.exists() else None
    done = int(ckpt["epoch"]) if ckpt is not None else 0
    check = run.resume_check(cfg.to_dict(), checkpoint_config=ckpt["config"] if ckpt is not None else None, done=done,
                             epochs=cfg.epochs)
    if check.differences:
        raise RunMismatch(f"{run_dir} holds a run of another config ({'; '.join(check.differences)}); "
                          f"remove the folder or use another --out")
    if check.shortens:
        raise RunMismatch(f"{run_dir} holds a run of {done} completed epochs, more than the "
                          f"{cfg.epochs} requested; give --epochs {done} or more, or another --out")
    if ckpt is None:
        return {"epochs": 0, "best_r20": None, "history": []}
    return {"epochs": done, "best_r20": float(ckpt["best_r20"]), "history": list(ckpt["history"])}


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def scored_view(cfg: TrainConfig, rule: str) -> EvaluationView:
    """What :func:`evaluate_checkpoint` scores a run of ``cfg`` on under ``rule``: the test split in
    the recipe's mode (:func:`~stage2_relations.evaluate_checkpoint.evaluation_view`, eval's own)."""
    return evaluation_view(cfg, SPLIT, object_scores=rule)


def evaluation_is_current(payload: Mapping[str, Any] | None, cfg: TrainConfig, rule: str, sha: str) -> bool:
    """Whether an evaluation's metrics.json was made from this checkpoint (sha256) on this
    :func:`scored_view` (store, split, mode, view options), with both constraints present."""
    if not payload:
        return False
    return ((payload.get("compare") or {}).get("checkpoint_sha256") == sha
            and all(payload.get(k) == v for k, v in scored_view(cfg, rule).describe().items())
            and set(CONSTRAINTS) <= set(payload.get("results") or {}))


def metric_values(payload: Mapping[str, Any], mean_recall: MeanRecall = MEAN_RECALL) -> dict[str, float]:
    """{"with:R@20": fraction, ..., "params": count, "fps": frames/s} from a metrics.json
    (what :meth:`EvaluationResult.to_dict` writes: recall, precision, mean_recall[definition])."""
    out: dict[str, float] = {}
    for c in CONSTRAINTS:
        r = payload["results"][c]
        for m in EVAL_METRICS:
            name, k = m.split("@")
            table = {"R": r["recall"], "P": r["precision"], "mR": r["mean_recall"][MeanRecall(mean_recall).value]}[name]
            out[f"{c}:{m}"] = float(table[k])
    out["params"] = float(payload["parameters"])
    out["fps"] = float(payload["inference"]["fps"])
    return out


@dataclass
class RunRecord:
    """One variant and seed: its folder, training state, per-rule metrics ({rule: metric_values})
    and, for RS-Net, :func:`relation_score_summary`'s dict."""

    variant: str
    seed: int
    run_dir: Path
    epochs: int
    best_val_r20: float | None
    trained_now: bool
    evaluations: dict[str, dict[str, float]]
    relation_scores: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "run_dir": str(self.run_dir)}


@dataclass
class Comparison:
    """Everything :func:`run_comparison` measured, and its aggregates."""

    variants: list[Variant]
    seeds: list[int]
    rules: list[str]
    runs: list[RunRecord]
    threads: int
    test_videos: int

    @property
    def reference(self) -> str:
        return self.variants[0].name

    def per_seed(self, rule: str) -> dict[str, dict[str, dict[int, float]]]:
        """``[variant][metric][seed]`` of one rule's evaluation metrics."""
        out: dict[str, dict[str, dict[int, float]]] = {v.name: {} for v in self.variants}
        for r in self.runs:
            for metric, value in r.evaluations[rule].items():
                out[r.variant].setdefault(metric, {})[r.seed] = value
        return out

    def per_seed_relation_scores(self) -> dict[str, dict[str, dict[int, float]]]:
        out: dict[str, dict[str, dict[int, float]]] = {}
        for r in self.runs:
            if r.relation_scores is None:
                continue
            values = {"p0_positive": r.relation_scores["positive_mean"],
                      "p0_negative": r.relation_scores["negative_mean"], "p0_gap": r.relation_scores["gap"]}
            for metric, value in values.items():
                if value is not None:
                    out.setdefault(r.variant, {}).setdefault(metric, {})[r.seed] = float(value)
        return out

    def aggregates(self) -> dict[str, dict[str, dict[str, Aggregate]]]:
        """{rule: {variant: {metric: Aggregate}}}; relation scores under the key 'p0'."""
        out = {rule: aggregate(self.per_seed(rule), self.reference) for rule in self.rules}
        out["p0"] = aggregate(self.per_seed_relation_scores(), self.reference)
        return out


def run_comparison(variants: Sequence[Variant], seeds: Sequence[int], out_dir: str | Path, *,
                   rules: Sequence[str] = ("sttran",), progress: bool = True,
                   echo: Callable[[str], None] = print, trust_checkpoints: bool = False) -> Comparison:
    """Train (or resume, or reuse) and evaluate every variant x seed into ``out_dir`` (the
    layout and the rules of reuse are in the module docstring); returns a :class:`Comparison`.
    Raises ValueError for an unknown rule or a store without a test split, and
    :class:`RunMismatch` for a run folder of another config, and every variant's recipe error
    (:func:`check_variants`), before anything is trained. ``trust_checkpoints``: read the run
    folders' checkpoints with full pickle (may run code)."""
    variants, seeds, rules = list(variants), list(seeds), list(dict.fromkeys(rules))
    if not seeds:
        raise ConfigError("no seeds")
    for rule in rules:
        if rule not in {r.value for r in ObjectScores}:
            raise ConfigError(f"unknown object-scores rule {rule!r}; known: {', '.join(r.value for r in ObjectScores)}")
    for v in variants:  # every test view eval will build, before any training (the detector rule is SGDET's)
        for rule in rules:
            try:
                scored_view(v.config, rule)
            except ConfigError as e:
                raise ConfigError(f"variant {v.name}: {e}") from None
    test_videos = check_store(variants)
    check_variants(variants)
    out_dir = Path(out_dir)
    plan = [(v, s, dataclasses.replace(v.config, seed=s), out_dir / v.name / f"seed{s}")
            for v in variants for s in seeds]
    # every mismatch before any training
    states = [run_state(cfg, run_dir, trust=trust_checkpoints) for _, _, cfg, run_dir in plan]
    runs: list[RunRecord] = []
    for (variant, seed, cfg, run_dir), state in zip(plan, states):
        tag = f"[{variant.name} seed {seed}]"
        done = state["epochs"]
        trained_now = done < cfg.epochs
        if trained_now:
            if done:
                echo(f"{tag} resuming from last.pth at epoch {done + 1} of {cfg.epochs}")
            t0 = time.perf_counter()
            # resume also restarts a run killed before its first epoch ended (a folder without last.pth)
            result = train(cfg, run_dir, resume=done > 0 or run_dir.exists(), progress=progress,
                           echo=lambda s: echo(f"{tag} {s}"), trust_checkpoint=trust_checkpoints)
            state = {"epochs": len(result["history"]), "best_r20": result["best_r20"], "history": result["history"]}
            last = state["history"][-1] if state["history"] else {}
            val = f"val R@20 {100 * last['val_R@20']:.1f}" if "val_R@20" in last else "no val split"
            what = f"epochs {done + 1}-{cfg.epochs} (resumed)" if done else f"{cfg.epochs} epochs"
            echo(f"{tag} trained {what}, {val}, {time.perf_counter() - t0:.1f} s")
        else:
            echo(f"{tag} already trained ({state['epochs']} epochs), not retrained")
        ckpt_path = run_checkpoint(run_dir)
        sha = sha256_of(ckpt_path)
        evaluations = {}
        for rule in rules:
            eval_dir = run_dir / f"eval_{SPLIT}_{cfg.mode}_{rule}"
            payload = _read_json(eval_dir / "metrics.json")
            if evaluation_is_current(payload, cfg, rule, sha):
                echo(f"{tag} {rule}: evaluation up to date ({eval_dir.name}/metrics.json)")
            else:
                evaluate_checkpoint(EvalRequest(run_dir=run_dir, split=SPLIT, object_scores=rule,
                                                protocol=Protocol(constraints=CONSTRAINTS), out_dir=eval_dir,
                                                device=str(resolve_device(cfg.device)),
                                                trust_checkpoint=trust_checkpoints), echo=log.info)
                payload = json.loads((eval_dir / "metrics.json").read_text())
                payload["compare"] = {"checkpoint_sha256": sha, "checkpoint": ckpt_path.name}
                write_json(eval_dir / "metrics.json", payload, indent=2)
                values = metric_values(payload)
                echo(f"{tag} {rule}: test R@20 {100 * values['with:R@20']:.1f} (with) / "
                     f"{100 * values['no:R@20']:.1f} (no), {values['fps']:.1f} frames/s")
            evaluations[rule] = metric_values(payload)
        scores = (_relation_scores(cfg, run_dir, ckpt_path, sha, tag, echo, trust=trust_checkpoints)
                  if variant.rsnet else None)
        runs.append(RunRecord(variant.name, seed, run_dir, state["epochs"], state["best_r20"], trained_now,
                              evaluations, scores))
    return Comparison(variants, seeds, rules, runs, torch.get_num_threads(), test_videos)


def _relation_scores(cfg: TrainConfig, run_dir: Path, ckpt_path: Path, sha: str, tag: str,
                     echo: Callable[[str], None], *, trust: bool = False) -> dict[str, Any]:
    from stage2_relations.data import VideoDataset

    path = run_dir / f"relation_scores_{SPLIT}_{cfg.mode}.json"
    view = relation_score_view(cfg)
    key = {"checkpoint_sha256": sha, "split": SPLIT, "mode": cfg.mode, "store": cfg.store,
           "view": dataclasses.asdict(view)}
    cached = _read_json(path)
    if cached is not None and cached.get("key") == key:
        echo(f"{tag} p_t0 up to date ({path.name})")
        return cached["summary"]
    device = resolve_device(cfg.device)
    model, _, _ = load_checkpoint(ckpt_path, device=device, trust=trust, splits=(SPLIT,))
    ds = VideoDataset(cfg.store, SPLIT, cfg.mode, train=True, seed=cfg.seed, options=view)
    summary = relation_score_summary(model, ds, device, videos_per_batch=cfg.videos_per_batch)
    write_json(path, {"key": key, "summary": summary}, indent=2)
    if summary["gap"] is not None:
        echo(f"{tag} p_t0 on test: positives {summary['positive_mean']:.3f} ({summary['positives']} pairs), "
             f"negatives {summary['negative_mean']:.3f} ({summary['negatives']} pairs)")
    return summary


__all__ = ["Summary", "Difference", "Aggregate", "summarize", "paired_difference", "aggregate", "parse_seeds",
           "TableRow", "format_table2", "table_row", "relation_score_summary", "relation_score_view", "Variant",
           "RunMismatch", "load_variants", "check_store", "run_state", "run_comparison", "RunRecord", "Comparison",
           "metric_values", "evaluation_is_current"]
