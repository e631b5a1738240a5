"""The captioning demo: GRU-RCN + attention LSTM decoder on synthetic captioned
videos, end to end in a few minutes on CPU (7 on two cores, 3 of them building the
data on the first run).

Every video shows a coloured shape making two motions in turn, and its caption
names them in order ("a red square moves left and then grows"). The colour and
the shape can be read from any frame; the motion words and their order only from
time: a video played backwards is another video of the set, with the reversed
motions in the reversed order. The first run renders the videos and extracts their
VGG-16 features (random weights, 48x48 frames) into data.dir, cached for later
runs.

  python -m grurcn_jax.main --config=configs/demo_captioning.py \\
      --workdir=/tmp/grurcn_captioning_demo

The frame-average encoder on the same data (the mean over all 8 frames: blind to
their order, so it cannot beat chance on the motion words of time-reversed twins):

  python -m grurcn_jax.main --config=configs/demo_captioning.py \\
      --workdir=/tmp/grurcn_captioning_demo_average \\
      --config.caption.encoder=frame_average --config.caption.segments=1 \\
      --config.data.clip_length=8
"""

import os

import ml_collections

from configs import default


def get_config():
  config = default.get_config()
  config.task = "captioning"
  config.batch_size = 32
  config.eval_batch_size = 32
  config.num_train_steps = 1000
  config.learning_rate = 3e-3
  config.warmup_steps = 20
  config.weight_decay = 0.0
  config.grad_clip_norm = 1.0
  config.log_every_steps = 50
  config.checkpoint_every_steps = 500
  config.eval_every_steps = 1000

  data = config.data
  data.dir = os.path.expanduser("~/.cache/grurcn_jax/demo_captions_v5")
  data.clip_length = 4      # frames per segment: each motion's 4 frames
  data.demo = ml_collections.ConfigDict(dict(
      seed=0, num_train=1536, num_test=96, num_frames=8, image_size=48,
      levels=("pool3", "pool4"), videos_per_shard=32))

  model = config.model      # the GRU-RCN encoder
  # pool3 and pool4 (6x6 and 3x3 maps): a third of the time pool2 (12x12) adds,
  # enough for the motions; the shapes need pool2's resolution (see the README).
  model.levels = ("pool3", "pool4")
  model.hidden = (16, 16)
  model.num_classes = 8     # unused by captioning; the set's first-motion classes

  caption = config.caption
  caption.encoder = "grurcn"
  # Two segments of 4 frames, one per motion, each with a learned position vector
  # (the attention alone cannot tell which segment came first).
  caption.segments = 2
  caption.segment_positions = True
  caption.max_length = 12
  caption.embed_dim = 64
  caption.hidden = 128
  caption.attention_dim = 64
  caption.dropout_rate = 0.3
  caption.beam_size = 3
  caption.attention_weight = 0.01
  return config
