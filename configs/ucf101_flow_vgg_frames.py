"""Baseline 'VGG-16 (frame average)' on UCF-101 flow fc7 features (paper: 85.4%).

A linear classifier on each flow window's fc7 vector; probabilities averaged over
the clip. Extract as in configs/ucf101_flow_grurcn.py with --levels=fc7 (or add
fc7 to that extraction's levels), then:

  python -m grurcn_jax.main --config=configs/ucf101_flow_vgg_frames.py --workdir=DIR \\
      --config.data.dir=/data/ucf101_flow

As there, the flow VGG-16 is not fine-tuned on flow as the paper's was.
"""

from configs import ucf101_vgg_frames


def get_config():
  return ucf101_vgg_frames.get_config()
