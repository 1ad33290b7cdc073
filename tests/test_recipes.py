"""Recipes state only what differs from the recipe they extend (``base:``), and every recipe
in configs/ resolves to exactly the config it resolved to when each one spelled out every
field (tests/data/recipes_resolved.json).

That file is made by ``python -m tests.helpers.recipes_resolved``, which prints its unified diff
against what the recipes resolve to now; ``--write`` rewrites it. After adding a recipe or a
recipe field, run it, read the diff (a changed field of an existing recipe is a behaviour
change), then write."""

from __future__ import annotations

import json

import pytest

from common.config import load_yaml_mapping
from common.errors import ConfigError
from tests.helpers import REPO
from tests.helpers.recipes_resolved import COMMAND, EXPECTED, diff, resolve

RESOLVED = json.loads(EXPECTED.read_text())


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "configs").glob("*.yaml")))
def test_every_recipe_resolves_as_before(name):
    assert name in RESOLVED, f"new recipe {name}: add its resolved config with `{COMMAND} --write`"
    assert resolve(REPO / "configs" / name) == RESOLVED[name], f"{name} resolves otherwise: see `{COMMAND}`"


def test_the_expected_file_is_the_scripts():
    """Byte for byte what the script writes: no hand edit, no recipe left out or left over."""
    changes = diff()
    assert not changes, f"tests/data/recipes_resolved.json is stale: `{COMMAND}` shows the diff below, " \
                        f"`{COMMAND} --write` rewrites it\n{changes}"


def test_the_script_shows_a_stale_entry(tmp_path):
    stale = json.loads(EXPECTED.read_text())
    stale["sttran_sgdet.yaml"]["lr"] = 0.5
    path = tmp_path / "recipes_resolved.json"
    path.write_text(json.dumps(stale, indent=1, sort_keys=True) + "\n")
    changes = [line for line in diff(path).splitlines() if line[:1] in "+-" and line[:3] not in ("---", "+++")]
    assert changes == ['-  "lr": 0.5,', f'+  "lr": {RESOLVED["sttran_sgdet.yaml"]["lr"]},']  # the edit, nothing else


def test_recipes_that_extend_state_little():
    """A recipe with a base states a handful of fields, not every default again."""
    extending = 0
    for path in (REPO / "configs").glob("*.yaml"):
        raw = path.read_text()
        if "\nbase: " in "\n" + raw:
            extending += 1
            fields = [ln for ln in raw.splitlines() if ln and not ln.startswith((" ", "#")) and ":" in ln]
            assert len(fields) <= 7, path.name
    assert extending >= 12


def test_a_field_replaces_the_base_field_whole(tmp_path):
    (tmp_path / "a.yaml").write_text("epochs: 3\nhead_cfg: {hidden: 8, dropout: 0.1}\nlr: 0.5\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\nhead_cfg: {hidden: 16}\n")
    (tmp_path / "c.yaml").write_text("base: b.yaml\nlr: 0.25\n")
    assert load_yaml_mapping(tmp_path / "c.yaml") == {"epochs": 3, "head_cfg": {"hidden": 16}, "lr": 0.25}


def test_a_bad_base_is_one_line_naming_the_recipe(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match=r"b.yaml: base: a.yaml extends, directly or not, b.yaml itself"):
        load_yaml_mapping(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("base: missing.yaml\n")
    with pytest.raises(ConfigError, match=r"missing.yaml: cannot read the recipe"):
        load_yaml_mapping(tmp_path / "c.yaml")
    (tmp_path / "d.yaml").write_text("base: [a.yaml]\n")
    with pytest.raises(ConfigError, match=r"d.yaml: base: must be the file name"):
        load_yaml_mapping(tmp_path / "d.yaml")
