"""GRU-RCN (uni-directional) on UCF-101 RGB features, pool2..pool5 (paper: 79.9%).

  python -m grurcn_jax.main --config=configs/ucf101_grurcn.py --workdir=DIR
"""

from configs import default


def get_config():
  return default.get_config()
