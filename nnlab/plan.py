"""What `nnlab train` was asked to do, as a list of runs: its arguments (overrides,
`experiment=`, `-m`, `--from-sweep`, `--resume`) expanded into one composed config per run.

Every run's config is composed and checked here, before the first one starts: a typo in the
last combination of a grid must not surface after an hour of training the first ones. And
before torch loads: a saved run's overrides (--resume, and `nnlab eval`'s, check_saved_run)
are checked against its config.yaml, so a typo is reported at once."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from nnlab import noise
from nnlab.config import canonical, refuse_options, take_argument
from nnlab.errors import Notice, UserError

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

    arguments = canonical(arguments)  # model=CNN is model=cnn, in its name and overrides.yaml
    refuse_options(arguments)
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
        for combination in map(canonical, combinations):
            for seed in experiments.seed_overrides(experiment, combination):
                given = [*combination, *seed]
                every = experiments.run_overrides(experiment, label, given) if experiment else given
                cfg, choices = compose_config(every)
                specs.append(RunSpec(cfg, choices, every, label=label, given=given))
    return specs


def _resumed(target: str, overrides: list[str]) -> RunSpec:
    output_dirs, _ = take_argument(overrides, "output_dir")
    output_dir = output_dirs[-1] if output_dirs else "outputs"  # the last one wins, as in Hydra
    check_resume_keys(target, overrides, output_dir)
    # imports torch: a checkpoint is read to know where the run stopped
    from nnlab.restore import run_to_resume

    # the overrides given when resuming (more epochs, ...) join the run's own
    run_dir, cfg, choices, every = run_to_resume(target, overrides, output_dir)
    return RunSpec(cfg, choices, every, given=overrides, resume_dir=run_dir)


def check_resume_keys(target: str, overrides: list[str], output_dir: str) -> None:
    """The keys given with --resume, checked against the run's config.yaml before torch loads
    (restore then refuses, in its own words, those a resumed run may not change)."""
    from nnlab import runs
    from nnlab.config import check_saved_keys

    run_dir, _ = runs.resolve_target(target, output_dir)
    if run_dir is not None:  # a checkpoint file is refused by run_to_resume, as it says why
        check_saved_keys(runs.read_config(run_dir), _saved_choices(run_dir), overrides)


def check_saved_run(target: str, overrides: list[str], output_dir: str = "outputs") -> None:
    """What `nnlab eval` is given, checked before torch loads: a run to test, and overrides its
    saved config takes (restore checks both again as it loads the run; a lone checkpoint
    carries its config inside, so only loading it tells)."""
    from nnlab import runs
    from nnlab.config import saved_run_config

    run_dir, _ = runs.resolve_target(target, output_dir)
    if run_dir is None or not overrides:
        return
    versions = runs.read_json(run_dir / runs.METRICS).get("versions")
    written_by = versions.get("nnlab") if isinstance(versions, dict) else None
    with warnings.catch_warnings():  # a notice about the saved config is given as it loads
        warnings.simplefilter("ignore", Notice)
        saved_run_config(
            runs.read_config(run_dir),
            _saved_choices(run_dir),
            overrides,
            written_by if isinstance(written_by, str) else None,
            str(run_dir / runs.CONFIG),
        )


def _saved_choices(run_dir: Path) -> dict[str, str] | None:
    """The group choices a run recorded, or None where its metrics.json does not say (restore
    refuses a damaged one in its own words; the config tells them apart meanwhile)."""
    from nnlab import runs

    try:
        choices = runs.read_metrics(run_dir).get("choices")
    except runs.DamagedRun:
        return None
    if isinstance(choices, dict) and all(isinstance(v, str) for v in choices.values()):
        return choices
    return None
