"""Learning-rate schedules of the four studies, as closed forms (SPEC §0.3).

Each schedule is a pure function of the epoch or step, plus a thin
``keras.optimizers.schedules.LearningRateSchedule`` keyed on the optimizer's iteration
count. Keying on iterations (not a callback that sets the rate) keeps the rate right after
a resume, because the iteration count is restored with the optimizer state.
"""

from __future__ import annotations

import math

import keras
from keras import ops


def cosine_epoch(epoch: int, base: float, minimum: float, t_max: int) -> float:
    """PyTorch ``CosineAnnealingLR`` stepped per epoch (SPEC §0.3, §3.4).

    lr_e = minimum + (base - minimum) * (1 + cos(pi * e / t_max)) / 2.
    """
    return minimum + (base - minimum) * (1 + math.cos(math.pi * epoch / t_max)) / 2


def step_epoch(epoch: int, base: float, factor: float, every: int) -> float:
    """Step decay ``base * factor ** floor(epoch / every)`` (Marion's StepLR, §2.4)."""
    return base * factor ** (epoch // every)


def decade_steps(epoch: int, base: float, epochs: int, steps: int = 4) -> float:
    """``base * 10 ** -floor(steps * epoch / epochs)``: ``steps`` equal phases, each a tenth
    of the last (Oyedotun's READING, SPEC §4.4: 0.1 / 0.01 / 1e-3 / 1e-4 over 300 epochs)."""
    return base * 10.0 ** -(steps * epoch // epochs)


def one_cycle(step: int, max_lr: float, total_steps: int, pct_start: float = 0.3,
              div_factor: float = 25.0, final_div_factor: float = 1e4) -> float:
    """PyTorch ``OneCycleLR`` with its defaults (two phases, cosine; SPEC §0.3, §1.4)."""
    start = max_lr / div_factor
    end = start / final_div_factor
    peak = pct_start * total_steps - 1
    if step <= peak:
        return _cos_anneal(start, max_lr, step / peak)
    return _cos_anneal(max_lr, end, (step - peak) / (total_steps - 1 - peak))


def one_cycle_beta1(step: int, total_steps: int, pct_start: float = 0.3,
                    base: float = 0.85, top: float = 0.95) -> float:
    """The Adam beta1 that ``OneCycleLR`` cycles opposite the rate: 0.95 -> 0.85 -> 0.95."""
    peak = pct_start * total_steps - 1
    if step <= peak:
        return _cos_anneal(top, base, step / peak)
    return _cos_anneal(base, top, (step - peak) / (total_steps - 1 - peak))


def _cos_anneal(start: float, end: float, t: float) -> float:
    return end + (start - end) * (1 + math.cos(math.pi * t)) / 2


def _one_cycle_ops(step, peak_value: float, start: float, end: float, total_steps: int,
                   pct_start: float):
    """:func:`one_cycle`'s shape in ``keras.ops`` (float32): ``start`` -> ``peak_value`` ->
    ``end``. (1 + cos(pi t)) / 2 is written sin^2(pi (1 - t) / 2), with 1 - t counted from
    the phase's end in steps, so the tail keeps float32's relative precision (lr(78,981) =
    3.677e-8 to 1e-6 relative, where 1 + cos would lose three digits)."""
    step = ops.cast(step, "float32")
    peak = pct_start * total_steps - 1
    up = ops.square(ops.sin(math.pi / 2 * step / peak))
    down = ops.square(ops.sin(math.pi / 2 * (total_steps - 1 - step) / (total_steps - 1 - peak)))
    return ops.where(step <= peak, start + (peak_value - start) * up,
                     end + (peak_value - end) * down)


@keras.saving.register_keras_serializable(package="depthlab")
class EpochCosine(keras.optimizers.schedules.LearningRateSchedule):
    """:func:`cosine_epoch` held constant within each epoch of ``steps_per_epoch`` steps.

    Args:
        base: the rate of epoch 0.
        minimum: ``eta_min``.
        t_max: the cosine's half period in epochs.
        steps_per_epoch: optimizer steps per epoch.
    """

    def __init__(self, base: float, minimum: float, t_max: int, steps_per_epoch: int):
        self.base = float(base)
        self.minimum = float(minimum)
        self.t_max = int(t_max)
        self.steps_per_epoch = int(steps_per_epoch)

    def __call__(self, step):
        epoch = ops.floor(ops.cast(step, "float32") / self.steps_per_epoch)
        cosine = (1.0 + ops.cos(math.pi * epoch / self.t_max)) / 2.0
        return self.minimum + (self.base - self.minimum) * cosine

    def get_config(self) -> dict:
        return {"base": self.base, "minimum": self.minimum, "t_max": self.t_max,
                "steps_per_epoch": self.steps_per_epoch}


@keras.saving.register_keras_serializable(package="depthlab")
class EpochStep(keras.optimizers.schedules.LearningRateSchedule):
    """:func:`step_epoch` held constant within each epoch."""

    def __init__(self, base: float, factor: float, every: int, steps_per_epoch: int):
        self.base = float(base)
        self.factor = float(factor)
        self.every = int(every)
        self.steps_per_epoch = int(steps_per_epoch)

    def __call__(self, step):
        epoch = ops.floor(ops.cast(step, "float32") / self.steps_per_epoch)
        return self.base * ops.power(self.factor, ops.floor(epoch / self.every))

    def get_config(self) -> dict:
        return {"base": self.base, "factor": self.factor, "every": self.every,
                "steps_per_epoch": self.steps_per_epoch}


@keras.saving.register_keras_serializable(package="depthlab")
class EpochDecades(keras.optimizers.schedules.LearningRateSchedule):
    """:func:`decade_steps` held constant within each epoch."""

    def __init__(self, base: float, epochs: int, steps_per_epoch: int, steps: int = 4):
        self.base = float(base)
        self.epochs = int(epochs)
        self.steps_per_epoch = int(steps_per_epoch)
        self.steps = int(steps)

    def __call__(self, step):
        # Integer arithmetic: the phase boundaries fall exactly on the epochs of the closed form.
        epoch = ops.floor_divide(ops.cast(step, "int32"), self.steps_per_epoch)
        phase = ops.cast(ops.floor_divide(epoch * self.steps, self.epochs), "float32")
        return self.base * ops.power(0.1, phase)

    def get_config(self) -> dict:
        return {"base": self.base, "epochs": self.epochs,
                "steps_per_epoch": self.steps_per_epoch, "steps": self.steps}


@keras.saving.register_keras_serializable(package="depthlab")
class OneCycle(keras.optimizers.schedules.LearningRateSchedule):
    """:func:`one_cycle` per optimizer step (PyTorch ``OneCycleLR`` defaults, SPEC §1.4).

    Args:
        max_lr: the peak rate.
        total_steps: the scheduler's length N (the reference's 101 x 784 = 79,184, which is
            longer than the 78,982 steps that run: SPEC §1.4).
        pct_start: fraction of N spent rising. Defaults to 0.3.
        div_factor: start = max_lr / div_factor. Defaults to 25.
        final_div_factor: end = start / final_div_factor. Defaults to 1e4.
    """

    def __init__(self, max_lr: float, total_steps: int, pct_start: float = 0.3,
                 div_factor: float = 25.0, final_div_factor: float = 1e4):
        self.max_lr = float(max_lr)
        self.total_steps = int(total_steps)
        self.pct_start = float(pct_start)
        self.div_factor = float(div_factor)
        self.final_div_factor = float(final_div_factor)

    def __call__(self, step):
        start = self.max_lr / self.div_factor
        return _one_cycle_ops(step, self.max_lr, start, start / self.final_div_factor,
                              self.total_steps, self.pct_start)

    def get_config(self) -> dict:
        return {"max_lr": self.max_lr, "total_steps": self.total_steps,
                "pct_start": self.pct_start, "div_factor": self.div_factor,
                "final_div_factor": self.final_div_factor}


@keras.saving.register_keras_serializable(package="depthlab")
class OneCycleBeta1(keras.optimizers.schedules.LearningRateSchedule):
    """:func:`one_cycle_beta1` per optimizer step: Adam's beta1 cycled 0.95 -> 0.85 -> 0.95
    opposite the rate (``OneCycleLR(cycle_momentum=True)``), for
    :class:`depthlab.optimizers.ScheduledBeta1AdamW`."""

    def __init__(self, total_steps: int, pct_start: float = 0.3, base: float = 0.85,
                 top: float = 0.95):
        self.total_steps = int(total_steps)
        self.pct_start = float(pct_start)
        self.base = float(base)
        self.top = float(top)

    def __call__(self, step):
        return _one_cycle_ops(step, self.base, self.top, self.top, self.total_steps,
                              self.pct_start)

    def get_config(self) -> dict:
        return {"total_steps": self.total_steps, "pct_start": self.pct_start,
                "base": self.base, "top": self.top}
