"""What the packaged conf/ holds: its groups, their choices and defaults, each preset's own
settings and `_target_`s. Read by config checks, commands and docs, never written."""

from __future__ import annotations

import functools
from importlib.resources import files
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf

from nnlab.errors import choice_error

PRIMARY = "train"


def conf_dir() -> Path:
    """The packaged conf/ directory (nnlab.conf inside a wheel, ./conf in an editable install)."""
    return Path(str(files("nnlab.conf")))


def groups() -> dict[str, list[str]]:
    """Every config group and its choices, read from the conf/ tree."""
    root = conf_dir()
    return {
        d.name: sorted(p.stem for p in d.glob("*.yaml"))
        for d in sorted(root.iterdir())
        if d.is_dir() and not d.name.startswith("_") and any(d.glob("*.yaml"))
    }


def default_choices() -> dict[str, str]:
    """group → default choice, from the defaults list of train.yaml."""
    defaults = _fast_yaml(conf_dir() / f"{PRIMARY}.yaml").get("defaults") or []
    return {k: v for entry in defaults if isinstance(entry, dict) for k, v in entry.items()}


def primary_keys() -> list[str]:
    """The keys train.yaml sets itself (seed, name, ...), beside its groups."""
    return [str(k) for k in _fast_yaml(conf_dir() / f"{PRIMARY}.yaml") if k != "defaults"]


def _fast_yaml(path: Path) -> dict[str, Any]:
    """A conf/ file read with YAML's C loader: twenty times faster than OmegaConf's, which
    matters where every preset is read (a suggestion), but with YAML 1.1's types (1e-3 is
    text): for keys and names, not for values."""
    raw = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    return raw if isinstance(raw, dict) else {}


@functools.cache
def known_targets() -> frozenset[str]:
    """Every `_target_` in the packaged conf/: the only code a config may name."""
    return frozenset(
        preset_node(group, choice)["_target_"]
        for group, choices in groups().items()
        for choice in choices
        if "_target_" in preset_node(group, choice)
    )


@functools.cache
def preset_node(group: str, choice: str) -> dict[str, Any]:
    """What conf/<group>/<choice>.yaml puts under `group` (its own node, or the `group:` part
    of a `@package _global_` preset such as model=gan), uninterpolated; {} if there is none.
    Read once per process (every config check asks, and the packaged conf/ does not change
    while nnlab runs): the dict is shared, so callers read it and never change it."""
    path = conf_dir() / group / f"{choice}.yaml"
    if not path.is_file():
        return {}
    return _own_part(OmegaConf.to_container(OmegaConf.load(path), resolve=False), group, path)


@functools.cache
def preset_outline(group: str, choice: str) -> tuple[dict[str, Any], tuple[Any, ...]]:
    """preset_node's node (its values as _fast_yaml reads them: for its keys) and the preset's
    defaults list."""
    path = conf_dir() / group / f"{choice}.yaml"
    if not path.is_file():
        return {}, ()
    raw = _fast_yaml(path)
    return _own_part(raw, group, path), tuple(raw.get("defaults") or ())


def _own_part(raw: Any, group: str, path: Path) -> dict[str, Any]:
    """What a preset puts under its group: the whole file, or the `group:` part of a
    `@package _global_` preset; without its defaults list."""
    raw = dict(raw) if isinstance(raw, dict) else {}
    raw.pop("defaults", None)
    is_global = path.read_text().lstrip().startswith("# @package _global_")
    node = raw.get(group, {}) if is_global else raw
    return node if isinstance(node, dict) else {}


def load_preset(group: str, name: str) -> dict[str, Any]:
    """conf/<group>/<name>.yaml as plain data: the presets nnlab reads itself rather than
    composing into the train config (sweep, experiment)."""
    known = groups().get(group, [])
    # case and '-' for '_' do not matter (sweep=MLP_digits), as for any group's choice
    same = [c for c in known if c.lower() == name.strip().lower().replace("-", "_")]
    if name not in known and len(same) == 1:
        name = same[0]
    if name not in known:
        raise choice_error(group, name, known)
    return OmegaConf.to_container(OmegaConf.load(conf_dir() / group / f"{name}.yaml")) or {}
