"""Write docs/configuration.md, the configuration reference, from conf/ and nnlab/schemas.py.

    python docs/make_reference.py           rewrite docs/configuration.md
    python docs/make_reference.py --check   exit 1 if docs/configuration.md is not what it writes

Every group, every choice, every key with its default (as written in the YAML), its one-line
`# comment`, and the type and bounds its schema (nnlab.schemas.SCHEMAS) checks. The YAML files are
simple `key: value  # comment` lines with a few nested mappings and block lists, so a small line
parser reads the comments; PyYAML reads the same files to make sure the parser missed no key.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
OUTPUT = ROOT / "docs" / "configuration.md"
PRIMARY = "train.yaml"
# Groups in reading order; groups not named here follow alphabetically.
ORDER = ("model", "data", "optimizer", "scheduler", "norm", "activation", "loss", "trainer")
ORDER += ("callbacks", "logger", "experiment", "sweep")
# Groups that train.yaml does not compose: what their files are, and how their keys are named.
NOTES = {
    "experiment": "A lesson in one command: `nnlab train experiment=<name>` runs every run of "
    "the preset and prints one table comparing them (see [lessons](lessons.md)). A preset holds "
    "`overrides` that every run shares, `runs` (label: that run's own overrides) and `report` "
    "(the compared metrics.json keys; `a - b` is a difference). Your own overrides apply to "
    "every run.",
    "sweep": "A stored search for `nnlab sweep sweep=<name>` (see [sweeps](sweeps.md)): the "
    "search `space` in Hydra's override grammar, the `fixed` overrides every trial shares, the "
    "`metric` and its `direction` (`sweep.metric=...` and `sweep.direction=...` on the command "
    "line change them) and the number of `trials` (`--trials`).",
}
UNPREFIXED = ("experiment",)  # read whole by nnlab, not composed: keys are not override paths
# Hydra's own keys, the same in every file: said once here rather than in every file.
HYDRA_KEYS = {
    "_target_": "the Python class or function Hydra builds from this group (only nnlab's own "
    "targets are accepted from saved configs)",
    "_partial_": "Hydra builds a partial: the task adds the model's parameters",
}

sys.path.insert(0, str(ROOT))  # nnlab from this checkout, installed or not
from nnlab.schemas import SCHEMAS, TrainSchema  # noqa: E402


@dataclass
class Entry:
    """One `key: value  # comment` line, or one `- item  # comment` of a block list."""

    path: tuple[str, ...]
    value: str
    comment: str
    items: list[tuple[str, str]] = field(default_factory=list)  # a block list's items
    mapping: bool = False  # has nested keys


@dataclass
class ConfFile:
    header: list[str]  # the leading comment lines
    entries: list[Entry]
    is_global: bool  # `# @package _global_`: keys are full paths


def split_comment(line: str) -> tuple[str, str]:
    """(code, comment) of a YAML line: a `#` at the start or after a blank, outside quotes."""
    quote = ""
    for i, char in enumerate(line):
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1] in " \t"):
            return line[:i].rstrip(), line[i + 1 :].strip()
    return line.rstrip(), ""


KEY = re.compile(r"^(?P<key>[^\s:#-][^:]*?|-[^\s][^:]*?):(?:\s+(?P<value>.*))?$")


def parse(path: Path) -> ConfFile:
    header: list[str] = []
    entries: list[Entry] = []
    stack: list[tuple[int, Entry]] = []  # open mappings and lists: (indent, entry)
    is_global = False
    in_header = True
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        body, comment = split_comment(raw)
        if not body.strip():
            if in_header and comment.startswith("@package"):
                is_global = comment.split()[1:] == ["_global_"]
            elif in_header and comment:
                header.append(comment)
            continue
        in_header = False
        indent = len(body) - len(body.lstrip())
        text = body.strip()
        item = text.startswith("- ") or text == "-"
        # close what this line is not inside (a list's items may sit at its key's own indent)
        while stack and (stack[-1][0] > indent or (stack[-1][0] == indent and not item)):
            stack.pop()
        if item:
            if not stack:
                raise SystemExit(f"{path}:{number}: a list item outside any key")
            owner = stack[-1][1]
            owner.items.append((text[1:].strip(), comment))
            continue
        match = KEY.match(text)
        if not match:
            raise SystemExit(f"{path}:{number}: not a `key: value` line: {raw!r}")
        parent = stack[-1][1].path if stack else ()
        if stack:
            stack[-1][1].mapping = True
        entry = Entry(parent + (match["key"].strip(),), (match["value"] or "").strip(), comment)
        entries.append(entry)
        if not entry.value:
            stack.append((indent, entry))
    return ConfFile(header, entries, is_global)


def leaves(node: Any, prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    if isinstance(node, dict) and node:
        found: set[tuple[str, ...]] = set()
        for key, value in node.items():
            found |= leaves(value, prefix + (str(key),))
        return found
    return {prefix}


def checked(path: Path) -> ConfFile:
    """The parsed file, after making sure it has exactly the keys PyYAML finds."""
    conf = parse(path)
    loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    parsed = {e.path for e in conf.entries if not e.mapping}
    expected = leaves(loaded)
    if parsed != expected:
        raise SystemExit(
            f"{path}: the line parser and PyYAML disagree: only parsed "
            f"{sorted(parsed - expected)}, only in PyYAML {sorted(expected - parsed)}"
        )
    return conf


# --- schema types and bounds -------------------------------------------------------------------

BOUNDS = {"gt": ">", "ge": "≥", "lt": "<", "le": "≤"}


def _number(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _type_name(annotation: str) -> str:
    annotation = annotation.replace("typing.", "")
    optional = re.fullmatch(r"Optional\[(.*)\]", annotation)
    if optional:
        return f"{_type_name(optional[1])} or null"
    listed = re.fullmatch(r"List\[(.*)\]", annotation)
    if listed:
        return f"list of {_type_name(listed[1])}"
    return {"str": "string", "Any": "any"}.get(annotation, annotation)


def describe_field(schema_field: dataclasses.Field) -> str:
    """'int, ≥ 1', 'list of int, each ≥ 1, at least 1 item', 'string, one of: a, b'."""
    meta = dict(schema_field.metadata)
    annotation = schema_field.type
    if not isinstance(annotation, str):
        annotation = getattr(annotation, "__name__", str(annotation))
    parts = [_type_name(annotation)]
    is_list = parts[0].startswith("list of")
    bounds = [f"{BOUNDS[k]} {_number(meta[k])}" for k in BOUNDS if k in meta]
    if "choices" in meta:
        bounds.append("one of: " + ", ".join(f"`{c}`" for c in meta["choices"]))
    if bounds:
        parts.append(("each " if is_list else "") + ", ".join(bounds))
    if "length" in meta:
        parts.append(f"exactly {meta['length']} items")
    if "min_length" in meta:
        parts.append(f"at least {meta['min_length']} item" + ("s" * (meta["min_length"] != 1)))
    return ", ".join(parts)


def schema_fields(schema: type | None) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(schema)} if schema else {}


def schema_for(group: str, choice: str) -> type | None:
    choices = SCHEMAS.get(group, {})
    return choices.get(choice) or choices.get("*")


# --- rendering ---------------------------------------------------------------------------------


def cell(text: str) -> str:
    """Text for a table cell: pipes escaped, and `<` so that <run> is not read as HTML."""
    return prose(text).replace("|", "\\|")


def prose(text: str) -> str:
    return text.replace("<", "&lt;")


def sentence(text: str) -> str:
    text = prose(" ".join(text.split()))
    return text if text.endswith((".", "!", "?")) else text + "."


def code(text: str) -> str:
    escaped = text.replace("|", "\\|")
    return f"`{escaped}`" if text else ""


def value_of(entry: Entry) -> str:
    if entry.items:
        return "[" + ", ".join(item for item, _ in entry.items) + "]"
    return entry.value if not entry.mapping else ""


def description_of(entry: Entry) -> str:
    notes = [entry.comment or HYDRA_KEYS.get(entry.path[-1], "")]
    notes = [note for note in notes if note]
    notes += [f"`{item}`: {note}" for item, note in entry.items if note]
    return "; ".join(notes)


def key_table(rows: list[tuple[str, str, str, str]], typed: bool) -> list[str]:
    if typed:
        lines = ["| key | default | type | what it does |", "| --- | --- | --- | --- |"]
        lines += [f"| {code(k)} | {code(v)} | {cell(t)} | {cell(d)} |" for k, v, t, d in rows]
    else:
        lines = ["| key | value | what it does |", "| --- | --- | --- |"]
        lines += [f"| {code(k)} | {code(v)} | {cell(d)} |" for k, v, _, d in rows]
    return lines


def defaults_lines(group: str, choice: str, entries: list[Entry]) -> list[str]:
    lines = []
    for entry in entries:
        if entry.path != ("defaults",):
            continue
        items = [item for item, _ in entry.items if item != "_self_"]
        siblings = [item for item in items if (CONF / group / f"{item}.yaml").exists()]
        for item in siblings:
            lines.append(f"Builds on `{group}={item}`: every key not listed here is as there.")
        for item, note in entry.items:
            if item in ("_self_", *siblings):
                continue
            override = re.fullmatch(r"override /(\w+): (\S+)", item)
            said = f"Sets `{override[1]}={override[2]}`" if override else f"Defaults: `{item}`"
            lines.append(said + (f": {note}." if note else "."))
    return lines


def rows_of(
    conf: ConfFile, group: str, choice: str, typed: bool
) -> list[tuple[str, str, str, str]]:
    rows = []
    for entry in conf.entries:
        if entry.path[0] == "defaults":
            continue
        if conf.is_global:
            section, rest = entry.path[0], entry.path[1:]
            full = ".".join(entry.path)
            schema = schema_for(section, choice if section == group else "*")
        else:
            section, rest = group, entry.path
            full = ".".join(entry.path if group in UNPREFIXED else (group, *entry.path))
            schema = schema_for(group, choice)
        if entry.mapping and not entry.comment:
            continue  # its keys have rows of their own
        found = schema_fields(schema).get(rest[0]) if len(rest) == 1 and typed else None
        kind = describe_field(found) if found else ""
        value = "(the keys below)" if entry.mapping else value_of(entry)
        rows.append((full, value, kind, description_of(entry)))
    return rows


def group_section(group: str, default: str | None, about: str) -> list[str]:
    files = sorted((CONF / group).glob("*.yaml"), key=lambda p: (p.stem != default, p.stem))
    typed = group in SCHEMAS
    lines = [f"## {group}", ""]
    if about:
        lines += [sentence(about[0].upper() + about[1:]), ""]
    if group in NOTES:
        lines += [NOTES[group], ""]
    names = ", ".join(f"`{p.stem}`" + (" (default)" if p.stem == default else "") for p in files)
    lines += [f"Choices: {names}. Pick one with `{group}=<choice>`.", ""]
    for path in files:
        conf = checked(path)
        choice = path.stem
        lines += [f"### {group}={choice}", ""]
        if conf.header:
            lines += [sentence(" ".join(conf.header)), ""]
        if conf.is_global:
            lines += ["A `@package _global_` file: its keys are full paths, and it may set keys of"]
            lines += ["other groups.", ""]
        extra = defaults_lines(group, choice, conf.entries)
        if extra:
            lines += [*extra, ""]
        rows = rows_of(conf, group, choice, typed)
        if rows:
            lines += [*key_table(rows, typed), ""]
    return lines


def render() -> str:
    primary = checked(CONF / PRIMARY)
    defaults: dict[str, tuple[str, str]] = {}  # group -> (default choice, what it is)
    for entry in primary.entries:
        if entry.path == ("defaults",):
            for item, note in entry.items:
                if ":" in item:
                    group, choice = (part.strip() for part in item.split(":", 1))
                    defaults[group] = (choice, note)
    groups = sorted(
        (p.name for p in CONF.iterdir() if p.is_dir() and any(p.glob("*.yaml"))),
        key=lambda g: (ORDER.index(g) if g in ORDER else len(ORDER), g),
    )
    lines = [
        "# Configuration reference",
        "",
        "<!-- Generated by `python docs/make_reference.py` from conf/ and nnlab/schemas.py.",
        "     Do not edit: change the YAML comments or the schemas, then run the script. -->",
        "",
        "Every key nnlab reads, with its default, the type and bounds nnlab checks before",
        "anything runs (a value outside them is refused with exit code 2), and what it does.",
        "Change any of them on the command line with a Hydra override: `group=choice` picks a",
        "file of a group, `group.key=value` changes one key (`nnlab train model=cnn",
        "model.channels=[32,64] optimizer.lr=0.01`). `nnlab config [OVERRIDES...]` prints the",
        "composed result, and `nnlab config --list` every group and choice.",
        "",
        "Choices ignore case (`model=CNN` is `model=cnn`, and the run is saved as such). A key",
        "nnlab does not know is refused before torch loads, with where it lives: `lr=0.1` →",
        "`optimizer.lr`, `max_epochs=3` → `trainer.max_epochs`, a key of another choice of the",
        "group → that choice (`optimizer.momentum=0.9` with Adam → add `optimizer=momentum`).",
        "Options such as `--epochs 5` are answered with the key=value to give instead",
        "(`trainer.max_epochs=5`).",
        "",
        "Groups: " + ", ".join(f"[{g}](#{g})" for g in groups) + ".",
        "",
        f"## Top level ({PRIMARY})",
        "",
        sentence(" ".join(primary.header)),
        "",
        "Default choice of each group:",
        "",
        "| group | default | what it is |",
        "| --- | --- | --- |",
    ]
    lines += [f"| [{g}](#{g}) | `{c}` | {cell(note)} |" for g, (c, note) in defaults.items()]
    lines += ["", "Keys of their own:", ""]
    fields = schema_fields(TrainSchema)
    rows = []
    for entry in primary.entries:
        if entry.path[0] != "defaults":
            found = fields.get(entry.path[0])
            kind = describe_field(found) if found else ""
            rows.append((entry.path[0], value_of(entry), kind, description_of(entry)))
    lines += key_table(rows, typed=True)
    lines.append("")
    for group in groups:
        choice, about = defaults.get(group, (None, ""))
        lines += group_section(group, choice, about)
    while lines[-1] == "":
        lines.pop()
    return "\n".join(lines) + "\n"


def uncommented() -> list[str]:
    """Keys (full paths) whose YAML line has no `# comment`: the reference has nothing to say."""
    missing = []
    for path in sorted(CONF.rglob("*.yaml")):
        conf = checked(path)
        group = path.parent.name if path.parent != CONF else ""
        commented = {e.path for e in conf.entries if e.comment}
        for entry in conf.entries:
            if entry.path[0] == "defaults" or entry.mapping or entry.comment:
                continue
            if any(entry.path[:i] in commented for i in range(1, len(entry.path))):
                continue  # a commented mapping says what its keys are
            if entry.items and all(note for _, note in entry.items):
                continue
            where = f"{path.relative_to(ROOT)}: "
            prefix = () if conf.is_global or not group else (group,)
            missing.append(where + ".".join((*prefix, *entry.path)))
    return missing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is out of date")
    parser.add_argument("--uncommented", action="store_true", help="list keys without a comment")
    args = parser.parse_args(argv)
    if args.uncommented:
        print("\n".join(uncommented()))
        return 0
    text = render()
    if args.check:
        current = OUTPUT.read_text(encoding="utf-8") if OUTPUT.exists() else ""
        if current != text:
            print(
                f"{OUTPUT.relative_to(ROOT)} is out of date with conf/ or nnlab/schemas.py: "
                "run python docs/make_reference.py",
                file=sys.stderr,
            )
            return 1
        return 0
    OUTPUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUTPUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
