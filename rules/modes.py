"""The task mode, one of Action Genome's three tasks.

It decides what a model is given and what it predicts, and which ground truth it is scored
on: SGCLS and SGDET see the ``_filtersmall`` objects, PREDCLS all of them (the store marks
them, ``gt_small``, so that one extraction serves every mode).
"""

from __future__ import annotations

import enum


class Mode(str, enum.Enum):
    """The three Action Genome tasks.

    PREDCLS: boxes and object labels given, predict predicates.
    SGCLS:   boxes given, predict object labels and predicates.
    SGDET:   detect boxes, predict object labels and predicates.
    """

    PREDCLS = "predcls"
    SGCLS = "sgcls"
    SGDET = "sgdet"
