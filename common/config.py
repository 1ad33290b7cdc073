"""Recipes (config files): the YAML loader (``base:`` names the recipe a file extends, duplicate
keys refused) and one-line checks of a dataclass's fields and of a function's keywords. Every
problem is a :class:`~common.errors.ConfigError` naming the file or option and the field."""

from __future__ import annotations

import dataclasses
import math
import typing
from pathlib import Path
from typing import Any, Callable, Mapping

from common.errors import ConfigError

Rule = tuple[Callable[[Any], bool], str]
"""(predicate, what it requires), e.g. ``(lambda v: v >= 1, ">= 1")``."""


def at_least(lo: float) -> Rule:
    return (lambda v: v >= lo, f">= {lo:g}")


def positive() -> Rule:
    return (lambda v: v > 0, "> 0")


def between(lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False) -> Rule:
    def ok(v: float) -> bool:
        return (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)

    return (ok, f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}")


def one_of(*choices: Any) -> Rule:
    return (lambda v: v in choices, "one of " + ", ".join(repr(c) for c in choices))


def _type_ok(value: Any, hint: Any) -> tuple[bool, Any]:
    """Whether ``value`` fits the annotation ``hint``; returns (ok, value as the field keeps it)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        args = typing.get_args(hint)
        if value is None:
            return type(None) in args, value
        for a in args:
            if a is type(None):
                continue
            ok, v = _type_ok(value, a)
            if ok:
                return True, v
        return False, value
    if hint is Any:
        return True, value
    base = origin or hint
    if base is bool:
        return isinstance(value, bool), value
    if base is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if base is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        return ok, float(value) if ok else value
    if base is str:
        return isinstance(value, str), value
    if base in (dict, Mapping):
        return isinstance(value, dict), value
    if base in (tuple, list):
        ok = isinstance(value, (list, tuple))
        return ok, (tuple(value) if base is tuple and ok else value)
    return True, value


def _type_name(hint: Any) -> str:
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        names = [_type_name(a) for a in args if a is not type(None)]
        return " or ".join(names) + (" or null" if type(None) in args else "")
    base = typing.get_origin(hint) or hint
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string", dict: "a mapping",
            tuple: "a list", list: "a list"}.get(base, getattr(base, "__name__", str(base)))


def check_fields(cls: type, data: Mapping[str, Any], *, where: Callable[[str], str] | str,
                 rules: Mapping[str, Rule] | None = None) -> dict[str, Any]:
    """Check ``data`` (a recipe as parsed) against the dataclass ``cls``: no unknown key, each
    value of its field's type (an int is a number; ``1e-4`` in YAML is a string and is read as a
    number), and each ``rules[field]`` satisfied. Returns the values as the fields keep them.

    ``where`` names the origin of a field in the message: a string (the file) or a function of
    the field name (``"--set lr"``, ``"--epochs"``). Raises :class:`ConfigError` with one line:
    ``"<where>: <field>: must be <what>, got <value>"``.
    """
    origin = where if callable(where) else (lambda _k, _w=where: str(_w))
    known = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key not in known:
            raise ConfigError(f"{origin(key)}: unknown field {key!r}; known: {', '.join(sorted(known))}")
        hint = hints.get(key, Any)
        if isinstance(value, str) and _type_name(hint) in ("a number", "a number or null"):
            try:  # YAML 1.1 reads 1e-4 (no dot) as a string
                value = float(value)
            except ValueError:
                pass
        ok, value = _type_ok(value, hint)
        if not ok:
            raise ConfigError(f"{origin(key)}: {key}: must be {_type_name(hint)}, got {value!r}")
        rule = (rules or {}).get(key)
        if rule is not None and value is not None and not rule[0](value):
            raise ConfigError(f"{origin(key)}: {key}: must be {rule[1]}, got {value!r}")
        out[key] = value
    return out


def check_keywords(func: Callable[..., Any], cfg: Mapping[str, Any], *, skip: tuple[str, ...], what: str,
                   where: Callable[[str], str] | str) -> None:
    """Every key of ``cfg`` is a keyword argument of ``func`` (a constructor) other than ``skip``,
    with a value of the annotated type where the annotation is a plain bool / int / float / str.
    Raises :class:`ConfigError` naming ``where`` (the file or option, or a function of the key
    giving it) and the key."""
    import inspect

    origin = where if callable(where) else (lambda _k, _w=where: str(_w))
    sig = inspect.signature(func)
    params = {n: p for n, p in sig.parameters.items()
              if n not in skip and n != "self" and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
    if any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
        return
    try:
        hints = typing.get_type_hints(func)
    except Exception:  # noqa: BLE001 - unresolvable annotations: check the names only
        hints = {}
    for key, value in cfg.items():
        if key not in params:
            raise ConfigError(f"{origin(key)}: {what}: unknown key {key!r}; known: {', '.join(sorted(params))}")
        hint = hints.get(key)
        if hint in (bool, int, float, str) or (typing.get_origin(hint) in (typing.Union,)
                                                and set(typing.get_args(hint)) <= {bool, int, float, str, type(None)}):
            ok, _ = _type_ok(value, hint)
            if not ok:
                raise ConfigError(f"{origin(key)}: {what}.{key}: must be {_type_name(hint)}, got {value!r}")


def _strict_loader() -> type:
    """yaml's SafeLoader that refuses a key given twice in one mapping (plain YAML keeps the
    last silently: a recipe saying ``lr`` twice trained with the second)."""
    import yaml

    class StrictLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):  # noqa: ANN001, ANN201
            if isinstance(node, yaml.MappingNode):
                seen: dict[Any, int] = {}
                for key_node, _ in node.value:
                    if key_node.tag == "tag:yaml.org,2002:merge":  # "<<: *base" merges on purpose
                        continue
                    key = self.construct_object(key_node, deep=True)
                    try:
                        first = seen.get(key)
                    except TypeError:  # an unhashable key: the base class reports it
                        continue
                    if first is not None:
                        raise yaml.constructor.ConstructorError(
                            None, None, f"key {key!r} is given twice (first at line {first}); YAML would keep the "
                                        f"last one silently: give it once", key_node.start_mark)
                    seen[key] = key_node.start_mark.line + 1
            return super().construct_mapping(node, deep=deep)

    return StrictLoader


BASE_KEY = "base"
"""A recipe's field naming the recipe it extends (a path relative to the recipe's folder)."""


def load_yaml_mapping(path: str | Path, _extending: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A YAML file that holds a mapping (empty file: ``{}``); :class:`ConfigError` naming the
    file for a missing file, a syntax error (with its line) or another top-level type.

    The one loader of every recipe. A recipe states only what differs from the recipe it
    extends: ``base: other.yaml`` (relative to the recipe's folder) loads that one first,
    then each top-level field of this file replaces the base's (a mapping field such as
    ``head_cfg`` or ``rsnet`` as a whole). Bases may extend bases; a cycle is an error.
    """
    import yaml

    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read the recipe ({e.strerror if isinstance(e, OSError) else e})") from None
    try:
        data = yaml.load(text, Loader=_strict_loader())  # noqa: S506 - a SafeLoader
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{path}: not valid YAML{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe is a mapping of fields (key: value), not a {type(data).__name__}")
    if BASE_KEY not in data:
        return data
    base = data.pop(BASE_KEY)
    if not isinstance(base, str) or not base:
        raise ConfigError(f"{path}: {BASE_KEY}: must be the file name of the recipe it extends, got {base!r}")
    chain = _extending + (path.resolve(),)
    base_path = path.parent / base
    if base_path.resolve() in chain:
        raise ConfigError(f"{path}: {BASE_KEY}: {base} extends, directly or not, {path.name} itself")
    return {**load_yaml_mapping(base_path, chain), **data}


__all__ = ["BASE_KEY", "Rule", "at_least", "between", "check_fields", "check_keywords", "load_yaml_mapping", "one_of", "positive"]
