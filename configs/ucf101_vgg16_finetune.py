"""The paper's stage 1: VGG-16 fine-tuned on UCF-101 frames, before extraction.

A frame classifier trained whole: each clip is one frame, run through VGG-16 (every
layer trained, ImageNet weights to start from) to fc7 and a new linear classifier;
at test, the probabilities of 25 evenly spaced frames per video are averaged. It
runs in frames mode, so the directory needs the frames and fc7's statistics,
extracted with the weights fine-tuning starts from:

  python -m grurcn_jax.data.extract --source=ucf101 --videos=UCF101 \\
      --splits=ucfTrainTestlist --split=1 --out=/data/ucf101_frames \\
      --levels=fc7 --store_frames --weights=imagenet --frame_stride=5
  python -m grurcn_jax.main --config=configs/ucf101_vgg16_finetune.py \\
      --workdir=/runs/vgg16_finetune --config.data.dir=/data/ucf101_frames

Stage 2 extracts GRU-RCN's levels with the fine-tuned network (newest checkpoint,
pinned to its step in the directory's record):

  python -m grurcn_jax.data.extract ... --weights=checkpoint:/runs/vgg16_finetune \\
      --out=/data/ucf101_finetuned [--store_frames]

and trains GRU-RCN on those features, or (with --store_frames) in frames mode,
which starts VGG-16 from the directory's weights: the fine-tuned ones.

The paper does not give the fine-tuning recipe. This one is the usual for VGG-16 on
UCF-101 frames: SGD with Nesterov momentum, learning rate 1e-3 divided by 10 twice,
batch of 256 frames, dropout 0.5 after fc6 and fc7 (as VGG-16 was trained).
"""

from configs import default


def get_config():
  config = default.get_config()
  config.batch_size = 256
  config.eval_batch_size = 256
  config.num_train_steps = 20_000
  config.optimizer = "sgd"
  config.learning_rate = 1e-3
  config.momentum = 0.9
  config.weight_decay = 5e-4
  config.schedule = "step"
  config.step_boundaries = (0.5, 0.75)
  config.step_decay = 0.1
  config.warmup_steps = 0
  config.grad_clip_norm = 0.0
  config.eval_every_steps = 2_000

  data = config.data
  data.input = "frames"
  data.clip_length = 1       # one frame per clip: a frame classifier
  data.eval_clips = 25       # frames per test video, probabilities averaged

  model = config.model
  model.name = "vgg_frames"
  model.levels = ("fc7",)
  model.hidden = ()
  model.dropout_rate = 0.0   # fc7 is already dropped out
  model.backbone_trainable = True
  model.backbone_dropout = 0.5
  return config
