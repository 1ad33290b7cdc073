"""Recipes state only what differs from the recipe they extend (``base:``), and every recipe
in configs/ resolves to exactly the config it resolved to when each one spelled out every
field (tests/data/recipes_resolved.json, written from those files)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from common.config import load_yaml_mapping
from common.errors import ConfigError
from stage1_detect.train_detector import DetectorTrainConfig
from stage2_relations.recipe import load_config
from tests.helpers import REPO

RESOLVED = json.loads((REPO / "tests" / "data" / "recipes_resolved.json").read_text())


def resolve(path: Path) -> dict:
    if path.name.startswith("detector_"):
        return DetectorTrainConfig.from_yaml(path).to_dict()
    return load_config(path).to_dict()


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "configs").glob("*.yaml")))
def test_every_recipe_resolves_as_before(name):
    assert name in RESOLVED, f"new recipe {name}: add its resolved config to tests/data/recipes_resolved.json"
    assert resolve(REPO / "configs" / name) == RESOLVED[name]


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
