"""What `nnlab train` was asked to do, as a list of runs: its arguments (overrides,
`experiment=`, `-m`, `--from-sweep`, `--resume`) expanded into one composed config per run.

Every run's config is composed and checked here, before the first one starts: a typo in the
last combination of a grid must not surface after an hour of training the first ones."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from nnlab import noise
from nnlab.config import take_argument
from nnlab.errors import UserError

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from nnlab.experiments import Experiment


@dataclass(frozen=True)
class RunSpec:
    """One run to train."""

    cfg: DictConfig
    choices: dict[str, str]  # the option chosen in every config group
    overrides: list[str]  # everything the run is composed from, as its overrides.yaml keeps
    label: str = ""  # the run's label in an experiment preset
    # the user's own overrides for this run (one -m combination) and a preset's seed=, without
    # an experiment's other overrides: what tells runs apart in reports
    given: list[str] = field(default_factory=list)
    resume_dir: Path | None = None  # the run directory a resumed run continues

    @property
    def setting(self) -> tuple[str, ...]:
        """What the run shares with its repeats over seeds: its label and overrides but seed."""
        return (self.label, *noise.setting(self.given))


@dataclass(frozen=True)
class Plan:
    runs: list[RunSpec]
    experiment: Experiment | None = None
    multirun: bool = False

    @property
    def many(self) -> bool:
        """Several runs asked for at once: one that fails does not stop the others."""
        return self.multirun or self.experiment is not None


def plan_runs(
    arguments: list[str],
    *,
    multirun: bool = False,
    from_sweep: str | None = None,
    resume: str | None = None,
) -> Plan:
    """The runs `nnlab train [ARGUMENTS]` makes; UserError when they do not all compose."""
    from nnlab import experiments

    experiment, overrides = experiments.take_experiment(arguments)
    resume, overrides = take_resume(resume, overrides)
    if resume:
        if multirun or experiment or from_sweep:
            raise UserError(
                "--resume continues one run: leave out -m, experiment= and --from-sweep."
            )
        return Plan([_resumed(resume, overrides)])
    if from_sweep:
        from nnlab import sweep as sweeps

        # the user's overrides come last, so they win over the sweep's best
        overrides = [*sweeps.best_overrides(from_sweep), *overrides]
    return Plan(_combinations(experiment, overrides, multirun), experiment, multirun)


def take_resume(option: str | None, overrides: list[str]) -> tuple[str | None, list[str]]:
    """--resume X, or resume=X among the overrides (Hydra-style), and the other overrides."""
    given, rest = take_argument(overrides, "resume")
    targets = [*([option] if option else []), *given]
    if len(targets) > 1:
        raise UserError(f"Give one run to resume; got {', '.join(targets)}.")
    return (targets[0] if targets else None), rest


def _combinations(
    experiment: Experiment | None, overrides: list[str], multirun: bool
) -> list[RunSpec]:
    """Every experiment run times every -m combination times the preset's seeds, each
    composed."""
    from nnlab import experiments
    from nnlab.config import compose_config
    from nnlab.search_space import expand_multirun

    labels = list(experiment.runs) if experiment else [""]
    combinations = expand_multirun(overrides) if multirun else [overrides]
    specs = []
    for label in labels:
        for combination in combinations:
            for seed in experiments.seed_overrides(experiment, combination):
                given = [*combination, *seed]
                every = experiments.run_overrides(experiment, label, given) if experiment else given
                cfg, choices = compose_config(every)
                specs.append(RunSpec(cfg, choices, every, label=label, given=given))
    return specs


def _resumed(target: str, overrides: list[str]) -> RunSpec:
    # imports torch: a checkpoint is read to know where the run stopped
    from nnlab.restore import run_to_resume

    output_dirs, _ = take_argument(overrides, "output_dir")
    output_dir = output_dirs[-1] if output_dirs else "outputs"  # the last one wins, as in Hydra
    # the overrides given when resuming (more epochs, ...) join the run's own
    run_dir, cfg, choices, every = run_to_resume(target, overrides, output_dir)
    return RunSpec(cfg, choices, every, given=overrides, resume_dir=run_dir)
