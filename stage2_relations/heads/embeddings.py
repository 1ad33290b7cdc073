"""Class-name embeddings for the heads, computed outside them (heads do no I/O) and passed in
through :class:`~.base.HeadContext` ``derived["class_embeddings"]``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from store.vocabulary import Vocabulary


def glove_embeddings(path: str | Path, vocabulary: Vocabulary, dim: int, seed: int = 0) -> torch.Tensor:
    """Class embeddings (C, dim) from a GloVe text file (``word v1 ... vdim`` per line), by
    STTran's rule (``lib/word_vectors.py::obj_edge_vectors``): a class takes the vector of the
    part of its name before the first "/" (``"closet/cabinet"`` -> ``"closet"``; the short names
    of this vocabulary are those parts); a class whose word the file lacks, the background among
    them, keeps a normal N(0, 1) draw (from ``seed``; STTran draws from torch's global RNG).
    Call this outside the head and pass the tensor in ``HeadContext.derived`` (heads do no I/O).
    """
    tokens = [name.split("/")[0] for name in vocabulary.objects]
    vecs: dict[str, np.ndarray] = {}
    with open(path, encoding="utf8") as f:
        for line in f:
            parts = line.rstrip().split(" ")
            if parts[0] in tokens and len(parts) == dim + 1:
                vecs[parts[0]] = np.asarray(parts[1:], dtype=np.float32)
    out = np.random.default_rng(seed).normal(0.0, 1.0, size=(vocabulary.num_objects, dim)).astype(np.float32)
    for i, token in enumerate(tokens):
        if token in vecs:
            out[i] = vecs[token]
    return torch.from_numpy(out)
