"""What a command does before torch and Lightning load: know its rank, say what it is about to
build, and load the heavy libraries quickly.

Importing pytorch_lightning creates millions of Python objects (torchmetrics alone imports
torchvision, scipy.signal and matplotlib). Every few thousand allocations Python's cyclic
garbage collector runs, and its full collections walk every object alive, so the import pays
for dozens of walks that free nothing; the interpreter's last collection at exit walks them all
once more. `heavy_imports` switches the collector off while the libraries load, then freezes
what they created (gc.freeze: those objects are left out of every later collection) and turns
it back on: the same imports, about a second less on this machine
(tests/perf/bench_startup.py measures it).
"""

from __future__ import annotations

import gc
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager


def process_rank() -> int:
    """This process's rank in a distributed run (0 when alone), known before any trainer exists:
    torchrun sets RANK, SLURM SLURM_PROCID, Lightning's own launcher NODE_RANK and LOCAL_RANK."""
    for name in ("RANK", "SLURM_PROCID"):
        if name in os.environ:
            return int(os.environ[name])
    return int(os.environ.get("NODE_RANK", 0)) * 1000 + int(os.environ.get("LOCAL_RANK", 0))


@contextmanager
def heavy_imports() -> Iterator[None]:
    """Import torch/Lightning-bound modules inside this block (see the module's docstring).
    Only the first time: freezing again would also freeze whatever garbage earlier commands
    in this process (tests, notebooks) left for the collector, and keep it forever."""
    if "pytorch_lightning" in sys.modules:
        yield
        return
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if was_enabled:
            gc.enable()
