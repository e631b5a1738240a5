"""The learning-rate schedules of steps.py."""

import numpy as np
import pytest

from configs import default
from grurcn_jax import steps


@pytest.mark.parametrize("warmup", [0, 10])
def test_step_schedule_decays_at_its_fractions_of_the_run(warmup):
  # Boundaries are fractions of num_train_steps, warmup or not (join_schedules
  # counts the second schedule from the end of the warmup).
  config = default.get_config()
  config.update(schedule="step", num_train_steps=100, learning_rate=1.0,
                step_boundaries=(0.5, 0.75), step_decay=0.1, warmup_steps=warmup)
  schedule = steps.learning_rate_schedule(config)
  at = lambda step: float(schedule(step))
  np.testing.assert_allclose([at(49), at(50), at(74), at(75), at(99)],
                             [1.0, 0.1, 0.1, 0.01, 0.01], rtol=1e-6)
  if warmup:
    np.testing.assert_allclose([at(0), at(5), at(warmup)], [0.0, 0.5, 1.0], rtol=1e-6)


def test_step_boundaries_land_on_the_nearest_step():
  # 0.29 * 100 and 0.57 * 100 are 28.999... and 56.999... in floating point.
  config = default.get_config()
  config.update(schedule="step", num_train_steps=100, learning_rate=1.0,
                step_boundaries=(0.29, 0.57), step_decay=0.1, warmup_steps=0)
  schedule = steps.learning_rate_schedule(config)
  np.testing.assert_allclose([float(schedule(s)) for s in (28, 29, 56, 57)],
                             [1.0, 0.1, 0.1, 0.01], rtol=1e-6)
