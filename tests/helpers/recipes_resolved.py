"""The expected resolved recipes, ``tests/data/recipes_resolved.json``: every recipe of
``configs/`` loaded with its ``base:`` chain and its defaults, as ``tests/test_recipes.py``
checks them.

    python -m tests.helpers.recipes_resolved           # the unified diff of the file against the recipes
    python -m tests.helpers.recipes_resolved --write   # rewrite the file

Run it after adding a recipe or a recipe field, and read the diff before writing: a field of
an existing recipe that changes is a behaviour change of that recipe.
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
from pathlib import Path

from stage1_detect.train_detector import DetectorTrainConfig
from stage2_relations.recipe import load_config
from tests.helpers import REPO

EXPECTED = REPO / "tests" / "data" / "recipes_resolved.json"
COMMAND = "python -m tests.helpers.recipes_resolved"


def resolve(path: Path) -> dict:
    """The config the recipe at ``path`` resolves to, as plain JSON values."""
    if path.name.startswith("detector_"):
        return DetectorTrainConfig.from_yaml(path).to_dict()
    return load_config(path).to_dict()


def resolved_recipes() -> dict[str, dict]:
    """{recipe file name: its resolved config} for every recipe of ``configs/``."""
    return {p.name: resolve(p) for p in sorted((REPO / "configs").glob("*.yaml"))}


def render(resolved: dict[str, dict]) -> str:
    """The file's text: sorted keys, one-space indents, a final newline."""
    return json.dumps(resolved, indent=1, sort_keys=True) + "\n"


def diff(expected: Path = EXPECTED) -> str:
    """The unified diff from ``expected`` (as it is) to what the recipes resolve to; "" when equal."""
    before = expected.read_text() if expected.exists() else ""
    return "".join(difflib.unified_diff(before.splitlines(keepends=True), render(resolved_recipes()).splitlines(
        keepends=True), fromfile=_shown(expected), tofile="the recipes of configs/"))


def _shown(path: Path) -> str:
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help="Rewrite the file (after reading the diff).")
    args = parser.parse_args(argv)
    changes = diff()
    sys.stdout.write(changes or f"{_shown(EXPECTED)} is up to date\n")
    if args.write and changes:
        EXPECTED.write_text(render(resolved_recipes()))
        print(f"wrote {_shown(EXPECTED)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
