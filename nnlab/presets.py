"""What the packaged conf/ holds: its groups, their choices and defaults, each preset's own
settings and `_target_`s. Read by config checks, commands and docs, never written."""

from __future__ import annotations

import functools
from importlib.resources import files
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

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
    defaults = OmegaConf.load(conf_dir() / f"{PRIMARY}.yaml").defaults
    return {k: v for entry in defaults if isinstance(entry, DictConfig) for k, v in entry.items()}


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
    raw = OmegaConf.to_container(OmegaConf.load(path), resolve=False) or {}
    raw.pop("defaults", None)
    is_global = path.read_text().lstrip().startswith("# @package _global_")
    node = raw.get(group, {}) if is_global else raw
    return node if isinstance(node, dict) else {}


def load_preset(group: str, name: str) -> dict[str, Any]:
    """conf/<group>/<name>.yaml as plain data: the presets nnlab reads itself rather than
    composing into the train config (sweep, experiment)."""
    known = groups().get(group, [])
    if name not in known:
        raise choice_error(group, name, known)
    return OmegaConf.to_container(OmegaConf.load(conf_dir() / group / f"{name}.yaml")) or {}
