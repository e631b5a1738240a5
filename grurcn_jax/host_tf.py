"""TensorFlow for host-side work only: tf.data input and tf.io.gfile files.

The package imports TensorFlow only through here (`from grurcn_jax.host_tf import
tf`), so whichever module comes first, TensorFlow is set up once, before it starts:

- it may not use the GPUs JAX computes on (it would otherwise reserve their
  memory);
- its host tensors come from its caching (BFC) allocator instead of fresh memory
  for every batch. A paper-shape batch is hundreds of MB; fresh pages are zeroed
  by the kernel on first touch (about 1.3 GB/s on a 2-core AMD EPYC), which bound
  the input pipeline: with the cache it delivers 2x the features' clips/s and 3x
  the frames' there (README, "Features"). Set TF_CPU_ALLOCATOR_USE_BFC=false to
  opt out.
"""

import os

os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")

import tensorflow as tf  # noqa: E402  (after the allocator setting on purpose)

try:
  tf.config.set_visible_devices([], "GPU")
except RuntimeError:  # the caller started TensorFlow's devices before importing us
  pass
