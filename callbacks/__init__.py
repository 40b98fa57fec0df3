"""Monitoring callbacks: gradients the optimizer applies, activation statistics, conditioning.

Keras callbacks never see gradients (SPEC §0.4): compile with ``GradientCapture(optimizer)``
(or ``with_gradient_capture``) and add a ``GradientLogger``.
"""

# ruff: noqa: F401  (a plain list of re-exports)

from depthlab.callbacks.activation_stats import (
    ActivationStats,
    activation_statistics,
    probe_model,
)
from depthlab.callbacks.backup import Backup
from depthlab.callbacks.best_weights import BestWeights
from depthlab.callbacks.conditioning import kappa_2, kappa_inf, kernel_conditioning
from depthlab.callbacks.divergence import DivergenceGuard
from depthlab.callbacks.epoch_logger import EpochLogger
from depthlab.callbacks.gradient_capture import GradientCapture, with_gradient_capture
from depthlab.callbacks.gradient_logger import GradientLogger
from depthlab.callbacks.step_loss import StepLoss
