"""Baseline 'VGG-16 (frame average)' on UCF-101 fc7 features (paper: 78.0%).

A linear classifier on each frame's fc7 vector; probabilities averaged over the clip.

  python -m grurcn_jax.main --config=configs/ucf101_vgg_frames.py --workdir=DIR
"""

from configs import default


def get_config():
  config = default.get_config()
  config.model.name = "vgg_frames"
  config.model.levels = ("fc7",)
  config.model.hidden = ()  # no recurrence
  return config
