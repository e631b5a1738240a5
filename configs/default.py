"""Defaults every experiment config starts from: GRU-RCN on UCF-101 as in the paper
(Ballas et al., ICLR 2016). This file is also the config schema: a field it lacks
is rejected as a typo, and every field it has must be present.

Experiment configs import this and change only what differs. Run one with:

  python -m grurcn_jax.main --config=configs/ucf101_grurcn.py --workdir=DIR \
      --config.data.dir=FEATURES
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0

  # Optimisation. The paper does not state optimiser, learning rate or epochs;
  # these are sensible defaults (batch of 64 clips as in the paper).
  config.batch_size = 64          # global, over all devices and hosts
  config.eval_batch_size = 64
  config.num_train_steps = 30_000
  config.optimizer = "adam"       # adam (AdamW) | sgd (Nesterov momentum)
  config.learning_rate = 1e-3
  config.momentum = 0.9           # sgd only
  config.weight_decay = 1e-4
  config.schedule = "cosine"      # cosine | step | constant, after linear warmup
  config.warmup_steps = 500
  config.step_boundaries = (0.5, 0.75)   # 'step': fractions of num_train_steps
  config.step_decay = 0.1                # 'step': factor at each boundary
  config.grad_clip_norm = 1.0     # 0 disables clipping

  config.log_every_steps = 100
  config.checkpoint_every_steps = 1000
  config.eval_every_steps = 5000
  config.keep_checkpoints = 3
  # Compiled programs stored for restarts and --mode=eval (grurcn_jax/compile_cache.py);
  # "{workdir}" stands for the run's workdir; "" for none.
  config.compilation_cache_dir = "{workdir}/compilation_cache"

  data = config.data = ml_collections.ConfigDict()
  data.dir = ""                   # feature directory (python -m grurcn_jax.data.extract)
  # features: the stored VGG-16 levels | frames: the stored frames (extract with
  # --store_frames), VGG-16 running inside the step (model.backbone_trainable).
  data.input = "features"
  data.train_split = "train"
  data.eval_split = "test"
  data.clip_length = 10           # the paper: clips of 10 frames
  data.frame_stride = 1           # between the clip's (extracted) frames (the
                                  # paper does not say; this project's choice)
  data.eval_clips = 10            # evenly spaced clips per test video, averaged
                                  # (the paper does not say how many)
  data.skip_bad_records = False   # True: leave out shards with missing or truncated
                                  # files (counted) instead of stopping
  # Train data is read as this many independent streams, shared out to the hosts
  # (0: one per host). Fix it (e.g. 8) and runs on any host count dividing it see
  # the same batches.
  data.num_streams = 0
  # auto: threads where it can, else tf | threads: Python threads, no TensorFlow
  # needed (local directories, raw rows) | tf: tf.data (also gs:// and JPEG
  # frames). All give the same batches (grurcn_jax/data/loaders.py).
  data.loader = "auto"
  # Global batches copied to the devices ahead of the running step (0: none).
  data.device_prefetch = 2
  # A ConfigDict of grurcn_jax.data.demo.DemoSpec fields builds the synthetic demo
  # dataset into data.dir when it is not there yet (configs/demo.py).
  data.demo = None

  model = config.model = ml_collections.ConfigDict()
  # grurcn | vgg_frames (per-frame classifier, probabilities averaged over time)
  # | vgg_rnn (a GRU over per-frame vectors).
  model.name = "grurcn"
  # uni | bi (forward + backward per level) | stacked (level l's gates also see
  # level l-1's state). Used by grurcn only.
  model.variant = "uni"
  # VGG-16 levels, fine to coarse, and GRU-RCN hidden channels per level (the paper's).
  model.levels = ("pool2", "pool3", "pool4", "pool5")
  model.hidden = (64, 128, 256, 256)
  # Side of every convolution kernel (input-to-hidden and hidden-to-hidden: the
  # paper says 3x3, unconfirmed for hidden-to-hidden); fc7 always uses 1x1.
  model.kernel_size = 3
  # Dropout before each level's classifier: 0.7 (whether the paper's 0.7 is the
  # drop or the keep probability is not stated).
  model.dropout_rate = 0.7
  model.num_classes = 101
  # How the bi variant merges its two directions: concat (channels) | sum.
  model.bi_merge = "concat"
  # fused (hand-written VJP, weight gradients once per clip; the fast default)
  # | scan (nn.scan differentiated by JAX; the reference).
  model.recurrence = "fused"
  # Long clips: keep only input frames and states, recompute the rest backwards.
  model.remat = False
  # With remat: the levels that recompute; () = all of them. Fine levels hold most
  # of the memory for their FLOPs (pool2 keeps 4x pool4's states for the same
  # convolution FLOPs), so ("pool2", "pool3") keeps most of the saving at a lower cost.
  model.remat_levels = ()
  # The time loop: 0 = the backend's choice (no loop on GPU for clips of up to 16
  # frames with the fused recurrence, remat or not; a loop elsewhere) | an unroll
  # factor (1: a loop).
  model.unroll = 0
  # How convolution kernel gradients are computed: auto (per backend: XLA's own
  # on GPU/TPU, per-tap matrix products for wide kernels on CPU) | xla | taps.
  model.kernel_gradient = "auto"
  # Compute dtype: float32 | bfloat16. Parameters are always float32.
  model.dtype = "float32"
  # Frames mode: train VGG-16 with the rest (True) or keep the directory's
  # weights (False: no gradient through it, no optimiser update).
  model.backbone_trainable = False
  # Frames mode: dropout after VGG-16's fc6 and fc7 in training (fine-tuning it on
  # fc7, configs/ucf101_vgg16_finetune.py); pool levels do not pass through them.
  model.backbone_dropout = 0.0
  # level_mean: mean of the per-level cross-entropies | ensemble: cross-entropy of
  # the level-averaged prediction.
  model.loss = "level_mean"

  # classification (action recognition, the paper's first task) | captioning (the
  # second: configs/demo_captioning.py, configs/msvd_bigrurcn_captioning.py).
  config.task = "classification"
  # Captioning only. A video is `segments` equally spaced segments of
  # data.clip_length frames each; its encoder gives one vector per segment and an
  # attention LSTM decoder writes the caption (grurcn_jax.models.captioning).
  caption = config.caption = ml_collections.ConfigDict()
  # grurcn (the model.* GRU-RCN over each segment) | first_frame (each segment's
  # first frame, the paper's VGG-16 baseline) | frame_average (the mean over each
  # segment's frames: blind to their order).
  caption.encoder = "grurcn"
  caption.segments = 8
  # Add a learned vector per segment index before the decoder, so the attention can
  # tell the segments' order (the paper's decoder has none).
  caption.segment_positions = False
  # Attend over each segment's spatial positions too (each level average pooled to
  # the coarsest level's grid: segments x h x w vectors), not over segments only
  # as the paper does.
  caption.spatial_attention = False
  caption.max_length = 30         # words per caption, <eos> included (the decoder's
                                  # public code: 30)
  caption.embed_dim = 256
  caption.hidden = 512
  caption.attention_dim = 256
  caption.dropout_rate = 0.5
  caption.attention_weight = 0.706  # lambda of the attention regulariser (the
                                    # decoder's public code)
  caption.beam_size = 5           # 1: greedy decoding
  # Whether decoding may write <unk>, the stand-in for words seen fewer than
  # extraction's --min_word_count times: it matches no reference word.
  caption.allow_unk = False
  # An action-recognition run (workdir or checkpoints folder, optionally @STEP)
  # whose GRU-RCN starts the encoder; freeze_encoder keeps it fixed.
  caption.encoder_checkpoint = ""
  caption.freeze_encoder = False
  caption.eval_samples = 8        # generated captions shown in TensorBoard
  return config
