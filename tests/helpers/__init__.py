"""Builders of test inputs shared by several test folders (hand-written AG pickles, small
stores, tiny heads), and :data:`REPO`, the checkout the tests run in."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
