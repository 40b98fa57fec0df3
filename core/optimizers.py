"""AdamW with a scheduled beta1: PyTorch ``OneCycleLR``'s ``cycle_momentum`` (SPEC §0.3, §1.4).

Keras' Adam takes beta_1 as a number and bakes it into the compiled step; OneCycle moves
it every step (0.95 -> 0.85 -> 0.95). Here ``beta_1`` is a property evaluated from the
optimizer's own ``iterations``, so it is exact after a resume and traced (not constant)
under JAX and TensorFlow. On torch the subclass keeps Keras' fused multi-tensor AdamW,
which needs beta_1 as a Python number: the property reads the step count from the device
there (one read per step, as torch's own scheduler keeps a host-side number).

As in torch, both the first-moment update and the bias correction 1 - beta1^t use the
step's beta1. Keras' Adam adds epsilon to sqrt(v) before the bias correction ("epsilon
hat"), torch after it: the two differ only where |g| is near 1e-8 (SPEC §0.3 lists eps).
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops


def _adamw_class() -> type:
    """Keras' AdamW as the backend runs it (torch: the fused ``_foreach`` implementation)."""
    if keras.backend.backend() == "torch":
        from keras.src.backend.torch.optimizers.torch_adamw import AdamW

        return AdamW
    return keras.optimizers.AdamW


@keras.saving.register_keras_serializable(package="depthlab")
class ScheduledBeta1AdamW(_adamw_class()):
    """``keras.optimizers.AdamW`` whose beta_1 is ``beta_1_schedule(iterations)``.

    Args:
        beta_1_schedule: a callable of the step (e.g.
            :class:`depthlab.schedules.OneCycleBeta1`) giving beta_1.
        **kwargs: every other ``AdamW`` argument (learning_rate, weight_decay, beta_2,
            epsilon, global_clipnorm, ...).
    """

    def __init__(self, beta_1_schedule: Any, **kwargs: Any) -> None:
        kwargs.pop("beta_1", None)
        super().__init__(**kwargs)
        if isinstance(beta_1_schedule, dict):
            beta_1_schedule = keras.optimizers.schedules.deserialize(beta_1_schedule)
        self.beta_1_schedule = beta_1_schedule

    @property
    def beta_1(self) -> Any:
        value = self.beta_1_schedule(self.iterations)
        if keras.backend.backend() == "torch":
            return float(ops.convert_to_numpy(value))
        return value

    @beta_1.setter
    def beta_1(self, value: Any) -> None:  # Adam.__init__ assigns the constant: ignored
        pass

    def get_config(self) -> dict:
        config = super().get_config()
        config["beta_1_schedule"] = keras.optimizers.schedules.serialize(self.beta_1_schedule)
        config.pop("beta_1", None)
        return config
