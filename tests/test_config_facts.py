"""One source of truth for configuration facts: conf/, the schemas, nnlab/choices.py and the
builders agree on every key, choice and default, so none of them can drift alone."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
from collections.abc import Callable, Iterator
from functools import cache
from typing import Any

import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from nnlab import choices
from nnlab.config import PRIMARY, conf_dir, groups
from nnlab.models import layers
from nnlab.schemas import SCHEMAS, TrainSchema
from nnlab.scratch import backprop, engine
from nnlab.tasks.gan import GanTask
from nnlab.tasks.optim import lr_schedule

GROUPS = groups()
WITH_SCHEMA = [(g, c) for g in SCHEMAS for c in GROUPS.get(g, [])]
MODEL_CHOICES = GROUPS["model"]
# what build.py passes builders itself (signal: to those reading 2-D samples as (C, L) signals)
SIZED_BY_DATA = ("input_shape", "num_outputs", "signal")
# group → (the field that names the choice, the constants its files must cover exactly)
NAMED_BY = {
    "norm": ("kind", choices.NORMS),
    "activation": ("kind", choices.ACTIVATIONS),
    "scheduler": ("name", choices.SCHEDULERS),
    "logger": ("kind", choices.LOGGERS),
}
CONSTANTS = [v for k, v in vars(choices).items() if k.isupper() and isinstance(v, tuple)]


def _raw(group: str, choice: str) -> dict[str, Any]:
    """The keys a conf/<group>/<choice>.yaml file writes itself (for a `@package _global_` file,
    its `<group>:` part), values unresolved."""
    path = conf_dir() / group / f"{choice}.yaml"
    text = path.read_text()
    node = yaml.safe_load(text) or {}
    if "@package _global_" in text.split("\n", 1)[0]:
        node = node.get(group, {})
    return {k: v for k, v in node.items() if k != "defaults"}


@cache
def _composed(group: str, choice: str) -> dict[str, Any]:
    """`<group>=<choice>` composed over train.yaml's defaults and resolved as far as it can be
    without a dataset (a required `???` stays as it is): what the schema and builders see."""
    with initialize_config_dir(config_dir=str(conf_dir()), version_base=None):
        cfg = compose(PRIMARY, overrides=[f"{group}={choice}"])
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)


def _fields(schema: type) -> set[str]:
    return {f.name for f in dataclasses.fields(schema)}


def _schema(group: str, choice: str) -> type | None:
    by_choice = SCHEMAS[group]
    return by_choice.get(choice, by_choice.get("*"))


def _bounded(schema: type) -> Iterator[tuple[str, tuple[str, ...]]]:
    for f in dataclasses.fields(schema):
        if "choices" in f.metadata:
            yield f.name, f.metadata["choices"]


def _plain(value: Any) -> Any:
    """Defaults written as tuples (immutable) compare with YAML lists."""
    return [_plain(v) for v in value] if isinstance(value, tuple | list) else value


def _builder(target: str) -> Callable[..., Any]:
    module, _, name = target.rpartition(".")
    return getattr(importlib.import_module(module), name)


# -- every file has a schema, and says exactly what the schema asks ---------------------------


@pytest.mark.parametrize(("group", "choice"), WITH_SCHEMA)
def test_every_choice_of_a_schema_group_has_a_schema(group, choice):
    assert _schema(group, choice) is not None, f"conf/{group}/{choice}.yaml has no schema"


@pytest.mark.parametrize(("group", "choice"), WITH_SCHEMA)
def test_yaml_keys_are_the_schema_fields(group, choice):
    schema = _schema(group, choice)
    raw = set(_raw(group, choice))
    # a file with its own defaults list (trainer=gpu extends trainer=default) writes only some
    assert raw <= _fields(schema), f"{group}/{choice}.yaml: {raw - _fields(schema)} not in schema"
    composed = set(_composed(group, choice)[group])
    assert composed == _fields(schema), (
        f"{group}={choice}: keys the schema lacks {sorted(composed - _fields(schema))}, "
        f"fields the yaml lacks {sorted(_fields(schema) - composed)}"
    )


def test_train_yaml_keys_are_the_train_schema_fields():
    own = yaml.safe_load((conf_dir() / f"{PRIMARY}.yaml").read_text())
    assert set(own) - {"defaults"} == _fields(TrainSchema)


# -- choices come from nnlab/choices.py, and every file keeps to them -------------------------


def test_every_choices_bound_is_a_constant_of_choices_py():
    schemas = {TrainSchema, *(s for by_choice in SCHEMAS.values() for s in by_choice.values())}
    loose = [
        f"{schema.__name__}.{name}"
        for schema in schemas
        for name, bound in _bounded(schema)
        if not any(bound is constant for constant in CONSTANTS)
    ]
    assert not loose, f"choices= written out instead of taken from nnlab/choices.py: {loose}"


@pytest.mark.parametrize(("group", "choice"), WITH_SCHEMA)
def test_values_set_for_bounded_fields_are_among_the_constants(group, choice):
    raw = _raw(group, choice)
    for name, bound in _bounded(_schema(group, choice)):
        value = raw.get(name)
        if isinstance(value, str) and value.startswith("${"):
            continue  # set by another group, which is checked on its own
        assert value is None or value in bound, f"{group}/{choice}.yaml {name}={value}"


def test_train_yaml_values_are_among_the_constants():
    own = yaml.safe_load((conf_dir() / f"{PRIMARY}.yaml").read_text())
    for name, bound in _bounded(TrainSchema):
        assert own[name] in bound, f"train.yaml {name}={own[name]}"


@pytest.mark.parametrize("group", sorted(NAMED_BY))
def test_group_files_are_the_constants_one_each(group):
    field, constants = NAMED_BY[group]
    named = {choice: _raw(group, choice)[field] for choice in GROUPS[group]}
    assert all(choice == name for choice, name in named.items()), named
    assert sorted(named) == sorted(constants)


def test_model_choices_are_the_constants_and_the_schemas():
    assert sorted(MODEL_CHOICES) == sorted(choices.MODELS) == sorted(SCHEMAS["model"])


def test_implementations_cover_exactly_the_named_choices():
    assert sorted(layers.ACTIVATION_MODULES) == sorted(choices.ACTIVATIONS)
    assert sorted(backprop.ACTIVATIONS) == sorted(choices.ACTIVATIONS)
    assert sorted(engine.COST_OF_LOSS) == sorted(choices.LOSSES)
    for cell in choices.CELLS:  # build_rnn takes torch's class of the same name
        assert issubclass(getattr(torch.nn, cell.upper()), torch.nn.RNNBase)
    for norm in choices.NORMS:
        assert isinstance(layers.make_norm(norm, (4, 2, 2)), torch.nn.Module)


@pytest.mark.parametrize("choice", GROUPS["scheduler"])
def test_every_scheduler_file_makes_its_schedule(choice):
    settings = _composed("scheduler", choice)["scheduler"]
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    made = lr_schedule(**settings)(optimizer, 10)
    assert (made is None) == (choice == "none")


# -- builders take what the model files give, with the same defaults ---------------------------


@pytest.mark.parametrize("choice", MODEL_CHOICES)
def test_every_model_key_is_a_builder_parameter(choice):
    raw = _raw("model", choice)
    builder = inspect.signature(_builder(raw["_target_"])).parameters
    given = set(raw) - {"_target_", *choices.RUN_OPTIONS, *choices.GAN_TASK_OPTIONS}
    assert given == set(builder) - set(SIZED_BY_DATA), f"{raw['_target_']} vs model/{choice}.yaml"
    task_options = set(raw) & set(choices.GAN_TASK_OPTIONS)
    assert task_options <= set(inspect.signature(GanTask).parameters)


def _defaults_and_files() -> list[tuple[str, str]]:
    """(builder, the model file named after it: build_mlp -> mlp); other files naming the same
    builder (faster_rcnn_coco) are presets of other values."""
    pairs = []
    for choice in MODEL_CHOICES:
        target = _raw("model", choice)["_target_"]
        if target.rpartition(".")[2] == f"build_{choice}":
            pairs.append((target, choice))
    return pairs


@pytest.mark.parametrize(("target", "choice"), _defaults_and_files())
def test_builder_defaults_are_the_yaml_values(target, choice):
    composed = _composed("model", choice)["model"]
    drift = {
        name: (param.default, composed[name])
        for name, param in inspect.signature(_builder(target)).parameters.items()
        if param.default is not param.empty and name not in SIZED_BY_DATA
        if _plain(param.default) != composed[name]
    }
    assert not drift, f"{target} default vs model={choice} (name: (default, yaml)): {drift}"


def test_every_model_builder_has_a_file_named_after_it():
    builders = {_raw("model", choice)["_target_"] for choice in MODEL_CHOICES}
    assert builders == {target for target, _ in _defaults_and_files()}


def test_gan_task_options_have_the_yaml_defaults_or_none():
    composed = _composed("model", "gan")["model"]
    params = inspect.signature(GanTask).parameters
    for name in choices.GAN_TASK_OPTIONS:
        default = params[name].default
        assert default is params[name].empty or default == composed[name], name
