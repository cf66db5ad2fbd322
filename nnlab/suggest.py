"""Where a mistyped or misplaced setting really lives, for error messages that lead somewhere.

Searched in the config as composed (what can be set now) and in every choice of every group
that train.yaml composes (what another choice would offer: optimizer.momentum needs
optimizer=momentum), by whole key, by its last part (lr → optimizer.lr), by word (epochs →
trainer.max_epochs) and by spelling. All of it is read from the conf/ files, never from a
hand-written table, so a key added there is found here."""

from __future__ import annotations

import difflib
import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from nnlab.errors import UserError
from nnlab.presets import default_choices, groups, preset_outline, primary_keys

# Keys Hydra reads to build objects: a group's choice sets them, the user never does.
HYDRA_KEYS = ("_target_", "_partial_", "_convert_", "_recursive_", "_args_")
CUTOFF = 0.6  # how alike two names must be (difflib's ratio) to be offered
SHOWN = 4  # choices named per key before "and N more"


def plain(name: str) -> str:
    """A name as compared: case and '-' versus '_' do not matter (--batch-size, model=CNN)."""
    return name.strip().lower().replace("-", "_")


def canonical_choice(group: str, value: str) -> str | None:
    """The choice of `group` that `value` names, ignoring case and '-' for '_'; None if none."""
    choices = groups().get(group, [])
    if value in choices:
        return value
    found = [c for c in choices if plain(c) == plain(value)]
    return found[0] if len(found) == 1 else None


def flat_keys(node: Mapping[str, Any], prefix: str = "") -> list[str]:
    """The dotted key of every setting in a nested mapping, without Hydra's own keys."""
    keys = []
    for key, value in node.items():
        if str(key) in HYDRA_KEYS:
            continue
        if isinstance(value, Mapping) and value:
            keys += flat_keys(value, f"{prefix}{key}.")
        else:
            keys.append(f"{prefix}{key}")
    return keys


@functools.cache
def choice_keys(group: str, choice: str) -> frozenset[str]:
    """The keys (below `group`) that conf/<group>/<choice>.yaml sets, with those of the choices
    of the same group it extends (trainer=gpu lists `default` in its defaults)."""
    node, bases = preset_outline(group, choice)
    keys = set(flat_keys(node))
    siblings = groups().get(group, [])
    for base in bases:
        if isinstance(base, str) and base != choice and base in siblings:
            keys |= choice_keys(group, base)
    return frozenset(keys)


@functools.cache
def offered() -> dict[str, tuple[str, ...]]:
    """'group.key' → the choices of that group that have the key, over every group train.yaml
    composes (experiment= and sweep= presets are read apart and hold no settings)."""
    found: dict[str, list[str]] = {}
    known = groups()
    for group in default_choices():
        for choice in known.get(group, []):
            for key in choice_keys(group, choice):
                found.setdefault(f"{group}.{key}", []).append(choice)
    return {key: tuple(choices) for key, choices in found.items()}


@dataclass
class Config:
    """What the config as composed offers: its dotted keys (`live`), the names a bare key=
    may take (top-level keys and groups), and the choice of each group."""

    live: set[str]
    names: set[str]
    choices: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, node: Mapping[str, Any], choices: Mapping[str, str]) -> Config:
        """What a composed (or saved) config offers, and the group choices it was made of."""
        return cls(set(flat_keys(node)), {*map(str, node), *groups()}, choices)

    @classmethod
    def of_choices(cls, given: Mapping[str, str]) -> Config:
        """What the config composed with the `given` group choices offers, read from the conf/
        files without composing it (a fraction of Hydra's time, on the way to an error): a
        preset's `override /<group>: <choice>` (model=faster_rcnn picks data=shapes) holds
        where `given` leaves that group as it is."""
        chosen = {**default_choices(), **given}
        for group, choice in list(chosen.items()):
            for entry in preset_outline(group, choice)[1]:
                for key, value in entry.items() if isinstance(entry, dict) else ():
                    other = str(key).removeprefix("override").strip().strip("/")
                    if other in chosen and other not in given and isinstance(value, str):
                        chosen[other] = value
        live = {f"{g}.{k}" for g, c in chosen.items() for k in choice_keys(g, c)}
        return cls(live | set(primary_keys()), {*primary_keys(), *groups()}, chosen)


@dataclass
class Found:
    """What `search` found: keys to set now, or keys another choice of a group would offer."""

    live: list[str] = field(default_factory=list)  # keys the config has now
    other: dict[str, tuple[str, ...]] = field(default_factory=dict)  # key → choices having it
    spelled: bool = False  # found by a close spelling, not by name

    def __bool__(self) -> bool:
        return bool(self.live or self.other)


def search(key: str, config: Config) -> Found:
    """Where `key` (as typed: a bare name or a dotted key) lives, best evidence first."""
    wanted = plain(key.lstrip("+~"))
    other = {k: v for k, v in offered().items() if k not in config.live}
    leaf = wanted.rpartition(".")[2]
    for same in (
        lambda k: plain(k) == wanted,
        lambda k: plain(k).rpartition(".")[2] == leaf,
    ):
        found = Found(
            sorted(k for k in config.live | config.names if same(k)),
            {k: v for k, v in other.items() if same(k)},
        )
        if found.live:
            return found
        if found:  # only another choice has it: a key of this one may be meant (fc_hidden)
            section = wanted.partition(".")[0] if "." in wanted else ""
            found.live = [k for k in _by_word(leaf, config) if k.startswith(section)]
            return found
    return Found(_by_word(leaf, config)) or _spelled(wanted, config, other)


def _by_word(name: str, config: Config) -> list[str]:
    """Keys whose last part starts or ends with `name` as a word: epochs → trainer.max_epochs,
    batch → data.batch_size; none when that names more than three (size)."""
    words = sorted(k for k in config.live if _shares_word(name, k.rpartition(".")[2]))
    return words if len(words) <= 3 else []


def _shares_word(name: str, key: str) -> bool:
    key = plain(key)
    return key.startswith(f"{name}_") or key.endswith(f"_{name}")


def _spelled(wanted: str, config: Config, other: Mapping[str, tuple[str, ...]]) -> Found:
    """The closest spelling: within the section a dotted key names (fixing a misspelt section
    first), else among top-level names and the last parts of every key."""
    section, dot, rest = wanted.partition(".")
    if dot:
        sections = {plain(n): n for n in config.names}
        if section not in sections:
            close = _closest(section, {s: s for s in sections})
            return search(f"{close}.{rest}", config) if close else Found()
        inside = {k.partition(".")[2]: k for k in config.live if plain(k).startswith(f"{section}.")}
        elsewhere = {k.partition(".")[2]: k for k in other if plain(k).startswith(f"{section}.")}
        if close := _closest(rest, inside):
            return Found([close], spelled=True)
        if close := _closest(rest, elsewhere):
            return Found(other={close: other[close]}, spelled=True)
        return Found()
    # a top-level name wins a near tie: modle → model, not callbacks.mode
    scored = [(_ratio(wanted, n) + 0.1, n) for n in config.names]
    scored += [(_ratio(wanted, k.rpartition(".")[2]), k) for k in config.live]
    best = max(scored, default=(0.0, ""))
    return Found([best[1]], spelled=True) if best[0] >= CUTOFF else Found()


def _closest(name: str, candidates: Mapping[str, str]) -> str | None:
    close = difflib.get_close_matches(name, [plain(c) for c in candidates], n=1, cutoff=CUTOFF)
    if not close:
        return None
    return next(full for c, full in candidates.items() if plain(c) == close[0])


def _ratio(a: str, b: str) -> float:
    return difflib.SequenceMatcher(None, plain(a), plain(b)).ratio()


def _setting(key: str, value: str | None) -> str:
    return f"{key}={value if value is not None else '...'}"


def _where(key: str, choices: tuple[str, ...], chosen: Mapping[str, str]) -> str:
    group = key.partition(".")[0]
    named = [f"{group}={c}" for c in choices[:SHOWN]]
    more = f" and {len(choices) - SHOWN} more" if len(choices) > SHOWN else ""
    now = f"; {group} is {chosen[group]} here" if group in chosen else ""
    return f"{key} is a setting of {', '.join(named)}{more}{now}"


def advice(found: Found, value: str | None, chosen: Mapping[str, str]) -> str:
    """What to type instead, from what `search` found ('' when it found nothing)."""
    here = ""
    if len(found.live) == 1:
        key = found.live[0]
        here = f"Did you mean '{key}'?" + (f" ({key}={value})" if value is not None else "")
    elif found.live:
        here = (
            f"Settings of that name: {', '.join(found.live)}. Give the whole key, for example "
            f"{_setting(found.live[0], value)}."
        )
    if not found.other:
        return here
    clauses = [_where(key, choices, chosen) for key, choices in found.other.items()]
    key, choices = next(iter(found.other.items()))
    group = key.partition(".")[0]
    # the default choice when it has the key (the one most runs use), else the first
    choice = default_choices().get(group) if default_choices().get(group) in choices else None
    choice = choice or choices[0]
    guess = f"Did you mean '{key}'? " if found.spelled else ""
    elsewhere = (
        f"{guess}{'; '.join(clauses)}. To set it, choose that {group} too: "
        f"{group}={choice} {_setting(key, value)}."
    )
    return f"{here} Or: {elsewhere}" if here else elsewhere


def unknown_key(key: str, value: str | None, config: Config, context: str = "") -> UserError:
    """The error for an override key the config does not have: where it does live, else the
    keys there are. `context` follows the key ("for this run's config")."""
    bare = key.lstrip("+~")
    hint = advice(search(bare, config), value, config.choices)
    return UserError(f"Unknown key '{bare}'{context}. {hint or _listing(bare, config)}")


def _listing(key: str, config: Config) -> str:
    """The keys beside `key`: those of the section it names, else the top-level ones."""
    section = key.partition(".")[0] if "." in key else ""
    inside = sorted(k.partition(".")[2] for k in config.live if k.startswith(f"{section}."))
    if section and inside:
        chosen = f" ({section}={config.choices[section]})" if section in config.choices else ""
        listing = f"Keys in {section}{chosen}: {', '.join(inside)}."
    else:
        listing = f"Top-level keys and groups: {', '.join(sorted(config.names))}."
    return f"{listing} `nnlab config` prints the whole config."


def find_option(arguments: Iterable[str]) -> tuple[str, str | None] | None:
    """The first `--name value` / `--name=value` among override arguments, and its value."""
    arguments = list(arguments)
    for i, argument in enumerate(arguments):
        if argument.startswith("-") and argument.lstrip("-"):
            name, eq, value = argument.partition("=")
            following = arguments[i + 1] if i + 1 < len(arguments) else None
            if not eq and following is not None and "=" not in following:
                value, eq = following, "="
            return name, (value if eq else None)
    return None


def option_error(option: str, value: str | None, config: Config) -> UserError:
    """The error for `--epochs 5` given where nnlab takes trainer.max_epochs=5."""
    found = search(option.lstrip("-"), config)
    given = f"{option} {value}" if value is not None else option
    lead = f"nnlab takes settings as key=value, not as options like {given}"
    if found.live:
        uses = " or ".join(_setting(k, value) for k in found.live)
        return UserError(f"{lead}: use {uses}.")
    if found.other:
        return UserError(f"{lead}. {advice(found, value, config.choices)}")
    return UserError(
        f"{lead}. `nnlab config` prints every key and `nnlab config --list` every group; "
        f"--help lists the command's own options."
    )
