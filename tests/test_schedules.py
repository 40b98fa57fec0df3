"""Schedules equal their closed forms (SPEC §3.4, §1.4, §3.7 item 6, §1.7 item 6)."""

import numpy as np
import pytest
from keras import ops

from depthlab.schedules import (
    EpochCosine,
    EpochDecades,
    EpochStep,
    cosine_epoch,
    decade_steps,
    one_cycle,
    one_cycle_beta1,
    step_epoch,
)


def test_coursework_cosine_values():
    lr = lambda e, base=1e-3: cosine_epoch(e, base, 2e-5, 100)  # noqa: E731
    assert lr(0) == pytest.approx(1e-3, rel=1e-6)
    assert lr(1) == pytest.approx(9.99758e-4, rel=1e-6)
    assert lr(50) == pytest.approx(5.1e-4, rel=1e-6)
    assert lr(98) == pytest.approx(2.09669e-5, rel=1e-6)
    assert lr(99) == pytest.approx(2.02418e-5, rel=1e-6)
    assert lr(50, 1e-2) == pytest.approx(5.01e-3, rel=1e-6)
    assert lr(99, 1e-2) == pytest.approx(2.24623e-5, rel=3e-6)  # spec rounds to 6 digits


def test_epoch_cosine_is_constant_within_an_epoch():
    schedule = EpochCosine(1e-3, 2e-5, 100, steps_per_epoch=475)
    for step, epoch in [(0, 0), (474, 0), (475, 1), (50 * 475 + 3, 50), (99 * 475 + 474, 99)]:
        value = float(ops.convert_to_numpy(schedule(step)))
        assert value == pytest.approx(cosine_epoch(epoch, 1e-3, 2e-5, 100), rel=1e-6)
    assert EpochCosine.from_config(schedule.get_config()).get_config() == schedule.get_config()


def test_one_cycle_matches_torch_check_values():
    total = 101 * 784
    assert one_cycle(0, 1e-3, total) == pytest.approx(4e-5, rel=1e-6)
    peak = max(range(23_700, 23_800), key=lambda k: one_cycle(k, 1e-3, total))
    assert peak == 23_754
    assert one_cycle(23_754, 1e-3, total) == pytest.approx(1e-3, rel=1e-6)
    assert one_cycle(78_981, 1e-3, total) == pytest.approx(3.677e-8, rel=1e-3)
    assert one_cycle_beta1(0, total) == pytest.approx(0.95)
    assert one_cycle_beta1(23_754, total) == pytest.approx(0.85, abs=1e-6)
    assert one_cycle_beta1(total - 1, total) == pytest.approx(0.95)


def test_step_decay():
    assert [step_epoch(e, 1e-2, 0.1, 5) for e in (0, 4, 5, 9)] == pytest.approx(
        [1e-2, 1e-2, 1e-3, 1e-3])
    schedule = EpochStep(0.1, 0.1, 75, steps_per_epoch=57)
    got = [float(ops.convert_to_numpy(schedule(e * 57))) for e in (0, 74, 75, 150, 225, 299)]
    np.testing.assert_allclose(got, [0.1, 0.1, 0.01, 0.001, 1e-4, 1e-4], rtol=1e-5)


def test_oyedotun_four_decades():
    """SPEC §4.7 item 8: lr at epochs 0, 74, 75, 150, 225, 299 of 300 = 0.1, 0.1, 0.01,
    1e-3, 1e-4, 1e-4; held within each epoch (USPS: 57 steps), also for E = 400 (conv)."""
    epochs = (0, 74, 75, 150, 225, 299)
    want = [0.1, 0.1, 0.01, 1e-3, 1e-4, 1e-4]
    assert [decade_steps(e, 0.1, 300) for e in epochs] == pytest.approx(want)
    schedule = EpochDecades(0.1, 300, steps_per_epoch=57)
    got = [float(ops.convert_to_numpy(schedule(e * 57 + k))) for e in epochs for k in (0, 56)]
    np.testing.assert_allclose(got, np.repeat(want, 2), rtol=1e-6)
    conv = EpochDecades(0.01, 400, steps_per_epoch=391)
    got = [float(ops.convert_to_numpy(conv(e * 391))) for e in (99, 100, 300, 399)]
    np.testing.assert_allclose(got, [1e-2, 1e-3, 1e-5, 1e-5], rtol=1e-6)
    assert EpochDecades.from_config(schedule.get_config()).get_config() == schedule.get_config()
