"""GAN task: two optimizers stepped by hand, losses per epoch, samples judged and shown."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from nnlab.choices import GAN_OBJECTIVES
from nnlab.errors import choice_error
from nnlab.models.gan import GAN
from nnlab.tasks.optim import Schedule, optimizer_with_schedule
from nnlab.tasks.supervised import LeanModule

GRID = 64  # samples in the image grid, drawn from one fixed noise batch so epochs compare


class Scores(Protocol):
    """What a judge makes of a set of samples, as metrics named for a stage."""

    def metrics(self, stage: str) -> dict[str, float]: ...


# Samples in data space → their Scores. build.py passes reference.py's classifier; the task only
# calls it, so it does not depend on how the judge was trained.
Judge = Callable[[Tensor], Scores]


def to_unit(images: Tensor) -> Tensor:
    """The nets' [-1, 1] images as [0, 1] pixels."""
    return (images.clamp(-1, 1) + 1) / 2


def sample_grid(unit: Tensor) -> Tensor:
    """[0, 1] images as one grid, eight a row: the training grid's and nnlab predict's."""
    from torchvision.utils import make_grid

    # 8×8 digits are too small to see: scale tiny images up to at least 32 pixels.
    scale = max(1, 32 // unit.shape[-1])
    tiles = F.interpolate(unit, scale_factor=scale, mode="nearest")
    return make_grid(tiles.cpu(), nrow=8, padding=2, pad_value=0.5)


class GanTask(LeanModule):
    """Trains G and D in turn on every batch (manual optimization).

    D minimizes −log D(x) − log(1 − D(G(z))), with real targets 1 − label_smoothing. G minimizes
    −log D(G(z)) (non_saturating, conf/model/gan.yaml's: strong gradients while D is winning) or
    log(1 − D(G(z))) (minimax, the original form, which saturates early in training).
    The keyword-only settings are the model config's (choices.GAN_TASK_OPTIONS); they have no
    defaults here, so the YAML is their one source.

    Images are mapped to [−1, 1] for the nets (G ends in tanh) and back to data space for the
    judge and the sample grid, using the training data's range.
    """

    monitor = ("val/sample_score", "max")

    def __init__(
        self,
        gan: GAN,
        optimizer: Callable[..., torch.optim.Optimizer],
        schedule: Schedule,
        data_range: tuple[float, float],
        judge: Judge | None = None,
        *,
        objective: str,
        lr_g: float | None,
        lr_d: float | None,
        label_smoothing: float,
        ema: float,
        samples: int,
    ) -> None:
        super().__init__()
        if objective not in GAN_OBJECTIVES:
            raise choice_error("model.objective", objective, GAN_OBJECTIVES)
        self.automatic_optimization = False
        self.model = gan
        self.optimizer_factory = optimizer
        self.schedule = schedule
        self.judge = judge
        self.objective = objective
        self.lr_g, self.lr_d = lr_g, lr_d
        self.label_smoothing = label_smoothing
        # Samples come from an exponential moving average of G's weights when ema > 0: it
        # smooths out the last steps' oscillation of the adversarial game (as ProGAN/BigGAN do).
        self.g_ema = (
            AveragedModel(gan.generator, multi_avg_fn=get_ema_multi_avg_fn(ema), use_buffers=True)
            if ema > 0
            else None
        )
        self.samples = samples
        self.register_buffer("data_range", torch.tensor(data_range, dtype=torch.float32))
        self.register_buffer("grid_noise", gan.noise(GRID, torch.Generator().manual_seed(0)))
        self._sums = torch.zeros(3)  # loss_g·n, loss_d·n, n
        self._d_real = torch.zeros(2)  # D's mean probability on held-out real images: sum, n

    # -- data space <-> the nets' [-1, 1] ---------------------------------------------------
    def _to_unit(self, x: Tensor) -> Tensor:
        low, high = self.data_range
        return 2 * (x - low) / (high - low) - 1

    def _to_data(self, x: Tensor) -> Tensor:
        low, high = self.data_range
        return low + (x + 1) / 2 * (high - low)

    @property
    def sampler(self) -> torch.nn.Module:
        return self.model.generator if self.g_ema is None else self.g_ema

    @torch.no_grad()
    def _sample(self, noise: Tensor) -> Tensor:
        """Images in [−1, 1] from the sampler (G, or its average), with batch norm in eval mode."""
        was_training = self.sampler.training
        self.sampler.eval()
        images = self.sampler(noise)
        self.sampler.train(was_training)
        return images

    def generate(self, n: int, seed: int | None = None) -> Tensor:
        """n samples in data space."""
        generator = None if seed is None else torch.Generator().manual_seed(seed)
        return self._to_data(self._sample(self.model.noise(n, generator)))

    def metric_names(self) -> list[str]:
        """The metrics a run of this task records (metrics.json): what sweep.metric may name.
        The judge's are read off its scores of two samples: only it knows what it measures."""
        judged = self.judge(self.generate(2, seed=0)).metrics("val") if self.judge else {}
        evaluated = ["d_real", *(name.removeprefix("val/") for name in judged)]
        scored = [f"{stage}/{name}" for stage in ("val", "test") for name in evaluated]
        return ["train/loss_g", "train/loss_d", *scored]

    # -- training ---------------------------------------------------------------------------
    def on_train_epoch_start(self) -> None:
        self._sums = torch.zeros(3, device=self.device)

    def training_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> None:
        real = self._to_unit(batch[0])
        n = len(real)
        opt_g, opt_d = self.optimizers()
        gen, disc = self.model.generator, self.model.discriminator
        fake = gen(self.model.noise(n))

        logits_real, logits_fake = disc(real), disc(fake.detach())
        real_target = torch.full_like(logits_real, 1.0 - self.label_smoothing)
        loss_d = F.binary_cross_entropy_with_logits(logits_real, real_target)
        loss_d = loss_d + F.binary_cross_entropy_with_logits(
            logits_fake, torch.zeros_like(logits_fake)
        )
        opt_d.zero_grad()
        self.manual_backward(loss_d)
        opt_d.step()

        logits = disc(fake)
        if self.objective == "non_saturating":
            loss_g = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
        else:  # log(1 − D(G(z))) = −BCE(logits, 0)
            loss_g = -F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits))
        opt_g.zero_grad()
        self.manual_backward(loss_g)
        opt_g.step()
        if self.g_ema is not None:
            self.g_ema.update_parameters(gen)

        self._step_schedulers("step")
        with torch.no_grad():
            size = real.new_tensor(n)
            self._sums += torch.stack([loss_g.detach() * size, loss_d.detach() * size, size])

    def on_train_epoch_end(self) -> None:
        loss_g, loss_d, n = self._sums
        self.log_dict({"train/loss_g": loss_g / n, "train/loss_d": loss_d / n}, sync_dist=True)
        self._log_grid()  # cheap, unlike judging: every epoch, so TensorBoard shows G's progress
        self._step_schedulers("epoch")

    def _step_schedulers(self, interval: str) -> None:
        # Manual optimization: Lightning keeps the schedules but leaves stepping them to us.
        for config in self.trainer.lr_scheduler_configs:
            if config.interval == interval:
                config.scheduler.step()

    # -- validation and test: D on held-out real images, the judge on fresh samples -----------
    def _reset_d_real(self) -> None:
        self._d_real = torch.zeros(2, device=self.device)

    def _eval_step(self, batch: tuple[Tensor, ...]) -> None:
        probs = torch.sigmoid(self.model.discriminator(self._to_unit(batch[0])))
        self._d_real += torch.stack([probs.sum(), probs.new_tensor(len(probs))])

    def _log_eval(self, stage: str, seed: int) -> None:
        total, n = self._d_real
        metrics: dict[str, Any] = {f"{stage}/d_real": total / n}
        if self.judge is not None:
            metrics.update(self.judge(self.generate(self.samples, seed)).metrics(stage))
        self.log_dict(metrics, sync_dist=True)

    def on_validation_epoch_start(self) -> None:
        self._reset_d_real()

    def validation_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> None:
        self._eval_step(batch)

    def on_validation_epoch_end(self) -> None:
        # The same noise every epoch, so the score moves only because G did.
        self._log_eval("val", seed=1)

    def on_test_epoch_start(self) -> None:
        self._reset_d_real()

    def test_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> None:
        self._eval_step(batch)

    def on_test_epoch_end(self) -> None:
        self._log_eval("test", seed=2)  # noise the validation never saw

    def _grid(self) -> Tensor:
        return sample_grid(to_unit(self._sample(self.grid_noise)))

    def _log_grid(self) -> None:
        experiment = getattr(self.logger, "experiment", None)
        if experiment is not None and hasattr(experiment, "add_image"):
            # at the optimizer-step count, the axis of every scalar (two steps a batch: G and D)
            experiment.add_image("samples", self._grid(), global_step=self.global_step)

    def save_grid(self, path: Path) -> None:
        """Write the fixed-noise sample grid as a PNG."""
        from torchvision.utils import save_image

        save_image(self._grid(), path, format="png")  # whatever the file's name ends with

    def configure_optimizers(self) -> Any:
        total = self.trainer.estimated_stepping_batches
        optimizers, schedulers = [], []
        for net, lr in ((self.model.generator, self.lr_g), (self.model.discriminator, self.lr_d)):
            opt, schedule = optimizer_with_schedule(
                net.parameters(), self.optimizer_factory, self.schedule, total, lr
            )
            optimizers.append(opt)
            if schedule is not None:
                schedulers.append(schedule)
        return optimizers, schedulers
