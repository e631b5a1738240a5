"""Bidirectional GRU-RCN on UCF-101 RGB features (paper: 80.7%, its best RGB).

Each level runs a forward and a backward GRU-RCN; their final states are
concatenated before pooling.

  python -m grurcn_jax.main --config=configs/ucf101_bigrurcn.py --workdir=DIR \\
      --config.data.dir=FEATURES

FEATURES, and the features the paper's figure came from: see configs/ucf101_grurcn.py.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.model.variant = "bi"
  config.model.bi_merge = "concat"
  return config
