"""Startup and whole-job cost, side by side: `nnlab --help`, a typo's error, the first line on
the terminal, the first optimizer step, and the whole default `nnlab train` process against
tests/perf/plain_digits.py (the same job as a plain PyTorch script); then where import time goes.

Every figure comes from a fresh subprocess, as a user's shell would start it, with one torch
thread. The whole-job comparison alternates nnlab and the plain script, so machine noise hits
both alike, and reports the ratio of their medians (wall and CPU time). The first-step time is
measured by a child that notes perf_counter before anything is imported, then runs the real
`nnlab train` in-process with torch's global optimizer-step hook (registered once nnlab has
loaded torch) printing the elapsed time at the first step. A script, not a test: pytest never
collects bench_*.py.

    OMP_NUM_THREADS=1 python tests/perf/bench_startup.py --repeats 5
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PLAIN = Path(__file__).with_name("plain_digits.py")
# seconds (or a ratio for "whole job"), from issue 23
TARGETS = {"--help": 0.5, "typo error": 0.5, "first line": 0.5, "whole job": 1.25}

# Runs in the child: the clock starts before nnlab (or torch) is imported.
FIRST_STEP = r"""
import time
start = time.perf_counter()
import contextlib, os, sys
from nnlab import cli, startup

loading = startup.heavy_imports

@contextlib.contextmanager
def probed():
    with loading():
        yield
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    def first_step(optimizer, args, kwargs):
        print(f"FIRST_STEP {time.perf_counter() - start:.3f}", flush=True)
        os._exit(0)  # stop here: the rest of the run is not startup

    register_optimizer_step_pre_hook(first_step)

startup.heavy_imports = probed
sys.argv = ["nnlab", "train", *sys.argv[1:]]
cli.main()
"""
NNLAB = [sys.executable, "-m", "nnlab.cli"]


def env() -> dict[str, str]:
    # One torch thread, as the tests run; the machine is shared.
    return {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}


def timed(command: list[str], cwd: str | None = None) -> tuple[float, float, int]:
    """(wall s, CPU s of the child, exit code) of one run of `command`."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=cwd, capture_output=True, env=env())
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, proc.returncode


def first_line(command: list[str]) -> float:
    """Seconds from starting `command` to the first bytes it writes (stdout or stderr)."""
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        proc = subprocess.Popen(
            command, cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env()
        )
        proc.stdout.read(1)
        seconds = time.perf_counter() - start
        proc.kill()
        proc.wait()
    return seconds


def first_step(overrides: list[str]) -> float:
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
    return float(found.group(1))


def whole_jobs(repeats: int) -> dict[str, list[tuple[float, float]]]:
    """(wall, CPU) of each run of the default `nnlab train` and of the plain script, alternated."""
    times: dict[str, list[tuple[float, float]]] = {"nnlab train": [], "plain script": []}
    for _ in range(repeats):
        for name, command in (
            ("nnlab train", [*NNLAB, "train"]),
            ("plain script", [sys.executable, str(PLAIN)]),
        ):
            with tempfile.TemporaryDirectory() as tmp:
                wall, cpu, code = timed(command, cwd=tmp)
            if code:
                sys.exit(f"{name} failed (exit {code})")
            times[name].append((wall, cpu))
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
    unit = "×" if name == "whole job" else " s"
    mark = "PASS" if value <= target else "MISS"
    return f"{name:<12}{value:>8.2f}{unit:<2}  target <= {target}{unit}   {mark}"


def median_of(values: list[float]) -> float:
    return statistics.median(values)


def show(name: str, values: list[float]) -> None:
    print(
        f"{name:<28} median {median_of(values):6.2f} s   runs: "
        + " ".join(f"{v:.2f}" for v in values)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="runs of each measurement")
    parser.add_argument("--top", type=int, default=12, help="import entries shown")
    parser.add_argument("--no-imports", action="store_true", help="skip the import breakdown")
    args = parser.parse_args()

    load = os.getloadavg()[0]
    print(
        f"machine: {os.cpu_count()} CPUs, load avg {load:.1f} at start, "
        f"OMP_NUM_THREADS={env()['OMP_NUM_THREADS']}, python {sys.version.split()[0]}"
    )
    n = args.repeats
    helps = [timed([*NNLAB, "--help"])[0] for _ in range(n)]
    typos = [timed([*NNLAB, "train", "modle=x"])[0] for _ in range(n)]
    lines = [first_line([*NNLAB, "train"]) for _ in range(n)]
    steps = [first_step([]) for _ in range(n)]
    jobs = whole_jobs(n)
    show("nnlab --help", helps)
    show("nnlab train modle=x (exit 2)", typos)
    show("first line on the terminal", lines)
    show("first optimizer step", steps)
    for name, runs in jobs.items():
        show(f"{name} (wall)", [wall for wall, _ in runs])
        show(f"{name} (CPU)", [cpu for _, cpu in runs])
    ratio = median_of([w for w, _ in jobs["nnlab train"]]) / median_of(
        [w for w, _ in jobs["plain script"]]
    )
    cpu_ratio = median_of([c for _, c in jobs["nnlab train"]]) / median_of(
        [c for _, c in jobs["plain script"]]
    )
    print(f"nnlab train / plain script: wall {ratio:.2f}×, CPU {cpu_ratio:.2f}×")
    if not args.no_imports:
        print_imports(
            "train path",
            "import nnlab.cli, nnlab.config, nnlab.train",
            ("torch", "pytorch_lightning", "hydra", "omegaconf", "torchmetrics", "torchvision")
            + ("scipy.signal", "matplotlib", "sklearn", "nnlab.train", "nnlab.models.detection"),
            args.top,
        )
    print()
    print(verdict("--help", median_of(helps)))
    print(verdict("typo error", median_of(typos)))
    print(verdict("first line", median_of(lines)))
    print(verdict("whole job", ratio))


if __name__ == "__main__":
    main()
