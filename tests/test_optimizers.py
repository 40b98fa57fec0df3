"""ScheduledBeta1AdamW + OneCycle against torch's AdamW + OneCycleLR (SPEC §0.3, §1.4)."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import torch
from keras import ops

from depthlab.optimizers import ScheduledBeta1AdamW
from depthlab.schedules import OneCycle, OneCycleBeta1, one_cycle, one_cycle_beta1

TOTAL, STEPS = 40, 30


def _torch_reference(w0: np.ndarray, b0: np.ndarray, x: np.ndarray, y: np.ndarray) -> list:
    """The reference recipe on a linear least-squares model, in float64."""
    w = torch.tensor(w0, dtype=torch.float64, requires_grad=True)
    b = torch.tensor(b0, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.AdamW([{"params": [w], "weight_decay": 0.01},
                             {"params": [b], "weight_decay": 0.0}], lr=1e-2, eps=1e-8)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=TOTAL)
    xt, yt = torch.tensor(x, dtype=torch.float64), torch.tensor(y, dtype=torch.float64)
    for _ in range(STEPS):
        opt.zero_grad()
        loss = ((xt @ w + b - yt) ** 2).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_([w, b], 0.5)
        opt.step()
        sched.step()
    return [w.detach().numpy(), b.detach().numpy()]


def test_schedules_in_ops_equal_the_closed_forms():
    total = 101 * 784
    lr, beta1 = OneCycle(1e-3, total), OneCycleBeta1(total)
    for step in (0, 1, 5_000, 23_754, 23_755, 50_000, 78_981, total - 1):
        assert float(ops.convert_to_numpy(lr(step))) == pytest.approx(
            one_cycle(step, 1e-3, total), rel=1e-5, abs=0)
        assert float(ops.convert_to_numpy(beta1(step))) == pytest.approx(
            one_cycle_beta1(step, total), rel=1e-6)
    # SPEC §1.7 item 6, in float32 as the step computes it
    assert float(ops.convert_to_numpy(lr(78_981))) == pytest.approx(3.677e-8, rel=1e-3)
    assert OneCycle.from_config(lr.get_config()).get_config() == lr.get_config()


def test_adamw_with_one_cycle_matches_torch():
    """Weights after 30 steps of AdamW + OneCycle (lr and beta1) + global clip equal torch's
    (decay on the kernel only); the clip bites in the first steps."""
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(16, 4)), rng.normal(size=(16, 3)) * 3
    w0, b0 = rng.normal(size=(4, 3)), rng.normal(size=3)
    layer = keras.layers.Dense(3)
    layer.build((None, 4))
    layer.set_weights([w0.astype("float32"), b0.astype("float32")])
    opt = ScheduledBeta1AdamW(OneCycleBeta1(TOTAL), learning_rate=OneCycle(1e-2, TOTAL),
                              weight_decay=0.01, epsilon=1e-8, global_clipnorm=0.5)
    opt.exclude_from_weight_decay(var_list=[layer.bias])
    model = keras.Sequential([keras.Input((4,)), layer])
    model.compile(optimizer=opt, loss="mse")
    model.fit(x.astype("float32"), y.astype("float32"), batch_size=16, epochs=STEPS,
              shuffle=False, verbose=0)
    expected = _torch_reference(w0, b0, x, y)
    for got, want in zip(layer.get_weights(), expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-5)
    assert float(ops.convert_to_numpy(opt.iterations)) == STEPS


def test_scheduled_beta1_adamw_round_trips():
    opt = ScheduledBeta1AdamW(OneCycleBeta1(100), learning_rate=OneCycle(1e-3, 100),
                              weight_decay=0.01)
    again = ScheduledBeta1AdamW.from_config(opt.get_config())
    assert again.get_config() == opt.get_config()
    assert float(ops.convert_to_numpy(again.beta_1)) == pytest.approx(0.95)
