"""The demo: GRU-RCN on synthetic motion videos, end to end in a few minutes on CPU.

The first run renders the demo videos, extracts their VGG-16 features (random
weights, 48x48 frames) into data.dir (cached for later runs), trains, evaluates and
prints where the results are.

  python -m grurcn_jax.main --config=configs/demo.py --workdir=/tmp/grurcn_demo

The frame-average baseline on the same data (stays near chance within the twin
classes, which differ only in the direction of time):

  python -m grurcn_jax.main --config=configs/demo.py --workdir=/tmp/grurcn_demo_frames \\
      --config.model.name=vgg_frames
"""

import os

import ml_collections

from configs import default


def get_config():
  config = default.get_config()
  config.batch_size = 32
  config.eval_batch_size = 32
  config.num_train_steps = 400
  config.learning_rate = 3e-3
  config.warmup_steps = 20
  config.grad_clip_norm = 0.0
  config.log_every_steps = 50
  config.checkpoint_every_steps = 200
  config.eval_every_steps = 200

  data = config.data
  data.dir = os.path.expanduser("~/.cache/grurcn_jax/demo_v3")
  data.clip_length = 8      # the demo videos have 8 frames
  data.eval_clips = 1
  data.demo = ml_collections.ConfigDict(dict(
      seed=0, train_per_class=48, test_per_class=12, num_frames=8, image_size=48,
      levels=("pool2", "pool3", "pool4"), videos_per_shard=16, store_frames=True))

  model = config.model
  model.levels = ("pool2", "pool3", "pool4")
  model.hidden = (16, 16, 16)
  model.num_classes = 8
  model.dropout_rate = 0.3
  return config
