"""`~` and `$VAR` in path settings (data.root, output_dir, ...), expanded as bash would expand
them, since bash does not after `key=`. Which settings are paths is marked in schemas.py."""

from __future__ import annotations

import dataclasses
import os
import re
from functools import cache
from typing import Any

from nnlab.errors import UserError
from nnlab.schemas import SCHEMAS, TrainSchema

ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@cache
def path_keys() -> frozenset[str]:
    """Dotted keys of every setting whose schema field is marked path=True (data.root, ...)."""
    keys = {f.name for f in dataclasses.fields(TrainSchema) if f.metadata.get("path")}
    for group, by_choice in SCHEMAS.items():
        for schema in by_choice.values():
            keys |= {
                f"{group}.{f.name}" for f in dataclasses.fields(schema) if f.metadata.get("path")
            }
    return frozenset(keys)


def _is_interpolation(name: str) -> bool:
    """`${name}` is OmegaConf's (a config key, a resolver, a dotted path), not an env variable."""
    return not ENV_NAME.fullmatch(name) or name in (
        *(f.name for f in dataclasses.fields(TrainSchema)),
        *SCHEMAS,
    )


def expand_path(key: str, value: str, escape: bool = True) -> str | None:
    """`value` of a path setting with a leading `~` and every `$VAR` / `${VAR}` expanded, as
    bash expands them (it does not after `key=`); None when there is nothing to expand. A
    `${key}` naming a config key, `${oc.env:X}` and the like stay OmegaConf interpolations; with
    `escape`, a `${` that an expansion brought in is escaped so OmegaConf keeps it as text."""

    def text(expanded: str) -> str:
        return expanded.replace("${", "\\${") if escape else expanded

    out, changed, i = [], False, 0
    if value.startswith("~"):
        prefix = value.split("/", 1)[0]
        home = os.path.expanduser(prefix)
        if home == prefix:
            raise UserError(
                f"Cannot expand {prefix} in {key}={value}: there is no user "
                f"'{prefix[1:]}' on this machine. Write the path out."
            )
        out.append(text(home))
        changed, i = True, len(prefix)
    while i < len(value):
        start = value.find("$", i)
        if start < 0:
            out.append(value[i:])
            break
        out.append(value[i:start])
        name, end = None, start + 1
        if value.startswith("${", start):
            depth, end = 0, start + 1
            while end < len(value):
                depth += {"{": 1, "}": -1}.get(value[end], 0)
                end += 1
                if depth == 0:
                    break
            inner = value[start + 2 : end - 1]
            if depth == 0 and not _is_interpolation(inner):
                name = inner
        else:
            match = ENV_NAME.match(value, start + 1)
            if match:
                name, end = match[0], match.end()
        if name is None:
            out.append(value[start:end])  # an interpolation, or a lone `$`: kept as written
        elif name not in os.environ:
            raise UserError(
                f"Cannot expand ${name} in {key}={value}: the environment variable {name} is "
                f"not set. Set it (export {name}=/some/path) or write the path out."
            )
        else:
            out.append(text(os.environ[name]))
            changed = True
        i = end
    return "".join(out) if changed else None


def expand_override(override: str) -> str:
    """`override` with its path value expanded (see expand_path) and quoted for Hydra's override
    grammar, which cannot read a `~` and would take `${VAR}` for an interpolation."""
    from hydra.core.override_parser.types import Quote, QuotedString

    key, sep, value = override.partition("=")
    name = key.strip().lstrip("+")
    if not sep or name not in path_keys() or value.startswith(("'", '"')):
        return override
    expanded = expand_path(name, value)
    if expanded is None:
        return override
    return f"{key}={QuotedString(text=expanded, quote=Quote.single).with_quotes()}"


def expand_saved_paths(saved: dict[str, Any]) -> dict[str, Any]:
    """`saved` with a leading `~` in its path settings expanded (a config edited by hand). Not
    `$VAR`: a file from elsewhere does not get to read this machine's environment."""
    expanded = {k: dict(v) if isinstance(v, dict) else v for k, v in saved.items()}
    for key in path_keys():
        parent, _, leaf = key.rpartition(".")
        node = expanded.get(parent) if parent else expanded
        value = node.get(leaf) if isinstance(node, dict) else None
        if isinstance(value, str) and value.startswith("~"):
            home, sep, rest = value.partition("/")
            node[leaf] = (expand_path(key, home) or home) + sep + rest
    return expanded
