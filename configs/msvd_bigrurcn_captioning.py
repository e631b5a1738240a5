"""Video captioning on MSVD (YouTube2Text) with a Bi-GRU-RCN encoder, as in the
paper's section 5.2: K equally spaced segments of 10 frames, each encoded by the
bidirectional GRU-RCN over pool2..pool5 (hidden 64/128/256/256), its last hidden
maps concatenated into one vector per segment (pooled to 1x1 first, as the
classifier does: the paper does not say); an LSTM with soft attention over the
segments writes the caption (Yao et al. 2015); beam width 5, no length
normalisation (the decoder's public code).

  python -m grurcn_jax.main --config=configs/msvd_bigrurcn_captioning.py \\
      --workdir=DIR --config.data.dir=FEATURES
  # Training evaluates on the 100 validation clips (choose the step there; the
  # decoder's code stops early on validation NLL); then the test clips, once:
  python -m grurcn_jax.main --config=configs/msvd_bigrurcn_captioning.py \\
      --workdir=DIR --config.data.dir=FEATURES --mode=eval \\
      --config.data.eval_split=test [--eval_step=N]   # into DIR/eval/test_stepN/

FEATURES holds pool2..pool5 (and fc7, for the baseline) features of the MSVD clips
(train: the 1,200 training clips, val: 100, test: the 670 test clips) and their
references and vocabulary in captions.json, as extraction writes them:

  python -m grurcn_jax.data.extract --source=msvd --videos=YouTubeClips/ \\
      --captions=AllVideoDescriptions.txt --mapping=youtube_mapping.txt \\
      --out=FEATURES --levels=pool2,pool3,pool4,pool5,fc7 --weights=imagenet
  # every frame of 1,970 clips: add --dry_run first for the size it will take,
  # and --fps or --max_frames to take fewer

Start the encoder from an action-recognition run (configs/ucf101_bigrurcn.py) with
--config.caption.encoder_checkpoint=RUN_DIR, and keep it fixed with
--config.caption.freeze_encoder=True. The paper's VGG-16 baseline (fc7 of each
segment's first frame): --config.caption.encoder=first_frame
--config.model.levels="('fc7',)" --config.model.hidden="(512,)".

K and the decoder's sizes were chosen by random search in the paper and not
published; the values below are this project's starting point, as are the
optimizer (AdamW; the decoder's public code used Adadelta), the vocabulary (every
training word; no cap) and choosing the step by caption metrics on validation
(the decoder's code stops on validation NLL). Every evaluated
step's checkpoint is kept, so any of them can be evaluated on test.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.task = "captioning"
  config.batch_size = 64
  config.eval_batch_size = 64
  config.num_train_steps = 20_000
  config.learning_rate = 2e-4
  config.warmup_steps = 500
  config.weight_decay = 1e-4
  config.log_every_steps = 100
  config.checkpoint_every_steps = 2000
  config.eval_every_steps = 2000
  # Every evaluated step (10), so that the one chosen can be tested, and up to 6
  # saved on preemptions between them.
  config.keep_checkpoints = 16

  data = config.data
  data.clip_length = 10       # frames per segment (the paper: each segment's first 10)
  # Validation during training: reading the best step off the test clips would
  # select on them.
  data.eval_split = "val"

  model = config.model        # the encoder: the paper's Bi-GRU-RCN
  model.variant = "bi"
  model.levels = ("pool2", "pool3", "pool4", "pool5")
  model.hidden = (64, 128, 256, 256)

  caption = config.caption
  caption.encoder = "grurcn"
  caption.segments = 8
  caption.max_length = 30     # the decoder's public code: captions of 30 tokens
  caption.embed_dim = 512
  caption.hidden = 1024
  caption.attention_dim = 512
  caption.dropout_rate = 0.5
  caption.attention_weight = 0.706
  caption.beam_size = 5
  return config
