"""Relation heads: one module per head, one registry, one interface (see :mod:`.base`).

``build_model(name, head_cfg, rsnet_cfg, context)`` builds a registered head from its recipe
and a :class:`~.base.HeadContext` and, when ``rsnet_cfg`` is given, wraps it in
:class:`~.rsnet.RSNet`. A new head is one module with a ``@register_head`` class, imported here.
"""

from __future__ import annotations

from stage2_relations.heads.base import (
    HEADS,
    HeadContext,
    PredicateLogits,
    RelationFeatures,
    RelationHead,
    RelationOutput,
    build_head,
    count_parameters,
    register_head,
)
from stage2_relations.heads import sttran as _sttran  # noqa: F401  (registers "sttran")
from stage2_relations.heads import dsgdetr as _dsgdetr  # noqa: F401  (registers "dsgdetr")
from stage2_relations.heads import stket as _stket  # noqa: F401  (registers "stket")
from stage2_relations.heads.rsnet import RSNet


def head_class(name: str) -> type[RelationHead]:
    """The registered head class ``name`` (KeyError naming the registered ones)."""
    try:
        return HEADS[name]
    except KeyError:
        raise KeyError(f"unknown head {name!r}; registered: {sorted(HEADS)}") from None


def from_config(name: str, cfg: dict | None, context: HeadContext) -> RelationHead:
    """Build the registered head ``name`` from its recipe (``head_cfg``) and the context."""
    return head_class(name).from_config(dict(cfg or {}), context)


def build_model(name: str, head_cfg: dict | None, rsnet_cfg: dict | None, context: HeadContext):
    """A head (``rsnet_cfg`` None) or RS-Net around it. Returns an nn.Module with ``forward(batch)``
    and ``loss(output, batch)``."""
    head = from_config(name, head_cfg, context)
    return RSNet.from_config(head, rsnet_cfg) if rsnet_cfg is not None else head


__all__ = ["HEADS", "HeadContext", "PredicateLogits", "RelationFeatures", "RelationHead", "RelationOutput", "RSNet",
           "build_head", "build_model", "count_parameters", "from_config", "head_class", "register_head"]
