"""How much of a difference between runs is noise: the spread of a metric over runs that differ
only by seed (mean ± std, n), and the 95% interval of a test accuracy for the size of its test
set (Wilson score interval). Torch-free: `nnlab runs` uses it.

Two sources of noise, shown apart: seeds (initialization, batch order) move a run's result, and
a finite test set measures even a fixed model's accuracy only to within its interval. 264 right
out of 270 digits is 0.978, and the interval [0.952, 0.990] holds every accuracy that result is
consistent with: two runs a test image apart are not different runs.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile: a two-sided 95% interval
SEED = "seed"
INTERVAL_METRICS = {"test/acc": "test_samples"}  # an accuracy → the key of its sample count

T = TypeVar("T")
Value = Callable[[dict[str, Any], str], float | None]  # (a run's metrics, column) → its value


def wilson(proportion: float, trials: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion observed over `trials` trials (an accuracy over
    a test set's samples). Unlike p ± z·√(p(1−p)/n) it stays inside [0, 1] and keeps its width
    at 0 or 1 correct, where the plain formula gives an interval of zero width."""
    if trials < 1:
        raise ValueError(f"an interval needs at least one trial, got {trials}")
    if not 0.0 <= proportion <= 1.0:
        raise ValueError(f"a proportion lies in [0, 1], got {proportion}")
    z2n = z * z / trials
    centre = (proportion + z2n / 2) / (1 + z2n)
    half = z * math.sqrt(proportion * (1 - proportion) / trials + z2n / (4 * trials)) / (1 + z2n)
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class Spread:
    """A metric over n runs: its mean and sample standard deviation (None for one run)."""

    mean: float
    std: float | None
    n: int


def spread(values: Iterable[float]) -> Spread | None:
    """Mean ± sample standard deviation (n − 1) of the finite values; None when there are none."""
    kept = [float(v) for v in values if math.isfinite(v)]
    if not kept:
        return None
    std = statistics.stdev(kept) if len(kept) > 1 else None
    return Spread(statistics.fmean(kept), std, len(kept))


def is_seed(override: str) -> bool:
    """Whether a Hydra override sets the seed (seed=1, +seed=1, ++seed=1)."""
    return override.partition("=")[0].strip().lstrip("+~") == SEED


def setting(overrides: Iterable[str]) -> tuple[str, ...]:
    """A run's overrides without its seed: what runs repeated over seeds share."""
    return tuple(o for o in overrides if not is_seed(o))


def grouped(items: Iterable[T], key: Callable[[T], Hashable]) -> dict[Hashable, list[T]]:
    """The items grouped by key, groups and items in the order they come."""
    groups: dict[Hashable, list[T]] = {}
    for item in items:
        groups.setdefault(key(item), []).append(item)
    return groups


def plain_value(metrics: dict[str, Any], column: str) -> float | None:
    found = metrics.get(column)
    return float(found) if isinstance(found, int | float) and not isinstance(found, bool) else None


def column_spread(
    runs: list[dict[str, Any]], column: str, value: Value = plain_value
) -> Spread | None:
    """A column's spread over the runs that have it."""
    return spread(v for m in runs if (v := value(m, column)) is not None)


def interval(runs: list[dict[str, Any]], column: str, mean: float) -> tuple[float, float] | None:
    """The 95% interval of an accuracy column's `mean` for the runs' test set size; None for
    other columns, or when the size is unknown or differs between the runs."""
    size_key = INTERVAL_METRICS.get(column)
    sizes = {m.get(size_key) for m in runs} if size_key else set()
    if len(sizes) != 1:
        return None
    (size,) = sizes
    if not isinstance(size, int) or size < 1 or not 0.0 <= mean <= 1.0:
        return None
    return wilson(mean, size)


def run_interval(metrics: dict[str, Any], column: str) -> tuple[float, float] | None:
    """One run's 95% interval of an accuracy column, when it records its test set size."""
    found = plain_value(metrics, column)
    return None if found is None else interval([metrics], column, found)


def fmt_number(number: float | None) -> str:
    """4 decimals, or 3 significant digits in scientific notation for tiny values."""
    if number is None or not math.isfinite(number):
        return "—" if number is None else str(number)
    return f"{number:.2e}" if number != 0 and abs(number) < 1e-3 else f"{number:.4f}"


def fmt_spread(found: Spread | None) -> str:
    """'0.9704 ± 0.0037': the mean to the decimals of the standard deviation's two significant
    digits, so no digit is shown that the seeds do not support; one run shows its value."""
    if found is None:
        return "—"
    if found.std is None:
        return fmt_number(found.mean)
    if found.std == 0:
        return f"{fmt_number(found.mean)} ± 0"
    if found.mean != 0 and abs(found.mean) < 1e-3:
        return f"{found.mean:.2e} ± {found.std:.1e}"
    decimals = min(8, max(0, 1 - math.floor(math.log10(found.std))))
    return f"{found.mean:.{decimals}f} ± {found.std:.{decimals}f}"


def fmt_interval(bounds: tuple[float, float] | None) -> str:
    return "" if bounds is None else f"[{bounds[0]:.3f}, {bounds[1]:.3f}]"


def fmt_compact(value: float, bounds: tuple[float, float] | None) -> str:
    """'0.978±0.019': an accuracy and half its interval's width, for narrow tables."""
    if bounds is None:
        return fmt_number(value)
    return f"{value:.3f}±{(bounds[1] - bounds[0]) / 2:.3f}"


def cell(runs: list[dict[str, Any]], column: str, value: Value = plain_value) -> str:
    """A grouped table's cell: mean ± std over the runs, then an accuracy's 95% interval."""
    found = column_spread(runs, column, value)
    if found is None:
        return "—"
    bounds = interval(runs, column, found.mean)
    return " ".join(filter(None, (fmt_spread(found), fmt_interval(bounds))))


def legend(runs: list[dict[str, Any]], columns: list[str], repeated: bool) -> str:
    """What the figures of a grouped table mean, for the ones it shows; '' when it shows none."""
    parts = []
    if repeated:
        parts.append("± is the standard deviation over the n runs of a setting (seeds)")
    if any(INTERVAL_METRICS.get(c, "") in m for c in columns for m in runs):
        parts.append(
            "[a, b] is the 95% interval of a test accuracy for the test set's size (Wilson): "
            "differences inside it are within what the test set can tell apart"
        )
    return "; ".join(parts) + ("." if parts else "")
