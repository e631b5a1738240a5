"""Defaults every experiment config starts from: GRU-RCN on UCF-101 (PAPER.md).

Experiment configs import this and change only what differs. Run one with:

  python -m grurcn_jax.main --config=configs/ucf101_grurcn.py --workdir=DIR
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0

  model = config.model = ml_collections.ConfigDict()
  # grurcn | vgg_frames (per-frame classifier, probabilities averaged over time)
  # | vgg_rnn (a GRU over per-frame vectors).
  model.name = "grurcn"
  # uni | bi (forward + backward per level) | stacked (level l's gates also see
  # level l-1's state). Used by grurcn only.
  model.variant = "uni"
  # VGG-16 levels, fine to coarse, and GRU-RCN hidden channels per level (PAPER.md).
  model.levels = ("pool2", "pool3", "pool4", "pool5")
  model.hidden = (64, 128, 256, 256)
  # Side of every convolution kernel (input-to-hidden and hidden-to-hidden); fc7
  # always uses 1x1.
  model.kernel_size = 3
  # Dropout before each level's classifier. PAPER.md: 0.7 (drop vs keep unconfirmed).
  model.dropout_rate = 0.7
  model.num_classes = 101
  # How the bi variant merges its two directions: concat (channels) | sum.
  model.bi_merge = "concat"
  # fused (hand-written VJP, weight gradients once per clip; the fast default)
  # | scan (nn.scan differentiated by JAX; allows remat).
  model.recurrence = "fused"
  model.remat = False
  model.unroll = 1
  # Compute dtype: float32 | bfloat16. Parameters are always float32.
  model.dtype = "float32"
  # level_mean: mean of the per-level cross-entropies | ensemble: cross-entropy of
  # the level-averaged prediction.
  model.loss = "level_mean"
  return config
