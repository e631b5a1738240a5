"""Hardware overrides for Cloud TPU pod slices, on top of a paper config.

GRU-RCN on UCF-101 (configs/ucf101_grurcn.py) with bfloat16 compute, a global batch
that fills a v4-32 slice (16 chips, 4 hosts) and a fixed number of data streams, so
the run sees the same batches on any slice whose host count divides it:

  launch/tpu.sh --name=grurcn --zone=us-central2-b --project=PROJECT \\
      --accelerator=v4-32 --config=configs/tpu.py \\
      --workdir=gs://BUCKET/runs/grurcn --data_dir=gs://BUCKET/features/ucf101_split1

On one host the same config runs with
  python -m grurcn_jax.main --config=configs/tpu.py --workdir=DIR --config.data.dir=FEATURES
"""

from configs import ucf101_grurcn


def get_config():
  config = ucf101_grurcn.get_config()
  config.model.dtype = "bfloat16"   # parameters stay float32
  config.batch_size = 128           # a multiple of every slice's device count up to 128
  config.eval_batch_size = 256
  config.learning_rate = 2e-3       # scaled with the batch (default: 1e-3 at 64)
  config.data.num_streams = 8
  config.checkpoint_every_steps = 500
  return config
