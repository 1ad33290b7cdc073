"""Which column of the store's class distribution each class of a foreign detector feeds.

A detector trained elsewhere (detectron2's model zoo, a fine-tuned checkpoint) has K
foreground classes in its own order with background LAST (detectron2's convention); the
store has the dataset's vocabulary, background FIRST (column 0), then Action Genome's 36
objects in file order. A :class:`ClassMap` says where each of the K + 1 model columns goes:

* a model class that is an AG object goes to that object's column; several model classes may
  go to one column (COCO's ``handbag`` and ``backpack`` to ``bag``): their probabilities add;
* background, and a model class that is no AG object, go to column 0: such a class's
  probability counts as background and its detections are dropped.

So a model distribution (n, K + 1) becomes a store distribution (n, C) that still sums to 1.

:func:`resolve_class_map` builds it from the model's class names (from its checkpoint or its
dataset's metadata) or from a user's class-map file (:func:`read_class_map`). Without a file,
the model's classes must be exactly the vocabulary's objects (by name, in any order; AG's
compound spellings are accepted), or, when the model has no class names, exactly as many
(taken to be in the vocabulary's order); anything else is an error that names the mismatch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor

from stage1_detect.action_genome import object_name_table
from stage1_detect.frame_detector import DetectorLoadError
from store.vocabulary import BACKGROUND, Vocabulary

log = logging.getLogger(__name__)

CLASS_MAP_HELP = ("a YAML or JSON mapping, model class (its name, or its 0-based index) -> Action Genome object "
                  "(or null: not an AG object); model classes not listed are not AG objects")


@dataclass(frozen=True)
class ClassMap:
    """Store column of each model column.

    columns: K + 1 ints, the store column (0..C-1) of model class k (k < K) and of the model's
    background (k = K, always 0); num_classes: C, the store's classes with background;
    model_classes: the model's K class names where known; source: where the correspondence
    comes from (a file, the checkpoint, the dataset metadata, or the vocabulary's order).
    """

    columns: tuple[int, ...]
    num_classes: int
    model_classes: tuple[str, ...] | None
    source: str

    @property
    def num_model_classes(self) -> int:
        """K, the model's foreground classes."""
        return len(self.columns) - 1

    def index(self, device: torch.device | str | None = None) -> Tensor:
        """int64 (K + 1,) of :attr:`columns`."""
        return torch.tensor(self.columns, dtype=torch.long, device=device)

    def dists(self, probs: Tensor) -> Tensor:
        """Model distributions float (n, K + 1), background last -> store distributions (n, C)."""
        out = probs.new_zeros((len(probs), self.num_classes))
        return out.index_add_(1, self.index(probs.device), probs)

    def labels(self, model_labels: Tensor) -> Tensor:
        """Model class ids int (n,) in 0..K-1 -> store labels int64 (n,); 0 for no AG object."""
        return self.index(model_labels.device)[model_labels.long()]

    def to_dict(self) -> dict[str, Any]:
        return {"columns": list(self.columns), "model_classes": list(self.model_classes or []) or None,
                "source": self.source}


def read_class_map(path: Path | str) -> dict[str | int, str | None]:
    """A class-map file: a YAML (or JSON) mapping of model class to AG object (or null)."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise DetectorLoadError(f"{path}: cannot read the class map ({type(e).__name__}: {e})") from None
    if not isinstance(data, dict) or not data:
        raise DetectorLoadError(f"{path}: a class map is {CLASS_MAP_HELP}; got {type(data).__name__}")
    for key, value in data.items():
        if not isinstance(key, (str, int)) or isinstance(key, bool) or not (value is None or isinstance(value, str)):
            raise DetectorLoadError(f"{path}: entry {key!r}: {value!r}: a class map is {CLASS_MAP_HELP}")
    return data


def resolve_class_map(num_model_classes: int, vocabulary: Vocabulary, *,
                      model_classes: Sequence[str] | None = None,
                      mapping: Mapping[str | int, str | None] | None = None,
                      names_source: str = "the checkpoint", mapping_source: str = "the class map") -> ClassMap:
    """The :class:`ClassMap` of a model with ``num_model_classes`` (K) foreground classes.

    ``model_classes``: the model's K class names, if known (``names_source`` says from where).
    ``mapping``: a user's class map (``mapping_source`` names it), keys model class names or
    0-based indices, values vocabulary objects (any accepted spelling) or None. Raises
    :class:`DetectorLoadError` for a key that is no model class, a value that is no object,
    or, without a mapping, model classes that are not exactly the vocabulary's objects.
    """
    k = int(num_model_classes)
    if model_classes is not None:
        model_classes = tuple(str(c) for c in model_classes)
        if len(model_classes) != k:
            raise DetectorLoadError(f"{names_source} names {len(model_classes)} classes; the model has {k}")
    table = object_name_table(vocabulary)
    objects = vocabulary.num_objects - 1

    def object_id(name: str) -> int | None:
        return table.get(name.strip().lower().replace("_", "").replace(" ", ""))

    if mapping is not None:
        columns = [0] * (k + 1)
        for key, target in mapping.items():
            index = _model_index(key, model_classes, k, mapping_source)
            if target is None or target == BACKGROUND:
                continue
            column = object_id(target)
            if column is None:
                raise DetectorLoadError(f"{mapping_source}: {key!r} -> {target!r}: {target!r} is not an object class "
                                        f"of the vocabulary ({', '.join(vocabulary.objects[1:])})")
            columns[index] = column
        if vocabulary.person_index not in columns:
            log.warning("%s maps no model class to 'person': the store will have no person detections", mapping_source)
        return ClassMap(tuple(columns), vocabulary.num_objects, model_classes, mapping_source)

    if model_classes is None:
        if k != objects:
            raise DetectorLoadError(
                f"the model has {k} classes and no class names ({names_source} gives none); the vocabulary has "
                f"{objects} objects: pass a class map ({CLASS_MAP_HELP})")
        log.warning("the model's %d classes have no names; taking them to be the vocabulary's objects in its order "
                    "(pass a class map if they are not)", k)
        return ClassMap(tuple(range(k + 1))[1:] + (0,), vocabulary.num_objects, None, "the vocabulary's order")

    ids = [object_id(c) for c in model_classes]
    foreign = [c for c, i in zip(model_classes, ids) if i is None]
    missing = sorted(set(range(1, objects + 1)) - set(i for i in ids if i is not None))
    repeated = len([i for i in ids if i is not None]) != len(set(i for i in ids if i is not None))
    if foreign or missing or repeated:
        parts = [f"the model's {k} classes ({names_source}) are not the vocabulary's {objects} objects"]
        if foreign:
            parts.append(f"{len(foreign)} are no AG object ({_some(foreign)})")
        if missing:
            parts.append(f"{len(missing)} AG objects have no model class ({_some([vocabulary.objects[i] for i in missing])})")
        if repeated:
            parts.append("some AG object has two model classes")
        raise DetectorLoadError("; ".join(parts) + f"; pass a class map ({CLASS_MAP_HELP})")
    return ClassMap(tuple(ids) + (0,), vocabulary.num_objects, model_classes, names_source)


def _model_index(key: str | int, model_classes: tuple[str, ...] | None, k: int, where: str) -> int:
    if isinstance(key, int) or (isinstance(key, str) and key.strip().isdigit() and
                                (model_classes is None or key not in model_classes)):
        index = int(key)
        if not 0 <= index < k:
            raise DetectorLoadError(f"{where}: model class index {index} outside 0..{k - 1}")
        return index
    if model_classes is None:
        raise DetectorLoadError(f"{where}: {key!r}: the model's class names are unknown; key the map by 0-based "
                                "class index")
    if key not in model_classes:
        raise DetectorLoadError(f"{where}: {key!r} is not a class of the model ({_some(model_classes)})")
    return model_classes.index(key)


def _some(names: Sequence[str], n: int = 8) -> str:
    shown = ", ".join(names[:n])
    return shown + (f", ... ({len(names) - n} more)" if len(names) > n else "")
