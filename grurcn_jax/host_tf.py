"""TensorFlow for host-side work only: tf.data input and tf.io.gfile files.

The package imports TensorFlow only through here (`from grurcn_jax.host_tf import
tf`), so whichever module comes first, TensorFlow is told before it starts that it
may not use the GPUs JAX computes on (it would otherwise reserve their memory).
"""

import tensorflow as tf

try:
  tf.config.set_visible_devices([], "GPU")
except RuntimeError:  # the caller started TensorFlow's devices before importing us
  pass
