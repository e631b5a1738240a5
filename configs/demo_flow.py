"""The demo's flow stream: GRU-RCN on optical flow of the demo's synthetic videos.

The same videos as configs/demo.py; the first run computes their flow (OpenCV's
DIS between consecutive 48x48 frames, clipped to +-20 px and stored as 0..255),
runs the flow VGG-16 over it (random weights, its first convolution
cross-modality initialised from the RGB network's: the channel mean of its
filters) and caches the pool2..pool4 features in data.dir. Needs OpenCV (`pip
install opencv-python-headless`).

  python -m grurcn_jax.main --config=configs/demo_flow.py --workdir=/tmp/grurcn_demo_flow

Both streams, fused as the paper fuses them (a weighted sum of class
probabilities; run configs/demo.py first):

  python -m grurcn_jax.fuse \\
      --scores=/tmp/grurcn_demo/eval_scores.npz,/tmp/grurcn_demo_flow/eval_scores.npz
"""

import os

from configs import demo


def get_config():
  config = demo.get_config()
  data = config.data
  data.dir = os.path.expanduser("~/.cache/grurcn_jax/demo_flow_v2")
  data.clip_length = 7      # 8 frames: 7 flows, one window each (L = 1)
  data.demo.update(modality="flow", flow="dis", flow_length=1, store_frames=False)
  return config
