"""Relation heads: one module per head, one registry, one interface (see :mod:`.base`).

``build_model(name, head_cfg, rsnet_cfg, ...)`` builds a registered head and, when
``rsnet_cfg`` is given, wraps it in :class:`~.rsnet.RSNet`.
"""

from __future__ import annotations

from stage2_relations.heads.base import (
    HEADS,
    PredicateLogits,
    RelationFeatures,
    RelationHead,
    RelationOutput,
    build_head,
    register_head,
)
from stage2_relations.heads import sttran as _sttran  # noqa: F401  (registers "sttran")
from stage2_relations.heads.rsnet import RSNet, count_parameters
from store.vocabulary import Mode, Vocabulary


def from_config(name: str, cfg: dict, **context) -> RelationHead:
    """Build the registered head ``name`` from a plain config dict plus the store's context
    (vocabulary, mode, feature_dim, union_shape, class_embeddings)."""
    try:
        cls = HEADS[name]
    except KeyError:
        raise KeyError(f"unknown head {name!r}; registered: {sorted(HEADS)}") from None
    return cls.from_config(dict(cfg or {}), **context)


def build_model(name: str, head_cfg: dict | None, rsnet_cfg: dict | None, *, vocabulary: Vocabulary,
                mode: Mode | str, feature_dim: int, union_shape: tuple[int, ...], class_embeddings=None):
    """A head (``rsnet_cfg`` None) or RS-Net around it. Returns an nn.Module with ``forward(batch)``
    and ``loss(output, batch)``."""
    head = from_config(name, head_cfg or {}, vocabulary=vocabulary, mode=Mode(mode), feature_dim=feature_dim,
                       union_shape=tuple(union_shape), class_embeddings=class_embeddings)
    return RSNet.from_config(head, rsnet_cfg) if rsnet_cfg is not None else head


__all__ = ["HEADS", "PredicateLogits", "RelationFeatures", "RelationHead", "RelationOutput", "RSNet",
           "build_head", "build_model", "count_parameters", "from_config", "register_head"]
