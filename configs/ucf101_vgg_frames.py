"""Baseline 'VGG-16 (frame average)' on UCF-101 fc7 features (paper: 78.0%).

A linear classifier on each frame's fc7 vector; probabilities averaged over the clip.

  python -m grurcn_jax.main --config=configs/ucf101_vgg_frames.py --workdir=DIR \\
      --config.data.dir=FEATURES

FEATURES: the README's UCF-101 extraction with fc7 (--levels=fc7, or
--levels=pool2,pool3,pool4,pool5,fc7 for every model at once); the features the
paper's figure came from: see configs/ucf101_grurcn.py.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.model.name = "vgg_frames"
  config.model.levels = ("fc7",)
  config.model.hidden = ()  # no recurrence
  return config
