"""The training recipe: :class:`TrainConfig` (one frozen dataclass, every field a recipe can
set), its checks (:func:`check_config`: types, ranges, choices, a registered head and the
keywords its constructor takes) and :func:`load_config` (a YAML recipe from ``configs/``,
through :func:`common.config.load_yaml_mapping`, plus command-line overrides).

A wrong field is one :class:`~common.errors.ConfigError` line naming where it came from (the
file, ``--set KEY``, ``--lr``) and the field.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from common.config import at_least, between, check_fields, check_keywords, load_yaml_mapping, one_of
from common.errors import ConfigError
from rules.modes import Mode
from rules.pairing import SgdetBoxes
from stage2_relations.evaluation.seeds import MAX_SEED
from stage2_relations.heads import HEADS, HeadContext, RSNet, build_model, head_class
from stage2_relations.view_options import VIEW_RULES, ObjectScores, ViewOptions

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """A training recipe (``configs/*.yaml``); every field can be overridden on the CLI."""

    store: str = ""
    mode: str = "predcls"
    head: str = "sttran"
    head_cfg: dict = field(default_factory=dict)
    """Keyword arguments of the head (e.g. hidden, embed_dim, num_heads, ffn_dim)."""
    rsnet: dict | None = None
    """None: the bare head; a dict (possibly empty): RS-Net around it, with these arguments."""
    glove: str | None = None
    """GloVe text file to initialise the class embeddings (None: random, learnable)."""
    # The fields named as a ViewOptions field set it (view_options; documented there); their
    # values are the names of its enums, as YAML and the run folders spell them.
    assignment: str = ViewOptions.assignment.value
    sgdet_boxes: str = ViewOptions.sgdet_boxes.value
    """SGDET test boxes, of validation here and, by default, of eval."""
    object_scores: str = ViewOptions.object_scores.value
    negatives: bool | None = None
    """Pairs without a relation in the training view; None: with RS-Net only (the baselines
    train on positives, as their papers do)."""
    negative_labels: str = ViewOptions.negative_labels.value
    epochs: int = 10
    lr: float = 1e-5
    weight_decay: float = 0.01
    grad_clip: float = 5.0
    videos_per_batch: int = 1
    num_workers: int = 0
    preload: bool = False
    seed: int = 0
    negative_ratio: float = ViewOptions.negative_ratio
    negative_iou: float = ViewOptions.negative_iou
    plateau_factor: float = 0.5
    plateau_patience: int = 1
    plateau_threshold: float = 1e-4
    """ReduceLROnPlateau: an absolute gain below this is no gain (STTran: 1e-4, 'abs')."""
    min_lr: float = 1e-7
    train_split: str = "train"
    val_split: str = "val"
    max_videos: int = 0
    """Train on at most this many videos (0: all), for trials."""
    val_max_videos: int = 0
    device: str = "auto"
    threads: int = 0
    """torch intra-op threads; 0: from the cores available and ``num_workers`` (common.threads)."""
    verify_checksums: bool = True
    """Check every video read from the store against its checksums (once per video per process)."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def view_options(self) -> ViewOptions:
        """The data views this recipe trains and validates on, with the fields the head requires
        (:meth:`~stage2_relations.heads.base.RelationHead.required_view_options`; DSG-DETR: the
        pair pool and, in SGDET, the raw detections, which a recipe naming other boxes contradicts)."""
        negatives = self.rsnet is not None if self.negatives is None else bool(self.negatives)
        if self.object_scores == ObjectScores.DETECTOR and Mode(self.mode) is not Mode.SGDET:
            raise ConfigError(f"object_scores: detector is an SGDET rule; the recipe's mode is {self.mode}")
        required = head_class(self.head).required_view_options(self.object_scores)
        if Mode(self.mode) is Mode.SGDET and required.get("sgdet_boxes", self.sgdet_boxes) != self.sgdet_boxes:
            raise ConfigError(f"head {self.head!r} needs sgdet_boxes: {SgdetBoxes(required['sgdet_boxes']).value} (it rebuilds the SGDET "
                              f"test boxes itself); the recipe says {self.sgdet_boxes!r}")
        mine = {f.name for f in dataclasses.fields(self)}
        named = {f.name: getattr(self, f.name) for f in dataclasses.fields(ViewOptions) if f.name in mine}
        return ViewOptions(**{**named, "negatives": negatives, **required})


FLOAT32_MAX = 3.4028234663852886e38

# Ranges and choices of the recipe's fields (types come from the annotations).
RULES = {
    "mode": one_of(*(m.value for m in Mode)),
    **VIEW_RULES,
    "epochs": at_least(1),
    # AdamW keeps lr in float32 arithmetic: above its largest value the first step overflows
    "lr": (lambda v: 0 < v < FLOAT32_MAX, f"> 0 and below {FLOAT32_MAX:.3g} (float32's largest)"),
    "weight_decay": at_least(0),
    "grad_clip": at_least(0),
    "videos_per_batch": at_least(1),
    "num_workers": at_least(0),
    "threads": at_least(0),
    "seed": (lambda v: 0 <= v <= MAX_SEED, f"in 0..{MAX_SEED}"),
    "plateau_factor": between(0, 1, lo_open=True, hi_open=True),
    "plateau_patience": at_least(0),
    "plateau_threshold": at_least(0),
    "min_lr": at_least(0),
    "max_videos": at_least(0),
    "val_max_videos": at_least(0),
}

# Fields that do not change what a run computes: ``resume`` may change them (and ``epochs``,
# to train a run longer: the schedule does not depend on it).
RESUME_MAY_CHANGE = ("device", "num_workers", "threads", "preload", "verify_checksums", "epochs")


def check_config(data: dict[str, Any], where: Callable[[str], str] | str) -> TrainConfig:
    """A :class:`TrainConfig` from ``data`` after checking every field: known keys, types,
    ranges and choices, a registered head, ``head_cfg`` keys that the head's constructor
    takes and ``rsnet`` keys that RS-Net's takes. ``where`` names a field's origin (the
    file, ``--set KEY``, ``--lr``) in the one-line :class:`ConfigError`."""
    origin = where if callable(where) else (lambda _k, _w=where: str(_w))
    values = check_fields(TrainConfig, data, where=origin, rules=RULES)
    head = values.get("head", TrainConfig.head)
    if head not in HEADS:
        raise ConfigError(f"{origin('head')}: head: unknown head {head!r}; registered: {', '.join(sorted(HEADS))}")
    cls = HEADS[head]
    check_keywords(cls.__init__, values.get("head_cfg") or {}, skip=cls.context_arguments, what="head_cfg",
                   where=lambda k: origin(f"head_cfg.{k}"))
    if values.get("rsnet") is not None:
        check_keywords(RSNet.__init__, values["rsnet"], skip=("head",), what="rsnet",
                       where=lambda k: origin(f"rsnet.{k}"))
    return TrainConfig(**values)


def head_context(cfg: TrainConfig, meta, derived: dict[str, Any] | None = None) -> HeadContext:
    """What a recipe's head is built from besides its recipe: the store's ``meta`` (vocabulary,
    feature and union sizes), the mode, and ``derived`` (:func:`stage2_relations.train.derive`)."""
    return HeadContext(vocabulary=meta.vocabulary, mode=Mode(cfg.mode), feature_dim=meta.feature_dim,
                       union_shape=tuple(meta.union_shape), derived=derived or {})


BUILD_ERRORS = (ValueError, TypeError, RuntimeError, AssertionError)
"""What a head's or torch's constructor raises for widths it rejects (torch's attention asserts)."""


def check_run_inputs(cfg: TrainConfig, store, *, glove: bool = True, splits: tuple[str, ...] = ()) -> None:
    """Everything a run of ``cfg`` needs beyond its own fields, checked before any work (``train``
    before its first step, ``compare`` for every variant before it trains the first), each a
    one-line error naming the field or file:

    * ``val_split`` is a split of ``store`` (an open :class:`~store.Store`); only the default,
      ``val``, may be absent (the run then trains without validation, as documented);
    * SGDET: the training split holds detections (else a warning, logged);
    * ``glove`` (when ``glove``) is a GloVe file of the head's embedding width holding class words;
    * the model builds from ``head_cfg`` / ``rsnet`` for this store (widths the constructor rejects);
    * RS-Net's ``max_frames`` covers the longest video of the training and validation splits and
      of ``splits`` (compare's test split).
    """
    names = store.videos()
    present = sorted({store.split_of(v) for v in names})
    if cfg.val_split != TrainConfig.val_split and cfg.val_split not in present:
        raise ConfigError(f"val_split: {cfg.val_split!r} is not a split of {cfg.store} (its splits: "
                          f"{', '.join(present) or 'none'}): the run would train without validation")
    train_videos = store.videos(cfg.train_split)
    if Mode(cfg.mode) is Mode.SGDET and train_videos and not any(store.num_rows(v, "detections") for v in train_videos):
        # A warning, not an error: the demo's one-epoch detector finds nothing, and its pipeline
        # must still run end to end; a real run learns of it before any work, not from its results.
        log.warning("%s: none of its %d %r videos holds a detection: SGDET trains on the detector's boxes, so this "
                    "run learns nothing of them (a detector that found nothing, or a store extracted without one)",
                    cfg.store, len(train_videos), cfg.train_split)
    head = head_class(cfg.head)
    context = head_context(cfg, store.meta)
    derived = head.placeholder_derived(dict(cfg.head_cfg), context)
    if glove and cfg.glove:
        derived["class_embeddings"] = head.glove_class_embeddings(cfg.glove, dict(cfg.head_cfg), store.meta.vocabulary)
    try:
        model = build_model(cfg.head, cfg.head_cfg, cfg.rsnet, head_context(cfg, store.meta, derived))
    except BUILD_ERRORS as e:
        raise ConfigError(f"the recipe's head_cfg / rsnet: the model cannot be built: "
                          f"{(str(e).strip() or type(e).__name__).splitlines()[0]}") from None
    max_frames = getattr(model, "max_frames", None)
    if max_frames is not None:
        used = [v for split in dict.fromkeys((cfg.train_split, cfg.val_split, *splits)) for v in store.videos(split)]
        longest = max(used, key=lambda v: store.num_rows(v, "frames"), default=None)
        if longest is not None and store.num_rows(longest, "frames") > max_frames:
            raise ConfigError(f"rsnet.max_frames: {max_frames} is fewer than the frames of video {longest!r} "
                              f"({store.num_rows(longest, 'frames')}, split {store.split_of(longest)!r}): RS-Net "
                              f"cannot take it; set it to the longest video's frames or more")


def load_config(path: str | Path | None, overrides: dict[str, Any] | None = None,
                labels: dict[str, str] | None = None) -> TrainConfig:
    """The recipe at ``path`` (YAML) with ``overrides`` applied; dotted keys reach into dicts
    (``head_cfg.hidden=64``, ``rsnet.temporal_token=mean``). Every field is checked
    (:func:`check_config`); a wrong one raises :class:`ConfigError` with one line naming the
    file, or the override's label (``labels[key]``, e.g. ``"--lr"``; default ``"override KEY"``),
    and the field."""
    data: dict[str, Any] = load_yaml_mapping(path) if path is not None else {}
    origin = {k: str(path) for k in data}
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        label = (labels or {}).get(key, f"override {key}")
        top, _, rest = key.partition(".")
        if top not in known:
            raise ConfigError(f"{label}: unknown field {top!r}; known: {', '.join(sorted(known))}")
        if rest:
            sub = data.get(top) or {}
            if not isinstance(sub, dict):
                raise ConfigError(f"{label}: {top} is {sub!r}, not a mapping with keys")
            data[top] = {**sub, rest: value}
            origin[key] = label
            origin.setdefault(top, label)
        else:
            data[top] = value
            origin[top] = label

    def where(field_name: str) -> str:
        return origin.get(field_name) or origin.get(field_name.partition(".")[0]) or str(path or "the recipe")

    return check_config(data, where)


def parse_override(text: str) -> tuple[str, Any]:
    """``"key=value"`` with the value parsed as YAML (``lr=1e-4``, ``rsnet=null``)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: not KEY=VALUE")
    k, v = text.split("=", 1)
    try:
        return k.strip(), yaml.safe_load(v)
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {text!r}: the value is not valid YAML ({getattr(e, 'problem', None) or e})") from None


__all__ = ["BUILD_ERRORS", "RESUME_MAY_CHANGE", "RULES", "TrainConfig", "check_config", "check_run_inputs",
           "head_context", "load_config", "parse_override"]
