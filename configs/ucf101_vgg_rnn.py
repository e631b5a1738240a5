"""Baseline 'VGG-16 RNN' on UCF-101: a GRU (512 units) over fc7 (paper: 78.1%).

  python -m grurcn_jax.main --config=configs/ucf101_vgg_rnn.py --workdir=DIR
"""

from configs import default


def get_config():
  config = default.get_config()
  config.model.name = "vgg_rnn"
  config.model.levels = ("fc7",)
  config.model.hidden = (512,)
  return config
