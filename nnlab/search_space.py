"""Search spaces and multiruns written in Hydra's override grammar: `optimizer=choice(sgd,adam)`,
`optimizer.lr=tag(log,interval(1e-4,1e-1))`, `model.hidden=range(64,512,step=64)`, `a=1,2`.
Every other override is fixed."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

from nnlab.errors import UserError


def parse_space(arguments: list[str]) -> tuple[dict[str, Any], dict[str, list[Any]], list[str]]:
    """(optuna distributions, grid values, fixed overrides) from Hydra override strings."""
    import optuna.distributions as dist
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep
    from hydra.errors import HydraException

    try:
        overrides = OverridesParser.create().parse_overrides(arguments)
    except HydraException as err:
        raise UserError(f"Cannot read the search space: {err}") from None
    space: dict[str, Any] = {}
    grid: dict[str, list[Any]] = {}
    fixed: list[str] = []
    for override, text in zip(overrides, arguments, strict=True):
        if not override.is_sweep_override():
            fixed.append(text)
            continue
        key, value = override.get_key_element(), override.value()
        if isinstance(value, ChoiceSweep):
            choices = [_plain(v) for v in value.list]
            space[key], grid[key] = dist.CategoricalDistribution(choices), choices
        elif isinstance(value, RangeSweep):
            start, stop, step = value.start, value.stop, value.step
            values = list(_frange(start, stop, step))
            if not values:
                raise UserError(f"{text}: the range holds no values.")
            if all(isinstance(v, int) for v in (start, stop, step)):
                space[key] = dist.IntDistribution(start, values[-1], step=step)
            else:
                space[key] = dist.FloatDistribution(values[0], values[-1], step=step)
            grid[key] = values
        elif isinstance(value, IntervalSweep):
            log = "log" in value.tags
            low, high = value.start, value.end
            if log and low <= 0:
                raise UserError(f"{text}: a log interval needs a positive lower bound.")
            if isinstance(low, int) and isinstance(high, int):
                space[key] = dist.IntDistribution(low, high, log=log)
            else:
                space[key] = dist.FloatDistribution(float(low), float(high), log=log)
        else:
            raise UserError(
                f"{text}: sweep with choice(...), a,b,c, range(...) or interval(...) "
                f"(tag(log, interval(...)) for a log scale)."
            )
    if not space:
        raise UserError(
            "The search space is empty: give at least one swept override, for example "
            "'optimizer=choice(sgd,adam)' 'optimizer.lr=tag(log,interval(1e-4,1e-1))'."
        )
    return space, grid, fixed


def _plain(value: Any) -> Any:
    return value if isinstance(value, (int, float, bool, str)) or value is None else str(value)


def _frange(start: float, stop: float, step: float) -> Iterator[float]:
    value = start
    while (value < stop) if step > 0 else (value > stop):
        yield value
        value += step


def expand_multirun(arguments: list[str]) -> list[list[str]]:
    """Hydra multirun: one override list per combination of the swept values (a,b,c or
    choice/range), in order, like `python app.py -m a=1,2 b=x,y`."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        overrides = OverridesParser.create().parse_overrides(arguments)
    except HydraException as err:
        raise UserError(f"Cannot read the overrides: {err}") from None
    axes: list[list[str]] = []
    for override, text in zip(overrides, arguments, strict=True):
        if override.is_sweep_override():
            if override.is_interval_sweep():
                raise UserError(f"{text}: an interval has no finite list of runs; use nnlab sweep.")
            key = override.get_key_element()
            axes.append([f"{key}={value}" for value in override.sweep_string_iterator()])
        else:
            axes.append([text])
    return [list(combination) for combination in itertools.product(*axes)]


def overrides_of(params: dict[str, Any], fixed: list[str]) -> list[str]:
    """The `nnlab train` overrides that reproduce a trial."""
    return [*fixed, *(f"{key}={value}" for key, value in params.items())]
