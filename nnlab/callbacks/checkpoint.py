"""Lightning's ModelCheckpoint, with its per-hook bookkeeping made cheap."""

from __future__ import annotations

from pytorch_lightning.callbacks import ModelCheckpoint as LightningModelCheckpoint

from nnlab import compat


@compat.cheap_monitor_candidates  # the metrics copied by clone where Lightning deep-copies
class ModelCheckpoint(LightningModelCheckpoint):
    """Lightning rebuilds a callback's state key (a dict's repr) every time it dispatches a hook,
    three times per optimizer step, though a checkpoint callback's key depends only on its
    constructor arguments. The class keeps Lightning's name, and with it Lightning's key: a
    checkpoint written by either class resumes with the other."""

    _state_key: str | None = None

    @property
    def state_key(self) -> str:
        if self._state_key is None:
            self._state_key = super().state_key
        return self._state_key
