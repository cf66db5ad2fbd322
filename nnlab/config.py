"""Compose nnlab's Hydra configs and turn every way they can be wrong into a clear UserError."""

from __future__ import annotations

import dataclasses
import math
import re
import shlex
import warnings
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, MissingMandatoryValue, OmegaConfBaseException

from nnlab.errors import Notice, UserError, choice_error
from nnlab.paths import expand_override, expand_path, expand_saved_paths, path_keys
from nnlab.presets import PRIMARY, conf_dir, default_choices, groups, known_targets, preset_node
from nnlab.schemas import SCHEMAS, TrainSchema, missing_sections, split_error
from nnlab.suggest import (
    HYDRA_KEYS,
    Config,
    canonical_choice,
    choice_keys,
    find_option,
    flat_keys,
    option_error,
    unknown_key,
)

SAVED = " for this run's config"  # follows an unknown key given for a saved run


class FilledFromDefaults(Notice):
    """A saved config lacked keys that today's defaults filled: said, never silent."""


def _split(override: str) -> tuple[str, str]:
    if "=" not in override:
        raise UserError(
            f"Bad override '{override}': overrides look like key=value, for example "
            f"model=cnn or optimizer.lr=0.01 (see `nnlab config --list`)."
        )
    key, value = override.split("=", 1)
    key = key.strip()
    if not key.lstrip("+~"):
        # Hydra itself fails on `+=1` with a bare ValueError, not one of its own errors.
        raise UserError(f"Bad override '{override}': the key before '=' is missing.")
    if key.rpartition(".")[2] in HYDRA_KEYS:
        group = key.lstrip("+~").rpartition(".")[0] or "the group"
        raise UserError(
            f"Bad override '{override}': {key.lstrip('+~')} is set by the choice of {group} "
            f"(for example model=cnn or optimizer=sgd; `nnlab config --list` shows them)."
        )
    return key, value


def canonical(overrides: list[str]) -> list[str]:
    """`overrides` with every group choice under its real name: model=CNN → model=cnn (case
    and '-' for '_' do not matter; a,b lists too), so runs are named and saved as conf/ is."""
    known = groups()
    named = []
    for override in overrides:
        key, eq, value = override.partition("=")
        if eq and key in known:
            real = [canonical_choice(key, v) for v in value.split(",")]
            if all(real):
                override = f"{key}={','.join(map(str, real))}"
        named.append(override)
    return named


def refuse_options(arguments: list[str]) -> None:
    """Refuse `--epochs 5` among overrides (Typer hands unknown options to the command as
    arguments) with the key=value to give instead: trainer.max_epochs=5."""
    option = find_option(arguments)
    if option is None:
        return
    chosen = [a for a in canonical(arguments) if _is_choice(a)]
    raise option_error(*option, _config_of(chosen))


def _is_choice(override: str) -> bool:
    key, _, value = override.partition("=")
    return value in groups().get(key, []) and key in default_choices()


def _config_of(group_overrides: list[str]) -> Config:
    """What the config made with these group choices offers, for a suggestion."""
    given = dict(o.partition("=")[::2] for o in group_overrides if _is_choice(o))
    return Config.of_choices(given)


def _check_groups(overrides: list[str]) -> tuple[list[str], list[str]]:
    """Unknown groups, choices and top-level keys, reported before Hydra's own (less helpful)
    errors. Returns the group overrides and the dotted overrides still to check."""
    known_groups = groups()
    group_overrides, dotted, unknown = [], [], []
    for override in overrides:
        key, value = _split(override)
        if key.startswith(("+", "~")):
            continue
        if "." in key:
            dotted.append(override)
        elif key in known_groups:
            if value not in known_groups[key]:
                raise choice_error(f"{key} choice", value, known_groups[key])
            group_overrides.append(override)
        elif key not in _top_level_keys():
            unknown.append((key, value))
    if unknown:  # said in the light of the groups chosen: lr=0.1 → optimizer.lr
        raise unknown_key(*unknown[0], _config_of(group_overrides))
    return group_overrides, dotted


def _check_keys(cfg: DictConfig, choices: dict[str, str], overrides: list[str]) -> None:
    """Every override (dotted or not) names a key that exists in `cfg`, composed from
    `choices`."""
    for override in overrides:
        key, value = _split(override)
        node: Any = cfg
        parts = key.split(".")
        for depth, part in enumerate(parts):
            # keys() also holds mandatory (???) keys, which `in` alone reports as absent.
            if not isinstance(node, DictConfig) or part not in node.keys():
                config = Config.of(OmegaConf.to_container(cfg, resolve=False), choices)
                raise unknown_key(key, value, config)
            if depth < len(parts) - 1:  # not the value itself: it may be an interpolation
                node = node[part]


def _top_level_keys() -> list[str]:
    return [f.name for f in dataclasses.fields(TrainSchema)]


def _unreadable(overrides: list[str]) -> str | None:
    """The first override Hydra's grammar cannot parse, if one of them is."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    for override in overrides:
        try:
            parser.parse_override(override)
        except HydraException:
            return override
    return None


def _grammar_error(override: str) -> UserError:
    from hydra.core.override_parser.types import Quote, QuotedString

    key, _, value = override.partition("=")
    quote = Quote.double if '"' not in value or "'" in value else Quote.single
    quoted = shlex.quote(f"{key}={QuotedString(text=value, quote=quote).with_quotes()}")
    return UserError(
        f"Cannot read the override '{override}': nnlab reads overrides with Hydra's override "
        f"grammar, where brackets, braces, parentheses, commas, quotes and '=' in a value are "
        f"structure and characters such as ~ ! # & ; < > are refused. To pass the value as "
        f"text, quote it once for the grammar and once more for the shell: {quoted} in bash. "
        f"A list needs matching brackets, for example model.channels=[32,64]."
    )


def _comma_error(override: str) -> UserError:
    key, _, value = override.partition("=")
    quoted = shlex.quote(f'{key}="{value}"')
    return UserError(
        f"Cannot read the override '{override}': in Hydra's override grammar a comma in a value "
        f"means several values, and one run takes one. For text with a comma (a path), quote "
        f"the value once for the grammar and once for the shell: {quoted} in bash. For a list "
        f"write {key}=[{value}]; to train once per value, add -m (a sweep over {key})."
    )


def _compose(overrides: list[str], hydra_node: bool = False) -> DictConfig:
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException

    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base=None):
            return compose(PRIMARY, overrides=overrides, return_hydra_config=hydra_node)
    except (HydraException, OmegaConfBaseException) as err:
        unreadable = _unreadable(overrides)
        if unreadable is not None:
            raise _grammar_error(unreadable) from None
        ambiguous = re.search(r"Ambiguous value for argument '([^']*)'", str(err))
        if ambiguous:  # a comma in a plain value: a list, a string or a sweep?
            raise _comma_error(ambiguous[1]) from None
        # Anything else _check_groups and _check_keys do not foresee.
        raise UserError(f"Cannot apply overrides {' '.join(overrides)}: {err}") from None


def _composed(overrides: list[str]) -> tuple[DictConfig, dict[str, str]]:
    """The config composed from `overrides`, unvalidated, and the chosen option of every group."""
    cfg = _compose(overrides, hydra_node=True)
    choices = {k: v for k, v in cfg.hydra.runtime.choices.items() if not k.startswith("hydra")}
    with_struct = OmegaConf.is_struct(cfg)
    OmegaConf.set_struct(cfg, False)
    del cfg["hydra"]
    OmegaConf.set_struct(cfg, with_struct)
    return cfg, choices


def compose_config(overrides: list[str] | None = None) -> tuple[DictConfig, dict[str, str]]:
    """The validated train config for `overrides`, and the chosen option of every group."""
    overrides = canonical([expand_override(o) for o in overrides or []])
    refuse_options(overrides)
    group_overrides, dotted = _check_groups(overrides)
    try:
        cfg, choices = _composed(overrides)
    except UserError:
        # Composed once when all is well; only a failure pays for the clearer diagnosis.
        _check_keys(*_composed(group_overrides), dotted)
        raise
    _check_keys(cfg, choices, dotted)
    validate(cfg, choices)
    return cfg, choices


def check_swept(arguments: list[str]) -> None:
    """A sweep's search space checked before Optuna and torch load (the sweep checks each value
    again as it starts): every swept group choice, and the config its first values make. A
    space the override grammar cannot read is left to the sweep, which says why."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    arguments = canonical(arguments)
    refuse_options(arguments)
    try:
        parsed = OverridesParser.create().parse_overrides(arguments)
    except HydraException:
        return
    first = []
    for override, text in zip(parsed, arguments, strict=True):
        key = text.partition("=")[0]
        if not override.is_sweep_override():
            first.append(text)
        elif override.is_interval_sweep():
            first.append(f"{key}={override.value().start}")
        else:
            values = list(override.sweep_string_iterator())
            known = groups().get(key)
            for value in values if known else []:
                if canonical_choice(key, value) is None:
                    raise choice_error(f"{key} choice", value, known)
            first.append(f"{key}={values[0]}")
    try:
        compose_config(first)
    except UserError:
        # an unknown key is said with its values as typed (lr=interval(...)), not the first
        typed = [a for a in arguments if a.partition("=")[0] not in groups()]
        _check_keys(*_composed([o for o in first if _is_choice(o)]), typed)
        raise


def validate(cfg: DictConfig, choices: dict[str, str]) -> None:
    """Check types and bounds of every node that has a schema, and that every group is there
    with the `_target_` of its chosen option; UserError on the first fault."""
    try:
        resolved = OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as err:
        raise UserError(f"Cannot resolve the config: {err}") from None
    _check_targets(resolved)

    def offers() -> Config:  # only an unknown key needs it
        return Config.of(resolved, choices)

    top = {k: v for k, v in resolved.items() if k not in SCHEMAS}
    _check_node(top, TrainSchema, "", offers)
    for group, by_choice in SCHEMAS.items():
        if not isinstance(resolved.get(group), dict):
            raise UserError(f"The config has no '{group}' section (a mapping of its settings).")
        choice = choices.get(group, "")
        schema = by_choice.get(choice, by_choice.get("*"))
        if schema is None:
            raise choice_error(f"{group} choice", choice, groups().get(group, []))
        _check_node(resolved[group], schema, f"{group}.", offers)
        own = preset_node(group, choice).get("_target_")
        if resolved[group].get("_target_") != own:
            raise UserError(
                f"{group}._target_ is '{resolved[group].get('_target_')}', but {group}={choice} "
                f"builds '{own}'."
            )
    model, data = resolved.get("model") or {}, resolved.get("data") or {}
    split_problem = split_error(data)
    if split_problem:
        raise UserError(split_problem)
    if (
        choices.get("model") == "mlp"
        and model.get("norm") == "batch"
        and data.get("batch_size") == 1
    ):
        # BatchNorm1d cannot train on one sample; torch would only say so at the first step.
        raise UserError(
            "norm=batch normalizes over the samples of a batch, so model=mlp cannot train with "
            "data.batch_size=1. Use data.batch_size=2 or more, or norm=layer / norm=group, "
            "which normalize each sample on its own."
        )


def _check_targets(node: Any, where: str = "") -> None:
    """A `_target_` anywhere in the config must be one of nnlab's own: Hydra would import and
    call whatever it names (shutil.copyfile, torch.load of a pickle, ...)."""
    if isinstance(node, list):
        for i, item in enumerate(node):
            _check_targets(item, f"{where}[{i}]")
    if not isinstance(node, dict):
        return
    for key, value in node.items():
        path = f"{where}.{key}" if where else str(key)
        if key == "_target_" and value not in known_targets():
            raise UserError(
                f"{path} is '{value}', which is not one of nnlab's own targets, so nnlab will "
                f"not import or call it: a config read from a file may only name what nnlab's "
                f"own conf/ does ({', '.join(sorted(known_targets()))})."
            )
        _check_targets(value, path)


def infer_choices(saved: dict[str, Any]) -> dict[str, str]:
    """The group choices a saved config was composed from, for a run whose record of them is
    gone (a lone checkpoint): per group, the option with the same `_target_` whose settings
    agree most with the saved ones (the default option wins ties)."""
    defaults = default_choices()
    choices: dict[str, str] = {}
    for group, options in groups().items():
        node = saved.get(group)
        if group not in defaults or not isinstance(node, dict):
            continue

        def agreement(choice: str, node: dict[str, Any] = node, group: str = group) -> tuple:
            preset = preset_node(group, choice)
            same = sum(node.get(k) == v for k, v in preset.items() if k != "_target_")
            return (preset.get("_target_") == node.get("_target_"), same, choice == defaults[group])

        choices[group] = max(options, key=agreement)
    return choices


def _as_text(node: Any) -> Any:
    """`node` (resolved) with every `${` escaped, so that merging it does not read a literal
    `${` (a path from an expanded `$VAR`, say) as an interpolation again."""
    if isinstance(node, dict):
        return {k: _as_text(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_as_text(v) for v in node]
    return node.replace("${", "\\${") if isinstance(node, str) else node


def _check_node(
    node: dict[str, Any], schema: type, prefix: str, offers: Callable[[], Config]
) -> None:
    try:
        typed = OmegaConf.merge(OmegaConf.structured(schema), _as_text(node))
    except ConfigKeyError as err:  # a +key=, or a saved config's own
        key, whole = f"{prefix}{err.full_key}", offers()
        others = replace(whole, live=whole.live - {key}, names=whole.names - {key})
        raise unknown_key(key, None, others) from None
    except OmegaConfBaseException as err:
        key = f"{prefix}{getattr(err, 'full_key', '') or ''}"
        reason = str(getattr(err, "msg", err)).splitlines()[0]
        raise UserError(f"Bad value for {key}: {reason}.") from None
    for f in dataclasses.fields(schema):
        key = f"{prefix}{f.name}"
        try:
            value = typed[f.name]
        except MissingMandatoryValue:
            raise UserError(f"{key} must be set, for example: nnlab train {key}=...") from None
        _check_bounds(key, value, f.metadata)


def _check_bounds(key: str, value: Any, bounds: Any) -> None:
    # None passes: only Optional fields accept it, and the type check has run already.
    if "choices" in bounds and value is not None and value not in bounds["choices"]:
        raise choice_error(f"value for {key}", value, bounds["choices"])
    if isinstance(value, (list, ListConfig)):
        if "length" in bounds and len(value) != bounds["length"]:
            raise UserError(
                f"Bad value for {key}: {list(value)}. It must hold {bounds['length']} numbers."
            )
        if len(value) < bounds.get("min_length", 0):
            raise UserError(
                f"Bad value for {key}: {list(value)}. It must hold at least "
                f"{bounds['min_length']} value(s), for example {key}=[32,64]."
            )
        # Bounds of a list field (model.channels) hold for each of its items.
        items = {k: v for k, v in bounds.items() if k not in ("length", "min_length")}
        for i, item in enumerate(value):
            if isinstance(item, (list, dict, ListConfig, DictConfig)):
                raise UserError(
                    f"Bad value for {key}[{i}]: {item}. {key} holds single values, not lists."
                )
            _check_bounds(f"{key}[{i}]", item, items)
        return
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    if isinstance(value, int) and not -(2**63) <= value < 2**63:
        # torch and numpy take 64-bit integers: a bigger one fails deep inside a builder.
        raise UserError(f"Bad value for {key}: {value} is too large.")
    if isinstance(value, float) and not math.isfinite(value) and bounds:
        # inf passes `gt 0` (optimizer.lr=inf) yet makes every weight NaN at the first step.
        raise UserError(f"Bad value for {key}: {value}. It must be a finite number.")
    tests = {
        "gt": (lambda v, b: v > b, "greater than"),
        "ge": (lambda v, b: v >= b, "at least"),
        "lt": (lambda v, b: v < b, "less than"),
        "le": (lambda v, b: v <= b, "at most"),
    }
    for name, (ok, words) in tests.items():
        if name in bounds and not ok(value, bounds[name]):
            raise UserError(f"Bad value for {key}: {value}. It must be {words} {bounds[name]}.")


def take_argument(arguments: list[str], key: str) -> tuple[list[str], list[str]]:
    """The values given as `key=value` for one key (a path's expanded, see expand_path), and the
    other arguments in order."""
    taken = [a.partition("=")[2] for a in arguments if a.partition("=")[0] == key]
    if key in path_keys():
        taken = [expand_path(key, v, escape=False) or v for v in taken]
    return taken, [a for a in arguments if a.partition("=")[0] != key]


# Keys renamed since runs were saved: (section, _target_ of that section, old key) -> new key.
RENAMED = {("data", "nnlab.data.coco.CocoDataModule", "num_workers"): "workers"}


def _renamed(saved: dict[str, Any]) -> dict[str, Any]:
    """`saved` with keys renamed since it was written under their names of today."""
    saved = dict(saved)
    for (section, target, old), new in RENAMED.items():
        node = saved.get(section)
        if isinstance(node, dict) and node.get("_target_") == target and old in node:
            node = dict(node)
            node.setdefault(new, node.pop(old))
            saved[section] = node
    return saved


def saved_run_config(
    saved: dict[str, Any],
    choices: dict[str, str] | None,
    overrides: list[str],
    written_by: str | None,
    source: str,
) -> tuple[DictConfig, dict[str, str]]:
    """A saved run's config (read from `source`) checked exactly as a command line's, brought up
    to this nnlab, with key=value overrides applied; and its group choices.

    Nothing in it is trusted: `_target_`s must be nnlab's own (checked before anything else) and
    the schemas apply. Keys added to nnlab since the run was written take today's defaults (so
    older runs still evaluate and resume), with a FilledFromDefaults warning that names them; a
    missing section means the file was cut short. Faults are a UserError naming `source` (and
    both versions, if they differ).
    """
    import nnlab

    same_version = written_by in (None, nnlab.__version__)
    try:
        _check_targets(saved)
        choices = dict(choices) if choices else infer_choices(saved)
        unknown = {g: c for g, c in choices.items() if c not in groups().get(g, [c])}
        if unknown:
            group, choice = next(iter(unknown.items()))
            raise choice_error(f"{group} choice", choice, groups()[group])
        saved = expand_saved_paths(_renamed(saved))
        # unvalidated: mandatory keys (data.root) are filled by the saved config below
        base = _compose([f"{g}={c}" for g, c in choices.items() if g in groups()])
        absent = missing_sections(saved)
        if absent:
            raise UserError(
                f"It has no {', '.join(absent)} section: every run's config has them all, so "
                f"the file was cut short or edited."
            )
        missing = _missing_keys(OmegaConf.to_container(base, resolve=False), saved)
        if missing:
            warnings.warn(
                f"{source} lacks {', '.join(missing)}: today's defaults fill them (the run was "
                f"written before nnlab had them, or the file was edited).",
                FilledFromDefaults,
                stacklevel=2,
            )
        cfg = apply_overrides(OmegaConf.merge(base, saved), overrides, choices)
        validate(cfg, choices)
    except (UserError, OmegaConfBaseException) as err:
        if isinstance(err, OmegaConfBaseException):
            err = UserError(f"It has {type(err).__name__}: {str(err).splitlines()[0]}.")
        if not same_version:
            raise UserError(
                f"{source} was written by nnlab {written_by} and does not fit nnlab "
                f"{nnlab.__version__}: {err} Use nnlab {written_by} for it "
                f"(pip install nnlab=={written_by}), or train it again."
            ) from None
        raise UserError(f"{source}: {err}") from None
    return cfg, choices


def check_saved_keys(
    saved: dict[str, Any], choices: dict[str, str] | None, overrides: list[str]
) -> None:
    """The keys of overrides given for a saved run, checked without composing anything (so
    before torch loads, for --resume): each must be in its config or, as saved_run_config fills
    what an older run lacks, in today's conf/ for its group choices. Values are checked later."""
    choices = dict(choices) if choices else infer_choices(saved)
    live = set(flat_keys(saved)) | {
        f"{group}.{key}"
        for group, choice in choices.items()
        if group in default_choices()
        for key in choice_keys(group, choice)
    }
    offers = Config(live | set(_top_level_keys()), {*map(str, saved), *groups()}, choices)
    option = find_option(overrides)
    if option is not None:
        raise option_error(*option, offers)
    for override in overrides:
        key, _, value = override.partition("=")
        bare = key.strip().lstrip("+~")
        if bare not in offers.live | offers.names and bare.rpartition(".")[2] not in HYDRA_KEYS:
            raise unknown_key(bare, value, offers, SAVED)


def _missing_keys(base: dict[str, Any], saved: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys of `base` that `saved` does not have."""
    missing = []
    for key, value in base.items():
        if key not in saved:
            missing.append(f"{prefix}{key}")
        elif isinstance(value, dict) and isinstance(saved[key], dict):
            missing += _missing_keys(value, saved[key], f"{prefix}{key}.")
    return missing


def apply_overrides(
    cfg: DictConfig, overrides: list[str], choices: dict[str, str] | None = None
) -> DictConfig:
    """Apply key=value overrides to a saved config (whose group `choices` name where a key it
    lacks would be), refusing keys it does not have."""

    def offers() -> Config:  # only a refusal needs it
        return Config.of(OmegaConf.to_container(cfg, resolve=False), choices or {})

    option = find_option(overrides)
    if option is not None:
        raise option_error(*option, offers())
    for override in overrides:
        key, value = _split(override)
        parent_key, _, leaf = key.rpartition(".")
        parent = OmegaConf.select(cfg, parent_key) if parent_key else cfg
        if not isinstance(parent, DictConfig) or leaf not in parent:
            raise unknown_key(key, value, offers(), SAVED)
        quoted = value.startswith(("'", '"'))  # taken as written, as bash takes '...'
        expanded = expand_path(key, value) if key in path_keys() and not quoted else None
        parsed = expanded if expanded is not None else _parse_value(value)
        OmegaConf.update(cfg, key, parsed, merge=False)
    return cfg


def _parse_value(value: str) -> Any:
    # YAML typing, as Hydra's override grammar does for plain values: 3 → int, 1e-3 → float.
    import yaml

    try:
        return yaml.safe_load(value) if value != "" else ""
    except yaml.YAMLError:
        return value
