"""Baseline 'VGG-16 RNN' on UCF-101: a GRU (512 units) over fc7 (paper: 78.1%).

  python -m grurcn_jax.main --config=configs/ucf101_vgg_rnn.py --workdir=DIR \\
      --config.data.dir=FEATURES

FEATURES: the README's UCF-101 extraction with fc7 (--levels=fc7, or
--levels=pool2,pool3,pool4,pool5,fc7 for every model at once); the features the
paper's figure came from: see configs/ucf101_grurcn.py.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.model.name = "vgg_rnn"
  config.model.levels = ("fc7",)
  config.model.hidden = (512,)
  return config
