"""Checkpoint files written at most every few seconds, whatever the length of an epoch."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lightning_fabric.plugins import TorchCheckpointIO
from torch import Tensor

from nnlab import compat
from nnlab.runs import written_whole

# Values a checkpoint holds by the hundred (loop counters, names, flags): returned as they are
# after one type lookup, not a chain of isinstance checks.
_ATOMS = frozenset({int, float, str, bool, bytes, type(None)})


def snapshot(obj: Any) -> Any:
    """A copy of a checkpoint whose tensors are copied to the CPU and whose containers are new,
    so training on cannot change it. Other values are kept as they are: Lightning builds them
    afresh for every checkpoint."""
    kind = type(obj)
    if kind in _ATOMS:
        return obj
    if kind is dict:
        return {key: snapshot(value) for key, value in obj.items()}
    if isinstance(obj, Tensor):
        obj = obj.detach()
        # clone: a third of the time of .to("cpu", copy=True) for the small tensors of a
        # small model's checkpoint, taken every epoch
        return obj.clone() if obj.device.type == "cpu" else obj.to("cpu")
    if isinstance(obj, dict):
        copied = kind((key, snapshot(value)) for key, value in obj.items())
        compat.keep_state_dict_versions(obj, copied)  # a state_dict's per-module versions
        return copied
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return kind(*(snapshot(value) for value in obj))
    if isinstance(obj, list | tuple):
        return kind(snapshot(value) for value in obj)
    return obj


class DeferredCheckpointIO(TorchCheckpointIO):
    """Lightning hands every checkpoint (last.ckpt each epoch, best.ckpt on improving) to this
    plugin. It keeps a snapshot in memory and writes the files when `interval_s` seconds have
    passed since its last write, and always when training ends, is interrupted or fails
    (Lightning tears the strategy down in each case). A 50 ms epoch then does not pay a 5 ms
    file write, and what reaches the disk is exactly the epoch-end state it would have written at
    once; only a hard kill (SIGKILL, power loss) loses up to `interval_s` of training.
    Checkpoints of the step last written go to disk at once: best.ckpt and last.ckpt of one
    epoch's end are written together. `interval_s=0` writes every checkpoint at once."""

    def __init__(self, interval_s: float) -> None:
        super().__init__()
        self.interval_s = interval_s
        self._pending: dict[str, dict[str, Any]] = {}
        self._written_at = time.monotonic()
        self._written_step: int | None = None

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        step = checkpoint.get("global_step")
        if time.monotonic() - self._written_at >= self.interval_s or step == self._written_step:
            self._pending.pop(str(path), None)
            self._write(checkpoint, path, storage_options)
            self.flush()
            self._written_step = step
        else:
            self._pending[str(path)] = snapshot(checkpoint)

    def flush(self) -> None:
        """Write every checkpoint still held in memory."""
        while self._pending:
            path = next(iter(self._pending))
            self._write(self._pending.pop(path), path)
        self._written_at = time.monotonic()

    def _write(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        """Lightning writes over the old file in place, so a disk that fills up midway would
        leave neither the old checkpoint nor the new. This writes beside it, then renames."""
        with written_whole(Path(path)) as partial:
            super().save_checkpoint(checkpoint, partial, storage_options)

    def load_checkpoint(
        self,
        path: Any,
        map_location: Callable[..., Any] | None = lambda storage, loc: storage,
        weights_only: bool | None = None,
    ) -> dict[str, Any]:
        self.flush()
        # torch's safe loader whatever the caller asks: a checkpoint never runs code, and
        # nnlab's own hold only tensors and plain values (restore.load_checkpoint reads
        # them first and explains a refusal).
        return super().load_checkpoint(path, map_location, weights_only=True)

    def remove_checkpoint(self, path: Any) -> None:
        self._pending.pop(str(path), None)
        super().remove_checkpoint(path)

    def teardown(self) -> None:
        self.flush()
