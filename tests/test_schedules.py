"""Schedules (method §3, §9) against hand-computed values."""

import numpy as np
import pytest

from training.loop.schedules import cosine_schedule, lr_for_batch, teacher_temperature


def test_cosine_without_warmup():
    values = cosine_schedule(1.0, 0.0, epochs=1, iters_per_epoch=4)
    # 0.5 * (1 + cos(pi * i / 4)) for i = 0..3
    assert np.allclose(values, [1.0, 0.8535534, 0.5, 0.1464466])


def test_cosine_with_linear_warmup():
    values = cosine_schedule(1.0, 0.0, epochs=2, iters_per_epoch=2, warmup_epochs=1)
    assert np.allclose(values, [0.0, 0.5, 1.0, 0.5])


def test_ema_momentum_rises_towards_one():
    values = cosine_schedule(0.996, 1.0, epochs=3, iters_per_epoch=10)
    assert values[0] == pytest.approx(0.996)
    assert np.all(np.diff(values) > 0) and values[-1] < 1.0


def test_teacher_temperature_warmup_per_epoch():
    assert np.allclose(teacher_temperature(0.04, 0.07, 3, 5), [0.04, 0.055, 0.07, 0.07, 0.07])
    assert np.allclose(teacher_temperature(0.04, 0.04, 0, 2), [0.04, 0.04])


def test_linear_scaling_rule():
    assert lr_for_batch(7.5e-4, 64) == pytest.approx(1.875e-4)
    assert lr_for_batch(7.5e-4, 64, world_size=4) == pytest.approx(7.5e-4)
