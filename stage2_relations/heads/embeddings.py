"""Class-name embeddings for the heads, computed outside them (heads do no I/O) and passed in
through :class:`~.base.HeadContext` ``derived["class_embeddings"]``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from store.vocabulary import Vocabulary


def glove_embeddings(path: str | Path, vocabulary: Vocabulary, dim: int, seed: int = 0) -> torch.Tensor:
    """Class embeddings (C, dim) from a GloVe text file (``word v1 ... vdim`` per line).

    A class name of several words (``"doorknob"``, ``"on_the_side_of"``, ``"closet/cabinet"``)
    takes the mean of its words' vectors; a class with no known word gets a small random
    vector (from ``seed``), as does the background. Call this outside the head and pass the
    tensor as ``class_embeddings`` (heads do no I/O).
    """
    words = {w for name in vocabulary.objects for w in name.replace("/", " ").replace("_", " ").split()}
    vecs: dict[str, np.ndarray] = {}
    with open(path, encoding="utf8") as f:
        for line in f:
            parts = line.rstrip().split(" ")
            if parts[0] in words and len(parts) == dim + 1:
                vecs[parts[0]] = np.asarray(parts[1:], dtype=np.float32)
    rng = np.random.default_rng(seed)
    out = rng.normal(0, 0.1, size=(vocabulary.num_objects, dim)).astype(np.float32)
    for i, name in enumerate(vocabulary.objects):
        found = [vecs[w] for w in name.replace("/", " ").replace("_", " ").split() if w in vecs]
        if found:
            out[i] = np.mean(found, axis=0)
    return torch.from_numpy(out)
