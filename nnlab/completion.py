"""What a TAB after `nnlab <command>` offers: commands and options come from Typer and Click; this
module answers for overrides (group choices, every config key in conf/) and run names.

Read from the packaged conf/ and outputs/ only: completing never imports torch, Lightning or
Hydra, so the shell answers at once."""

from __future__ import annotations

import functools
import textwrap

import typer
from rich.markup import escape

from nnlab import presets, runs, suggest

# Hydra's own keys: a group choice sets them, and overriding them is refused (config.HYDRA_KEYS).
HIDDEN = frozenset({"_target_", "_partial_", "_convert_", "_recursive_", "_args_", "defaults"})
# Groups nnlab reads whole (presets.load_preset) rather than composing: a choice, never keys.
READ_WHOLE = frozenset({"experiment", "sweep"})
# Hydra's override prefixes: +key=value adds a key, ++key=value forces it, ~key deletes it.
PREFIXES = ("++", "+", "~")

Candidate = tuple[str, str]  # (what the shell inserts, a one-line help zsh and fish show)
# Typer renders the help as Rich markup at the terminal's width: longer help would wrap, and fish
# reads each line as a candidate of its own.
HELP_WIDTH = 60


def _summary(group: str, choice: str) -> str:
    """The first comment line of conf/<group>/<choice>.yaml, which says what the choice is."""
    for line in (presets.conf_dir() / group / f"{choice}.yaml").read_text().splitlines():
        text = line.lstrip("#").strip()
        if line.startswith("#") and text and not text.startswith("@package"):
            return text
    return ""


@functools.cache
def choices() -> dict[str, list[Candidate]]:
    """group → its choices with what each is, from the conf/ tree."""
    return {
        group: [(choice, _summary(group, choice)) for choice in names]
        for group, names in presets.groups().items()
    }


@functools.cache
def keys() -> dict[str, dict[str, list[str]]]:
    """Prefix ('' for train.yaml's own keys, else a group) → dotted key → the group's choices
    that have it; every key of every choice's YAML (suggest.offered: the index that error
    messages search too), Hydra's own keys left out."""
    found: dict[str, dict[str, list[str]]] = {
        "": {key: [] for key in presets.primary_keys() if _shown(key)}
    }
    for dotted, choices in sorted(suggest.offered().items()):
        group = dotted.partition(".")[0]
        if group not in READ_WHOLE:
            found.setdefault(group, {})[dotted] = list(choices)
    return found


def _shown(key: str) -> bool:
    return not HIDDEN & set(key.split("."))


def _chosen(ctx: typer.Context) -> dict[str, str]:
    """group → the choice already typed on this command line (model=cnn ...)."""
    typed = [*(ctx.params.get("overrides") or ()), *(ctx.params.get("space") or ())]
    known = presets.groups()
    picked = {}
    for word in typed:
        group, equals, choice = word.lstrip("+").partition("=")
        if equals and choice in known.get(group, ()):
            picked[group] = choice
    return picked


def _key_candidates(incomplete: str, chosen: dict[str, str]) -> list[Candidate]:
    """Keys starting with `incomplete`: train.yaml's own, each group as `group=` and `group.`,
    then, once a group's name and a dot are typed, the group's keys (only those of the choice
    typed on the line, if there is one)."""
    group, dot, _ = incomplete.partition(".")
    if not dot:
        found = [(key, "") for key in keys()[""]]
        for name, names in choices().items():
            found.append((f"{name}=", ", ".join(n for n, _ in names)))
            if keys().get(name):
                found.append((f"{name}.", f"the keys of {name}"))
        return sorted(c for c in found if c[0].startswith(incomplete))
    everyone = presets.groups().get(group, [])
    found = []
    for key, where in keys().get(group, {}).items():
        if group in chosen:
            if chosen[group] in where:
                found.append((key, ""))
        else:
            some = len(where) < len(everyone)
            found.append((key, f"only with {group}={'|'.join(where)}" if some else ""))
    return [c for c in found if c[0].startswith(incomplete)]


def _value_candidates(group: str, typed: str) -> list[Candidate]:
    """A group's choices after `group=`; after a comma (-m sgd,adam) the next one."""
    done, comma, start = typed.rpartition(",")
    head = done + comma
    named = choices().get(group, [])
    return [(head + name, what) for name, what in named if name.startswith(start)]


def _fit(candidates: list[Candidate]) -> list[Candidate]:
    """Help that stays on one line and reads as plain text ([conv → norm] is not markup)."""
    return [
        (value, escape(textwrap.shorten(what, HELP_WIDTH, placeholder=" …")))
        for value, what in candidates
    ]


def _split_key(typed: list[str], incomplete: str) -> str | None:
    """The key whose value is being typed when bash has split `model=c` at its `=`
    (COMP_WORDBREAKS): Click then gets `model`, `=` and `c`, or only `model` for a bare
    `model=` (it drops a lone `=`). None when the word being typed is whole."""
    if typed[-1:] == ["="] and len(typed) > 1:
        key = typed[-2]
    elif typed and not incomplete and "=" not in typed[-1]:
        key = typed[-1]
    else:
        return None
    return key.lstrip("+")


def complete_overrides(ctx: typer.Context, incomplete: str) -> list[Candidate]:
    """Candidates for the override being typed: `model=` → model=cnn, model=mlp ...;
    `optimizer.` → optimizer.lr ...; `trainer.max_` → trainer.max_epochs, trainer.max_time."""
    typed = [str(word) for word in (ctx.params.get("overrides") or ctx.params.get("space") or ())]
    split = _split_key(typed, incomplete)
    if split is not None:
        # bash replaces only the text after the `=`: the choice alone is the answer
        return _fit(_value_candidates(split, incomplete))
    prefix = next((p for p in PREFIXES if incomplete.startswith(p)), "")
    body = incomplete[len(prefix) :]
    key, equals, value = body.partition("=")
    if equals:
        found = [(f"{prefix}{key}={v}", what) for v, what in _value_candidates(key, value)]
    else:
        found = [(prefix + k, what) for k, what in _key_candidates(body, _chosen(ctx))]
    return _fit(found)


def complete_runs(ctx: typer.Context, incomplete: str) -> list[Candidate]:
    """'latest', then each run's directory name and its name= under <output_dir>/runs. A path
    being typed is left to the shell's own file completion."""
    if "/" in incomplete or incomplete.startswith(("~", ".")):
        return []
    found = runs.list_runs(ctx.params.get("output_dir") or "outputs")
    if not found:
        return []
    candidates = [("latest", found[-1].name)]
    names: dict[str, str] = {}
    for run in reversed(found):  # newest first: a name means its newest run
        names.setdefault(run.name, "")
        for name in runs.names_of(run) - {"", runs.short_id(run)}:
            names.setdefault(name, f"newest: {run.name}")
    candidates += sorted(names.items())
    return _fit([c for c in candidates if c[0].startswith(incomplete)])
