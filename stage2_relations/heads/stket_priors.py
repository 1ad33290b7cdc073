"""STKET's knowledge: predicate priors per object class, counted from the training split's GT.

:func:`count_priors` counts ``initial`` (C, P) and ``specific`` (C, Cn, P) with the rule
reconstructed from STKET's ``TrainPrior.json`` (whose counting script is in no commit of its
repository); :func:`load_priors_json` reads a file in that layout (STKET's own, or one written
here). ``python -m stage2_relations.heads.stket_priors --store S [--split train] --out
priors.json`` writes counted priors in it. The rule, its sources and the JSON layout:
docs/stage2.md, "STKET's priors".
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from store import VideoRecord, open_store
from store.vocabulary import PredicateGroup, Vocabulary

PRIOR_FIELDS = ("gt_labels", "rel_subject", "rel_object", "rel_labels")
"""The store arrays the count reads (offsets come with every read)."""

INITIAL_KEY, SPECIFIC_KEY = "stket_initial_prior", "stket_specific_prior"
"""Their names in ``HeadContext.derived``."""


@dataclass(frozen=True)
class Priors:
    """STKET's priors. C object classes, Cn contact predicates, P predicates.

    initial:  (C, P) float32 mean row of each class.
    specific: (C, Cn, P) float32 mean follower of a row with contact c, per class.
    rows:     (C,) int64 rows counted per class.
    """

    initial: torch.Tensor
    specific: torch.Tensor
    rows: torch.Tensor


def class_rows(rec: VideoRecord, vocabulary: Vocabulary) -> dict[int, np.ndarray]:
    """The rows of one video per object class (module docstring): class -> (n, P) uint8,
    by frame, then by GT object order in the frame. An object without a relation row gives a
    zero row (STKET builds one from its empty predicate lists)."""
    person, p = vocabulary.person_index, vocabulary.num_predicates
    rows: dict[int, list[np.ndarray]] = {}
    for f in range(rec.num_frames):
        g, r = rec.frame_rows("gt_objects", f), rec.frame_rows("gt_relations", f)
        labels = np.zeros((g.stop - g.start, p), np.uint8)
        for obj, lab in zip(rec.rel_object[r], rec.rel_labels[r]):
            labels[int(obj)] |= lab.astype(np.uint8)
        for k, cls in enumerate(rec.gt_labels[g]):
            if int(cls) != person:
                rows.setdefault(int(cls), []).append(labels[k])
    return {c: np.stack(v) for c, v in rows.items()}


def count_priors(videos: Iterable[VideoRecord], vocabulary: Vocabulary) -> Priors:
    """STKET's initial and specific priors of ``videos`` (module docstring)."""
    c_num, p = vocabulary.num_objects, vocabulary.num_predicates
    c0, c1 = vocabulary.group_range(PredicateGroup.CONTACTING)
    row_sum = np.zeros((c_num, p))
    rows = np.zeros(c_num, np.int64)
    follower_sum = np.zeros((c_num, c1 - c0, p))  # sum over contributing videos of their mean follower
    videos_with = np.zeros((c_num, c1 - c0), np.int64)
    for rec in videos:
        for cls, x in class_rows(rec, vocabulary).items():
            x = x.astype(np.float64)
            row_sum[cls] += x.sum(0)
            rows[cls] += len(x)
            head, follower = x[:-1], x[1:]
            for c in range(c1 - c0):
                hit = head[:, c0 + c] > 0
                if hit.any():
                    follower_sum[cls, c] += follower[hit].mean(0)
                    videos_with[cls, c] += 1
    initial = row_sum / np.maximum(rows, 1)[:, None]
    specific = follower_sum / np.maximum(videos_with, 1)[:, :, None]
    return Priors(initial=torch.from_numpy(initial).float(), specific=torch.from_numpy(specific).float(),
                  rows=torch.from_numpy(rows))


def derive_priors(store, split: str) -> dict[str, torch.Tensor]:
    """The priors of every video of ``split`` of ``store`` (an open :class:`~store.Store`), as
    ``HeadContext.derived`` entries."""
    videos = (store.read_video(v, fields=PRIOR_FIELDS) for v in store.videos(split))
    pri = count_priors(videos, store.meta.vocabulary)
    if not int(pri.rows.sum()):
        raise ValueError(f"stket: split {split!r} of the store has no GT object to count priors from")
    return {INITIAL_KEY: pri.initial, SPECIFIC_KEY: pri.specific}


def priors_json(priors: Priors, vocabulary: Vocabulary) -> dict[str, dict]:
    """STKET's ``TrainPrior.json`` layout: per class with rows (key: its index as a string),
    the contacts that occur with it (``c_rel_idx``, local contact ids) and their specific rows."""
    c0, c1 = vocabulary.group_range(PredicateGroup.CONTACTING)
    contacts = vocabulary.predicates[c0:c1]
    out = {}
    for cls in range(vocabulary.num_objects):
        if not int(priors.rows[cls]):
            continue
        occurs = [c for c in range(c1 - c0) if float(priors.initial[cls, c0 + c]) > 0]
        out[str(cls)] = {
            "obj_cls_name": vocabulary.objects[cls],
            "c_rel_idx": occurs,
            "c_rel_name": [contacts[c] for c in occurs],
            "initial_prior": priors.initial[cls].tolist(),
            "specific_prior": [priors.specific[cls, c].tolist() for c in occurs],
        }
    return out


def load_priors_json(path: str | Path, vocabulary: Vocabulary) -> dict[str, torch.Tensor]:
    """Priors from a file in STKET's ``TrainPrior.json`` layout (:func:`priors_json`), as
    ``HeadContext.derived`` entries, filled as STKET's ``lib/transformer.py`` fills them: zero
    rows, then for each class key ``initial[cls] = initial_prior`` and
    ``specific[cls, c_rel_idx[k]] = specific_prior[k]`` (local contact ids). A class named
    other than the vocabulary's, an index out of range or a row of the wrong width raises
    :class:`~common.errors.FileError` naming the file and the class."""
    from common.errors import FileError

    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except OSError as e:
        raise FileError(path, f"cannot read STKET priors: {e.strerror or e}") from None
    except ValueError as e:
        raise FileError(path, f"not JSON: {e}") from None
    if not isinstance(data, dict):
        raise FileError(path, "STKET priors must be a JSON object keyed by class index")
    c_num, p = vocabulary.num_objects, vocabulary.num_predicates
    c0, c1 = vocabulary.group_range(PredicateGroup.CONTACTING)
    initial, specific = torch.zeros(c_num, p), torch.zeros(c_num, c1 - c0, p)
    for key, entry in data.items():
        try:
            cls = int(key)
            name, init = entry.get("obj_cls_name"), entry["initial_prior"]
            idx, rows = entry["c_rel_idx"], entry["specific_prior"]
        except (ValueError, KeyError, AttributeError, TypeError):
            raise FileError(path, f"class {key!r}: needs an integer key and initial_prior, c_rel_idx, "
                                  f"specific_prior (STKET's TrainPrior.json layout)") from None
        # STKET's names are STTran's renamed AG classes ('cup/glass/bottle' for AG's 'cup')
        if not 0 <= cls < c_num or (name is not None and str(name).split("/")[0] != vocabulary.objects[cls]):
            raise FileError(path, f"class {key!r} ({name!r}) is not in the store's vocabulary at that index")
        if len(init) != p or len(idx) != len(rows) or any(len(r) != p for r in rows) \
                or any(not 0 <= int(c) < c1 - c0 for c in idx):
            raise FileError(path, f"class {key!r} ({name!r}): rows must be {p} wide, one specific row per "
                                  f"c_rel_idx entry, contact ids in 0..{c1 - c0 - 1}")
        initial[cls] = torch.tensor(init, dtype=torch.float32)
        for c, row in zip(idx, rows):
            specific[cls, int(c)] = torch.tensor(row, dtype=torch.float32)
    return {INITIAL_KEY: initial, SPECIFIC_KEY: specific}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m stage2_relations.heads.stket_priors",
                                 description="Count STKET's priors from a store split and write them as JSON.")
    ap.add_argument("--store", required=True)
    ap.add_argument("--split", default="train")
    ap.add_argument("--out", required=True, type=Path)
    args = ap.parse_args(argv)
    store = open_store(args.store)
    vocab = store.meta.vocabulary
    pri = count_priors((store.read_video(v, fields=PRIOR_FIELDS) for v in store.videos(args.split)), vocab)
    data = priors_json(pri, vocab)
    args.out.write_text(json.dumps(data, indent=1))
    print(f"{args.out}: priors of {len(data)} classes from {int(pri.rows.sum())} object rows "
          f"of {len(store.videos(args.split))} {args.split} videos")


if __name__ == "__main__":
    main()
