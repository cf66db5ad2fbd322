"""Startup cost: `nnlab --help` wall time, `nnlab train` launch to the first optimizer step, and
where the import time goes.

Every figure comes from a fresh subprocess, as a user's shell would start it. The first-step
time is measured by a child that notes perf_counter before anything is imported, runs the real
`nnlab train` command in-process with a callback that stops at on_train_batch_start of the first
batch, and prints the difference. A script, not a test: pytest never collects bench_*.py.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

TARGETS = {"--help": 0.5, "first step": 6.0}  # seconds, from the issue

# Runs in the child: the clock starts before nnlab (or torch) is imported.
FIRST_STEP = r"""
import time
start = time.perf_counter()
import sys
import pytorch_lightning as pl
from nnlab import cli, train

class FirstStep(pl.Callback):
    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        print(f"FIRST_STEP {time.perf_counter() - start:.3f}", flush=True)
        import os
        os._exit(0)  # stop here: the rest of the run is not startup

original = train.train
def with_probe(*args, **kwargs):
    kwargs["callbacks"] = [*(kwargs.get("callbacks") or []), FirstStep()]
    return original(*args, **kwargs)
train.train = with_probe
sys.argv = ["nnlab", "train", *sys.argv[1:]]
cli.main()
"""


def env() -> dict[str, str]:
    # One torch thread, as the tests run; the machine is shared.
    return {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}


def time_help(repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "nnlab.cli", "--help"],
            check=True,
            capture_output=True,
            env=env(),
        )
        times.append(time.perf_counter() - start)
    return times


def time_first_step(repeats: int, overrides: list[str]) -> list[float]:
    times = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            proc = subprocess.run(
                [sys.executable, "-c", FIRST_STEP, *overrides],
                cwd=tmp,
                capture_output=True,
                text=True,
                env=env(),
            )
        found = re.search(r"FIRST_STEP ([0-9.]+)", proc.stdout)
        if not found:
            sys.exit(f"the training child never reached its first step:\n{proc.stderr[-2000:]}")
        times.append(float(found.group(1)))
    return times


def import_times(statement: str) -> dict[str, tuple[float, float]]:
    """module → (self s, cumulative s), from `python -X importtime`."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", statement],
        capture_output=True,
        text=True,
        env=env(),
        check=True,
    )
    times = {}
    for line in proc.stderr.splitlines():
        found = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|(\s*)(\S+)", line)
        if found:
            times[found.group(4)] = (int(found.group(1)) / 1e6, int(found.group(2)) / 1e6)
    return times


def print_imports(title: str, statement: str, watched: tuple[str, ...], top: int) -> None:
    times = import_times(statement)
    total = sum(own for own, _ in times.values())
    print(f"\n{title}: `{statement}` imports {len(times)} modules in {total:.2f} s")
    print(f"  {'module':<40}{'cumulative s':>13}")
    for name in watched:
        if name in times:
            print(f"  {name:<40}{times[name][1]:>13.3f}")
    print(f"  top {top} by cumulative time:")
    ranked = sorted(times.items(), key=lambda item: -item[1][1])[:top]
    for name, (own, cumulative) in ranked:
        print(f"  {name:<40}{cumulative:>13.3f}   (self {own:.3f})")


def verdict(name: str, value: float) -> str:
    target = TARGETS[name]
    return (
        f"{name:<12}{value:>8.2f} s   target < {target} s   {'PASS' if value < target else 'MISS'}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="runs of --help (median)")
    parser.add_argument("--train-repeats", type=int, default=3, help="runs to the first step")
    parser.add_argument("--top", type=int, default=12, help="import entries shown")
    parser.add_argument(
        "overrides",
        nargs="*",
        default=["trainer.max_epochs=1", "trainer.enable_progress_bar=false"],
        help="overrides for the timed `nnlab train` (default: 1 epoch, no progress bar)",
    )
    args = parser.parse_args()

    load = os.getloadavg()[0]
    help_times = time_help(args.repeats)
    step_times = time_first_step(args.train_repeats, args.overrides)
    print(
        f"machine: {os.cpu_count()} CPUs, load avg {load:.1f} at start, "
        f"OMP_NUM_THREADS={env()['OMP_NUM_THREADS']}, python {sys.version.split()[0]}"
    )
    print(f"nnlab --help   runs (s): {' '.join(f'{t:.2f}' for t in help_times)}")
    print(f"first step     runs (s): {' '.join(f'{t:.2f}' for t in step_times)}")
    print_imports(
        "CLI",
        "import nnlab.cli",
        ("typer", "rich.console", "nnlab.cli", "nnlab.errors", "torch", "hydra"),
        args.top,
    )
    print_imports(
        "train path",
        "import nnlab.cli, nnlab.config, nnlab.train",
        ("torch", "pytorch_lightning", "hydra", "omegaconf", "torchmetrics", "torchvision")
        + ("sklearn", "nnlab.config", "nnlab.train", "nnlab.models.detection", "nnlab.tasks"),
        args.top,
    )
    print()
    print(verdict("--help", statistics.median(help_times)))
    print(verdict("first step", statistics.median(step_times)))


if __name__ == "__main__":
    main()
