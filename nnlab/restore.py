"""Load a saved run safely for eval, predict and --resume: its checkpoint with torch's safe
loader, its config checked exactly as a command line's, every file it needs read whole or
refused. Nothing here writes."""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from nnlab import runs
from nnlab.errors import UserError, did_you_mean
from nnlab.tasks.supervised import LeanModule

# What --resume may change: how and how long the run trains, where its data and outputs live.
# Anything else (model, data, optimizer, schedule, seed, ...) would make the resumed run a
# different experiment on the same checkpoint, which Lightning would load and train regardless.
RESUMABLE = (
    "trainer.max_epochs",
    "trainer.max_time",
    "trainer.accelerator",
    "trainer.devices",
    "trainer.strategy",
    "trainer.num_nodes",
    "trainer.precision",
    "trainer.check_val_every_n_epoch",
    "trainer.limit_train_batches",
    "trainer.limit_val_batches",
    "trainer.limit_test_batches",
    "trainer.enable_progress_bar",
    "trainer.log_every_n_steps",
    "callbacks.checkpoint_interval_s",
    "callbacks.early_stopping_patience",
    "callbacks.grad_flow",
    "callbacks.grad_flow_every",
    "logger.kind",
    "data.root",
    "eval_train",
    "output_dir",
)


def load_checkpoint(ckpt: Path) -> dict[str, Any]:
    """A checkpoint file's contents, read with torch's safe loader (tensors, numbers, strings,
    lists and dicts: never code); UserError when it is damaged, not a Lightning checkpoint, or
    would need unsafe unpickling."""
    try:
        checkpoint = torch.load(ckpt, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # torch names the class or function the pickle asks for; other faults are damage
        found = re.search(r"GLOBAL (\S+)", str(err))
        if found is None:
            raise UserError(_unreadable(ckpt, err)) from None
        raise UserError(
            f"Refused to load {ckpt}: it holds a Python object ({found.group(1)}) that only "
            f"unsafe unpickling "
            f"could rebuild, and unpickling it could run any code. Checkpoints written by nnlab "
            f"hold only tensors, numbers, strings, lists and dicts. If this file is not from "
            f"nnlab and you trust it, load it in Python yourself and save its plain state_dict; "
            f"otherwise delete it."
        ) from None
    except Exception as err:
        raise UserError(_unreadable(ckpt, err)) from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise UserError(
            f"{ckpt} is a PyTorch file but not a Lightning checkpoint (it has no state_dict), so "
            f"it was not written by nnlab train. Give a checkpoint from an nnlab run."
        )
    return checkpoint


def _unreadable(ckpt: Path, err: Exception) -> str:
    return (
        f"Cannot read checkpoint {ckpt} ({type(err).__name__}: {str(err).splitlines()[0]}): "
        f"the file is damaged, cut short or not a PyTorch checkpoint. Use another checkpoint "
        f"of the run (checkpoints/best.ckpt or last.ckpt) or train again."
    )


def run_config(
    run_dir: Path | None, ckpt: Path, checkpoint: dict[str, Any], overrides: list[str]
) -> tuple[DictConfig, dict[str, str]]:
    """The config a trained run was built from (its run directory's, else the one stamped into
    the checkpoint), checked, brought up to this nnlab with `overrides` applied, and its group
    choices. A run directory's files must all be there and whole."""
    from nnlab.config import saved_run_config

    stamp = checkpoint.get(LeanModule.CONFIG_KEY)
    stamp = stamp if isinstance(stamp, dict) else {}
    if run_dir is not None:
        saved, source = runs.read_config(run_dir), str(run_dir / runs.CONFIG)
        choices = runs.read_metrics(run_dir).get("choices")
        if not isinstance(choices, dict) or not all(isinstance(v, str) for v in choices.values()):
            raise runs.DamagedRun(run_dir / runs.METRICS, "its 'choices' are not group names")
    elif isinstance(stamp.get("config"), dict) and stamp["config"]:
        saved, choices = stamp["config"], None
        source = f"the config inside {ckpt}"
    else:
        raise UserError(
            f"{ckpt} is not inside an nnlab run directory and carries no nnlab config, so the "
            f"model cannot be rebuilt. Give the run directory it came from instead."
        )
    version = stamp.get("version")
    return saved_run_config(
        saved, choices, overrides, version if isinstance(version, str) else None, source
    )


def load_weights(task: torch.nn.Module, checkpoint: dict[str, Any], ckpt: Path) -> None:
    """The checkpoint's weights into the task its config built; UserError when they differ."""
    try:
        task.load_state_dict(checkpoint["state_dict"])
    except (KeyError, TypeError, RuntimeError) as err:
        raise UserError(
            f"{ckpt} does not fit the model its config builds ({type(err).__name__}: "
            f"{str(err).splitlines()[0]}). Give a checkpoint written by nnlab train for this run, "
            f"and do not override model settings when evaluating it."
        ) from None


def saved_preprocessing(run_dir: Path | None, checkpoint: dict[str, Any]) -> dict[str, Any]:
    """What a trained run's data learned from its training split: its run directory's
    preprocessing.json, else the copy stamped into the checkpoint; {} for runs from before nnlab
    saved it (their data learns it again from the files, as it did then)."""
    if run_dir is not None:
        return runs.read_preprocessing(run_dir)
    stamp = checkpoint.get(LeanModule.CONFIG_KEY)
    fitted = stamp.get("preprocessing") if isinstance(stamp, dict) else None
    return fitted if isinstance(fitted, dict) else {}


def saved_run(
    target: str, overrides: list[str], output_dir: str = "outputs"
) -> tuple[Path | None, Path, dict[str, Any], DictConfig]:
    """What `nnlab eval` and `nnlab predict` start from: the run directory (None for a lone
    checkpoint), the checkpoint's path and contents, and the run's config with `overrides`."""
    run_dir, ckpt = runs.resolve_target(target, output_dir)
    if run_dir is not None:
        runs.refuse_links(run_dir)
    checkpoint = load_checkpoint(ckpt)
    return run_dir, ckpt, checkpoint, run_config(run_dir, ckpt, checkpoint, overrides)[0]


_ABSENT = object()


def check_resume_overrides(overrides: list[str], saved: dict[str, Any]) -> None:
    """Refuse, before anything is written, overrides that would change what a resumed run is:
    only RESUMABLE keys may change. `saved` is the run's config, to tell a typo from a key."""
    for override in overrides:
        key = override.partition("=")[0].strip()
        if key in RESUMABLE:
            continue
        node: Any = saved
        for part in key.lstrip("+~").split("."):
            node = node.get(part, _ABSENT) if isinstance(node, dict) else _ABSENT
        allowed = f"On resume these may change: {', '.join(RESUMABLE)}."
        if node is _ABSENT:
            raise UserError(
                f"Unknown key '{key}' for this run's config. {allowed}"
                + did_you_mean(key, RESUMABLE)
            )
        raise UserError(
            f"--resume continues the run as it was configured, so '{override}' cannot change "
            f"it: {key} would make it a different run on the same checkpoint. {allowed} To "
            f"train with {key} changed, start a new run (nnlab train {override} plus the run's "
            f"own overrides)."
        )


def run_to_resume(
    target: str, overrides: list[str], output_dir: str = "outputs"
) -> tuple[Path, DictConfig, dict[str, str], list[str]]:
    """The run directory `--resume` continues, its config with `overrides` applied (more epochs,
    ...), its group choices and all its overrides so far; UserError when there is nothing to
    resume from, or the run is damaged, or another process writes it. Reads only."""
    run_dir, _ = runs.resolve_target(target, output_dir)
    if run_dir is None:
        raise UserError(
            f"--resume continues a run, so give its directory, its name or 'latest', not a "
            f"checkpoint file ({target})."
        )
    runs.refuse_links(run_dir)
    from nnlab.startup import process_rank

    # the other processes of a distributed resume train beside the first, which holds the lock
    writer = runs.holder(run_dir) if process_rank() == 0 else None
    if writer is not None:
        raise UserError(
            f"{run_dir} is still being trained by process {writer} (host, PID): a run has one "
            f"writer at a time. Wait for it to end, or stop it (Ctrl-C), then resume."
        )
    last = run_dir / runs.CHECKPOINTS / runs.LAST
    if not last.exists():
        raise UserError(
            f"{run_dir} has no {runs.CHECKPOINTS}/{runs.LAST} to resume from: it stopped before "
            f"its first epoch ended. Start it again with nnlab train and its overrides."
        )
    check_resume_overrides(overrides, runs.read_config(run_dir))
    before = runs.read_overrides(run_dir)
    recorded = runs.read_metrics(run_dir)
    checkpoint = load_checkpoint(last)
    cfg, choices = run_config(run_dir, last, checkpoint, overrides)
    # Lightning stores the 0-based index of the epoch whose end wrote last.ckpt.
    epoch = checkpoint.get("epoch", -1)
    done, limit = (epoch if isinstance(epoch, int) else -1) + 1, cfg.trainer.max_epochs
    if recorded.get("status") == "finished" and limit is not None and 0 <= limit <= done:
        raise UserError(
            f"{run_dir} finished: it trained {done} epochs and trainer.max_epochs={limit}, so "
            f"resuming would train nothing (and its metrics.json would lose its training "
            f"metrics). To train it further, raise the limit: nnlab train --resume {target} "
            f"trainer.max_epochs={done + limit}. To score it again: nnlab eval {run_dir}."
        )
    return run_dir, cfg, choices, [*before, *overrides]
