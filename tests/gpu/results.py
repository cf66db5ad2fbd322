"""What one path's run left behind, judged: passed or failed (and why), and its throughput.

A path passes only when the CLI exited 0, the run finished with a finite training loss, and
its saved config shows every override of its command line and the precision it meant.
Throughput is steady-state, read from the run's TensorBoard events: every epoch ends by logging
its training loss, and the events' wall times and step numbers give the epoch time and the
optimizer steps per second after the warm-up epochs (those tests/perf/bench_overhead.py's
clocks skip: torch.compile's and the kernels' first calls fall in them), validation and
checkpoints included.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.gpu.forked import ChildResult
from tests.perf.bench_overhead import WARMUP_EPOCHS

EPOCH_TAGS = ("train/loss", "train/loss_g")  # logged once per epoch: supervised/detection, GAN


@dataclass
class PathResult:
    name: str
    covers: str
    overrides: list[str]
    passed: bool = False
    error: str | None = None
    seconds: float = 0.0  # the whole child: start-up, fit, test, files
    steps_per_s: float | None = None  # optimizer steps (GAN: both networks' steps)
    ms_per_epoch: float | None = None
    hand_ms_per_epoch: float | None = None
    hand_steps_per_s: float | None = None
    device: str | None = None  # the device's name, as the hand-written loop's torch gave it

    @property
    def vs_hand(self) -> float | None:
        """nnlab's time per epoch over the hand loop's (bench_overhead's "nnlab / hand")."""
        if self.ms_per_epoch is None or self.hand_ms_per_epoch is None:
            return None
        return self.ms_per_epoch / self.hand_ms_per_epoch

    def as_dict(self) -> dict:
        return {**asdict(self), "vs_hand": self.vs_hand}


def run_dir_of(workdir: Path, name: str) -> Path | None:
    """The one run named `name` under workdir/outputs/runs (<date>_<time>_<name>), or None."""
    runs = (workdir / "outputs" / "runs").glob("*")
    found = [run for run in runs if run.name.split("_", 2)[-1] == name]
    return found[0] if len(found) == 1 else None


def unapplied(overrides: list[str], run: Path) -> list[str]:
    """The overrides the run's saved config and choices do not show: a rewrite of the dry run
    or a config default that swallowed one would otherwise pass unseen."""
    config = OmegaConf.load(run / "config.yaml")
    choices = json.loads((run / "metrics.json").read_text())["choices"]
    missing = []
    for item in overrides:
        key, value = item.split("=", 1)
        if "." not in key and key in choices:
            applied = choices[key] == value
        else:
            saved = OmegaConf.select(config, key)
            if OmegaConf.is_config(saved):
                saved = OmegaConf.to_container(saved)
            applied = saved == yaml.safe_load(value)
        if not applied:
            missing.append(item)
    return missing


def judge(child: ChildResult, run: Path | None, overrides: list[str], precision: str) -> str | None:
    """Why the path failed, or None when it passed; `run` is the run directory it made."""
    if child.exit_code is None:
        return f"timed out after {child.seconds:.0f} s"
    if child.exit_code != 0:
        return f"exit {child.exit_code}: {child.last_line()}"
    if run is None:
        return "no run directory of its name under outputs/runs"
    metrics = json.loads((run / "metrics.json").read_text())
    if metrics.get("status") != "finished":
        return f"run status {metrics.get('status')!r}"
    loss = next((metrics[tag] for tag in EPOCH_TAGS if tag in metrics), None)
    if loss is None or not math.isfinite(loss):
        return f"training loss {loss!r}"
    missing = unapplied(overrides, run)
    if missing:
        return f"the saved config lacks {' '.join(missing)}"
    ran = OmegaConf.load(run / "config.yaml").trainer.precision
    if ran != precision:
        return f"trained with precision {ran}, not {precision}"
    return None


def throughput(run: Path) -> tuple[float, float] | None:
    """Steady-state (optimizer steps per second, ms per epoch), or None with too few epochs."""
    events = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0})
    events.Reload()
    tags = [tag for tag in EPOCH_TAGS if tag in events.Tags()["scalars"]]
    if not tags:
        return None
    ends = sorted(events.Scalars(tags[0]), key=lambda e: e.wall_time)[WARMUP_EPOCHS - 1 :]
    if len(ends) < 2:
        return None
    seconds = ends[-1].wall_time - ends[0].wall_time
    steps = ends[-1].step - ends[0].step
    return steps / seconds, seconds / (len(ends) - 1) * 1000
