"""Fixtures shared by more than one test folder.

Helpers that build inputs (pickles, stores, tiny heads) live in :mod:`tests.helpers` and are
imported as ``from tests.helpers.X import ...``; a fixture that several folders request lives
here.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.ag import fixture_annotations, write_root


@pytest.fixture
def ag_root(tmp_path) -> Path:
    """The hand-written Action Genome root of :func:`tests.helpers.ag.fixture_annotations`
    (two videos, every filter's case once), written fresh for each test."""
    return write_root(tmp_path / "ag", *fixture_annotations())
