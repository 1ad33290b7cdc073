"""Scene graphs per frame as JSON and CSV (``cli.py predict``), from a trained SGDET run on a
store of videos without annotations, or from an evaluated run's predictions file
(``eval --save-predictions``, for ``cli.py view``), with its hits and misses.

The SGDET test view and the model run unchanged (:class:`UnannotatedVideos` is the test
:class:`~stage2_relations.data.VideoDataset` over every stored frame, with no ground truth);
the triplets are the protocol's (:func:`~stage2_relations.evaluation.triplets.rank_triplets`,
*with* constraint: per pair its best attention, spatial (object, person) and contacting
predicate, score ``s_subj * s_obj * p_{t,0} * p``). Heads are temporal (STTran's transformer
runs over the frames of the video it is given): the frames predicted are the temporal
context, so predicting on exactly the frames ``eval`` scores gives exactly its triplets, and
another frame set (every frame, every n-th) gives other scores.

The document of one video (``VIDEO.json``, format ``dsgg-scene-graphs``, :data:`SCHEMA_VERSION`)
is described by :func:`json_schema` (also written beside the outputs as
``scene_graphs.schema.json``) and checked by :func:`validate`; docs/predict.md shows an example.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from common.errors import ConfigError, InputError
from common.files import atomic_write, sha256_of
from rules.modes import Mode
from stage2_relations.checkpoints import load_checkpoint, run_checkpoint
from stage2_relations.data import VideoDataset
from stage2_relations.evaluate_checkpoint import eval_view_options
from stage2_relations.evaluation.metrics import NOT_MATCHED, match_triplets
from stage2_relations.evaluation.predictions_io import read_predictions
from stage2_relations.evaluation.structures import Constraint, FrameGroundTruth, FramePredictions, GroundTruthSet, PredictionSet
from stage2_relations.evaluation.triplets import ground_truth_triplets, rank_triplets
from stage2_relations.scoring import predict
from store import StoreMeta, VideoRecord, open_store
from store.vocabulary import GROUP_ORDER, Vocabulary

log = logging.getLogger(__name__)

FORMAT = "dsgg-scene-graphs"
SCHEMA_VERSION = 1
"""Version 1: boxes, pairs with every predicate probability and RS-Net's relevance, triplets
under the with constraint; an evaluated run's ground truth and hits."""
SCHEMA_FILE = "scene_graphs.schema.json"
CSV_COLUMNS = ("video", "frame", "rank", "subject", "subject_label", "subject_x1", "subject_y1", "subject_x2",
               "subject_y2", "object", "object_label", "object_x1", "object_y1", "object_x2", "object_y2",
               "predicate", "group", "predicate_score", "relevance", "score", "hit")


# --- the schema -----------------------------------------------------------------------------


def _obj(properties: dict, required: Sequence[str] | None = None) -> dict:
    return {"type": "object", "properties": properties,
            "required": list(properties if required is None else required), "additionalProperties": False}


def _arr(items: dict, n: int | None = None) -> dict:
    out = {"type": "array", "items": items}
    if n is not None:
        out.update(minItems=n, maxItems=n)
    return out


_NUM, _INT, _STR = {"type": "number"}, {"type": "integer", "minimum": 0}, {"type": "string"}
_PROB = {"type": "number", "minimum": 0, "maximum": 1}
_PROB_OR_NULL = {"type": ["number", "null"], "minimum": 0, "maximum": 1}


def json_schema() -> dict:
    """The JSON Schema (draft 2020-12) of one video's document. Box and pair indices are local
    to the frame; boxes are xyxy pixels of the original frame; ``triplets`` are best first."""
    box = _obj({"box": _arr(_NUM, 4), "label": _STR, "label_id": _INT, "score": _PROB})
    pair = _obj({"subject": _INT, "object": _INT, "relevance": _PROB_OR_NULL, "attention": _arr(_PROB),
                 "spatial": _arr(_PROB), "contacting": _arr(_PROB)})
    triplet = _obj({"rank": _INT, "pair": _INT, "subject": _INT, "object": _INT, "predicate": _STR,
                    "predicate_id": _INT, "group": {"enum": [g.value for g in GROUP_ORDER]},
                    "predicate_score": _PROB, "relevance": _PROB_OR_NULL, "score": _PROB,
                    "hit": {"type": ["boolean", "null"]}})
    gt_box = _obj({"box": _arr(_NUM, 4), "label": _STR, "label_id": _INT})
    gt_triplet = _obj({"subject": _INT, "object": _INT, "predicate": _STR, "predicate_id": _INT,
                       "group": {"enum": [g.value for g in GROUP_ORDER]},
                       "recalled_at_rank": {"type": ["integer", "null"], "minimum": 0}})
    frame = _obj({"key": _STR, "number": {"type": ["integer", "null"]}, "width": _INT, "height": _INT,
                  "boxes": _arr(box), "pairs": _arr(pair), "triplets": _arr(triplet),
                  "ground_truth": {"oneOf": [{"type": "null"}, _obj({"boxes": _arr(gt_box),
                                                                     "triplets": _arr(gt_triplet)})]}})
    doc = _obj({
        "format": {"const": FORMAT}, "schema_version": {"const": SCHEMA_VERSION}, "video": _STR,
        "source": {"type": ["string", "null"]},
        "run": _obj({"name": _STR, "checkpoint": {"type": ["string", "null"]},
                     "checkpoint_sha256": {"type": ["string", "null"]}, "head": {"type": ["string", "null"]},
                     "rsnet": {"type": "boolean"}, "mode": _STR}),
        "detector": {"type": "object"}, "frames_selected": _STR, "constraint": {"const": Constraint.WITH.value},
        "computed": {"oneOf": [{"type": "null"}, _obj({"device": _STR, "torch_threads": _INT})]},
        "vocabulary": _obj({"objects": _arr(_STR), "predicates": _arr(_STR),
                            "groups": {"type": "object", "additionalProperties": _arr(_INT, 2)}}),
        "frames": _arr(frame),
    })
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": "scene graphs of one video", **doc}


def validate(doc: Any, schema: dict | None = None, where: str = "$") -> None:
    """Raise InputError naming the first place where ``doc`` breaks :func:`json_schema` (the
    keywords it uses: type, const, enum, oneOf, properties, required, additionalProperties,
    items, minItems, maxItems, minimum, maximum)."""
    schema = json_schema() if schema is None else schema
    if "oneOf" in schema:
        ok = 0
        for option in schema["oneOf"]:
            try:
                validate(doc, option, where)
                ok += 1
            except InputError:
                pass
        if ok != 1:
            raise InputError(f"{where}: matches {ok} of the {len(schema['oneOf'])} allowed shapes, not one")
        return
    if "const" in schema and doc != schema["const"]:
        raise InputError(f"{where}: {doc!r}, expected {schema['const']!r}")
    if "enum" in schema and doc not in schema["enum"]:
        raise InputError(f"{where}: {doc!r} is not one of {schema['enum']}")
    kinds = schema.get("type")
    if kinds is not None:
        kinds = [kinds] if isinstance(kinds, str) else kinds
        checks = {"object": lambda v: isinstance(v, dict), "array": lambda v: isinstance(v, list),
                  "string": lambda v: isinstance(v, str), "null": lambda v: v is None,
                  "boolean": lambda v: isinstance(v, bool),
                  "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
                  "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)}
        if not any(checks[k](doc) for k in kinds):
            raise InputError(f"{where}: {type(doc).__name__} where the schema wants {' or '.join(kinds)}")
    if isinstance(doc, (int, float)) and not isinstance(doc, bool):
        if "minimum" in schema and doc < schema["minimum"] or "maximum" in schema and doc > schema["maximum"]:
            raise InputError(f"{where}: {doc} outside [{schema.get('minimum')}, {schema.get('maximum')}]")
    if isinstance(doc, dict):
        props = schema.get("properties", {})
        for key in schema.get("required", ()):
            if key not in doc:
                raise InputError(f"{where}: missing {key!r}")
        for key, value in doc.items():
            if key in props:
                validate(value, props[key], f"{where}.{key}")
            elif isinstance(schema.get("additionalProperties"), dict):
                validate(value, schema["additionalProperties"], f"{where}.{key}")
            elif schema.get("additionalProperties") is False:
                raise InputError(f"{where}: unexpected field {key!r}")
    if isinstance(doc, list):
        if len(doc) < schema.get("minItems", 0) or len(doc) > schema.get("maxItems", len(doc)):
            raise InputError(f"{where}: {len(doc)} items")
        if "items" in schema:
            for i, value in enumerate(doc):
                validate(value, schema["items"], f"{where}[{i}]")


# --- frames to documents --------------------------------------------------------------------


def _box_row(box: np.ndarray) -> list[float]:
    return [float(v) for v in box]


def _prob(v: float) -> float:
    """A probability as JSON: float64 products of float32 values may leave [0, 1] by an ulp."""
    return float(min(max(v, 0.0), 1.0))


def frame_documents(frame_names: Sequence[str], frame_sizes: Sequence[tuple[int, int]],
                    preds: Sequence[FramePredictions], vocabulary: Vocabulary, mode: Mode,
                    gts: Sequence[FrameGroundTruth] | None = None) -> list[dict]:
    """The ``frames`` entries of a document: per frame its boxes, pairs and triplets (with
    constraint, every one, best first) and, when ``gts`` is given, its GT triplets with the rank
    at which each is recalled and each triplet's hit (IoU >= 0.5 both boxes, same labels)."""
    pred_set = PredictionSet.from_frames(list(preds), widths=vocabulary.group_widths)
    most = int(np.diff(pred_set.pair_offsets).max(initial=0)) * len(GROUP_ORDER)
    ranked = rank_triplets(pred_set, constraint=Constraint.WITH, mode=mode, vocabulary=vocabulary,
                           max_per_frame=max(most, 1))
    hits = gt_rank = gt_trip = gt_set = None
    if gts is not None:
        gt_set = GroundTruthSet.from_frames(list(gts))
        gt_trip = ground_truth_triplets(gt_set, vocabulary)
        matches = match_triplets(ranked, pred_set, gt_trip, gt_set, num_objects=vocabulary.num_objects,
                                 num_predicates=vocabulary.num_predicates)
        hits, gt_rank = matches.pred_hit, matches.gt_first_rank
    group_of = {}
    for g, (s, e) in zip(GROUP_ORDER, vocabulary.group_ranges):
        group_of.update({p: g.value for p in range(s, e)})
    frames = []
    for f, (name, (w, h), pred) in enumerate(zip(frame_names, frame_sizes, preds)):
        b0 = int(pred_set.box_offsets[f])
        rel = pred.pred_pair_scores
        boxes = [{"box": _box_row(b), "label": vocabulary.objects[int(lab)], "label_id": int(lab),
                  "score": _prob(1.0 if mode is Mode.PREDCLS else s)}
                 for b, lab, s in zip(pred.pred_boxes, pred.pred_labels, pred.pred_scores)]
        pair_of = {(int(a), int(b)): i for i, (a, b) in enumerate(pred.pred_pairs)}
        pairs = [{"subject": int(a), "object": int(b), "relevance": None if rel is None else _prob(rel[i]),
                  "attention": [_prob(v) for v in pred.pred_attention[i]],
                  "spatial": [_prob(v) for v in pred.pred_spatial[i]],
                  "contacting": [_prob(v) for v in pred.pred_contacting[i]]}
                 for i, (a, b) in enumerate(pred.pred_pairs)]
        triplets = []
        for r in range(int(ranked.offsets[f]), int(ranked.offsets[f + 1])):
            s, o, p = int(ranked.subject[r]) - b0, int(ranked.object[r]) - b0, int(ranked.predicate[r])
            group = group_of[p]
            i = pair_of[(o, s)] if group == "spatial" else pair_of[(s, o)]  # spatial rows are (object, person)
            triplets.append({"rank": int(ranked.rank[r]), "pair": i, "subject": s, "object": o,
                             "predicate": vocabulary.predicates[p], "predicate_id": p, "group": group,
                             "predicate_score": _prob(ranked.predicate_score[r]),
                             "relevance": None if rel is None else _prob(rel[i]), "score": _prob(ranked.score[r]),
                             "hit": None if hits is None else bool(hits[r])})
        ground_truth = None
        if gt_set is not None:
            g0 = int(gt_set.box_offsets[f])
            gt = gts[f]
            rows = range(int(gt_trip.offsets[f]), int(gt_trip.offsets[f + 1]))
            ground_truth = {
                "boxes": [{"box": _box_row(b), "label": vocabulary.objects[int(lab)], "label_id": int(lab)}
                          for b, lab in zip(gt.gt_boxes, gt.gt_labels)],
                "triplets": [{"subject": int(gt_trip.subject[t]) - g0, "object": int(gt_trip.object[t]) - g0,
                              "predicate": vocabulary.predicates[int(gt_trip.predicate[t])],
                              "predicate_id": int(gt_trip.predicate[t]), "group": group_of[int(gt_trip.predicate[t])],
                              "recalled_at_rank": None if gt_rank[t] == NOT_MATCHED else int(gt_rank[t])}
                             for t in rows]}
        number = name.rsplit("/", 1)[-1].split(".")[0]
        frames.append({"key": name, "number": int(number) if number.isdigit() else None, "width": int(w),
                       "height": int(h), "boxes": boxes, "pairs": pairs, "triplets": triplets,
                       "ground_truth": ground_truth})
    return frames


def document(video: str, frames: list[dict], *, vocabulary: Vocabulary, run: dict, detector: dict,
             frames_selected: str, source: str | None = None, computed: dict | None = None) -> dict:
    """One video's document (:func:`json_schema`); ``computed``: the device and torch thread
    count of the model's run (scores differ in the last bits with them), None when unknown."""
    return {"format": FORMAT, "schema_version": SCHEMA_VERSION, "video": video, "source": source, "run": run,
            "detector": detector, "frames_selected": frames_selected, "constraint": Constraint.WITH.value,
            "computed": computed,
            "vocabulary": {"objects": list(vocabulary.objects), "predicates": list(vocabulary.predicates),
                           "groups": {g.value: list(r) for g, r in zip(GROUP_ORDER, vocabulary.group_ranges)}},
            "frames": frames}


def csv_rows(doc: dict) -> list[dict]:
    """One row per triplet of the document (:data:`CSV_COLUMNS`)."""
    rows = []
    for frame in doc["frames"]:
        boxes = frame["boxes"]
        for t in frame["triplets"]:
            s, o = boxes[t["subject"]], boxes[t["object"]]
            rows.append({"video": doc["video"], "frame": frame["key"], "rank": t["rank"], "subject": t["subject"],
                         "subject_label": s["label"], **{f"subject_{k}": v for k, v in zip(("x1", "y1", "x2", "y2"),
                                                                                            s["box"])},
                         "object": t["object"], "object_label": o["label"],
                         **{f"object_{k}": v for k, v in zip(("x1", "y1", "x2", "y2"), o["box"])},
                         "predicate": t["predicate"], "group": t["group"], "predicate_score": t["predicate_score"],
                         "relevance": "" if t["relevance"] is None else t["relevance"], "score": t["score"],
                         "hit": "" if t["hit"] is None else int(t["hit"])})
    return rows


def write_document(doc: dict, out_dir: Path) -> tuple[Path, Path]:
    """``OUT/VIDEO.json`` and ``OUT/VIDEO.csv``, each written whole or not at all."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, csv_path = out_dir / f"{doc['video']}.json", out_dir / f"{doc['video']}.csv"
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(csv_rows(doc))
    with atomic_write(csv_path, "w") as f:
        f.write(text.getvalue())
    with atomic_write(json_path, "w") as f:  # last: its presence marks the video done
        json.dump(doc, f, allow_nan=False, separators=(",", ":"))
    return json_path, csv_path


def read_document(path: Path | str) -> dict:
    """A document, validated (InputError naming the file and the field otherwise)."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: not a scene-graph JSON file ({e})") from None
    if isinstance(doc, dict) and doc.get("format") == FORMAT and doc.get("schema_version") != SCHEMA_VERSION:
        raise InputError(f"{path}: schema version {doc.get('schema_version')}, this code reads {SCHEMA_VERSION}")
    try:
        validate(doc)
    except InputError as e:
        raise InputError(f"{path}: {e}") from None
    return doc


# --- predict: a trained SGDET run on videos without annotations --------------------------------


class UnannotatedVideos(VideoDataset):
    """The test view of a store of videos without annotations: every stored frame (the mode's
    frame rule needs GT objects), and frames with no ground truth."""

    def frames_of(self, rec: VideoRecord) -> np.ndarray:
        return np.arange(rec.num_frames, dtype=np.int64)

    def ground_truth(self, rec: VideoRecord) -> list:
        return [FrameGroundTruth(np.zeros((0, 4)), np.zeros(0, np.int64), np.zeros((0, 3), np.int64))
                for _ in range(rec.num_frames)]


@dataclass(frozen=True)
class SgdetRun:
    """A trained SGDET run: the model (eval mode), its recipe, checkpoint and training store's meta."""

    model: torch.nn.Module
    config: Any
    checkpoint: Path
    checkpoint_sha256: str
    meta: StoreMeta

    def describe(self) -> dict:
        return {"name": self.checkpoint.parent.name, "checkpoint": str(self.checkpoint),
                "checkpoint_sha256": self.checkpoint_sha256, "head": self.config.head,
                "rsnet": self.config.rsnet is not None, "mode": Mode.SGDET.value}


def load_sgdet_run(run_dir: Path | str, device: str = "cpu") -> SgdetRun:
    """The run of ``run_dir`` (best.pth, else last.pth); its training store gives the vocabulary,
    feature sizes and the detector the features came from. ConfigError unless it is SGDET."""
    ckpt_path = run_checkpoint(run_dir)
    model, cfg, _ = load_checkpoint(ckpt_path, device=device)
    if Mode(cfg.mode) is not Mode.SGDET:
        raise ConfigError(f"{ckpt_path}: a {cfg.mode} run; predict needs an SGDET run (it sees detections only)")
    return SgdetRun(model=model, config=cfg, checkpoint=ckpt_path, checkpoint_sha256=sha256_of(ckpt_path),
                    meta=open_store(cfg.store).meta)


def check_detector(run: SgdetRun, weights_sha256: str, arch: str) -> None:
    """ConfigError unless the detector is the one whose features the run was trained on."""
    trained = run.meta.detector
    if trained.weights_sha256 != weights_sha256:
        raise ConfigError(f"the detector ({arch}, weights sha256 {weights_sha256[:12]}) is not the one of the run's "
                          f"store {run.config.store} ({trained.arch}, {trained.weights_sha256[:12]}): the head "
                          f"reads that detector's features; give its weights")


@dataclass
class PredictSummary:
    out: Path
    videos_written: int = 0
    videos_skipped: int = 0
    frames: int = 0
    triplets: int = 0

    def line(self) -> str:
        return (f"predict: {self.videos_written} videos ({self.frames} frames, {self.triplets} triplets) written to "
                f"{self.out}; {self.videos_skipped} already done")


def write_scene_graphs(store_path: Path | str, run: SgdetRun, out_dir: Path | str, *,
                       sources: dict[str, Path] | None = None, device: str = "cpu",
                       progress: bool = True) -> PredictSummary:
    """Run ``run`` on every video of ``store_path`` (split test, from
    :func:`stage1_detect.video_source.detect_videos`) and write ``OUT/VIDEO.json`` and ``.csv``
    per video; videos whose JSON exists for this checkpoint (same sha256) are skipped (resumable)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / SCHEMA_FILE).write_text(json.dumps(json_schema(), indent=1))
    with open_store(store_path) as store:
        return _write_scene_graphs(store, run, out_dir, sources=sources or {}, device=device, progress=progress)


def _write_scene_graphs(store, run: SgdetRun, out_dir: Path, *, sources: dict[str, Path], device: str,
                        progress: bool) -> PredictSummary:
    meta = store.meta
    if (meta.feature_dim, meta.union_shape) != (run.meta.feature_dim, run.meta.union_shape):
        raise ConfigError(f"{store.path}: features {meta.feature_dim}, unions {meta.union_shape}; the run was "
                          f"trained on {run.meta.feature_dim}, {run.meta.union_shape}")
    options = eval_view_options(run.config, Mode.SGDET)
    summary = PredictSummary(out=out_dir)
    detector = {"arch": meta.detector.arch, "weights_sha256": meta.detector.weights_sha256}
    for video in tqdm(store.videos("test"), desc="scene graphs", unit="video", disable=not progress):
        done = out_dir / f"{video}.json"
        if done.exists() and json.loads(done.read_text()).get("run", {}).get("checkpoint_sha256") == \
                run.checkpoint_sha256:
            log.info("%s: scene graphs of this checkpoint already written, skipped", video)
            summary.videos_skipped += 1
            continue
        ds = UnannotatedVideos(store, "test", Mode.SGDET, train=False, options=options, videos=[video])
        names, _, preds, _ = predict(run.model, ds, device=device)
        rec = store.read_video(video, fields=("gt_small",))
        frames = frame_documents(names, [tuple(s) for s in rec.frame_sizes.tolist()], preds, meta.vocabulary,
                                 Mode.SGDET)
        source = sources.get(video)
        doc = document(video, frames, vocabulary=meta.vocabulary, run=run.describe(), detector=detector,
                       frames_selected=str(meta.source.get("frames", "")),
                       source=None if source is None else str(Path(source).resolve()),
                       computed={"device": str(device), "torch_threads": torch.get_num_threads()})
        write_document(doc, out_dir)
        summary.videos_written += 1
        summary.frames += len(frames)
        summary.triplets += sum(len(f["triplets"]) for f in frames)
    return summary


# --- an evaluated run ---------------------------------------------------------------------------


def documents_from_predictions(path: Path | str, *, name: str | None = None) -> list[dict]:
    """One document per video of a predictions file (``eval --save-predictions``), with its
    ground truth and hits when the file holds it. Frames are grouped by the video part of
    their names (``VIDEO/NNNNNN.png``) in file order."""
    path = Path(path)
    pf = read_predictions(path)
    pred = pf.predictions
    names = list(pred.frame_names or ())
    gt = pf.ground_truth
    by_video: dict[str, list[int]] = {}
    for i, n in enumerate(names):
        by_video.setdefault(n.split("/", 1)[0], []).append(i)
    meta = pf.metadata or {}
    config = meta.get("config") or {}
    run = {"name": name or path.stem, "checkpoint": meta.get("checkpoint"), "checkpoint_sha256": None,
           "head": config.get("head"),
           "rsnet": pred.pred_pair_scores is not None, "mode": pf.mode.value}
    sizes, root, detector = _store_frames(config.get("store"), by_video)
    docs = []
    for video, idx in by_video.items():
        preds = [pred.frame(i) for i in idx]
        gts = [gt.frame(i) for i in idx] if gt is not None else None
        frame_sizes = [sizes.get(names[i]) or _frame_size(p, g) for i, p, g in
                       zip(idx, preds, gts or [None] * len(preds))]
        frames = frame_documents([names[i] for i in idx], frame_sizes, preds, pf.vocabulary, pf.mode, gts)
        source = None
        if root is not None:  # the AG frame dump, else the video
            found = [p for p in (root / "frames" / video, root / "videos" / video) if p.exists()]
            source = str(found[0]) if found else None
        docs.append(document(video, frames, vocabulary=pf.vocabulary, run=run, detector=detector,
                             frames_selected="the frames the evaluation scores", source=source))
    return docs


def _store_frames(store_path: str | None, videos: dict[str, list[int]]) -> tuple[dict, Path | None, dict]:
    """Frame sizes ``{frame name: (width, height)}``, the dataset root and the detector of the
    store an evaluated run read, when it is still there (otherwise nothing: the page does
    without)."""
    if not store_path or not Path(store_path).exists():
        return {}, None, {}
    store = open_store(store_path)
    sizes, present = {}, set(store.videos())
    for video in videos:
        if video in present:
            rec = store.read_video(video, fields=("gt_small",))
            sizes.update({n: (int(w), int(h)) for n, (w, h) in zip(rec.frame_names, rec.frame_sizes.tolist())})
    root = store.meta.source.get("root")
    detector = {"arch": store.meta.detector.arch, "weights_sha256": store.meta.detector.weights_sha256}
    return sizes, (Path(root) if root else None), detector


def _frame_size(pred: FramePredictions, gt: FrameGroundTruth | None) -> tuple[int, int]:
    """A frame size when the file holds none: the extent of its boxes (the viewer draws the
    picture at its own size when it has one)."""
    boxes = [pred.pred_boxes] + ([gt.gt_boxes] if gt is not None else [])
    b = np.concatenate(boxes) if any(len(x) for x in boxes) else np.zeros((1, 4))
    return int(np.ceil(max(b[:, 2].max(), 1))), int(np.ceil(max(b[:, 3].max(), 1)))


__all__ = ["FORMAT", "SCHEMA_VERSION", "json_schema", "validate", "frame_documents", "document", "write_document",
           "read_document", "UnannotatedVideos", "SgdetRun", "load_sgdet_run", "check_detector", "PredictSummary",
           "write_scene_graphs", "documents_from_predictions", "csv_rows"]
