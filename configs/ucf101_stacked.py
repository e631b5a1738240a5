"""Stacked GRU-RCN on UCF-101 RGB features (paper: 78.3%).

Level l's update and reset gates also see level l-1's state at the same step,
max-pooled to level l's size.

  python -m grurcn_jax.main --config=configs/ucf101_stacked.py --workdir=DIR \\
      --config.data.dir=FEATURES

FEATURES, and the features the paper's figure came from: see configs/ucf101_grurcn.py.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.model.variant = "stacked"
  return config
