"""Class-name embeddings for the heads, computed outside them (heads do no I/O) and passed in
through :class:`~.base.HeadContext` ``derived["class_embeddings"]``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from common.errors import InputError
from store.vocabulary import Vocabulary


def glove_embeddings(path: str | Path, vocabulary: Vocabulary, dim: int, seed: int = 0) -> torch.Tensor:
    """Class embeddings (C, dim) from a GloVe text file (``word v1 ... vdim`` per line), by
    STTran's rule (``lib/word_vectors.py::obj_edge_vectors``): a class takes the vector of the
    part of its name before the first "/" (``"closet/cabinet"`` -> ``"closet"``; the short names
    of this vocabulary are those parts); a class whose word the file lacks, the background among
    them, keeps a normal N(0, 1) draw (from ``seed``; STTran draws from torch's global RNG).
    Call this outside the head and pass the tensor in ``HeadContext.derived`` (heads do no I/O).
    Raises :class:`~common.errors.InputError` naming the file when it cannot be one (unreadable,
    not UTF-8, a first line that is not a word and numbers, a line of another width), when its
    vectors are not ``dim`` wide, or when it holds none of the class words: each of those
    used to leave every embedding random without a word.
    """
    try:
        st = Path(path).stat()
        key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns, tuple(vocabulary.objects), dim, seed)
    except OSError:
        key = None
    if key is not None and key in _CACHE:  # the run's check and its derive read one file once
        return _CACHE[key].clone()
    out = _read_glove(path, vocabulary, dim, seed)
    if key is not None:
        _CACHE.clear()
        _CACHE[key] = out.clone()
    return out


_CACHE: dict[tuple, torch.Tensor] = {}


def _read_glove(path: str | Path, vocabulary: Vocabulary, dim: int, seed: int) -> torch.Tensor:
    tokens = [name.split("/")[0] for name in vocabulary.objects]
    wanted = set(tokens)
    vecs: dict[str, np.ndarray] = {}
    width = None
    try:
        with open(path, encoding="utf8") as f:
            for lineno, line in enumerate(f, 1):
                parts = line.rstrip().split(" ")
                if width is None:  # the first line sets the file's format and width
                    width = _vector_width(path, lineno, parts, line)
                    if width != dim:
                        raise InputError(f"{path}: holds {width}-d vectors; the head's embed_dim is {dim}: use GloVe vectors "
                                         f"of {dim} values or set head_cfg.embed_dim: {width}")
                if parts[0] in wanted:
                    if len(parts) != dim + 1:
                        raise InputError(f"{path}: line {lineno} ({parts[0]!r}) has {len(parts) - 1} values, the "
                                         f"file's first line {dim}: not a GloVe text file")
                    try:
                        vecs[parts[0]] = np.asarray(parts[1:], dtype=np.float32)
                    except ValueError:
                        raise InputError(f"{path}: line {lineno} ({parts[0]!r}) holds a value that is not a "
                                         f"number") from None
    except OSError as e:
        raise InputError(f"{path}: cannot read the GloVe file ({e.strerror or e})") from None
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not a GloVe text file: not UTF-8 text (byte {e.start})") from None
    if width is None:
        raise InputError(f"{path}: is empty, not a GloVe text file")
    if not vecs:
        raise InputError(f"{path}: holds none of the {len(wanted)} class words ({', '.join(sorted(wanted)[:5])}, "
                         f"...): every embedding would stay random")
    out = np.random.default_rng(seed).normal(0.0, 1.0, size=(vocabulary.num_objects, dim)).astype(np.float32)
    for i, token in enumerate(tokens):
        if token in vecs:
            out[i] = vecs[token]
    if not np.isfinite(out).all():
        raise InputError(f"{path}: a class word's vector holds a value that is not finite")
    return torch.from_numpy(out)


def _vector_width(path: str | Path, lineno: int, parts: list[str], line: str) -> int:
    """The number of values after the word on a GloVe line; InputError when it is not one."""
    try:
        np.asarray(parts[1:], dtype=np.float32)
        ok = len(parts) > 1
    except ValueError:
        ok = False
    if not ok:
        raise InputError(f"{path}: not a GloVe text file (a word and its numbers per line): line {lineno} reads "
                         f"{line.strip()[:60]!r}")
    return len(parts) - 1
